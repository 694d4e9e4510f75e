"""A damaged image index is refused with a message saying to rebuild it, never searched as if valid."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from devise.search.index import (
    ImageFile,
    ImageIndex,
    IndexDamagedError,
    create_index_file,
    exact_search,
    new_index_file,
)

# Run in a child process: a flipped byte must never crash the reader, and a
# crash (HDF5 is C code) would otherwise take the test session down with it.
SWEEP = r"""
import json, sys
import numpy as np
from devise.errors import DeviseError
from devise.search.index import ImageIndex, exact_search

good_path, bad_path, step, chunk_start, chunk_end = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
data = open(good_path, "rb").read()
queries = np.load(good_path + ".queries.npy")

def outcome(path):
    try:
        index = ImageIndex.open(path, model_fingerprint="model-a")
        scores, rows = exact_search(index, queries, 10)
        return [scores.tolist(), rows.tolist(), index.embeddings([0, 7, len(index) - 1]).tolist(), index.ids,
                index.paths, index.mtime_ns.tolist(), index.sizes.tolist(), index.image_root, index.run_dir, index.dim,
                index.date_ns.tolist(), index.date_source.tolist()]
    except DeviseError as exc:
        return type(exc).__name__

def same(a, b):
    # Damage below the check tolerance (a low mantissa bit) may move a score by as little.
    return a[3:] == b[3:] and a[1] == b[1] and np.allclose(a[0], b[0], atol=1e-3) and np.allclose(a[2], b[2], atol=1e-3)

good = outcome(good_path)
assert not isinstance(good, str), good
counts = {"refused": 0, "unchanged": 0, "different": []}
in_chunk = {"refused": 0, "other": 0}
for offset in range(0, len(data), step):
    damaged = bytearray(data)
    damaged[offset] ^= 0xFF
    open(bad_path, "wb").write(damaged)
    result = outcome(bad_path)
    if isinstance(result, str):
        counts["refused"] += 1
    elif same(result, good):
        counts["unchanged"] += 1
    else:
        counts["different"].append(offset)
    if chunk_start <= offset < chunk_end:
        in_chunk["refused" if isinstance(result, str) else "other"] += 1
print(json.dumps({"counts": counts, "in_chunk": in_chunk}))
"""


def _unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    matrix = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def _write(path, matrix) -> tuple[int, int]:
    files = [
        ImageFile(f"{i:05d}.jpg", f"/photos/{i:05d}.jpg", 10**18 + i, 1000 + i, 10**18 - i, ("exif", "mtime")[i % 2])
        for i in range(len(matrix))
    ]
    with new_index_file(path) as f:
        writer = create_index_file(
            f, files, model_fingerprint="model-a", run_dir="/runs/r", image_root="/photos", dim=matrix.shape[1]
        )
        writer.write(matrix)
        writer.finish()
        info = f["embeddings"].id.get_chunk_info(0)
        return info.byte_offset, info.byte_offset + info.size


@pytest.mark.slow
def test_no_flipped_byte_anywhere_in_an_index_gives_different_results(tmp_path):
    """Every 41st byte of a 100-row index flipped in turn: refused, or read as the intact file.

    "As the intact file": the same rows and file list, scores and vectors
    within 1e-3 (damage below the check values' tolerance moves them by less).
    """
    good = tmp_path / "index.h5"
    matrix = _unit_rows(100, 32)
    chunk_start, chunk_end = _write(good, matrix)
    np.save(f"{good}.queries.npy", matrix[[0, 50, 99]] * 0.5 + _unit_rows(3, 32, seed=1) * 0.5)
    result = subprocess.run(
        [sys.executable, "-c", SWEEP, str(good), str(tmp_path / "bad.h5"), "41", str(chunk_start), str(chunk_end)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["counts"]["different"] == [], report
    assert report["counts"]["refused"] > 0.5 * (report["counts"]["refused"] + report["counts"]["unchanged"])
    # Most flips inside the embeddings are refused; the rest (low mantissa bits) change nothing that matters.
    assert report["in_chunk"]["refused"] > 0.5 * (report["in_chunk"]["refused"] + report["in_chunk"]["other"])


def test_a_damaged_embedding_chunk_is_refused_with_the_advice_to_rebuild(tmp_path):
    path = tmp_path / "index.h5"
    matrix = _unit_rows(50, 16)
    chunk_start, _ = _write(path, matrix)
    data = bytearray(path.read_bytes())
    data[chunk_start + 4 * 16 * 20 + 2] ^= 0x40  # row 20: a plausible-looking wrong number
    path.write_bytes(data)
    index = ImageIndex.open(path)  # the file list is intact
    with pytest.raises(IndexDamagedError, match="damaged.*rebuild it: run devise-index again"):
        exact_search(index, matrix[:2], 5)
    with pytest.raises(IndexDamagedError):
        index.embeddings([20])


def test_a_changed_file_list_is_refused_on_opening(tmp_path):
    path = tmp_path / "index.h5"
    _write(path, _unit_rows(20, 8))
    with h5py.File(path, "r+") as f:  # a well-formed HDF5 edit: only the digest can tell
        f["paths"][3] = "/etc/passwd"
    with pytest.raises(IndexDamagedError, match="file list or attributes do not match"):
        ImageIndex.open(path)


def test_rows_that_are_not_unit_vectors_are_refused(tmp_path):
    """Damage the checksums cannot see (written so by a buggy writer): the score range catches it."""
    path = tmp_path / "index.h5"
    matrix = _unit_rows(20, 8)
    query = matrix[4].copy()
    matrix[4] *= 1e10
    _write(path, matrix)
    index = ImageIndex.open(path)
    with pytest.raises(IndexDamagedError, match="not a unit vector"):
        exact_search(index, query, 3)
    with pytest.raises(IndexDamagedError, match="not unit vectors"):
        index.embeddings([4])


def test_an_index_from_before_checksums_asks_to_be_rebuilt(tmp_path):
    path = tmp_path / "index.h5"
    _write(path, _unit_rows(5, 4))
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 1
    with pytest.raises(IndexDamagedError, match="must be rebuilt.*format version 1"):
        ImageIndex.open(path)

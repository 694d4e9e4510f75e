"""The feature cache's append-only file: a killed writer, flipped bytes and chunks never rewritten."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from PIL import Image

from devise.encoders.feature_cache import FeatureCache
from devise.encoders.feature_extractor import FeatureExtractor
from devise.encoders.feature_store import ROWS_PER_CHUNK, FeatureStore, RowInfo
from devise.errors import DeviseError

# An extractor without a network (numpy means of an 8x8 image): the child
# process below needs no model, and the features are exactly known.
EXTRACTOR = """
import numpy as np
from devise.encoders.feature_extractor import FeatureExtractor

class MeanColour(FeatureExtractor):
    name = "mean-colour"
    input_size = (8, 8)
    output_dim = 3
    weights_id = "none"

    def build_model(self):
        raise AssertionError("not used")

    def extract(self, images):
        self.calls = getattr(self, "calls", 0) + 1
        return np.asarray(images, np.float32).mean(axis=(1, 2))
"""
exec(EXTRACTOR)  # the same class here as in the child process


def _colour(k: int) -> tuple[int, int, int]:
    return (10 * k % 256, (37 * k + 5) % 256, (101 * k + 50) % 256)


def _images(directory, n: int):
    ids, paths = [], []
    for k in range(n):
        path = directory / f"img{k:03d}.png"
        Image.new("RGB", (8, 8), _colour(k)).save(path)
        ids.append(f"img{k:03d}")
        paths.append(str(path))
    return ids, paths


def _expected(n: int) -> np.ndarray:
    return np.array([_colour(k) for k in range(n)], np.float32)


def _extractor() -> FeatureExtractor:
    return MeanColour(batch_size=2)  # noqa: F821 - defined by exec above


@pytest.mark.parametrize("moment", ["before_flush", "after_flush"])
def test_a_writer_killed_mid_append_leaves_its_committed_rows_valid_and_the_rest_is_recomputed(tmp_path, moment):
    ids, paths = _images(tmp_path, 20)
    cache_path = tmp_path / "cache.h5"
    # The child commits appends of 4 rows and is SIGKILLed inside its third
    # append: its rows and record written, the count that commits them not.
    child = EXTRACTOR + textwrap.dedent(f"""
        import os, signal, sys
        from devise.encoders import feature_store
        from devise.encoders.feature_cache import FeatureCache

        real_sync = feature_store.FeatureStore._sync
        calls = 0

        def sync(self):
            global calls
            calls += 1
            if calls == 5 and {moment!r} == "before_flush":
                os.kill(os.getpid(), signal.SIGKILL)
            real_sync(self)
            if calls == 5:
                os.kill(os.getpid(), signal.SIGKILL)

        feature_store.FeatureStore._sync = sync
        extractor = MeanColour(batch_size=2)
        ids, paths = {ids!r}, {paths!r}
        FeatureCache({str(cache_path)!r}, extractor.fingerprint()).get_or_compute(
            extractor, ids, paths, progress=False, checkpoint_every=4)
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr

    extractor = _extractor()
    cache = FeatureCache(cache_path, extractor.fingerprint())
    with cache.open() as store:
        assert len(store) == 8  # two committed appends
        np.testing.assert_allclose(store.read_features(range(8)), _expected(8), atol=1e-4)
    table = cache.get_or_compute(extractor, ids, paths, progress=False, checkpoint_every=4)
    assert table.computed == 12 and table.ids == ids
    np.testing.assert_allclose(table.features, _expected(20), atol=1e-4)
    with cache.open() as store:
        assert len(store) == 20
    assert cache.get_or_compute(_extractor(), ids, paths, progress=False).computed == 0


def _chunk_bytes(path, name: str, index: int = 0) -> tuple[int, bytes]:
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info(index)
    with open(path, "rb") as handle:
        handle.seek(info.byte_offset)
        return info.byte_offset, handle.read(info.size)


def test_appending_ten_chunks_never_rewrites_the_first(tmp_path):
    path = tmp_path / "store.h5"
    names = ("features", "sha256", "stat", "text", "appends")
    with FeatureStore.create(path, "fp", 3) as store:
        store.append([RowInfo(f"/photos/{i}.jpg", f"{i}", i, i, bytes([i]) * 32) for i in range(5)], np.ones((5, 3)))
    first = {name: _chunk_bytes(path, name) for name in names}
    for k in range(1, 10):
        with FeatureStore.open(path, "fp", writable=True) as store:
            rows = [RowInfo(f"/photos/{k}-{i}.jpg", f"{k}-{i}", i, i, bytes([k]) * 32) for i in range(7)]
            store.append(rows, np.full((7, 3), k, np.float32))
        assert {name: _chunk_bytes(path, name) for name in names} == first, f"append {k} touched the first chunks"
    with FeatureStore.open(path, "fp") as store:
        assert len(store) == 5 + 9 * 7
        features = store.read_features(range(len(store)))
        assert store.rows()[5].path == "/photos/1-0.jpg"
    np.testing.assert_array_equal(features[:5], 1.0)
    np.testing.assert_array_equal(features[-7:], 9.0)
    with h5py.File(path, "r") as f:  # every append starts on a chunk boundary
        assert f["features"].chunks == (ROWS_PER_CHUNK, 3)
        assert f.attrs["appends"] == 10


def _flip(path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0x10]))


@pytest.mark.parametrize("dataset", ["features", "text"])
def test_a_flipped_byte_in_a_later_append_is_found_and_only_that_append_on_is_recomputed(tmp_path, capsys, dataset):
    ids, paths = _images(tmp_path, 12)
    extractor = _extractor()
    cache = FeatureCache(tmp_path / "cache.h5", extractor.fingerprint())
    cache.get_or_compute(extractor, ids, paths, progress=False, checkpoint_every=4)  # 3 appends of 4 rows
    with h5py.File(cache.path, "r") as f:
        record = f["appends"][1]
    start = int(np.frombuffer(record[:32].tobytes(), "<i8")[0 if dataset == "features" else 2])
    chunk = start // (ROWS_PER_CHUNK if dataset == "features" else 4096)
    offset, _ = _chunk_bytes(cache.path, dataset, chunk)
    _flip(cache.path, offset + 5)

    again = _extractor()
    table = cache.get_or_compute(again, ids, paths, progress=False, checkpoint_every=4)
    assert table.computed == 8  # appends 1 and 2; append 0 is still good
    np.testing.assert_allclose(table.features, _expected(12), atol=1e-4)
    err = capsys.readouterr().err
    assert "checksum" in err and cache.path in err and "recomput" in err
    assert cache.get_or_compute(_extractor(), ids, paths, progress=False).computed == 0


def test_update_keeps_no_features_in_memory_and_reads_them_back(tmp_path):
    ids, paths = _images(tmp_path, 6)
    extractor = _extractor()
    cache = FeatureCache(tmp_path / "cache.h5", extractor.fingerprint())
    result = cache.update(extractor, ids[:4], paths[:4], progress=False)
    assert (result.requested, result.cached, result.computed, result.rows) == (4, 0, 4, 4)
    result = cache.update(extractor, ids, paths, progress=False)
    assert (result.requested, result.cached, result.computed, result.rows) == (6, 4, 2, 2)
    assert cache.get_or_compute(_extractor(), ids, paths, progress=False).computed == 0
    with cache.open() as store:
        blocks = list(store.iter_features(range(6), block_rows=4))
    assert [rows for rows, _ in blocks] == [[0, 1, 2, 3], [4, 5]]
    np.testing.assert_allclose(np.concatenate([f for _, f in blocks]), _expected(6), atol=1e-4)


def test_a_changed_file_gets_a_new_row_and_the_last_row_wins(tmp_path):
    ids, paths = _images(tmp_path, 2)
    extractor = _extractor()
    cache = FeatureCache(tmp_path / "cache.h5", extractor.fingerprint())
    cache.get_or_compute(extractor, ids, paths, progress=False)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(paths[0])
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    table = cache.get_or_compute(extractor, ids, paths, progress=False)
    assert table.computed == 1
    np.testing.assert_allclose(table.features[0], [1, 2, 3], atol=1e-4)
    with cache.open() as store:
        assert [row.image_id for row in store.rows()] == ["img000", "img001", "img000"]
    assert set(cache.read()) == set(ids)
    np.testing.assert_allclose(cache.read()["img000"], [1, 2, 3], atol=1e-4)


def test_a_cache_another_process_is_writing_is_refused_not_rebuilt(tmp_path):
    ids, paths = _images(tmp_path, 2)
    extractor = _extractor()
    cache = FeatureCache(tmp_path / "cache.h5", extractor.fingerprint())
    cache.get_or_compute(extractor, ids, paths, progress=False)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import h5py, sys, time\nf = h5py.File({cache.path!r}, 'r+')\nprint('open', flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(DeviseError, match="open in another process"):
            cache.get_or_compute(_extractor(), ids, paths, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert cache.get_or_compute(_extractor(), ids, paths, progress=False).computed == 0


def test_a_file_asked_for_under_another_id_is_recorded_under_it(tmp_path):
    ids, paths = _images(tmp_path, 2)
    extractor = _extractor()
    cache = FeatureCache(tmp_path / "cache.h5", extractor.fingerprint())
    cache.get_or_compute(extractor, ids, paths, progress=False)
    table = cache.get_or_compute(_extractor(), ["a", "b"], paths, progress=False)
    assert table.computed == 0 and table.ids == ["a", "b"]
    assert sorted(cache.read()) == ["a", "b"]
    np.testing.assert_allclose(cache.read()["b"], _expected(2)[1], atol=1e-4)
    again = cache.get_or_compute(_extractor(), ["a", "b"], paths, progress=False)
    assert again.computed == 0
    with cache.open() as store:
        assert len(store) == 4  # one new row per renamed file, once

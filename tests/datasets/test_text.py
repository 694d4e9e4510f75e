"""Caption tokenisation and the vocabulary."""

from __future__ import annotations

import pytest

from devise.datasets.text import tokenize

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

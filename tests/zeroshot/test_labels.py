"""Label vectors from class names: whole names, word means, label-file overrides, missing names."""

from __future__ import annotations

import numpy as np
import pytest

from devise.embeddings.glove import WordVectors
from devise.errors import DeviseError
from devise.zeroshot import LabelVectors, MissingLabelVectorsError, label_vectors, random_label_vectors


@pytest.fixture
def words() -> WordVectors:
    table = {
        "dog": [1.0, 0.0, 0.0, 0.0],
        "polar": [0.0, 2.0, 0.0, 0.0],
        "bear": [0.0, 0.0, 2.0, 0.0],
        "polar_bear": [0.0, 0.0, 0.0, 3.0],  # a phrase with its own vector beats the word mean
        "sea": [3.0, 4.0, 0.0, 0.0],
        "lion": [0.0, 0.0, 0.0, 1.0],
        "cat": [0.0, 0.0, 0.0, 0.0],  # an all-zero row has no direction
        "Paris": [1.0, 1.0, 1.0, 1.0],  # word2vec-style cased entry
    }
    return WordVectors(list(table), np.array(list(table.values()), dtype=np.float32))


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_whole_name_first_then_lowercase(words):
    labels = label_vectors(["Dog", "polar_bear", "Paris"], words)
    assert labels.words == (("dog",), ("polar_bear",), ("Paris",))
    np.testing.assert_allclose(labels.vectors[0], [1, 0, 0, 0])
    np.testing.assert_allclose(labels.vectors[1], [0, 0, 0, 1])
    np.testing.assert_allclose(labels.vectors[2], [0.5, 0.5, 0.5, 0.5])
    assert labels.missing == ()


def test_mean_of_parts_split_on_space_underscore_and_dash(words):
    labels = label_vectors(["Polar Bear", "sea-lion", "sea_unicorn"], words)
    assert labels.words == (("polar", "bear"), ("sea", "lion"), ("sea",))
    assert labels.skipped_words == ((), (), ("unicorn",))
    # The mean of the raw word vectors, then scaled to unit length.
    np.testing.assert_allclose(labels.vectors[0], _unit([0, 1, 1, 0]), rtol=1e-6)
    np.testing.assert_allclose(labels.vectors[1], _unit([1.5, 2, 0, 0.5]), rtol=1e-6)
    np.testing.assert_allclose(labels.vectors[2], [0.6, 0.8, 0, 0], rtol=1e-6)
    assert labels.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(labels.vectors, axis=1), 1.0, rtol=1e-6)


def test_label_words_override_the_name(words):
    labels = label_vectors(
        ["n02084071", "n01", "n02"],
        words,
        label_words={"n02084071": "dog", "n01": "polar bear", "n02": ["sea", "lion"]},
    )
    assert labels.words == (("dog",), ("polar", "bear"), ("sea", "lion"))
    assert labels.missing == ()
    np.testing.assert_allclose(labels.vectors[0], [1, 0, 0, 0])


def test_missing_names_are_listed_not_raised(words):
    labels = label_vectors(["dog", "zebra", "cat", "okapi-thing"], words)
    assert labels.missing == ("zebra", "cat", "okapi-thing")
    assert labels.words[1] == ()
    assert labels.skipped_words[3] == ("okapi", "thing")
    np.testing.assert_array_equal(labels.vectors[1:], 0.0)
    with pytest.raises(MissingLabelVectorsError) as info:
        labels.raise_if_missing()
    message = str(info.value)
    assert "'zebra', 'cat', 'okapi-thing'" in message
    assert "label file" in message and "leave those classes out" in message
    assert isinstance(info.value, DeviseError)
    assert info.value.names == ("zebra", "cat", "okapi-thing")


def test_select_drops_or_reorders_classes(words):
    labels = label_vectors(["dog", "zebra", "sea lion"], words)
    kept = labels.select([n for n in labels.names if n not in labels.missing])
    assert isinstance(kept, LabelVectors)
    assert kept.names == ("dog", "sea lion") and kept.missing == ()
    kept.raise_if_missing()
    np.testing.assert_array_equal(kept.vectors[1], labels.vectors[2])
    with pytest.raises(KeyError, match="'wolf'"):
        labels.select(["wolf"])


def test_duplicate_names_are_rejected(words):
    with pytest.raises(ValueError, match="'dog' appears twice"):
        label_vectors(["dog", "dog"], words)


def test_random_label_vectors_are_seeded_unit_rows():
    a = random_label_vectors(5, 8, seed=3)
    assert a.shape == (5, 8) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(a, random_label_vectors(5, 8, seed=3))
    assert not np.allclose(a, random_label_vectors(5, 8, seed=4))

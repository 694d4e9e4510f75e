"""End to end on synthetic but learnable data: DeViSE transfers to unseen classes, the controls do not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from devise.embeddings.glove import WordVectors
from devise.errors import DeviseError
from devise.zeroshot import (
    ZEROSHOT_METHODS,
    MissingLabelVectorsError,
    format_zeroshot_table,
    label_vectors,
    run_zeroshot_methods,
)

NAMES = [f"class{i:02d}" for i in range(12)]
UNSEEN = ["class00", "class05", "class09"]
KEYS = [f"{setting}_hit@{k}" for setting in ("unseen", "all", "seen") for k in (1, 2, 5, 10)]


def _synthetic(seed: int = 0, per_class: int = 30, noise: float = 0.3):
    """12 classes whose 16-d word vectors each combine two of 6 shared 'attributes'.

    Unseen classes then share attributes with seen ones, as real class names
    share meaning, so a map learned on seen classes can place them. Image
    features (32-d) are a fixed random linear function of the class's word
    vector plus noise, so the map back to the word space is learnable.
    """
    rng = np.random.default_rng(seed)
    attributes = rng.standard_normal((6, 16))
    pairs = [(a, b) for a in range(6) for b in range(a + 1, 6)]
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[: len(NAMES)]]
    vectors = np.stack([attributes[a] + attributes[b] + 0.3 * rng.standard_normal(16) for a, b in chosen])
    mixing = rng.standard_normal((32, 16))
    labels = np.repeat(np.arange(len(NAMES)), per_class)
    features = vectors[labels] @ mixing.T + noise * rng.standard_normal((len(labels), 32))
    words = WordVectors(NAMES, vectors.astype(np.float32))
    unseen_ids = [NAMES.index(name) for name in UNSEEN]
    is_test = (np.random.default_rng(100 + seed).random(len(labels)) < 0.34) | np.isin(labels, unseen_ids)
    return words, features.astype(np.float32), labels, is_test


@pytest.fixture(scope="module")
def result():
    words, features, labels, is_test = _synthetic()
    labels_vectors = label_vectors(NAMES, words)
    return run_zeroshot_methods(
        features[~is_test],
        labels[~is_test],
        features[is_test],
        labels[is_test],
        NAMES,
        labels_vectors,
        UNSEEN,
        seed=0,
        epochs=50,
    )


def test_result_structure(result):
    assert list(result) == ["methods", "chance", "per_class_hit@1"]
    assert list(result["methods"]) == list(ZEROSHOT_METHODS) == ["devise", "conse", "softmax", "random_vectors"]
    for metrics in result["methods"].values():
        assert list(metrics) == KEYS
        assert all(0.0 <= value <= 100.0 for value in metrics.values())
    assert list(result["chance"]) == KEYS
    assert result["chance"]["unseen_hit@1"] == pytest.approx(100 / 3)
    assert result["chance"]["all_hit@1"] == pytest.approx(100 / 12)
    assert result["chance"]["seen_hit@5"] == pytest.approx(500 / 12)
    for per_class in result["per_class_hit@1"].values():
        assert list(per_class) == NAMES  # every class has test images here


def test_word_vectors_carry_unseen_classes(result):
    chance = result["chance"]["unseen_hit@1"]
    methods = result["methods"]
    # DeViSE places unseen images near their class names' vectors.
    assert methods["devise"]["unseen_hit@1"] >= 90.0
    # Trained against random label vectors, the same model learns the seen
    # classes just as well but is at chance on unseen ones (3 classes:
    # 33.3% means one of three is right).
    assert methods["random_vectors"]["seen_hit@1"] >= 90.0
    assert methods["random_vectors"]["unseen_hit@1"] <= chance + 15.0
    assert methods["devise"]["unseen_hit@1"] >= methods["random_vectors"]["unseen_hit@1"] + 40.0
    # ConSE transfers through the softmax's probabilities.
    assert methods["conse"]["unseen_hit@1"] >= chance + 20.0
    # The softmax cannot name a class it never saw: every unseen label ties at -inf.
    assert methods["softmax"]["unseen_hit@1"] == 0.0
    assert methods["softmax"]["unseen_hit@2"] == 0.0
    assert methods["softmax"]["all_hit@10"] == 0.0
    assert methods["softmax"]["seen_hit@1"] >= 90.0
    # Per class, unseen classes are judged among unseen labels: they average back.
    devise_unseen = [result["per_class_hit@1"]["devise"][name] for name in UNSEEN]
    assert np.mean(devise_unseen) == pytest.approx(methods["devise"]["unseen_hit@1"], abs=5.0)
    assert all(result["per_class_hit@1"]["softmax"][name] == 0.0 for name in UNSEEN)


def test_format_zeroshot_table(result):
    table = format_zeroshot_table(result)
    lines = table.splitlines()
    assert lines[0].startswith("| method") and "unseen images, unseen labels hit@1/2/5/10" in lines[0]
    assert [line.split("|")[1].strip() for line in lines[2:]] == [*ZEROSHOT_METHODS, "chance"]
    assert "| chance         | 33.3 / 66.7 / 100.0 / 100.0" in table
    assert len({len(line) for line in lines}) == 1  # columns line up
    empty = {
        "methods": {"devise": dict.fromkeys(KEYS, float("nan"))},
        "chance": dict.fromkeys(KEYS, 50.0),
        "per_class_hit@1": {},
    }
    assert "| devise | - / - / - / -" in format_zeroshot_table(empty)


def test_methods_subset_and_input_checks():
    words, features, labels, is_test = _synthetic(per_class=6)
    vectors = label_vectors(NAMES, words).vectors
    train_x, train_y = features[~is_test], labels[~is_test]
    test_x, test_y = features[is_test], labels[is_test]
    few = run_zeroshot_methods(train_x, train_y, test_x, test_y, NAMES, vectors, UNSEEN, epochs=1, methods=["softmax"])
    assert list(few["methods"]) == ["softmax"] and not math.isnan(few["methods"]["softmax"]["seen_hit@1"])

    with pytest.raises(DeviseError, match="did you mean 'class05'"):
        run_zeroshot_methods(train_x, train_y, test_x, test_y, NAMES, vectors, ["class5"], epochs=1)
    with pytest.raises(DeviseError, match="zero-shot leak: 6 training examples have the unseen class 'class00'"):
        run_zeroshot_methods(features, labels, test_x, test_y, NAMES, vectors, UNSEEN, epochs=1)
    with pytest.raises(DeviseError, match="'class01' have no training examples"):
        keep = train_y != 1
        run_zeroshot_methods(train_x[keep], train_y[keep], test_x, test_y, NAMES, vectors, UNSEEN, epochs=1)
    zeroed = vectors.copy()
    zeroed[5] = 0
    with pytest.raises(MissingLabelVectorsError, match="'class05'"):
        run_zeroshot_methods(train_x, train_y, test_x, test_y, NAMES, zeroed, UNSEEN, epochs=1)
    with pytest.raises(ValueError, match="unknown method"):
        run_zeroshot_methods(train_x, train_y, test_x, test_y, NAMES, vectors, UNSEEN, methods=["svm"])

"""The zero-shot methods on tiny features: the loss, scoring, ConSE's mixing, the control."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from devise.zeroshot import (
    ConSE,
    DeViSEClassifier,
    LabelHingeRankLoss,
    SoftmaxClassifier,
    random_label_vectors,
    random_vectors_control,
)


def _naive_label_hinge(scores, labels, margin):
    losses = []
    for row, y in zip(scores.tolist(), labels.tolist()):
        total = 0.0
        for j, s in enumerate(row):
            if j != y:
                total += max(0.0, margin - row[y] + s)
        losses.append(total)
    return float(np.mean(losses))


def test_label_hinge_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    scores = rng.normal(scale=0.2, size=(8, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=8)
    loss = LabelHingeRankLoss(margin=0.1)
    got = float(keras.ops.convert_to_numpy(loss(labels[:, None], scores)))
    assert got == pytest.approx(_naive_label_hinge(scores, labels, 0.1), rel=1e-5)
    # Perfectly separated by more than the margin: no loss.
    assert float(keras.ops.convert_to_numpy(loss(np.array([1]), np.array([[0.0, 0.5, 0.3]])))) == 0.0


def test_label_hinge_config_round_trip():
    loss = LabelHingeRankLoss(margin=0.25)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, LabelHingeRankLoss) and again.margin == 0.25
    with pytest.raises(ValueError, match="margin"):
        LabelHingeRankLoss(margin=-1)


@pytest.fixture(scope="module")
def tiny():
    """4 classes in 6-d label space, 10-d features that are a linear function of the label vector."""
    rng = np.random.default_rng(1)
    vectors = random_label_vectors(4, 6, seed=1)
    labels = np.repeat(np.arange(4), 12)
    mixing = rng.standard_normal((10, 6))
    features = (vectors[labels] @ mixing.T + 0.05 * rng.standard_normal((48, 10))).astype(np.float32)
    return vectors, features, labels


def test_devise_scores_are_cosines_for_any_candidates(tiny):
    vectors, features, labels = tiny
    train = labels < 3
    devise = DeViSEClassifier(vectors, epochs=20, batch_size=16).fit(features[train], labels[train])
    assert devise.train_classes.tolist() == [0, 1, 2]
    assert devise.history["loss"][-1] < devise.history["loss"][0]
    embedded = devise.embed(features)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, rtol=1e-5)
    full = devise.scores(features)
    assert full.shape == (48, 4) and np.all(np.abs(full) <= 1.0 + 1e-6)
    np.testing.assert_allclose(full, embedded @ vectors.T, atol=1e-6)
    np.testing.assert_allclose(devise.scores(features, candidates=[3, 1]), full[:, [3, 1]])
    # It learned the training classes.
    assert np.mean(full[train][:, :3].argmax(axis=1) == labels[train]) > 0.9


def test_devise_training_is_deterministic(tiny):
    vectors, features, labels = tiny
    a = DeViSEClassifier(vectors, epochs=3, batch_size=8, seed=4).fit(features, labels).scores(features)
    b = DeViSEClassifier(vectors, epochs=3, batch_size=8, seed=4).fit(features, labels).scores(features)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_devise_rejects_bad_input(tiny):
    vectors, features, labels = tiny
    with pytest.raises(RuntimeError, match="fit"):
        DeViSEClassifier(vectors).scores(features)
    with pytest.raises(ValueError, match="optimizer"):
        DeViSEClassifier(vectors, optimizer="lbfgs")
    with pytest.raises(ValueError, match=r"class ids in \[0, 4\)"):
        DeViSEClassifier(vectors, epochs=1).fit(features, labels + 1)
    with pytest.raises(ValueError, match="at least 2 training classes"):
        DeViSEClassifier(vectors, epochs=1).fit(features[:12], labels[:12])
    zeroed = vectors.copy()
    zeroed[2] = 0
    with pytest.raises(ValueError, match=r"\[2\] have an all-zero label vector"):
        DeViSEClassifier(zeroed, epochs=1).fit(features, labels)
    with pytest.raises(ValueError, match="not in the training classes"):
        DeViSEClassifier(vectors, epochs=1).fit(features, labels, classes=[0, 1])


def test_softmax_cannot_score_unseen_classes(tiny):
    _, features, labels = tiny
    train = labels < 3
    softmax = SoftmaxClassifier(4, epochs=20, batch_size=16).fit(features[train], labels[train])
    probabilities = softmax.predict_proba(features)
    assert probabilities.shape == (48, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    scores = softmax.scores(features, candidates=[3, 0, 2])
    assert np.all(scores[:, 0] == -np.inf)
    np.testing.assert_allclose(np.exp(scores[:, 1:]), probabilities[:, [0, 2]], rtol=1e-4)
    assert np.mean(probabilities[train].argmax(axis=1) == labels[train]) > 0.9


def test_conse_mixes_the_top_t_label_vectors(tiny):
    vectors, features, labels = tiny
    train = labels < 3
    softmax = SoftmaxClassifier(4, epochs=5, batch_size=16).fit(features[train], labels[train])
    conse = ConSE(softmax, vectors, top_t=2)
    probabilities = softmax.predict_proba(features)
    expected = []
    for p in probabilities:
        top = sorted(range(3), key=lambda i: -p[i])[:2]
        mixed = sum(p[i] * vectors[softmax.train_classes[i]] for i in top) / sum(p[i] for i in top)
        expected.append(mixed / np.linalg.norm(mixed))
    np.testing.assert_allclose(conse.embed(features), np.array(expected), atol=1e-5)
    np.testing.assert_allclose(conse.scores(features, [3]), np.array(expected) @ vectors[[3]].T, atol=1e-5)
    # T larger than the number of training classes uses them all.
    every = ConSE(softmax, vectors, top_t=10).embed(features)
    mixed = probabilities @ vectors[:3]
    np.testing.assert_allclose(every, mixed / np.linalg.norm(mixed, axis=1, keepdims=True), atol=1e-5)


def test_conse_fit_trains_its_softmax(tiny):
    vectors, features, labels = tiny
    conse = ConSE(SoftmaxClassifier(4, epochs=2), vectors).fit(features, labels)
    assert conse.softmax.train_classes.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="5 label vectors for a softmax over 4"):
        ConSE(SoftmaxClassifier(4), random_label_vectors(5, 6))


def test_random_vectors_control_uses_seeded_random_vectors():
    control = random_vectors_control(5, 7, seed=2, epochs=1)
    assert isinstance(control, DeViSEClassifier)
    np.testing.assert_allclose(control.label_vectors, random_label_vectors(5, 7, seed=2), rtol=1e-6)
    assert control.seed == 2 and control.epochs == 1

"""HingeRankLoss: every variant against plain loops, identical captions, sampling statistics."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from devise.losses import HingeRankLoss

DIRECTIONS = ["both", "image_to_text", "text_to_image"]


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _pred(image, text):
    return {"image": image, "text": text}


def _dot(a, b):
    return float(sum(float(x) * float(y) for x, y in zip(a, b)))


def _ids(y_true, k):
    """The ids of pair ``k`` as a tuple, for either shape of ``y_true``."""
    row = y_true[k]
    return tuple(int(v) for v in np.atleast_1d(row))


def _is_negative(y_true, k, j):
    return all(a != b for a, b in zip(_ids(y_true, k), _ids(y_true, j)))


def naive_hinges(image, text, y_true, margin):
    """Per pair k: (image->text hinges, text->image hinges) over its negatives, by plain loops."""
    n = len(image)
    out = []
    for k in range(n):
        pos = _dot(image[k], text[k])
        i2t, t2i = [], []
        for j in range(n):
            if not _is_negative(y_true, k, j):
                continue
            i2t.append(max(0.0, margin - pos + _dot(image[k], text[j])))
            t2i.append(max(0.0, margin - pos + _dot(image[j], text[k])))
        out.append((i2t, t2i))
    return out


def _combine(hinges, directions, pick):
    total = 0.0
    for i2t, t2i in hinges:
        if directions in ("both", "image_to_text"):
            total += pick(i2t)
        if directions in ("both", "text_to_image"):
            total += pick(t2i)
    return total / len(hinges)


def naive_loss(image, text, y_true, margin, negatives, directions):
    pick = {"all": sum, "hardest": lambda h: max(h, default=0.0)}[negatives]
    return _combine(naive_hinges(image, text, y_true, margin), directions, pick)


def naive_expected_sampled(image, text, y_true, margin, directions):
    """The expected sampled loss: each query pays the mean hinge of its violators (0 if none)."""

    def mean_violator(h):
        violators = [x for x in h if x > 0]
        return sum(violators) / len(violators) if violators else 0.0

    return _combine(naive_hinges(image, text, y_true, margin), directions, mean_violator)


# Repeated images share an image id; pairs 2 and 5 (and 6 and 8) carry the
# same caption string on different images.
IMAGE_IDS = np.array([0, 1, 1, 2, 3, 3, 3, 4, 5])
CAPTION_IDS = np.array([0, 1, 2, 3, 4, 2, 5, 6, 5])
Y_TRUE = {"image_ids": IMAGE_IDS, "image_and_caption_ids": np.stack([IMAGE_IDS, CAPTION_IDS], axis=1)}


@pytest.mark.parametrize("y_true_kind", sorted(Y_TRUE))
@pytest.mark.parametrize("negatives", ["all", "hardest"])
@pytest.mark.parametrize("directions", DIRECTIONS)
def test_matches_naive_loop(negatives, directions, y_true_kind):
    rng = np.random.default_rng(0)
    image, text = _unit(rng, 9, 6), _unit(rng, 9, 6)
    y_true = Y_TRUE[y_true_kind]
    loss = HingeRankLoss(margin=0.3, negatives=negatives, directions=directions)
    got = float(loss(y_true, _pred(image, text)))
    want = naive_loss(image, text, y_true, 0.3, negatives, directions)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_caption_ids_remove_negatives():
    # The case the caption ids exist for: the two kinds of y_true disagree.
    rng = np.random.default_rng(1)
    image, text = _unit(rng, 9, 6), _unit(rng, 9, 6)
    loss = HingeRankLoss(margin=0.3)
    with_captions = float(loss(Y_TRUE["image_and_caption_ids"], _pred(image, text)))
    images_only = float(loss(IMAGE_IDS, _pred(image, text)))
    assert with_captions < images_only


def test_identical_captions_on_different_images_are_not_negatives():
    # Two images both captioned "a dog": each caption fits both images.
    v = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    t = np.array([[0.8, 0.6], [0.8, 0.6]], np.float32)  # the same caption embedding twice
    loss = HingeRankLoss(margin=0.1)
    assert float(loss(np.array([[0, 7], [1, 7]]), _pred(v, t))) == 0.0
    assert float(loss(np.array([[0, 7], [1, 8]]), _pred(v, t))) > 0.0
    assert float(loss(np.array([0, 1]), _pred(v, t))) > 0.0


def test_y_true_column_vector_is_image_ids():
    rng = np.random.default_rng(2)
    image, text = _unit(rng, 9, 6), _unit(rng, 9, 6)
    loss = HingeRankLoss(margin=0.3)
    assert float(loss(IMAGE_IDS[:, None], _pred(image, text))) == pytest.approx(
        float(loss(IMAGE_IDS, _pred(image, text))), rel=1e-6
    )


def test_zero_when_matching_pairs_win_by_the_margin():
    eye = np.eye(4, dtype=np.float32)
    for negatives in ("all", "hardest", "sampled"):
        loss = HingeRankLoss(margin=0.5, negatives=negatives, seed=0)
        assert float(loss(np.arange(4), _pred(eye, eye))) == 0.0
        # Swap two captions: now each of those pairs violates the margin.
        assert float(loss(np.arange(4), _pred(eye, eye[[1, 0, 2, 3]]))) > 0.0


def test_same_group_is_not_a_negative():
    v = np.tile(np.array([[1.0, 0.0]], np.float32), (2, 1))
    assert float(HingeRankLoss(margin=0.1)(np.array([7, 7]), _pred(v, v))) == 0.0
    assert float(HingeRankLoss(margin=0.1)(np.array([7, 8]), _pred(v, v))) == pytest.approx(0.2)


# -- negatives="sampled" -------------------------------------------------------


def _angles(*degrees):
    rad = np.deg2rad(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def test_sampled_with_one_violator_pays_exactly_its_hinge():
    # Three pairs on a circle, every caption on its image. Only image 0 and
    # caption 1 are closer than the margin (cos 20deg - cos 0 + 0.1 > 0);
    # the other negatives are 90deg or more apart.
    image = _angles(0, 20, 120)
    text = image.copy()
    hinge = 0.1 - 1.0 + float(np.cos(np.deg2rad(20)))
    assert hinge > 0
    for directions, want in (("image_to_text", 2 * hinge), ("text_to_image", 2 * hinge), ("both", 4 * hinge)):
        loss = HingeRankLoss(margin=0.1, negatives="sampled", directions=directions, seed=3)
        for _ in range(5):  # whatever the random order, the one violator is the one paid for
            assert float(loss(np.arange(3), _pred(image, text))) == pytest.approx(want / 3, rel=1e-5)


def test_sampled_without_violators_is_zero():
    image = _angles(0, 120, 240)
    loss = HingeRankLoss(margin=0.2, negatives="sampled", seed=0)
    for _ in range(5):
        assert float(loss(np.arange(3), _pred(image, image))) == 0.0


@pytest.mark.parametrize("y_true_kind", sorted(Y_TRUE))
@pytest.mark.parametrize("directions", DIRECTIONS)
def test_sampled_mean_over_draws_is_the_mean_violator_hinge(directions, y_true_kind):
    rng = np.random.default_rng(4)
    image, text = _unit(rng, 9, 3), _unit(rng, 9, 3)
    y_true = Y_TRUE[y_true_kind]
    hinges = naive_hinges(image, text, y_true, 0.5)
    # The test means something only if queries choose among several violators.
    assert sum(len([x for x in h if x > 0]) > 1 for pair in hinges for h in pair) >= 5

    loss = HingeRankLoss(margin=0.5, negatives="sampled", directions=directions, seed=0)
    draw = tf.function(lambda: loss(y_true, _pred(image, text)))  # one trace, fresh keys per call
    draws = np.array([float(draw()) for _ in range(2000)])
    want = naive_expected_sampled(image, text, y_true, 0.5, directions)
    assert len(np.unique(draws.round(6))) > 10  # it is random ...
    # ... and unbiased: 2000 draws put the mean within about 4 standard errors.
    assert draws.mean() == pytest.approx(want, abs=4 * draws.std() / np.sqrt(len(draws)) + 1e-6)
    # No draw pays more than the hardest negatives would.
    assert draws.max() <= naive_loss(image, text, y_true, 0.5, "hardest", directions) + 1e-5


def test_sampled_seed_makes_draws_repeatable():
    rng = np.random.default_rng(5)
    image, text = _unit(rng, 9, 3), _unit(rng, 9, 3)

    def draws(seed):
        loss = HingeRankLoss(margin=0.5, negatives="sampled", seed=seed)
        return [float(loss(IMAGE_IDS, _pred(image, text))) for _ in range(5)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


@pytest.mark.parametrize("negatives", ["all", "hardest", "sampled"])
def test_gradient_flows_to_both_embeddings(negatives):
    rng = np.random.default_rng(6)
    image = tf.Variable(_unit(rng, 9, 3))
    text = tf.Variable(_unit(rng, 9, 3))
    loss = HingeRankLoss(margin=0.5, negatives=negatives, seed=0)
    with tf.GradientTape() as tape:
        value = loss(Y_TRUE["image_and_caption_ids"], _pred(image, text))
    grad_image, grad_text = tape.gradient(value, [image, text])
    assert float(value) > 0
    for grad in (grad_image, grad_text):
        assert grad is not None and np.isfinite(grad.numpy()).all() and np.abs(grad.numpy()).sum() > 0


def test_sampled_gradient_is_the_chosen_violators():
    # One violator per direction: the gradient is that of its hinge alone.
    image = tf.Variable(_angles(0, 20, 120))
    text = tf.Variable(_angles(0, 20, 120))
    ids = np.arange(3)
    with tf.GradientTape(persistent=True) as tape:
        sampled = HingeRankLoss(margin=0.1, negatives="sampled", seed=0)(ids, _pred(image, text))
        summed = HingeRankLoss(margin=0.1, negatives="all")(ids, _pred(image, text))
    for var in (image, text):
        np.testing.assert_allclose(tape.gradient(sampled, var), tape.gradient(summed, var), atol=1e-6)


def test_works_in_a_traced_function_with_unknown_batch_size():
    spec = tf.TensorSpec([None, 3], tf.float32)
    for negatives in ("all", "hardest", "sampled"):
        loss = HingeRankLoss(margin=0.5, negatives=negatives, seed=0)
        fn = tf.function(
            lambda ids, v, t, loss=loss: loss(ids, _pred(v, t)),
            input_signature=[tf.TensorSpec([None, 2], tf.int32), spec, spec],
        )
        rng = np.random.default_rng(7)
        for n in (4, 9):
            image, text = _unit(rng, n, 3), _unit(rng, n, 3)
            ids = np.stack([np.arange(n), np.arange(n)], axis=1).astype(np.int32)
            got = float(fn(ids, image, text))
            if negatives != "sampled":
                want = naive_loss(image, text, ids, 0.5, negatives, "both")
                assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
            else:
                assert 0.0 <= got <= naive_loss(image, text, ids, 0.5, "hardest", "both") + 1e-5


# -- arguments and config --------------------------------------------------------


def test_invalid_arguments():
    with pytest.raises(ValueError, match="negatives"):
        HingeRankLoss(negatives="some")
    with pytest.raises(ValueError, match="directions"):
        HingeRankLoss(directions="up")
    with pytest.raises(ValueError, match="margin"):
        HingeRankLoss(margin=-0.1)


def test_wrong_inputs_say_what_is_expected():
    v = np.eye(3, dtype=np.float32)
    loss = HingeRankLoss()
    with pytest.raises(ValueError, match=r'"image": \(B, D\), "text": \(B, D\)'):
        loss(np.arange(3), np.concatenate([v, v], axis=1))  # the old concatenated form
    with pytest.raises(ValueError, match=r"keys \['image', 'txt'\]"):
        loss(np.arange(3), {"image": v, "txt": v})
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        loss(np.zeros((3, 3)), _pred(v, v))


@pytest.mark.parametrize("negatives", ["all", "hardest", "sampled"])
def test_config_round_trip(negatives):
    loss = HingeRankLoss(margin=0.2, negatives=negatives, directions="text_to_image", seed=11)
    config = loss.get_config()
    again = HingeRankLoss.from_config(config)
    assert again.get_config() == config
    assert (again.margin, again.negatives, again.directions, again.seed) == (0.2, negatives, "text_to_image", 11)
    # Through Keras' own serialization (the registered name, JSON-able config).
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, HingeRankLoss) and restored.get_config() == config
    if negatives == "sampled":
        rng = np.random.default_rng(8)
        image, text = _unit(rng, 9, 3), _unit(rng, 9, 3)
        assert float(again(IMAGE_IDS, _pred(image, text))) == float(loss(IMAGE_IDS, _pred(image, text)))

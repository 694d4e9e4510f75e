import numpy as np
import pytest

from devise.losses import HingeRankLoss


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def naive_hinge_rank(image, text, groups, margin, negatives, directions):
    """Plain-loop reference: one pair at a time, scores as explicit dot products."""
    n = len(image)
    per_pair = []
    for k in range(n):
        pos = float(sum(a * b for a, b in zip(image[k], text[k])))
        i2t, t2i = [], []
        for j in range(n):
            if groups[j] == groups[k]:
                continue
            s_img_k_txt_j = float(sum(a * b for a, b in zip(image[k], text[j])))
            s_img_j_txt_k = float(sum(a * b for a, b in zip(image[j], text[k])))
            i2t.append(max(0.0, margin - pos + s_img_k_txt_j))
            t2i.append(max(0.0, margin - pos + s_img_j_txt_k))
        pick = max if negatives == "hardest" else sum
        total = 0.0
        if directions in ("both", "image_to_text"):
            total += pick(i2t) if i2t else 0.0
        if directions in ("both", "text_to_image"):
            total += pick(t2i) if t2i else 0.0
        per_pair.append(total)
    return sum(per_pair) / n


@pytest.mark.parametrize("negatives", ["all", "hardest"])
@pytest.mark.parametrize("directions", ["both", "image_to_text", "text_to_image"])
def test_matches_naive_loop(negatives, directions):
    rng = np.random.default_rng(0)
    image, text = _unit(rng, 9, 6), _unit(rng, 9, 6)
    groups = np.array([0, 1, 1, 2, 3, 3, 3, 4, 5])  # repeated images share a group
    loss = HingeRankLoss(margin=0.3, negatives=negatives, directions=directions)
    got = float(loss(groups, np.concatenate([image, text], axis=1)))
    want = naive_hinge_rank(image, text, groups, 0.3, negatives, directions)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_zero_when_matching_pairs_win_by_the_margin():
    eye = np.eye(4, dtype=np.float32)
    loss = HingeRankLoss(margin=0.5)
    assert float(loss(np.arange(4), np.concatenate([eye, eye], axis=1))) == 0.0
    # Swap two captions: now each of those pairs violates the margin.
    swapped = eye[[1, 0, 2, 3]]
    assert float(loss(np.arange(4), np.concatenate([eye, swapped], axis=1))) > 0.0


def test_same_group_is_not_a_negative():
    v = np.tile(np.array([[1.0, 0.0]], np.float32), (2, 1))
    y_pred = np.concatenate([v, v], axis=1)
    assert float(HingeRankLoss(margin=0.1)(np.array([7, 7]), y_pred)) == 0.0
    assert float(HingeRankLoss(margin=0.1)(np.array([7, 8]), y_pred)) == pytest.approx(0.2)


def test_invalid_arguments_and_config_round_trip():
    with pytest.raises(ValueError, match="negatives"):
        HingeRankLoss(negatives="some")
    with pytest.raises(ValueError, match="directions"):
        HingeRankLoss(directions="up")
    loss = HingeRankLoss(margin=0.2, negatives="hardest", directions="text_to_image")
    again = HingeRankLoss.from_config(loss.get_config())
    assert (again.margin, again.negatives, again.directions) == (0.2, "hardest", "text_to_image")

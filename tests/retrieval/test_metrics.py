import itertools
import math

import numpy as np
import pytest

from devise.retrieval import chance_levels, retrieval_metrics


def naive_metrics(image, text, owner, ks=(1, 5, 10)):
    """Reference by sorting every query's full ranking (ties against the query)."""
    t2i_ranks = []
    for j, caption in enumerate(text):
        scores = [float(np.dot(caption, im)) for im in image]
        true = scores[owner[j]]
        # Stable sort with the true item placed after its ties.
        order = sorted(range(len(image)), key=lambda i: (-scores[i], i == owner[j]))
        t2i_ranks.append(order.index(owner[j]))
        assert t2i_ranks[-1] == sum(1 for i, s in enumerate(scores) if i != owner[j] and s >= true)
    i2t_ranks = []
    for i, im in enumerate(image):
        scores = [float(np.dot(im, c)) for c in text]
        mine = {j for j in range(len(text)) if owner[j] == i}
        if not mine:
            continue
        order = sorted(range(len(text)), key=lambda j: (-scores[j], j in mine))
        i2t_ranks.append(min(order.index(j) for j in mine) - 0)
        # Own captions placed above the best one would not count; there are none.
    out = {}
    for name, ranks in (("text_to_image", t2i_ranks), ("image_to_text", i2t_ranks)):
        r = np.array(ranks)
        d = {f"R@{k}": 100.0 * np.mean(r < k) for k in ks}
        d["medr"] = math.floor(np.median(r)) + 1
        d["meanr"] = r.mean() + 1
        d["queries"] = len(r)
        out[name] = d
    return out


def test_matches_naive_reference_with_uneven_captions():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(30, 8))
    owner = np.concatenate([np.repeat(np.arange(30), 3), rng.integers(0, 30, size=17)])
    text = image[owner] + rng.normal(scale=1.5, size=(len(owner), 8))
    got = retrieval_metrics(image, text, owner)
    want = naive_metrics(image, text, owner)
    for direction in want:
        for key, value in want[direction].items():
            assert got[direction][key] == pytest.approx(value), (direction, key)


def test_perfect_and_collapsed_models():
    eye = np.eye(5)
    owner = np.repeat(np.arange(5), 2)
    perfect = retrieval_metrics(eye, eye[owner], owner)
    assert perfect["text_to_image"]["R@1"] == 100.0 and perfect["image_to_text"]["medr"] == 1
    flat = np.ones((5, 3))
    collapsed = retrieval_metrics(flat, np.ones((10, 3)), owner)
    assert collapsed["text_to_image"]["R@1"] == 0.0
    assert collapsed["image_to_text"]["R@1"] == 0.0


def test_image_without_caption_is_not_a_query():
    image = np.eye(3)
    m = retrieval_metrics(image, image[[0, 2]], [0, 2])
    assert m["image_to_text"]["queries"] == 2


def test_chance_levels_match_pascal_protocol_and_simulation():
    chance = chance_levels(100, [5] * 100)
    t2i, i2t = chance["text_to_image"], chance["image_to_text"]
    assert (t2i["R@1"], t2i["R@5"], t2i["R@10"]) == (1.0, 5.0, 10.0)
    assert i2t["R@1"] == pytest.approx(1.0)
    assert i2t["R@5"] == pytest.approx(4.9, abs=0.05)
    assert i2t["R@10"] == pytest.approx(9.6, abs=0.15)
    # Against exhaustive enumeration on a tiny case: 4 captions, image owns 2.
    ranks = []
    for perm in itertools.permutations(range(4)):
        ranks.append(min(perm.index(0), perm.index(1)))
    small = chance_levels(2, [2, 2])["image_to_text"]
    assert small["R@1"] == pytest.approx(100 * np.mean(np.array(ranks) < 1))
    assert small["meanr"] == pytest.approx(np.mean(ranks) + 1)
    # Monte Carlo for a mixed number of captions per image.
    rng = np.random.default_rng(0)
    counts = [1, 3, 5, 2]
    owner = np.repeat(np.arange(4), counts)
    sims = []
    for _ in range(4000):
        m = retrieval_metrics(rng.normal(size=(4, 4)), rng.normal(size=(len(owner), 4)), owner)
        sims.append(m["image_to_text"]["R@1"])
    assert chance_levels(4, counts)["image_to_text"]["R@1"] == pytest.approx(np.mean(sims), abs=2.0)

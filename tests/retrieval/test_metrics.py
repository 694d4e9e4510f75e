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


# -- identical captions on several images (caption_keys) ----------------------


def naive_keyed_ranks(image, text, owner, keys):
    """Reference ranks by plain loops, following the caption_keys rule literally."""
    t2i = []
    for j, caption in enumerate(text):
        scores = [float(np.dot(caption, im)) for im in image]
        correct = {owner[c] for c in range(len(text)) if keys[c] == keys[j]}
        best = max(scores[i] for i in correct)
        t2i.append(sum(1 for i, s in enumerate(scores) if i not in correct and s >= best))
    i2t = []
    for i, im in enumerate(image):
        mine = {keys[c] for c in range(len(text)) if owner[c] == i}
        if not mine:
            i2t.append(-1)
            continue
        scores = [float(np.dot(im, c)) for c in text]
        correct = {c for c in range(len(text)) if keys[c] in mine}
        best = max(scores[c] for c in correct)
        i2t.append(sum(1 for c, s in enumerate(scores) if c not in correct and s >= best))
    return np.array(t2i), np.array(i2t)


def _shared_caption_case(seed=5, n_images=25):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n_images, 6)).astype(np.float32)
    owner = np.concatenate([np.repeat(np.arange(n_images - 1), 2), rng.integers(0, n_images - 1, size=13)])
    text = (image[owner] + rng.normal(scale=1.2, size=(len(owner), 6))).astype(np.float32)
    # Few distinct keys, so most keys are shared by several images; some unique ones too.
    keys = [f"k{v}" for v in rng.integers(0, 12, size=len(owner))]
    keys[:5] = [f"unique{j}" for j in range(5)]
    return image, text, owner, keys  # the last image has no caption


@pytest.mark.parametrize("block", [1, 7, 4096])
def test_keyed_ranks_match_naive_loops(block):
    from devise.retrieval.metrics import image_to_text_ranks, text_to_image_ranks

    image, text, owner, keys = _shared_caption_case()
    want_t2i, want_i2t = naive_keyed_ranks(image, text, owner, keys)
    got_t2i = text_to_image_ranks(image, text, owner, caption_keys=keys, block=block)
    got_i2t = image_to_text_ranks(image, text, owner, caption_keys=keys, block=block)
    np.testing.assert_array_equal(got_t2i, want_t2i)
    np.testing.assert_array_equal(got_i2t, want_i2t)
    assert got_i2t[-1] == -1


def test_keyed_metrics_match_naive_summary():
    image, text, owner, keys = _shared_caption_case(seed=11)
    want_t2i, want_i2t = naive_keyed_ranks(image, text, owner, keys)
    got = retrieval_metrics(image, text, owner, caption_keys=keys, ks=(1, 3, 10))
    for name, ranks in (("text_to_image", want_t2i), ("image_to_text", want_i2t[want_i2t >= 0])):
        for k in (1, 3, 10):
            assert got[name][f"R@{k}"] == pytest.approx(100.0 * np.mean(ranks < k))
        assert got[name]["medr"] == math.floor(np.median(ranks)) + 1
        assert got[name]["meanr"] == pytest.approx(ranks.mean() + 1)
        assert got[name]["queries"] == len(ranks)


def test_unique_keys_change_nothing():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(30, 8))
    owner = np.concatenate([np.repeat(np.arange(30), 3), rng.integers(0, 30, size=17)])
    text = image[owner] + rng.normal(scale=1.5, size=(len(owner), 8))
    # Keys shared only within one image are as good as no keys.
    keys = [f"img{o}-{j % 2}" for j, o in enumerate(owner)]
    assert retrieval_metrics(image, text, owner, caption_keys=keys) == retrieval_metrics(image, text, owner)


def test_identical_caption_on_two_images_needs_keys_for_a_perfect_score():
    # Images 0 and 1 are both captioned "a dog"; image 2 is "a cat".
    # A perfect model embeds "a dog" between the two dog images.
    image = np.array([[1.0, 0.1, 0.0], [1.0, -0.1, 0.0], [0.0, 0.0, 1.0]])
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    captions = ["a dog", "a dog", "a cat"]
    owner = np.array([0, 1, 2])
    text = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    plain = retrieval_metrics(image, text, owner)
    assert plain["text_to_image"]["R@1"] < 100.0  # the tie goes against the query
    keyed = retrieval_metrics(image, text, owner, caption_keys=captions)
    assert keyed["text_to_image"]["R@1"] == 100.0
    assert keyed["image_to_text"]["R@1"] == 100.0
    # Without keys, image 0's "a dog" loses to image 1's identical caption.
    assert plain["image_to_text"]["R@1"] < 100.0


def test_caption_keys_must_match_captions():
    with pytest.raises(ValueError, match="caption_keys"):
        retrieval_metrics(np.eye(2), np.eye(2), [0, 1], caption_keys=["a"])


# -- per-group breakdown --------------------------------------------------------


@pytest.mark.parametrize("use_keys", [False, True])
def test_metrics_by_group_filters_the_overall_ranks(use_keys):
    from devise.retrieval.metrics import image_to_text_ranks, metrics_by_group, text_to_image_ranks

    image, text, owner, keys = _shared_caption_case(seed=2)
    keys = keys if use_keys else None
    groups = [["cat", "dog", "bird"][i % 3] for i in range(len(image))]
    groups[4] = None  # in no group, but still a candidate
    got = metrics_by_group(image, text, owner, groups, caption_keys=keys, ks=(1, 5))
    assert list(got) == ["bird", "cat", "dog"]
    t2i = text_to_image_ranks(image, text, owner, caption_keys=keys)
    i2t = image_to_text_ranks(image, text, owner, caption_keys=keys)
    for name, m in got.items():
        images = [i for i, g in enumerate(groups) if g == name]
        captions = [j for j, o in enumerate(owner) if groups[o] == name]
        assert m["images"] == len(images) and m["captions"] == len(captions)
        q_t2i = t2i[captions]
        q_i2t = np.array([i2t[i] for i in images if i2t[i] >= 0])
        for direction, ranks in (("text_to_image", q_t2i), ("image_to_text", q_i2t)):
            for k in (1, 5):
                assert m[direction][f"R@{k}"] == pytest.approx(100.0 * np.mean(ranks < k))
            assert m[direction]["medr"] == math.floor(np.median(ranks)) + 1
            assert m[direction]["meanr"] == pytest.approx(ranks.mean() + 1)
            assert m[direction]["queries"] == len(ranks)
    # Group query counts add up to the overall ones (minus the ungrouped image).
    assert sum(m["captions"] for m in got.values()) == sum(1 for o in owner if groups[o] is not None)


def test_metrics_by_group_needs_one_group_per_image():
    from devise.retrieval.metrics import metrics_by_group

    with pytest.raises(ValueError, match="image_groups"):
        metrics_by_group(np.eye(3), np.eye(3), [0, 1, 2], ["a", "b"])


@pytest.mark.parametrize("use_keys", [False, True])
def test_nan_embeddings_score_worst_not_perfect(use_keys):
    # A diverged model gives NaN scores; every comparison with NaN is false, which used to
    # leave nothing ranked above a NaN true score: R@1 of 100% (and the "best" epoch kept).
    owner = np.repeat(np.arange(4), 2)
    keys = [f"caption {j}" for j in range(8)] if use_keys else None
    nan_img, nan_txt = np.full((4, 3), np.nan, np.float32), np.full((8, 3), np.nan, np.float32)
    m = retrieval_metrics(nan_img, nan_txt, owner, caption_keys=keys)
    assert m["text_to_image"]["R@1"] == m["image_to_text"]["R@1"] == 0.0
    assert (m["text_to_image"]["queries"], m["image_to_text"]["queries"]) == (8, 4)
    assert m["text_to_image"]["medr"] == 4.0 and m["image_to_text"]["medr"] == 7.0  # last place

    # One NaN image among perfect ones: only its own queries fail, and it never outranks others.
    img = np.eye(4, 3 + 1, dtype=np.float32)
    txt = img[owner].copy()
    img[2] = np.nan
    m = retrieval_metrics(img, txt, owner, caption_keys=keys)
    assert m["text_to_image"]["R@1"] == 75.0 and m["image_to_text"]["R@1"] == 75.0

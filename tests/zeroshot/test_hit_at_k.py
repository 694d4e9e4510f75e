"""Flat hit@k, chance levels and the three zero-shot settings, against naive loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from devise.zeroshot import (
    chance_hit_at_k,
    evaluate_zeroshot,
    hit_at_k,
    per_class_hit_at_1,
    true_class_ranks,
)


def _naive_hit_at_k(scores, true_index, k):
    """One query at a time: hit when fewer than k other candidates score >= the true one."""
    hits = 0
    for row, true in zip(scores.tolist(), true_index.tolist()):
        mine = row[true]
        if mine != mine:  # NaN: every other candidate counts as better
            better = len(row) - 1
        else:
            better = 0
            for j, value in enumerate(row):
                if j != true and value >= mine:  # a tie counts against
                    better += 1
        hits += better < k
    return 100.0 * hits / len(true_index)


@pytest.mark.parametrize("seed", range(5))
def test_hit_at_k_matches_a_naive_loop(seed):
    rng = np.random.default_rng(seed)
    # Few distinct values, so ties are common; a few NaN and -inf too.
    scores = rng.integers(0, 4, size=(60, 7)).astype(np.float64)
    scores[rng.random(scores.shape) < 0.05] = np.nan
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    true_index = rng.integers(0, 7, size=60)
    got = hit_at_k(scores, true_index, ks=(1, 2, 5, 10))
    for k in (1, 2, 5, 10):
        assert got[f"hit@{k}"] == pytest.approx(_naive_hit_at_k(scores, true_index, k))


def test_ties_count_against_the_true_class():
    flat = np.zeros((4, 5))
    assert hit_at_k(flat, np.array([0, 1, 2, 3]), ks=(1, 4, 5)) == {"hit@1": 0.0, "hit@4": 0.0, "hit@5": 100.0}
    all_minus_inf = np.full((2, 3), -np.inf)
    assert true_class_ranks(all_minus_inf, np.array([0, 2])).tolist() == [2, 2]
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.8], [np.nan, 0.3, 0.1], [0.5, np.nan, 0.1]])
    assert true_class_ranks(scores, np.array([0, 1, 0, 0])).tolist() == [0, 1, 2, 0]


def test_chance_levels():
    expected = {"hit@1": pytest.approx(100 / 3), "hit@2": pytest.approx(200 / 3), "hit@5": 100.0, "hit@10": 100.0}
    assert chance_hit_at_k(3) == expected
    assert chance_hit_at_k(1000, ks=(1, 2, 5, 10)) == {"hit@1": 0.1, "hit@2": 0.2, "hit@5": 0.5, "hit@10": 1.0}
    assert all(math.isnan(v) for v in chance_hit_at_k(0).values())
    # Random scores land near chance.
    rng = np.random.default_rng(0)
    got = hit_at_k(rng.random((20000, 8)), rng.integers(0, 8, 20000), ks=(1, 2, 5))
    for k, expected in chance_hit_at_k(8, ks=(1, 2, 5)).items():
        assert got[k] == pytest.approx(expected, abs=1.0)


def test_no_queries_give_nan():
    assert all(math.isnan(v) for v in hit_at_k(np.zeros((0, 3)), np.zeros(0, np.int64)).values())


def test_per_class_hit_at_1():
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    got = per_class_hit_at_1(scores, np.array([0, 0, 1, 1]), ["a", "a", "b", "b"])
    assert got == {"a": 50.0, "b": 50.0}


class _FixedScores:
    """A 'method' whose scores are a fixed (image, class) table, for checking the settings."""

    def __init__(self, table):
        self.table = np.asarray(table, dtype=np.float64)
        self.calls = []

    def scores(self, features, candidates=None):
        rows = features[:, 0].astype(int)  # feature 0 is the image's row in the table
        candidates = np.arange(self.table.shape[1]) if candidates is None else np.asarray(candidates)
        self.calls.append(candidates.tolist())
        return self.table[np.ix_(rows, candidates)]


def test_evaluate_zeroshot_restricts_candidates_per_setting():
    names = ["ant", "bee", "cat", "dog"]  # cat and dog are unseen
    labels = np.array([2, 2, 3, 0, 1])
    table = [
        [0.9, 0.0, 0.5, 0.1],  # cat image: beats dog among unseen, loses to ant among all
        [0.2, 0.0, 0.1, 0.7],  # cat image: second among unseen, third among all
        [0.0, 0.9, 0.3, 0.8],  # dog image: right among unseen, second among all
        [0.9, 0.2, 0.0, 0.0],  # ant image: right
        [0.9, 0.2, 0.0, 0.0],  # bee image: second
    ]
    method = _FixedScores(table)
    features = np.arange(5, dtype=np.float32)[:, None]
    result = evaluate_zeroshot(method, features, labels, names, ["dog", "cat"], ks=(1, 2))
    assert method.calls == [[2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert result["metrics"] == {
        "unseen_hit@1": pytest.approx(200 / 3),
        "unseen_hit@2": 100.0,
        "all_hit@1": 0.0,
        "all_hit@2": pytest.approx(200 / 3),
        "seen_hit@1": 50.0,
        "seen_hit@2": 100.0,
    }
    assert result["chance"] == {
        "unseen_hit@1": 50.0,
        "unseen_hit@2": 100.0,
        "all_hit@1": 25.0,
        "all_hit@2": 50.0,
        "seen_hit@1": 25.0,
        "seen_hit@2": 50.0,
    }
    # Unseen classes among unseen labels, seen classes among all labels.
    assert result["per_class_hit@1"] == {"ant": 100.0, "bee": 0.0, "cat": 50.0, "dog": 100.0}


def test_evaluate_zeroshot_without_seen_test_images_gives_nan():
    method = _FixedScores([[0.1, 0.9]])
    result = evaluate_zeroshot(method, np.zeros((1, 1), np.float32), np.array([1]), ["a", "b"], ["b"], ks=(1,))
    assert result["metrics"]["unseen_hit@1"] == 100.0
    assert math.isnan(result["metrics"]["seen_hit@1"])

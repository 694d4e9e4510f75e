"""Flat hit@k for zero-shot classification, and the paper's three settings.

A query is an image; candidates are classes. The rank of the true class is
the number of *other* candidates scoring at least as high (0-based), so a
tie counts against the true class: a method that gives every candidate the
same score (or ``-inf``, as the softmax does for classes it never saw)
scores 0, never 100. A NaN score ranks below every number; a NaN true score
ranks last. ``hit@k`` is the percentage of queries with rank ``< k``.

:func:`evaluate_zeroshot` reports, for one method:

* ``unseen_hit@k``: unseen test images, only unseen labels as candidates
  (the paper's "DeViSE-0");
* ``all_hit@k``: unseen test images, every label (seen and unseen) as
  candidates (the paper's "DeViSE+1K"-style setting, much harder);
* ``seen_hit@k``: seen test images, every label as candidates.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol

import numpy as np

from devise.zeroshot.unseen import check_unseen_names

#: The k of the paper's flat hit@k table.
ZEROSHOT_KS: tuple[int, ...] = (1, 2, 5, 10)

#: The three settings, in table order.
ZEROSHOT_SETTINGS: tuple[str, ...] = ("unseen", "all", "seen")


class ZeroShotScorer(Protocol):
    """What evaluation needs of a method (every method in :mod:`devise.zeroshot.methods`)."""

    def scores(self, features: np.ndarray, candidates: Sequence[int] | None = None) -> np.ndarray:
        """Scores ``(N, len(candidates))`` of each image for each candidate class id; higher is better."""
        ...


def true_class_ranks(scores: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """0-based rank of each query's true candidate; ties count against it.

    Args:
        scores: ``(queries, candidates)``; higher is better.
        true_index: ``(queries,)`` column of each query's true candidate.

    Returns:
        int64 ``(queries,)``: the number of other candidates scoring at least
        as high as the true one (NaN scores never count; a NaN true score
        gets the worst rank, ``candidates - 1``).
    """
    scores = np.asarray(scores, dtype=np.float64)
    true_index = np.asarray(true_index, dtype=np.int64)
    if scores.ndim != 2 or true_index.shape != (scores.shape[0],):
        raise ValueError(f"need scores (Q, C) and true_index (Q,), got {scores.shape} and {true_index.shape}")
    if len(true_index) and (true_index.min() < 0 or true_index.max() >= scores.shape[1]):
        raise ValueError(f"true_index must be in [0, {scores.shape[1]})")
    rows = np.arange(len(true_index))
    true = scores[rows, true_index][:, None]
    at_least = scores >= true  # False against NaN on either side
    at_least[rows, true_index] = False
    ranks = at_least.sum(axis=1)
    return np.where(np.isnan(true[:, 0]), scores.shape[1] - 1, ranks).astype(np.int64)


def hit_at_k(scores: np.ndarray, true_index: np.ndarray, ks: Sequence[int] = ZEROSHOT_KS) -> dict[str, float]:
    """Flat hit@k: the percentage of queries whose true class is in the top k.

    Args:
        scores: ``(queries, candidates)``; higher is better.
        true_index: ``(queries,)`` column of each query's true candidate.
        ks: the k of each hit@k.

    Returns:
        ``{"hit@1": pct, ...}``; NaN for every k when there are no queries.

    Example:
    ```python
    hit_at_k(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 0]), ks=(1, 2))
    # {"hit@1": 50.0, "hit@2": 100.0}
    ```
    """
    ranks = true_class_ranks(scores, true_index)
    if len(ranks) == 0:
        return {f"hit@{k}": float("nan") for k in ks}
    return {f"hit@{k}": float(100.0 * np.mean(ranks < k)) for k in ks}


def chance_hit_at_k(num_candidates: int, ks: Sequence[int] = ZEROSHOT_KS) -> dict[str, float]:
    """Expected hit@k of random scores: ``min(k, C) / C * 100``.

    Args:
        num_candidates: ``C``, the number of candidate classes.
        ks: the k of each hit@k.

    Returns:
        ``{"hit@1": pct, ...}``; NaN for every k when there are no candidates.
    """
    if num_candidates <= 0:
        return {f"hit@{k}": float("nan") for k in ks}
    return {f"hit@{k}": 100.0 * min(k, num_candidates) / num_candidates for k in ks}


def per_class_hit_at_1(scores: np.ndarray, true_index: np.ndarray, groups: Sequence[Hashable]) -> dict:
    """hit@1 of each group of queries (e.g. each true class).

    Args:
        scores: ``(queries, candidates)``.
        true_index: ``(queries,)`` column of each query's true candidate.
        groups: ``(queries,)`` group of each query.

    Returns:
        ``{group: pct}`` for every group with queries, in sorted order.
    """
    hits = true_class_ranks(scores, true_index) < 1
    groups = list(groups)
    if len(groups) != len(hits):
        raise ValueError(f"{len(groups)} groups for {len(hits)} queries")
    out = {}
    for group in sorted(set(groups)):
        mask = np.fromiter((g == group for g in groups), dtype=bool, count=len(groups))
        out[group] = float(100.0 * hits[mask].mean())
    return out


def evaluate_zeroshot(
    method: ZeroShotScorer,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    class_names: Sequence[str],
    unseen: Sequence[str],
    *,
    ks: Sequence[int] = ZEROSHOT_KS,
) -> dict:
    """Flat hit@k of one fitted method in the three zero-shot settings.

    Test images of unseen classes are scored twice, among the unseen labels
    only (``unseen_hit@k``) and among every label (``all_hit@k``); test
    images of seen classes among every label (``seen_hit@k``). Per class,
    ``per_class_hit@1`` judges an unseen class's images among the unseen
    labels and a seen class's images among every label, so the per-class
    values, weighted by image count, average back to ``unseen_hit@1`` and
    ``seen_hit@1``. A setting without test images gives NaN.

    Args:
        method: a fitted method with ``scores(features, candidates)``, e.g.
            :class:`~devise.zeroshot.DeViSEClassifier`.
        test_features: ``(N, D)`` test image features.
        test_labels: ``(N,)`` class ids (indices into ``class_names``).
        class_names: every class, seen and unseen; all are candidates in
            the "all" settings.
        unseen: names of the held-out classes.
        ks: the k of each hit@k.

    Returns:
        ``{"metrics": {"unseen_hit@1": pct, ..., "all_hit@1": ...,
        "seen_hit@1": ...}, "per_class_hit@1": {class: pct},
        "chance": {same keys as metrics}}``, percentages.

    Raises:
        DeviseError: an unseen name is not in ``class_names``.
        ValueError: shapes disagree or a label is out of range.

    Example:
    ```python
    result = devise.zeroshot.evaluate_zeroshot(devise_clf, test_x, test_y, class_names, unseen=["zebra"])
    result["metrics"]["unseen_hit@1"], result["chance"]["unseen_hit@1"]
    ```
    """
    names = list(class_names)
    # Candidates in class-id order, whatever order ``unseen`` lists them in.
    unseen_ids = np.asarray(sorted(names.index(n) for n in check_unseen_names(unseen, names)), dtype=np.int64)
    all_ids = np.arange(len(names))
    test_labels = np.asarray(test_labels, dtype=np.int64)
    test_features = np.asarray(test_features, dtype=np.float32)
    if test_features.ndim != 2 or test_labels.shape != (len(test_features),):
        raise ValueError(f"need features (N, D) and labels (N,), got {test_features.shape} and {test_labels.shape}")
    if len(test_labels) and (test_labels.min() < 0 or test_labels.max() >= len(names)):
        raise ValueError(f"test labels must be class ids in [0, {len(names)})")
    is_unseen = np.isin(test_labels, unseen_ids)
    unseen_x, unseen_y = test_features[is_unseen], test_labels[is_unseen]
    seen_x, seen_y = test_features[~is_unseen], test_labels[~is_unseen]
    column_of_unseen = {int(c): i for i, c in enumerate(unseen_ids)}

    metrics: dict[str, float] = {}
    per_class: dict[str, float] = {}
    chance: dict[str, float] = {}
    settings = (
        ("unseen", unseen_x, unseen_y, unseen_ids, np.array([column_of_unseen[int(y)] for y in unseen_y], np.int64)),
        ("all", unseen_x, unseen_y, all_ids, unseen_y),
        ("seen", seen_x, seen_y, all_ids, seen_y),
    )
    for setting, features, labels, candidates, true_index in settings:
        for k, value in chance_hit_at_k(len(candidates), ks).items():
            chance[f"{setting}_{k}"] = value
        if len(labels) == 0 or len(candidates) == 0:
            metrics.update({f"{setting}_hit@{k}": float("nan") for k in ks})
            continue
        scores = np.asarray(method.scores(features, candidates))
        if scores.shape != (len(labels), len(candidates)):
            expected = (len(labels), len(candidates))
            raise ValueError(f"method returned scores of shape {scores.shape}, expected {expected}")
        for k, value in hit_at_k(scores, true_index, ks).items():
            metrics[f"{setting}_{k}"] = value
        if setting in ("unseen", "seen"):
            per_class.update(per_class_hit_at_1(scores, true_index, [names[int(y)] for y in labels]))
    metrics = {f"{setting}_hit@{k}": metrics[f"{setting}_hit@{k}"] for setting in ZEROSHOT_SETTINGS for k in ks}
    return {"metrics": metrics, "per_class_hit@1": dict(sorted(per_class.items())), "chance": chance}

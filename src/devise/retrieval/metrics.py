"""Image-caption retrieval metrics (R@K, median and mean rank).

Convention (the VSE line of work, see docs/architecture.md):

* text to image: each caption is a query; its rank is the number of
  *other* images that score at least as high as its own image;
* image to text: each image is a query; its rank is the number of captions
  of other images that score at least as high as its best caption.

Ties count against the query, so a collapsed model (all scores equal)
scores zero instead of perfectly. ``R@K`` is the percentage of queries
with rank ``< K`` (0-based); ``medr`` and ``meanr`` are 1-based.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10)


def _check(image_embeddings, text_embeddings, text_to_image):
    img = np.asarray(image_embeddings, dtype=np.float32)
    txt = np.asarray(text_embeddings, dtype=np.float32)
    owner = np.asarray(text_to_image, dtype=np.int64)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"embeddings must be 2-D with equal width, got {img.shape} and {txt.shape}")
    if owner.shape != (len(txt),):
        raise ValueError(f"text_to_image must have one entry per caption ({len(txt)}), got {owner.shape}")
    if len(owner) and (owner.min() < 0 or owner.max() >= len(img)):
        raise ValueError("text_to_image holds an index outside the image array")
    return img, txt, owner


def text_to_image_ranks(image_embeddings, text_embeddings, text_to_image, *, block: int = 4096) -> np.ndarray:
    """0-based rank of each caption's image among all images."""
    img, txt, owner = _check(image_embeddings, text_embeddings, text_to_image)
    ranks = np.empty(len(txt), np.int64)
    for start in range(0, len(txt), block):
        scores = txt[start : start + block] @ img.T  # [caption, image]
        rows = np.arange(len(scores))
        true = scores[rows, owner[start : start + block]]
        # ">=" counts the true image itself once; remove it.
        ranks[start : start + block] = (scores >= true[:, None]).sum(axis=1) - 1
    return ranks


def image_to_text_ranks(image_embeddings, text_embeddings, text_to_image, *, block: int = 1024) -> np.ndarray:
    """0-based rank of each image's best caption among all captions.

    Images with no caption get rank ``-1`` and are excluded by
    :func:`retrieval_metrics`.
    """
    img, txt, owner = _check(image_embeddings, text_embeddings, text_to_image)
    ranks = np.full(len(img), -1, np.int64)
    for start in range(0, len(img), block):
        scores = img[start : start + block] @ txt.T  # [image, caption]
        own = owner[None, :] == np.arange(start, start + len(scores))[:, None]
        has_caption = own.any(axis=1)
        best = np.where(own, scores, -np.inf).max(axis=1)
        wrong_above = ((scores >= best[:, None]) & ~own).sum(axis=1)
        ranks[start : start + len(scores)] = np.where(has_caption, wrong_above, -1)
    return ranks


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Percentage of queries whose 0-based rank is below ``k``."""
    ranks = np.asarray(ranks)
    ranks = ranks[ranks >= 0]
    return float(100.0 * np.mean(ranks < k)) if len(ranks) else float("nan")


def _summarise(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    ranks = ranks[ranks >= 0]
    out = {f"R@{k}": recall_at_k(ranks, k) for k in ks}
    out["medr"] = float(np.floor(np.median(ranks)) + 1) if len(ranks) else float("nan")
    out["meanr"] = float(np.mean(ranks) + 1) if len(ranks) else float("nan")
    out["queries"] = int(len(ranks))
    return out


def chance_levels(n_images: int, captions_per_image: Sequence[int], ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Expected metrics of a model that ranks at random.

    Args:
        n_images: number of candidate images.
        captions_per_image: number of captions of each image (any mix).
        ks: the K of each R@K.

    Returns:
        ``{"text_to_image": {...}, "image_to_text": {...}}`` with the same
        keys as :func:`retrieval_metrics`.
    """
    counts = np.asarray([c for c in captions_per_image if c > 0], np.int64)
    n_text = int(counts.sum())
    t2i = {f"R@{k}": 100.0 * min(k, n_images) / n_images for k in ks}
    t2i["medr"] = float(math.floor((n_images + 1) / 2))
    t2i["meanr"] = (n_images + 1) / 2
    # Image to text: rank of the best of c right captions among n_text,
    # i.e. how many of the n_text - c wrong ones come first.
    max_rank = n_text - int(counts.min()) if len(counts) else 0
    cdf = np.zeros(max_rank + 1)
    mean_rank = 0.0
    for c, weight in zip(*np.unique(counts, return_counts=True)):
        wrong = n_text - c
        r = np.arange(max_rank + 1)
        # P(rank >= r) = prod_{m<r} (wrong - m) / (n_text - m)
        factors = np.clip((wrong - r[:-1]) / (n_text - r[:-1]), 0, 1)
        survival = np.concatenate([[1.0], np.cumprod(factors)])
        cdf += weight * (1.0 - np.append(survival[1:], 0.0))
        mean_rank += weight * survival[1:].sum()
    cdf /= max(len(counts), 1)
    i2t = {f"R@{k}": 100.0 * float(cdf[min(k, max_rank + 1) - 1]) if k >= 1 else 0.0 for k in ks}
    i2t["medr"] = float(np.searchsorted(cdf, 0.5) + 1)
    i2t["meanr"] = float(mean_rank / max(len(counts), 1) + 1)
    return {"text_to_image": t2i, "image_to_text": i2t}


def retrieval_metrics(
    image_embeddings,
    text_embeddings,
    text_to_image,
    *,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, dict[str, float]]:
    """R@K, medr and meanr in both directions.

    Args:
        image_embeddings: ``(N_images, D)``, L2-normalised.
        text_embeddings: ``(N_captions, D)``, L2-normalised.
        text_to_image: ``(N_captions,)`` index of each caption's image.
        ks: the K of each R@K.

    Returns:
        ``{"text_to_image": {"R@1": ..., "medr": ..., "meanr": ...,
        "queries": ...}, "image_to_text": {...}}``.
    """
    t2i = text_to_image_ranks(image_embeddings, text_embeddings, text_to_image)
    i2t = image_to_text_ranks(image_embeddings, text_embeddings, text_to_image)
    return {"text_to_image": _summarise(t2i, ks), "image_to_text": _summarise(i2t, ks)}

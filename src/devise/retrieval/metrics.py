"""Image-caption retrieval metrics (R@K, median and mean rank).

Convention (the VSE line of work, see docs/architecture.md):

* text to image: each caption is a query; its rank is the number of
  *other* images that score at least as high as its own image;
* image to text: each image is a query; its rank is the number of captions
  of other images that score at least as high as its best caption.

Ties count against the query, so a collapsed model (all scores equal)
scores zero instead of perfectly. A NaN score (a diverged model) ranks
below every number, so NaN embeddings score zero too. ``R@K`` is the percentage of queries
with rank ``< K`` (0-based); ``medr`` and ``meanr`` are 1-based.

Identical captions (``caption_keys``)
-------------------------------------
Datasets can give the very same caption ("a dog") to several images. A
query such a caption cannot tell those images apart, so under the plain
rule even a perfect model loses R@1 on all but one of them. Passing
``caption_keys`` (one hashable per caption, e.g. its normalised text)
widens what counts as correct:

* text to image: the correct images of a caption with key ``k`` are *all*
  images owning a caption with key ``k``; its rank is the number of images
  outside that set scoring at least as high as the best image in the set;
* image to text: the correct captions of an image are all captions whose
  key equals the key of one of its own captions (wherever they belong);
  its rank is the number of captions outside that set scoring at least as
  high as the best caption in the set.

Ties still count against the query. When every key belongs to a single
image the results equal those without keys.

Per-group breakdown
-------------------
:func:`metrics_by_group` reports, for each group (e.g. category) of
images, the metrics of that group's queries only: text to image, the
captions whose image is in the group; image to text, the group's images.
Candidates are always the whole set, so a group's numbers are directly
comparable with the overall ones.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

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


def _scores(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``[query, candidate]`` dot products, NaN replaced by ``-inf``.

    Every comparison with NaN is false, so without this a NaN true score
    would have nothing ranked above it and a diverged model would score
    perfectly (and be kept as the best epoch).
    """
    scores = queries @ candidates.T
    scores[np.isnan(scores)] = -np.inf
    return scores


def _key_ids(caption_keys: Sequence[Hashable], n_captions: int) -> np.ndarray:
    """Dense integer id of each caption's key (equal keys, equal ids)."""
    keys = list(caption_keys)
    if len(keys) != n_captions:
        raise ValueError(f"caption_keys must have one entry per caption ({n_captions}), got {len(keys)}")
    ids: dict[Hashable, int] = {}
    return np.fromiter((ids.setdefault(k, len(ids)) for k in keys), np.int64, count=len(keys))


def text_to_image_ranks(
    image_embeddings,
    text_embeddings,
    text_to_image,
    *,
    caption_keys: Sequence[Hashable] | None = None,
    block: int = 4096,
) -> np.ndarray:
    """0-based rank of each caption's image among all images.

    With ``caption_keys``, every image owning a caption with the query's
    key counts as correct (see the module docstring).
    """
    img, txt, owner = _check(image_embeddings, text_embeddings, text_to_image)
    ranks = np.empty(len(txt), np.int64)
    if caption_keys is None:
        for start in range(0, len(txt), block):
            scores = _scores(txt[start : start + block], img)  # [caption, image]
            rows = np.arange(len(scores))
            true = scores[rows, owner[start : start + block]]
            # ">=" counts the true image itself once; remove it.
            ranks[start : start + block] = (scores >= true[:, None]).sum(axis=1) - 1
        return ranks
    key = _key_ids(caption_keys, len(txt))
    for start in range(0, len(txt), block):
        stop = min(start + block, len(txt))
        scores = _scores(txt[start:stop], img)  # [caption, image]
        # Which images own each key of this block: [distinct key, image].
        block_keys, inverse = np.unique(key[start:stop], return_inverse=True)
        sharing = np.isin(key, block_keys)
        owns = np.zeros((len(block_keys), len(img)), bool)
        owns[np.searchsorted(block_keys, key[sharing]), owner[sharing]] = True
        correct = owns[inverse.reshape(-1)]  # [caption, image]
        best = np.where(correct, scores, -np.inf).max(axis=1)
        ranks[start:stop] = ((scores >= best[:, None]) & ~correct).sum(axis=1)
    return ranks


def image_to_text_ranks(
    image_embeddings,
    text_embeddings,
    text_to_image,
    *,
    caption_keys: Sequence[Hashable] | None = None,
    block: int = 1024,
) -> np.ndarray:
    """0-based rank of each image's best caption among all captions.

    With ``caption_keys``, every caption whose key is the key of one of the
    image's own captions counts as correct (see the module docstring).
    Images with no caption get rank ``-1`` and are excluded by
    :func:`retrieval_metrics`.
    """
    img, txt, owner = _check(image_embeddings, text_embeddings, text_to_image)
    key = None if caption_keys is None else _key_ids(caption_keys, len(txt))
    n_keys = int(key.max()) + 1 if key is not None and len(key) else 0
    ranks = np.full(len(img), -1, np.int64)
    for start in range(0, len(img), block):
        scores = _scores(img[start : start + block], txt)  # [image, caption]
        stop = start + len(scores)
        own = owner[None, :] == np.arange(start, stop)[:, None]
        has_caption = own.any(axis=1)
        if key is None:
            correct = own
        else:
            # Keys of each image's own captions: [image, key], then spread to captions.
            mine = (owner >= start) & (owner < stop)
            has_key = np.zeros((len(scores), n_keys), bool)
            has_key[owner[mine] - start, key[mine]] = True
            correct = has_key[:, key]
        best = np.where(correct, scores, -np.inf).max(axis=1)
        wrong_above = ((scores >= best[:, None]) & ~correct).sum(axis=1)
        ranks[start:stop] = np.where(has_caption, wrong_above, -1)
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
    caption_keys: Sequence[Hashable] | None = None,
) -> dict[str, dict[str, float]]:
    """R@K, medr and meanr in both directions.

    Args:
        image_embeddings: ``(N_images, D)``, L2-normalised.
        text_embeddings: ``(N_captions, D)``, L2-normalised.
        text_to_image: ``(N_captions,)`` index of each caption's image.
        ks: the K of each R@K.
        caption_keys: optional ``(N_captions,)`` key of each caption (e.g.
            its normalised text); captions with equal keys are correct for
            every image that has one of them (see the module docstring).

    Returns:
        ``{"text_to_image": {"R@1": ..., "medr": ..., "meanr": ...,
        "queries": ...}, "image_to_text": {...}}``.
    """
    t2i = text_to_image_ranks(image_embeddings, text_embeddings, text_to_image, caption_keys=caption_keys)
    i2t = image_to_text_ranks(image_embeddings, text_embeddings, text_to_image, caption_keys=caption_keys)
    return {"text_to_image": _summarise(t2i, ks), "image_to_text": _summarise(i2t, ks)}


def metrics_by_group(
    image_embeddings,
    text_embeddings,
    text_to_image,
    image_groups: Sequence[Hashable | None],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    caption_keys: Sequence[Hashable] | None = None,
) -> dict:
    """Retrieval metrics of each group's queries, against all candidates.

    Args:
        image_embeddings: ``(N_images, D)``, L2-normalised.
        text_embeddings: ``(N_captions, D)``, L2-normalised.
        text_to_image: ``(N_captions,)`` index of each caption's image.
        image_groups: ``(N_images,)`` group (e.g. category) of each image;
            images whose group is ``None`` are in no group (they remain
            candidates).
        ks: the K of each R@K.
        caption_keys: as in :func:`retrieval_metrics`.

    Returns:
        ``{group: {"text_to_image": {...}, "image_to_text": {...},
        "images": n, "captions": m}}`` ordered by group (compared as
        strings). Text-to-image queries of a group are the captions of its
        images; image-to-text queries are its images.
    """
    img, txt, owner = _check(image_embeddings, text_embeddings, text_to_image)
    groups = list(image_groups)
    if len(groups) != len(img):
        raise ValueError(f"image_groups must have one entry per image ({len(img)}), got {len(groups)}")
    t2i = text_to_image_ranks(img, txt, owner, caption_keys=caption_keys)
    i2t = image_to_text_ranks(img, txt, owner, caption_keys=caption_keys)
    ids: dict[Hashable, int] = {}
    group_of_image = np.array([-1 if g is None else ids.setdefault(g, len(ids)) for g in groups], np.int64)
    group_of_caption = group_of_image[owner]
    out = {}
    for name in sorted(ids, key=str):
        gid = ids[name]
        in_group = group_of_image == gid
        of_group = group_of_caption == gid
        out[name] = {
            "text_to_image": _summarise(t2i[of_group], ks),
            "image_to_text": _summarise(i2t[in_group], ks),
            "images": int(in_group.sum()),
            "captions": int(of_group.sum()),
        }
    return out

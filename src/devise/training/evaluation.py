"""Evaluate a joint model on a caption split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from devise.datasets.records import CaptionRecord
from devise.model import DeViSEModel
from devise.retrieval.metrics import DEFAULT_KS, chance_levels, retrieval_metrics


def evaluate_retrieval(
    model: DeViSEModel,
    records: Sequence[CaptionRecord],
    features: Mapping[str, np.ndarray],
    *,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict:
    """Retrieval metrics of ``model`` on ``records``, with chance levels.

    Every distinct image of ``records`` (that has features) is a candidate;
    every caption is a text query. Returns ``{"text_to_image": {...},
    "image_to_text": {...}, "chance": {...}, "images": N, "captions": M}``.
    """
    image_ids: list[str] = []
    index: dict[str, int] = {}
    captions: list[str] = []
    owner: list[int] = []
    for record in records:
        if record.image_id not in features:
            continue
        if record.image_id not in index:
            index[record.image_id] = len(image_ids)
            image_ids.append(record.image_id)
        captions.append(record.caption)
        owner.append(index[record.image_id])
    if not image_ids:
        raise ValueError("no record of this split has image features")
    image_emb = model.embed_image_features(np.stack([features[i] for i in image_ids]))
    text_emb = model.embed_texts(captions)
    metrics = retrieval_metrics(image_emb, text_emb, np.array(owner), ks=ks)
    metrics["chance"] = chance_levels(len(image_ids), np.bincount(owner, minlength=len(image_ids)), ks)
    metrics["images"] = len(image_ids)
    metrics["captions"] = len(captions)
    return metrics


def format_metrics_table(metrics: dict, *, title: str = "") -> str:
    """A plain-text table: each metric in both directions, chance beside it."""
    keys = [k for k in metrics["text_to_image"] if k.startswith("R@")] + ["medr", "meanr"]
    header = f"{'direction':<15}" + "".join(f"{k:>17}" for k in keys)
    lines = []
    if title:
        lines.append(title)
    lines.append(header)
    lines.append("-" * len(header))
    for direction, label in (("text_to_image", "text->image"), ("image_to_text", "image->text")):
        cells = []
        for k in keys:
            got = metrics[direction][k]
            chance = metrics["chance"][direction][k]
            cells.append(f"{got:7.1f} (ch {chance:5.1f})")
        lines.append(f"{label:<15}" + "".join(f"{c:>17}" for c in cells))
    lines.append(
        f"({metrics['images']} images, {metrics['captions']} captions; R@K in %, "
        "ranks 1-based; 'ch' = chance level)"
    )
    return "\n".join(lines)

"""Evaluate a joint model on a caption split, and format the results."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import keras
import numpy as np

from devise.datasets.records import CaptionRecord
from devise.datasets.text import tokenize
from devise.model import DeViSEModel
from devise.retrieval.metrics import DEFAULT_KS, chance_levels, metrics_by_group, retrieval_metrics

_DIRECTIONS = (("text_to_image", "text->image"), ("image_to_text", "image->text"))


def caption_key(caption: str) -> str:
    """The normalised text under which identical captions are matched."""
    return " ".join(tokenize(caption))


def evaluate_retrieval(
    model: DeViSEModel,
    records: Sequence[CaptionRecord],
    features: Mapping[str, np.ndarray],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    per_category: bool = False,
    embeddings: dict | None = None,
) -> dict:
    """Retrieval metrics of ``model`` on ``records``, with chance levels.

    Every distinct image of ``records`` (that has features) is a candidate;
    every caption is a text query. Identical captions (equal after
    :func:`devise.datasets.text.tokenize`, e.g. "A dog." and "a dog") count
    as correct for every image that has them, in both directions (see
    :mod:`devise.retrieval.metrics`).

    Returns ``{"text_to_image": {...}, "image_to_text": {...}, "chance":
    {...}, "images": N, "captions": M}``; with ``per_category=True`` also
    ``"per_category": {category: {"text_to_image": ..., "image_to_text":
    ..., "images": n, "captions": m}}``, where each category's queries are
    its captions (text to image) and its images (image to text), ranked
    against the whole split. Records without a category are left out of
    the breakdown.

    ``embeddings``: a dict to receive what was computed on the way: the
    unit vectors of the images (``"image"``, one row per distinct image) and
    of the captions (``"text"``, in record order), each caption's image row
    (``"owner"``) and its normalised text (``"keys"``).
    """
    image_ids: list[str] = []
    categories: list[str | None] = []
    index: dict[str, int] = {}
    captions: list[str] = []
    owner: list[int] = []
    for record in records:
        if record.image_id not in features:
            continue
        if record.image_id not in index:
            index[record.image_id] = len(image_ids)
            image_ids.append(record.image_id)
            categories.append(record.category)
        captions.append(record.caption)
        owner.append(index[record.image_id])
    if not image_ids:
        raise ValueError("no record of this split has image features")
    image_emb = model.embed_image_features(np.stack([features[i] for i in image_ids]))
    text_emb = model.embed_texts(captions)
    owner_array = np.array(owner)
    keys = [caption_key(c) for c in captions]
    if embeddings is not None:
        embeddings.update(image=image_emb, text=text_emb, owner=owner_array, keys=keys)
    metrics = retrieval_metrics(image_emb, text_emb, owner_array, ks=ks, caption_keys=keys)
    metrics["chance"] = chance_levels(len(image_ids), np.bincount(owner_array, minlength=len(image_ids)), ks)
    metrics["images"] = len(image_ids)
    metrics["captions"] = len(captions)
    if per_category:
        metrics["per_category"] = metrics_by_group(
            image_emb, text_emb, owner_array, categories, ks=ks, caption_keys=keys
        )
    return metrics


def _metric_keys(metrics: dict) -> list[str]:
    return [k for k in metrics["text_to_image"] if k.startswith("R@")] + ["medr", "meanr"]


def format_metrics_table(metrics: dict, *, title: str = "") -> str:
    """A plain-text table: each metric in both directions, chance beside it."""
    keys = _metric_keys(metrics)
    header = f"{'direction':<15}" + "".join(f"{k:>17}" for k in keys)
    lines = []
    if title:
        lines.append(title)
    lines.append(header)
    lines.append("-" * len(header))
    for direction, label in _DIRECTIONS:
        cells = []
        for k in keys:
            got = metrics[direction][k]
            chance = metrics["chance"][direction][k]
            cells.append(f"{got:7.1f} (ch {chance:5.1f})")
        lines.append(f"{label:<15}" + "".join(f"{c:>17}" for c in cells))
    lines.append(
        f"({metrics['images']} images, {metrics['captions']} captions; R@K in %, ranks 1-based; 'ch' = chance level)"
    )
    return "\n".join(lines)


_CATEGORY_KEYS = ("R@1", "R@5", "R@10", "medr")


def _category_keys(metrics: dict) -> list[str]:
    per = metrics.get("per_category") or {}
    first = next(iter(per.values()), None)
    if first is None:
        return list(_CATEGORY_KEYS)
    return [k for k in _CATEGORY_KEYS if k in first["text_to_image"]]


def _cell(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def format_category_table(metrics: dict, *, title: str = "") -> str:
    """A plain-text table of ``metrics["per_category"]``, one row per category (sorted)."""
    per = metrics.get("per_category") or {}
    keys = _category_keys(metrics)
    cols = [f"t2i {k}" for k in keys] + [f"i2t {k}" for k in keys]
    width = max([len("category")] + [len(str(c)) for c in per]) + 2
    header = f"{'category':<{width}}{'images':>7}{'captions':>9}" + "".join(f"{c:>11}" for c in cols)
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for category in sorted(per, key=str):
        m = per[category]
        cells = [_cell(m["text_to_image"][k]) for k in keys] + [_cell(m["image_to_text"][k]) for k in keys]
        lines.append(f"{str(category):<{width}}{m['images']:>7}{m['captions']:>9}" + "".join(f"{c:>11}" for c in cells))
    lines.append("(queries of each category against the whole split; R@K in %, medr 1-based)")
    return "\n".join(lines)


def format_markdown_report(metrics: dict, *, run_dir: str, split: str) -> str:
    """A Markdown report: run, split, sizes, overall table with chance, per-category table."""
    lines = [
        f"# Retrieval evaluation: {split} split",
        "",
        f"- Run: `{run_dir}`",
        f"- Split: `{split}`",
        f"- Images: {metrics['images']}",
        f"- Captions: {metrics['captions']}",
        "",
        "Identical captions (after tokenisation) count as correct for every image that has them. "
        "R@K in %, ranks 1-based; chance level in parentheses.",
        "",
        "## Overall",
        "",
    ]
    keys = _metric_keys(metrics)
    lines.append("| direction | " + " | ".join(keys) + " |")
    lines.append("|---|" + "---:|" * len(keys))
    for direction, label in _DIRECTIONS:
        cells = [f"{_cell(metrics[direction][k])} ({_cell(metrics['chance'][direction][k])})" for k in keys]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    per = metrics.get("per_category")
    if per:
        ckeys = _category_keys(metrics)
        lines += [
            "",
            "## Per category",
            "",
            "Queries of each category (its captions for text->image, its images for image->text), "
            "ranked against the whole split.",
            "",
        ]
        cols = ["images", "captions"] + [f"t2i {k}" for k in ckeys] + [f"i2t {k}" for k in ckeys]
        lines.append("| category | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for category in sorted(per, key=str):
            m = per[category]
            cells = [str(m["images"]), str(m["captions"])]
            cells += [_cell(m["text_to_image"][k]) for k in ckeys] + [_cell(m["image_to_text"][k]) for k in ckeys]
            name = str(category).replace("|", "\\|")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def validation_rsum(metrics: dict) -> float:
    """R-sum: R@1 + R@5 + R@10 in both directions (the trainer's model-selection score)."""
    return sum(metrics[d][k] for d in ("text_to_image", "image_to_text") for k in ("R@1", "R@5", "R@10"))


class BestValidationRecall(keras.callbacks.Callback):
    """Validation R-sum (R@1+5+10, both directions) each epoch; keeps the best weights.

    With ``loss`` it also logs ``val_loss``: ``loss`` on the validation
    records in batches of ``batch_size`` (in order), averaged over captions,
    which is what ``fit(validation_data=...)`` reports, computed from the
    embeddings the R-sum needs anyway instead of a second forward pass over
    the split (that pass was a third of the trainer's per-epoch overhead).

    Args:
        model: the model being trained.
        records: validation records.
        features: image features by id.
        log: where to report the restored epoch.
        loss: the training loss (``loss(y, {"image", "text"})`` with ``y`` =
            ``[image id, caption id]``), or ``None`` for no ``val_loss``.
        batch_size: the batches ``loss`` sees.
    """

    def __init__(self, model: DeViSEModel, records, features, *, log=print, loss=None, batch_size: int = 128):
        super().__init__()
        self.devise_model = model
        self.records = records
        self.features = features
        self.log = log
        self.loss = loss
        self.batch_size = batch_size
        self.best = -1.0
        self.best_epoch = -1
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        embedded: dict = {}
        metrics = evaluate_retrieval(self.devise_model, self.records, self.features, embeddings=embedded)
        rsum = validation_rsum(metrics)
        if logs is not None:
            if self.loss is not None:
                logs["val_loss"] = self.validation_loss(embedded)
            logs["val_rsum"] = rsum
            logs["val_t2i_R@10"] = metrics["text_to_image"]["R@10"]
        if rsum > self.best:
            self.best, self.best_epoch = rsum, epoch
            self.best_weights = self.devise_model.keras_model.get_weights()

    def validation_loss(self, embedded: dict) -> float:
        """The loss over the validation captions in batches of ``batch_size``, weighted by batch size."""
        owner = embedded["owner"]
        groups: dict[str, int] = {}
        y = np.array([[o, groups.setdefault(k, len(groups))] for o, k in zip(owner, embedded["keys"])], np.int32)
        image, text = embedded["image"][owner], embedded["text"]
        total = 0.0
        for start in range(0, len(y), self.batch_size):
            rows = slice(start, start + self.batch_size)
            batch_loss = self.loss(y[rows], {"image": image[rows], "text": text[rows]})
            total += float(batch_loss) * len(y[rows])
        return total / len(y)

    def restore_best(self) -> None:
        if self.best_weights is not None:
            self.devise_model.keras_model.set_weights(self.best_weights)
            self.log(f"restored the weights of epoch {self.best_epoch + 1} (best validation R-sum {self.best:.1f})")

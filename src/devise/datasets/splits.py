"""Deterministic train/val/test splits by image, balanced per category."""

from __future__ import annotations

import types
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from devise.datasets.records import CaptionRecord
from devise.errors import DeviseError

# Read-only so the shared default cannot be mutated by a caller.
DEFAULT_SPLIT_COUNTS: Mapping[str, int] = types.MappingProxyType({"train": 40, "val": 5, "test": 5})


def split_by_category(
    records: Sequence[CaptionRecord],
    counts: Mapping[str, int] = DEFAULT_SPLIT_COUNTS,
    seed: int = 0,
) -> dict[str, list[CaptionRecord]]:
    """Split records into named splits, the same number of images per category.

    Within each category (records whose category is ``None`` form one group)
    the distinct image ids are sorted, shuffled with a generator seeded from
    ``seed`` and a stable hash of the category name, and dealt out to the
    splits in the order of ``counts``. Every caption of an image goes to that
    image's split, so no image is in two splits. A category with more images
    than ``sum(counts.values())`` has the extra images left out of every
    split. The result depends only on the records, ``counts`` and ``seed``,
    not on the Python process (``hash()`` randomisation) or record order.

    Args:
        records: the dataset, e.g. from :func:`read_pascal_sentences`.
        counts: images per category for each split, in dealing order;
            the default is Pascal Sentences' usual 40/5/5.
        seed: non-negative integer selecting the shuffle.

    Returns:
        ``{split name: records}``, with records in each split in dataset
        order.

    Raises:
        DeviseError: a category has fewer images than the counts need.
        ValueError: ``counts`` is empty or has a negative count, or ``seed``
            is negative.
    """
    if not counts:
        raise ValueError("counts must name at least one split")
    for name, count in counts.items():
        if int(count) != count or count < 0:
            raise ValueError(f"split {name!r}: count must be a non-negative integer, got {count!r}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    needed = sum(counts.values())

    ids_by_category: dict[str | None, set[str]] = {}
    category_of_image: dict[str, str | None] = {}
    for record in records:
        # An image keeps the category of its first record, so a stray
        # caption with another label cannot put it in two groups.
        category = category_of_image.setdefault(record.image_id, record.category)
        ids_by_category.setdefault(category, set()).add(record.image_id)

    split_of_image: dict[str, str] = {}
    for category, ids in ids_by_category.items():
        if len(ids) < needed:
            wanted = ", ".join(f"{name}={count}" for name, count in counts.items())
            raise DeviseError(
                f"category {category!r} has {len(ids)} images, fewer than the {needed} "
                f"the split counts need ({wanted}); use smaller counts"
            )
        rng = np.random.default_rng([seed, _stable_hash(category)])
        sorted_ids = sorted(ids)
        shuffled = [sorted_ids[i] for i in rng.permutation(len(sorted_ids))]
        start = 0
        for name, count in counts.items():
            for image_id in shuffled[start : start + count]:
                split_of_image[image_id] = name
            start += count

    splits: dict[str, list[CaptionRecord]] = {name: [] for name in counts}
    for record in records:
        name = split_of_image.get(record.image_id)
        if name is not None:
            splits[name].append(record)
    return splits


def assert_disjoint(splits: Mapping[str, Sequence[CaptionRecord]]) -> None:
    """Check that no image appears in more than one split.

    Args:
        splits: ``{split name: records}``.

    Raises:
        DeviseError: naming the first image id found in two splits.
    """
    split_of_image: dict[str, str] = {}
    for name, records in splits.items():
        for record in records:
            first = split_of_image.setdefault(record.image_id, name)
            if first != name:
                raise DeviseError(
                    f"image {record.image_id!r} is in both the {first!r} and {name!r} splits; "
                    "splits must not share images"
                )


def _stable_hash(category: str | None) -> int:
    # crc32 is the same in every process and Python version, unlike hash().
    # The None group's key starts with 0xff, which no UTF-8 name contains.
    if category is None:
        return zlib.crc32(b"\xff<no category>")
    return zlib.crc32(category.encode("utf-8"))

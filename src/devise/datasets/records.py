"""The record type every caption dataset reader produces."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

#: The splits a dataset file may assign a record to, in listing order.
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class CaptionRecord:
    """One (image, caption) pair.

    Args:
        image_id: identifier of the image, unique within a dataset
            (for Pascal Sentences: ``"<category>/<file stem>"``).
        image_path: path of the image file on disk.
        caption: the caption text, as written in the dataset.
        category: the image's category label, or ``None`` if the dataset
            has none.
        split: the split the dataset file assigns the image to
            (``"train"``, ``"val"``, ``"test"``), or ``None`` if it assigns none.
    """

    image_id: str
    image_path: str
    caption: str
    category: str | None = None
    split: str | None = None


def unique_images(records: Iterable[CaptionRecord]) -> list[CaptionRecord]:
    """First record of each image, in order of first appearance."""
    seen: set[str] = set()
    out = []
    for record in records:
        if record.image_id not in seen:
            seen.add(record.image_id)
            out.append(record)
    return out


def image_ids(records: Sequence[CaptionRecord]) -> list[str]:
    """Distinct image ids in order of first appearance."""
    return [r.image_id for r in unique_images(records)]

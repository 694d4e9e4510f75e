"""A caption dataset as a ``data`` config section describes it: its records and its splits.

Training, evaluation and search (a run's captions are the default candidates
for annotating a photo) all rebuild a run's dataset from its config, so the
reading lives here with the readers. The section is taken as it is, by its
attributes (:class:`devise.config.DataConfig` or anything shaped like it),
so this module imports no config type.

Example:
```python
data = devise.load_config("configs/demo.yaml").data
records = load_records(data, DataReport())
splits = split_records(records, data.split)
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from devise.datasets.loader import load_caption_dataset, splits_from_records
from devise.datasets.records import CaptionRecord
from devise.datasets.report import DataReport
from devise.datasets.shapes import generate_shapes
from devise.datasets.splits import assert_disjoint, split_by_category

if TYPE_CHECKING:  # pragma: no cover
    from devise.config import DataConfig, SplitConfig


def load_records(data: DataConfig, report: DataReport) -> list[CaptionRecord]:
    """Every (image, caption) record of the dataset ``data`` names.

    The demo dataset (``dataset: shapes``) is generated under ``data.root``
    first if it is not already there with the same parameters.

    Args:
        data: the ``data`` config section.
        report: collects problems with single items (see :class:`DataReport`).
    """
    if data.dataset == "shapes":
        shapes = data.shapes
        generate_shapes(
            data.root,
            images_per_category=shapes.images_per_category,
            image_size=shapes.image_size,
            seed=shapes.seed,
        )
    return load_caption_dataset(
        "pascal" if data.dataset == "shapes" else data.dataset,
        root=data.root,
        annotations=data.annotations,
        images=data.images,
        strict=data.strict,
        report=report,
    )


def split_records(records: list[CaptionRecord], split: SplitConfig) -> dict[str, list[CaptionRecord]]:
    """``records`` dealt into train/val/test as the ``data.split`` section says.

    ``split.by == "dataset"``: the split each record's file gives; otherwise
    per category, ``split.train``/``val``/``test`` images each (seeded).

    Raises:
        DeviseError: an image falls in two splits.
    """
    if split.by == "dataset":
        return splits_from_records(records)
    splits = split_by_category(records, {"train": split.train, "val": split.val, "test": split.test}, seed=split.seed)
    assert_disjoint(splits)
    return splits

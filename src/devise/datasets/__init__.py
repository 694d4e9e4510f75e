"""Caption datasets: records, readers, splits, text and the embedded demo data."""

from devise.datasets.images import load_image
from devise.datasets.pascal import (
    PASCAL_CATEGORIES,
    PascalItem,
    check_pascal_layout,
    read_pascal_sentences,
    write_pascal_layout,
)
from devise.datasets.records import CaptionRecord, image_ids, unique_images
from devise.datasets.report import DataProblem, DataReport
from devise.datasets.shapes import SHAPES_CATEGORIES, generate_shapes, render_shapes_image
from devise.datasets.splits import assert_disjoint, split_by_category
from devise.datasets.text import Vocabulary, tokenize

__all__ = [
    "PASCAL_CATEGORIES",
    "SHAPES_CATEGORIES",
    "CaptionRecord",
    "DataProblem",
    "DataReport",
    "PascalItem",
    "Vocabulary",
    "assert_disjoint",
    "check_pascal_layout",
    "generate_shapes",
    "image_ids",
    "load_image",
    "read_pascal_sentences",
    "render_shapes_image",
    "split_by_category",
    "tokenize",
    "unique_images",
    "write_pascal_layout",
]

"""Caption datasets: records, readers, splits, text and the embedded demo data."""

from devise.datasets.folders import (
    ClassImage,
    class_images_by_split,
    read_class_folders,
    read_label_file,
    split_class_images,
)
from devise.datasets.from_config import load_records, split_records
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
from devise.datasets.text import normalize_text, tokenize

__all__ = [
    "PASCAL_CATEGORIES",
    "SHAPES_CATEGORIES",
    "CaptionRecord",
    "ClassImage",
    "DataProblem",
    "DataReport",
    "PascalItem",
    "assert_disjoint",
    "check_pascal_layout",
    "class_images_by_split",
    "generate_shapes",
    "image_ids",
    "load_image",
    "load_records",
    "read_class_folders",
    "read_label_file",
    "read_pascal_sentences",
    "render_shapes_image",
    "split_by_category",
    "split_records",
    "split_class_images",
    "normalize_text",
    "tokenize",
    "unique_images",
    "write_pascal_layout",
]

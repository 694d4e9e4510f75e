"""Semantic image search: the image index, exact top-k search and the search engine."""

from devise.search.index import (
    IMAGE_EXTENSIONS,
    ImageFile,
    ImageIndex,
    IndexMismatchError,
    UpdateReport,
    exact_search,
    scan_images,
    update_index,
)
from devise.search.engine import CaptionHit, SearchEngine, SearchHit

__all__ = [
    "CaptionHit",
    "SearchEngine",
    "SearchHit",
    "IMAGE_EXTENSIONS",
    "ImageFile",
    "ImageIndex",
    "IndexMismatchError",
    "UpdateReport",
    "exact_search",
    "scan_images",
    "update_index",
]

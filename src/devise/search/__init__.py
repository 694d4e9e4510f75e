"""Semantic image search: the image index, exact top-k search and the search engine."""

from devise.search.index import (
    IMAGE_EXTENSIONS,
    ImageFile,
    ImageIndex,
    IndexMismatchError,
    IndexWriteError,
    UpdateReport,
    exact_search,
    scan_images,
    update_index,
)

_ENGINE_NAMES = ("CaptionHit", "SearchEngine", "SearchHit")


def __getattr__(name: str):
    # The engine needs the model (and TensorFlow); the index and exact search do not.
    if name in _ENGINE_NAMES:
        from devise.search import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'devise.search' has no attribute {name!r}")


__all__ = [
    "CaptionHit",
    "SearchEngine",
    "SearchHit",
    "IMAGE_EXTENSIONS",
    "ImageFile",
    "ImageIndex",
    "IndexMismatchError",
    "IndexWriteError",
    "UpdateReport",
    "exact_search",
    "scan_images",
    "update_index",
]

"""Small helpers the on-disk formats share: the text of an HDF5 attribute, and telling a URL from a local path.

They sit below the encoders, search and pipelines, which all read and write
such files (feature shards, image indexes, Beam output folders).
"""

from __future__ import annotations

import os


def h5_text(value) -> str:
    """An HDF5 attribute or string read back as ``str`` (h5py gives ``bytes`` for fixed-length strings)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URL (``gs://bucket/x``, ``s3://...``) rather than a local path."""
    return "://" in os.fspath(path)

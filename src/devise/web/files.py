"""Open the image file at a row of an index, checked to be the file that was indexed.

The index records each image's path relative to the indexed folder, and the
size and modification time the image was embedded at. Between indexing and
serving the file can be edited or deleted, replaced by a symbolic link to
anything the server may read (``/etc/passwd``), or a folder on its way can be
swapped for a link to another tree. So the file is opened one path component
at a time from the indexed folder, each with ``O_NOFOLLOW`` (a link anywhere
below the folder is refused, and nothing can be swapped between a check and
the open), and the opened file's own ``fstat`` must show a regular file with
the size and modification time the index holds.

Example:
```python
from devise.search.index import ImageIndex
from devise.web.files import open_indexed_file

index = ImageIndex.open("photos.h5")
with open_indexed_file(index, 0) as f:
    data = f.read()
```
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING, BinaryIO

from devise.errors import DeviseError

if TYPE_CHECKING:  # pragma: no cover
    from devise.search.index import ImageIndex

# O_NONBLOCK: a FIFO swapped in for an image must not hang the open.
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_FILE_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
# What Linux (ELOOP, ENOTDIR) and the BSDs (EMLINK) answer for a link met with O_NOFOLLOW.
_LINK_ERRNOS = (errno.ELOOP, errno.ENOTDIR, errno.EMLINK)
_SAFE_WALK = os.open in os.supports_dir_fd and hasattr(os, "O_NOFOLLOW")


class IndexedFileError(DeviseError):
    """The file at an index row cannot be served as the image that was indexed."""


class IndexedFileMissingError(IndexedFileError):
    """The file at an index row is gone."""


class IndexedFileChangedError(IndexedFileError):
    """The file at an index row was changed, or replaced by a link or a non-file, since indexing."""


def open_indexed_file(index: ImageIndex, row: int) -> BinaryIO:
    """Open the image at ``row`` of ``index`` for reading, if it is still the file that was indexed.

    The path is walked from ``index.image_root`` without following a symbolic
    link at any step below it (the root itself may be one), so the opened file
    lies inside the indexed folder whatever was swapped in; its size and
    modification time must match the index.

    Args:
        index: an open image index.
        row: a row of it (``0 <= row < len(index)``).

    Returns:
        The file, open in binary mode; the caller closes it.

    Raises:
        IndexedFileMissingError: the file (or a folder on its path) is gone.
        IndexedFileChangedError: it is now a link, a folder or another non-file,
            or its size or modification time differ from the index's.
    """
    image_id = index.ids[row]
    parts = image_id.split("/")
    what = f"image {row} ({image_id})"
    if any(part in ("", ".", "..") or "\0" in part for part in parts):
        raise IndexedFileChangedError(f"{what}: the index names no file inside its folder; rebuild the index")
    if not _SAFE_WALK:  # pragma: no cover - platforms without openat (Windows)
        fd = _open_checked_by_path(index.image_root, parts, what)
    else:
        fd = _open_without_links(index.image_root, parts, what)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IndexedFileChangedError(f"{what} is no longer a regular file; re-run devise-index")
        indexed = (int(index.sizes[row]), int(index.mtime_ns[row]))
        if (st.st_size, st.st_mtime_ns) != indexed:
            raise IndexedFileChangedError(
                f"{what} changed since it was indexed (size or modification time differ); "
                "re-run devise-index to update the index"
            )
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_without_links(root: str, parts: list[str], what: str) -> int:
    try:
        fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        raise IndexedFileMissingError(f"{what}: the indexed folder is gone; re-run devise-index") from None
    try:
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            try:
                child = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise IndexedFileMissingError(f"{what} is no longer on disk; re-run devise-index") from None
            except OSError as exc:
                if exc.errno in _LINK_ERRNOS:
                    where = "/".join(parts[: depth + 1])
                    raise IndexedFileChangedError(
                        f"{what}: {where!r} is now a symbolic link or not a folder; a served image must be "
                        "the regular file that was indexed, inside the indexed folder"
                    ) from None
                raise IndexedFileMissingError(f"{what} cannot be opened ({exc.strerror})") from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_checked_by_path(root: str, parts: list[str], what: str) -> int:  # pragma: no cover
    """Fallback without ``openat``: resolve, compare with the expected path, then open (a small race remains)."""
    expected = os.path.join(os.path.realpath(root), *parts)
    path = os.path.join(root, *parts)
    if not os.path.lexists(path):
        raise IndexedFileMissingError(f"{what} is no longer on disk; re-run devise-index")
    if os.path.realpath(path) != expected:
        raise IndexedFileChangedError(f"{what} now resolves outside the indexed file (a symbolic link)")
    try:
        return os.open(path, _FILE_FLAGS | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise IndexedFileMissingError(f"{what} cannot be opened ({exc.strerror})") from None

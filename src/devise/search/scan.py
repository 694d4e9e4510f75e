"""Finding the image files of a folder for indexing."""

from __future__ import annotations

import dataclasses
import os
import stat

from devise.errors import DeviseError
from devise.search.photo_date import photo_date

#: File extensions (lower case) that :func:`scan_images` picks up.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})


@dataclasses.dataclass(frozen=True, slots=True)
class ImageFile:
    """An image file found by :func:`scan_images`.

    Attributes:
        id: path relative to the scanned folder, with ``/`` separators.
        path: absolute path.
        mtime_ns: modification time in nanoseconds.
        size: size in bytes.
        date_ns: the photo's date in nanoseconds since the epoch (its EXIF
            date, else ``mtime_ns``: see :func:`devise.search.photo_date.photo_date`),
            or ``None`` while not read: :func:`scan_images` does not open
            files, so an update reads dates only for the files it embeds.
        date_source: where ``date_ns`` came from, ``"exif"`` or ``"mtime"`` (``None`` while not read).
    """

    id: str
    path: str
    mtime_ns: int
    size: int
    date_ns: int | None = None
    date_source: str | None = None

    def dated(self) -> ImageFile:
        """This file with its date read from it (:func:`~devise.search.photo_date.photo_date`)."""
        date_ns, source = photo_date(self.path, self.mtime_ns)
        return dataclasses.replace(self, date_ns=date_ns, date_source=source)


def scan_images(root: str | os.PathLike) -> list[ImageFile]:
    """Every image file under ``root``, recursively, sorted by id.

    Files with the extensions in :data:`IMAGE_EXTENSIONS` (any case) are
    listed; hidden files and folders (name starting with ``.``) are skipped,
    and symbolic links are skipped: linked folders can loop or pull in a
    whole other tree, and the web server refuses to serve a link (it could
    be pointed elsewhere after indexing), so a linked photo is not indexed.
    Files that vanish or cannot be stat'ed while scanning are skipped.

    Args:
        root: the folder to scan.

    Returns:
        The images, sorted by :attr:`ImageFile.id`.

    Raises:
        DeviseError: ``root`` does not exist or is not a folder.
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.exists(root):
        raise DeviseError(f"{root}: image folder not found; check the path")
    if not os.path.isdir(root):
        raise DeviseError(f"{root}: not a folder; give the folder that holds the images")
    found: list[ImageFile] = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        # Pruning in place stops os.walk from descending into hidden folders.
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except OSError:  # vanished
                continue
            if not stat.S_ISREG(st.st_mode):  # a link, a FIFO, a device
                continue
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            found.append(ImageFile(rel, path, int(st.st_mtime_ns), int(st.st_size)))
    found.sort(key=lambda f: f.id)
    return found

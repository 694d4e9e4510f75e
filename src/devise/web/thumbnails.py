"""Thumbnails for the web app: decoded under a pixel limit, made once per file, a few at a time.

A PNG of 12000x12000 pixels can be 450 kB on disk and 430 MB decoded, so a
server that decodes whatever is asked for runs out of memory. Three bounds:

* :func:`render_thumbnail` reads the image's size from its header and refuses
  one over ``max_pixels`` before decoding anything. JPEGs are decoded at a
  reduced scale (Pillow's ``draft``, 1/2 to 1/8), and the limit applies to
  what is actually decoded, so a large JPEG costs little.
* :class:`ThumbnailStore` keeps each thumbnail on disk, keyed by the image's
  id, size and modification time (a changed file gets a new one), so an image
  is decoded once, not once per request or per restart.
* It makes at most ``workers`` thumbnails at a time, lets at most ``queue``
  more wait, and refuses beyond that (:class:`ThumbnailBusyError`, which the
  app answers with 503 and ``Retry-After``); concurrent requests for one image
  wait for a single computation (:class:`SingleFlight`).

Example:
```python
from devise.web.thumbnails import ThumbnailStore

store = ThumbnailStore("photos.h5.thumbs", size=256)
with open("cat.jpg", "rb") as f:
    jpeg = store.get(("cat.jpg", 48213, 1700000000000000000), f)
```
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import logging
import os
import threading
from collections.abc import Callable, Hashable
from typing import BinaryIO, TypeVar

from devise.atomicfile import write_bytes
from devise.errors import DeviseError

#: Pixels the server decodes at most for one thumbnail: the full frame of a
#: 50-megapixel camera (8160x6120) in a format that decodes at full size
#: (PNG, WebP, GIF). Measured peaks at that size: 190 MB (RGB PNG), 380 MB
#: (RGBA PNG: Pillow resamples a premultiplied copy), so two workers stay
#: under a gigabyte. JPEGs are counted after their reduced decode.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000

# Part of every cache key: bump it when the rendering changes, so old files
# are not served for new settings.
_RENDER_VERSION = 1
_JPEG_QUALITY = 85

log = logging.getLogger(__name__)
T = TypeVar("T")


class ImageTooLargeError(DeviseError):
    """An image has more pixels than the server decodes."""

    @classmethod
    def for_size(cls, width: int, height: int, limit: int) -> ImageTooLargeError:
        return cls(
            f"{width}x{height} pixels ({width * height / 1e6:.1f} megapixels) is over the "
            f"server's limit of {limit / 1e6:g} megapixels"
        )


class ImageDecodeError(DeviseError):
    """An image file cannot be decoded."""


class ThumbnailBusyError(DeviseError):
    """Too many thumbnails are being made; the request may be retried shortly."""


def image_dimensions(file: BinaryIO) -> tuple[int, int]:
    """``(width, height)`` of an image, read from its header without decoding it.

    Raises:
        ImageDecodeError: not an image Pillow can read.
        ImageTooLargeError: over Pillow's own decompression-bomb limit.
    """
    from PIL import Image

    try:
        with Image.open(file) as image:
            return image.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"not a readable image ({exc})") from None


def render_thumbnail(file: BinaryIO, size: int, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> bytes:
    """A JPEG thumbnail of an image, longest side at most ``size``; transparency becomes white.

    Args:
        file: the image, open in binary mode.
        size: longest side of the thumbnail, in pixels.
        max_pixels: refuse an image that would decode to more pixels than this.

    Returns:
        The JPEG bytes.

    Raises:
        ImageTooLargeError: the image is over ``max_pixels``; nothing was decoded.
        ImageDecodeError: the file is not an image Pillow can decode.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(file) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale; other formats: no-op
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError.for_size(width, height, max_pixels)
            alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
            if image.mode not in ("RGB", "RGBA", "L", "LA"):  # palette, CMYK, 16-bit...: resample in RGB(A)
                image = image.convert("RGBA" if alpha else "RGB")
            # Shrink first, so that orientation and alpha are handled on the small image.
            image.thumbnail((size, size))
            image = ImageOps.exif_transpose(image)
            if alpha:
                rgba = image.convert("RGBA")
                image = Image.new("RGB", rgba.size, (255, 255, 255))
                image.paste(rgba, mask=rgba.getchannel("A"))
            out = io.BytesIO()
            image.convert("RGB").save(out, "JPEG", quality=_JPEG_QUALITY)
            return out.getvalue()
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"cannot decode image ({exc})") from None


class SingleFlight:
    """Concurrent calls with one key run the function once; the others wait for its result.

    Args:
        wait_s: how long a waiting caller waits before ``TimeoutError``
            (``None``: as long as it takes).
    """

    def __init__(self, wait_s: float | None = None):
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._running: dict[Hashable, concurrent.futures.Future] = {}

    def run(self, key: Hashable, fn: Callable[[], T]) -> T:
        """``fn()``, or the result (or exception) of the call with ``key`` already running."""
        with self._lock:
            future = self._running.get(key)
            leader = future is None
            if leader:
                future = self._running[key] = concurrent.futures.Future()
        if not leader:
            return future.result(timeout=self.wait_s)
        try:
            result = fn()
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(result)
            return result
        finally:
            with self._lock:
                del self._running[key]


class ThumbnailStore:
    """JPEG thumbnails kept on disk, made under a pixel limit and a bound on concurrent work.

    A thumbnail's file name is a hash of the image's id, file size and
    modification time, the thumbnail size and the rendering version, so a
    changed image (re-indexed) gets a new thumbnail; files are written to a
    temporary name and renamed, so a reader never sees half of one. Delete
    the folder to reclaim space: it fills again on demand.

    Args:
        directory: the cache folder (created if absent).
        size: longest side of the thumbnails, in pixels.
        max_pixels: images over this many decoded pixels are refused
            (:class:`ImageTooLargeError`).
        workers: thumbnails made at the same time.
        queue: further requests that may wait for a worker; beyond
            ``workers + queue`` a request gets :class:`ThumbnailBusyError`.
        wait_s: how long a request waits for another request's computation
            of the same thumbnail before :class:`ThumbnailBusyError`.

    Raises:
        OSError: ``directory`` cannot be created.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        size: int = 256,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        workers: int = 2,
        queue: int = 16,
        wait_s: float = 30.0,
    ):
        if size < 16 or max_pixels < 1 or workers < 1 or queue < 0:
            raise ValueError("size must be >= 16, max_pixels and workers >= 1, queue >= 0")
        self.directory = os.path.abspath(os.fspath(directory))
        self.size = size
        self.max_pixels = max_pixels
        self.workers = workers
        self.queue = queue
        self.wait_s = wait_s
        os.makedirs(self.directory, exist_ok=True)
        self._admitted = threading.BoundedSemaphore(workers + queue)
        self._working = threading.BoundedSemaphore(workers)
        self._flight = SingleFlight(wait_s)
        self._warned = False

    def path_for(self, key: tuple[str, int, int]) -> str:
        """The cache file of the thumbnail of ``key = (image id, file size, mtime_ns)``."""
        image_id, file_size, mtime_ns = key
        text = f"{_RENDER_VERSION}\0{self.size}\0{image_id}\0{int(file_size)}\0{int(mtime_ns)}"
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return os.path.join(self.directory, digest[:2], digest[2:34] + ".jpg")

    def get(self, key: tuple[str, int, int], file: BinaryIO) -> bytes:
        """The thumbnail of the image ``file`` (identified by ``key``), from disk or made now.

        Args:
            key: ``(image id, file size, mtime_ns)`` of the image.
            file: the image, open in binary mode (read only when the
                thumbnail is not on disk yet).

        Raises:
            ImageTooLargeError: the image is over the pixel limit.
            ImageDecodeError: the image cannot be decoded.
            ThumbnailBusyError: ``workers + queue`` thumbnails are already
                being made or waited for.
        """
        path = self.path_for(key)
        cached = _read_cached(path)
        if cached is not None:
            return cached
        try:
            return self._flight.run(path, lambda: self._make(path, file))
        except TimeoutError:
            raise ThumbnailBusyError("timed out waiting for this thumbnail to be made") from None

    def _make(self, path: str, file: BinaryIO) -> bytes:
        cached = _read_cached(path)  # made by a flight that ended since we looked
        if cached is not None:
            return cached
        if not self._admitted.acquire(blocking=False):
            raise ThumbnailBusyError(f"{self.workers + self.queue} thumbnails are already being made")
        try:
            with self._working:
                data = render_thumbnail(file, self.size, max_pixels=self.max_pixels)
        finally:
            self._admitted.release()
        self._write(path, data)
        return data

    def _write(self, path: str, data: bytes) -> None:
        folder = os.path.dirname(path)
        try:
            os.makedirs(folder, exist_ok=True)
            write_bytes(path, data)
        except OSError as exc:  # a full or read-only disk: serve the thumbnail anyway
            if not self._warned:
                self._warned = True
                log.warning("thumbnails cannot be cached in %s (%s); they are made on every request", folder, exc)


def _read_cached(path: str) -> bytes | None:
    """The cached JPEG at ``path``, or ``None`` if absent or not a complete JPEG."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    # Written by rename, so never partial; a file cut by a crash of the
    # machine before it reached the disk is made again.
    return data if data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9" else None

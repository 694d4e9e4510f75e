"""Image decoding shared by every reader and extractor."""

from __future__ import annotations

import contextlib
import io
import os
import struct
from collections.abc import Iterator

import numpy as np
from PIL import ExifTags, Image, ImageOps

from devise.errors import DataFormatError

# Larger than any photo a dataset holds, smaller than a decompression bomb.
MAX_IMAGE_PIXELS = 178_956_970


#: How :func:`load_image` brings an image to a fixed size.
RESIZE_MODES = ("crop", "pad")

# White, the colour alpha is composited on: see load_image.
PAD_COLOUR = (255, 255, 255)

#: libjpeg's reduced decoding scales (1/8, 1/4, 1/2), largest reduction first.
JPEG_SCALES = (8, 4, 2)
#: A JPEG is decoded reduced only while it stays this many times the size it is resized to (Pillow's
#: ``thumbnail`` uses the same gap): the bilinear resize then still averages over 2 pixels or more.
JPEG_REDUCING_GAP = 2
#: EXIF orientations that swap width and height.
TURNED_ORIENTATIONS = (5, 6, 7, 8)


def check_resize_mode(resize: str) -> str:
    """``resize`` if it is one of :data:`RESIZE_MODES`, else ``ValueError`` naming them."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    return resize


@contextlib.contextmanager
def decoding(path: str) -> Iterator[None]:
    """Turn what Pillow raises while decoding ``path`` into one :class:`DataFormatError` naming the file."""
    try:
        yield
    except DataFormatError:
        raise
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except (OSError, ValueError, SyntaxError, struct.error, Image.DecompressionBombError) as exc:
        # struct.error: Pillow unpacking an EXIF value of the wrong type (a damaged header)
        raise DataFormatError(f"{path}: cannot decode image ({exc})") from None


def check_pixels(path: str, img: Image.Image) -> None:
    """Refuse an image over :data:`MAX_IMAGE_PIXELS` from its header, before decoding it."""
    if img.width * img.height > MAX_IMAGE_PIXELS:
        raise DataFormatError(
            f"{path}: {img.width}x{img.height} pixels is over the "
            f"{MAX_IMAGE_PIXELS:,}-pixel limit (possible decompression bomb)"
        )


def jpeg_scale(width: int, height: int, size: tuple[int, int], resize: str = "crop", orientation: int = 1) -> int:
    """The libjpeg scale denominator (1, 2, 4 or 8) :func:`load_image` decodes a ``width x height`` JPEG at.

    The largest reduction that leaves the decoded image at least
    :data:`JPEG_REDUCING_GAP` times the size the resize brings it to:
    with ``"crop"`` both sides must keep the gap, with ``"pad"`` the side
    that fixes the scale. ``width``/``height`` are as stored; ``size`` is
    ``(height, width)`` upright, so an EXIF orientation of 5-8 swaps it.
    Integer arithmetic only, so :mod:`devise.datasets.image_ops` can choose
    the same scale in the graph.
    """
    target_h, target_w = size
    if orientation in TURNED_ORIENTATIONS:
        target_w, target_h = target_h, target_w
    for scale in JPEG_SCALES:
        wide = scale * JPEG_REDUCING_GAP * target_w <= width
        tall = scale * JPEG_REDUCING_GAP * target_h <= height
        if ((wide and tall) if resize == "crop" else (wide or tall)) and scale <= min(width, height):
            return scale
    return 1


def _reduce_jpeg(img: Image.Image, size: tuple[int, int], resize: str) -> None:
    """Make Pillow decode a large JPEG at :func:`jpeg_scale` (in the DCT: fewer pixels to decode and resize).

    A 12-megapixel photo brought to 224x224 decodes at 1/4 scale: about 2.5x
    faster on one core, and the resized pixels differ from a full-size
    decode by at most one level in our measurements (docs/extraction.md).
    """
    if img.format not in ("JPEG", "MPO"):
        return
    orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    scale = jpeg_scale(img.width, img.height, size, resize, orientation)
    if scale > 1:
        # Pillow picks the largest scale with (width // scale, height // scale) inside this size: ours.
        img.draft("RGB", (img.width // scale, img.height // scale))


def load_image(
    path: str | os.PathLike,
    size: tuple[int, int] | None = None,
    *,
    resize: str = "crop",
    data: bytes | None = None,
) -> np.ndarray:
    """Decode an image file to an RGB ``uint8`` array of shape ``(H, W, 3)``.

    EXIF orientation is applied, every mode (L, P, RGBA, CMYK, I;16, ...) is
    converted to RGB with alpha composited on white, and GIFs give their
    first frame.

    With ``size=(height, width)`` the image comes out at exactly that size,
    keeping its aspect ratio, in one of two ways:

    * ``resize="crop"`` (the ImageNet convention): the shorter side is
      scaled to fit, the longer one centre-cropped. The object fills the
      frame, but what lies near the ends of a wide or tall image is lost.
    * ``resize="pad"``: the longer side is scaled to fit, and the image is
      centred on a white canvas of the exact size. Nothing is cut, which
      keeps whole objects in product shots, drawings and panoramas. White,
      rather than the ImageNet mean grey, because such images mostly stand
      on white already (and transparent ones are composited on white
      above): the padding then continues their background instead of
      drawing new edges a CNN would respond to. On photos either colour adds
      an edge.

    A JPEG much larger than ``size`` (a camera photo) is decoded at 1/2, 1/4
    or 1/8 of its size by libjpeg itself, then resized (:func:`jpeg_scale`).

    Raises:
        DataFormatError: the file is missing, empty, truncated, not an
            image, or too large to decode safely. The message names the file.
        ValueError: ``resize`` is not one of :data:`RESIZE_MODES`.

    ``data``, when given, is the file's bytes already read (decoded instead
    of the file, with the same pixels; ``path`` then only names it).
    """
    check_resize_mode(resize)
    path = os.fspath(path)
    with decoding(path):
        if (len(data) if data is not None else os.path.getsize(path)) == 0:
            raise DataFormatError(f"{path}: empty file (0 bytes)")
        with Image.open(path if data is None else io.BytesIO(data)) as img:
            check_pixels(path, img)
            img.seek(0)
            if size is not None:
                _reduce_jpeg(img, size, resize)
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            if size is not None:
                img = _resize_centre_crop(img, size) if resize == "crop" else _resize_pad(img, size)
            return np.asarray(img, dtype=np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max() if arr.size and arr.max() > 255 else 255.0
        img = Image.fromarray((arr * (255.0 / peak)).clip(0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def _resize_centre_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    height, width = size
    scale = max(width / img.width, height / img.height)
    new_w = max(width, round(img.width * scale))
    new_h = max(height, round(img.height * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left = (new_w - width) // 2
    top = (new_h - height) // 2
    return img.crop((left, top, left + width, top + height))


def _resize_pad(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    height, width = size
    scale = min(width / img.width, height / img.height)
    new_w = min(width, max(1, round(img.width * scale)))
    new_h = min(height, max(1, round(img.height * scale)))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (width, height), PAD_COLOUR)
    canvas.paste(img, ((width - new_w) // 2, (height - new_h) // 2))
    return canvas

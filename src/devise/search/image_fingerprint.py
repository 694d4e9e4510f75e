"""Pixel fingerprints that tell a copy of a photo from another photo of the same kind.

A near-duplicate is the same picture re-encoded, resized or slightly
cropped: the pixels agree once the two are brought to one size and
aligned. A fingerprint is the image at :data:`FINGERPRINT_SIZE` x
:data:`FINGERPRINT_SIZE` RGB pixels (area-averaged), taken seven times: whole, and
with 1 to 6% cut from every border (:data:`BORDER_CROPS`). Two images score
the best centred cosine between one's whole view and any view of the
other (:func:`fingerprint_scores`), so a copy with up to ~6% cut from its
borders lines up with one of the original's views.

Why pixels and not the index's embeddings or the CNN features: both are
made to call two different green circles alike, and measured so (see
:mod:`devise.search.dedup`): a JPEG-60 copy of a photo scored as low as 0.79
in the joint space while two different tiles of one gravel photo scored
0.95. These fingerprints separated every planted copy from every distinct
photo of the same test set by a wide margin (0.98 against 0.86).

Why 16 x 16 and no blur: on the same sets, 16 pixels unblurred left a gap
(lowest copy minus highest distinct pair) of 0.12 on the photos and 0.005
on the shapes; 32 pixels with a 0.5-pixel blur left 0.14 and 0.002, at four
times the memory (the seven views take 5.4 KB an image at 16 pixels, 21 KB
at 32); 24 pixels did no better. Three crops (0, 2.5, 5%) instead of seven
lowered the photos' lowest 2%-crop score from 0.99 to 0.94 (at 32 pixels).

A flat image (all pixels within :data:`FLAT_STD` grey levels of its mean)
has no pattern to compare: it matches only another flat image of nearly
the same colour (score ``1 - mean absolute difference / 255``).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

from devise.datasets.images import check_pixels, decoding, load_image

#: Side of one view of a fingerprint, in pixels.
FINGERPRINT_SIZE = 16
#: Fraction cut from every border of the image, one view each.
BORDER_CROPS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06)
#: Standard deviation (grey levels) below which an image counts as flat.
FLAT_STD = 2.0
#: Smallest side a JPEG is decoded at (libjpeg scales by 1/2 to 1/8 while
#: decoding, which makes a 12-megapixel photo ~10x faster to fingerprint).
_DRAFT_SIDE = 256


def decode_for_fingerprint(path: str | os.PathLike) -> Image.Image:
    """An image file as RGB, as :func:`~devise.datasets.images.load_image` sees it, possibly scaled down.

    JPEGs are decoded at a reduced scale, never below :data:`_DRAFT_SIDE`
    pixels a side (a fingerprint is 16 pixels); other formats are decoded
    by ``load_image`` (EXIF orientation, alpha composited on white).

    Raises:
        DataFormatError: the file is missing or cannot be decoded.
    """
    path = os.fspath(path)
    with decoding(path), Image.open(path) as img:
        if img.format == "JPEG":
            check_pixels(path, img)
            img.draft("RGB", (_DRAFT_SIDE, _DRAFT_SIDE))
            return ImageOps.exif_transpose(img).convert("RGB")
    return Image.fromarray(load_image(path))


def image_fingerprint(image: str | os.PathLike | Image.Image) -> np.ndarray:
    """The fingerprint of an image: ``uint8`` ``(len(BORDER_CROPS), 3 * FINGERPRINT_SIZE**2)``.

    Args:
        image: an image file, or a decoded RGB image.

    Raises:
        DataFormatError: the file cannot be decoded.
    """
    if not isinstance(image, Image.Image):
        image = decode_for_fingerprint(image)
    image = image.convert("RGB")
    width, height = image.size
    views = np.empty((len(BORDER_CROPS), 3 * FINGERPRINT_SIZE**2), np.uint8)
    for i, crop in enumerate(BORDER_CROPS):
        box = (width * crop, height * crop, width * (1 - crop), height * (1 - crop))
        view = image.resize((FINGERPRINT_SIZE, FINGERPRINT_SIZE), Image.Resampling.BOX, box=box)
        views[i] = np.asarray(view, np.uint8).reshape(-1)
    return views


def _centred(views: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit centred views ``(..., V, D)``, whether each whole view is flat, and its mean."""
    x = views.astype(np.float32)
    mean = x.mean(axis=-1, keepdims=True)
    x -= mean
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    flat = norm[..., 0, 0] < FLAT_STD * np.sqrt(x.shape[-1])
    return x / np.maximum(norm, 1e-6), flat, mean[..., 0, 0]


def fingerprint_scores(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Near-duplicate scores of pairs of fingerprints, in ``[-1, 1]`` (1: the same pixels).

    The score of a pair is the best centred cosine between one image's
    whole view and any view of the other, both ways round.

    Args:
        first, second: fingerprints ``(P, V, D)`` (or one ``(V, D)`` each).

    Returns:
        ``float32`` scores ``(P,)`` (a scalar array for one pair).
    """
    a, flat_a, mean_a = _centred(np.asarray(first))
    b, flat_b, mean_b = _centred(np.asarray(second))
    # a's views against b's whole view, and b's views against a's whole view.
    a_in_b = np.einsum("...vd,...d->...v", a, b[..., 0, :]).max(axis=-1)
    b_in_a = np.einsum("...vd,...d->...v", b, a[..., 0, :]).max(axis=-1)
    scores = np.maximum(a_in_b, b_in_a)
    both_flat = flat_a & flat_b
    flat_score = 1.0 - np.abs(mean_a - mean_b) / 255.0
    scores = np.where(both_flat, flat_score, np.where(flat_a | flat_b, 0.0, scores))
    return np.minimum(scores, 1.0).astype(np.float32)

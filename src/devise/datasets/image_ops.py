"""Image decoding and fitting as TensorFlow ops, the graph twin of :func:`devise.datasets.images.load_image`.

A SavedModel that takes encoded image bytes (devise-export's
``encode_image``) must decode and fit them without Python or Pillow.
:func:`decode_image` and :func:`fit_image` do what ``load_image`` does with
``tf.io``, ``tf.image`` and integer ops (Keras has no image decoder, hence
raw ``tf`` here), and give the same pixels, not merely close ones:

* JPEG (decoded with the accurate integer IDCT, Pillow's libjpeg default,
  and a large one at the same reduced scale, see ``images.jpeg_scale``),
  PNG (8- and 16-bit), GIF (first frame), BMP and WebP;
* the EXIF orientation of a JPEG (APP1) or PNG (``eXIf``) applied, as
  ``ImageOps.exif_transpose``;
* grey to RGB, 16-bit grey scaled by its peak, and alpha (grey + alpha,
  RGBA, transparent palettes) composited on white;
* ``"crop"`` or ``"pad"`` to the backbone's size with Pillow's output
  sizes and offsets and Pillow's bilinear resampler itself (its
  coefficients and 22-bit fixed-point arithmetic, width then height),
  which ``tf.image.resize`` only approximates (up to 2 units apart).

Checked pixel for pixel against ``load_image`` in ``tests/test_export.py``;
what is not matched is listed in :data:`NOT_MATCHED`.
"""

from __future__ import annotations

import tensorflow as tf

from devise.datasets.images import (
    JPEG_REDUCING_GAP,
    JPEG_SCALES,
    PAD_COLOUR,
    TURNED_ORIENTATIONS,
    check_resize_mode,
)

#: Inputs :func:`decode_image` does not treat as ``load_image`` does.
NOT_MATCHED = (
    (
        "GIF transparency: TensorFlow's GIF decoder gives RGB, so transparent pixels keep their palette "
        "colour instead of white"
    ),
    (
        "EXIF orientation in WebP files, in XMP metadata, in a PNG eXIf chunk after the image data or "
        "after more than 64 JPEG segments / PNG chunks: ignored (Pillow applies it)"
    ),
    "TIFF and the other formats tf.io.decode_image cannot read: the request fails",
    "no decompression-bomb limit: images are decoded whole",
    (
        "slivers a few pixels across and hundreds long (3x700, say), brought to a 1- or 2-pixel side: "
        "up to 1 level apart (Pillow's resampler does something here we have not matched)"
    ),
)

_JPEG_SOI = b"\xff\xd8"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_HEADER = b"Exif\x00\x00"
_ORIENTATION_TAG = 0x0112
# JPEG segments or PNG chunks read before giving up on finding the EXIF one (it comes early).
_MAX_SEGMENTS = 64
_MAX_IFD_ENTRIES = 256
# Pillow's fixed-point resampling: 32 bits less 8 for the pixel and 2 for headroom.
_PRECISION_BITS = 22


def _bytes_at(data: tf.Tensor, position, length) -> tf.Tensor:
    """``length`` bytes of ``data`` from ``position`` as ``int32``, zeros past the end."""
    size = tf.strings.length(data)
    position = tf.cast(tf.clip_by_value(tf.cast(position, tf.int64), 0, tf.cast(size, tf.int64)), tf.int32)
    chunk = tf.strings.substr(data, position, length)
    values = tf.cast(tf.io.decode_raw(chunk + b"\x00" * length, tf.uint8)[:length], tf.int32)
    return tf.reshape(values, [length])


def _unsigned(values: tf.Tensor, little_endian: tf.Tensor) -> tf.Tensor:
    """An unsigned integer from its bytes (``int64``)."""
    values = tf.cast(values, tf.int64)
    n = values.shape[-1]
    weights = tf.constant([256**i for i in range(n)], tf.int64)
    return tf.where(little_endian, tf.reduce_sum(values * weights, -1), tf.reduce_sum(values * weights[::-1], -1))


def _walk(data: tf.Tensor, start: int, visit) -> tf.Tensor:
    """Follow a chain of segments from ``start``: ``visit(position) -> (found, stop, next)``.

    Returns the first ``found`` that is not -1, or 0 when the walk stops
    first or runs out of bytes or of :data:`_MAX_SEGMENTS` steps.
    """
    size = tf.cast(tf.strings.length(data), tf.int64)

    def step(position, found, count):
        here, stop, following = visit(position)
        found = tf.where(tf.not_equal(here, -1), here, tf.where(stop, tf.constant(0, tf.int64), found))
        return following, found, count + 1

    _, found, _ = tf.while_loop(
        lambda position, found, count: (position + 8 <= size) & tf.equal(found, -1) & (count < _MAX_SEGMENTS),
        step,
        (tf.constant(start, tf.int64), tf.constant(-1, tf.int64), tf.constant(0)),
    )
    return tf.maximum(found, 0)


def _jpeg_exif(data: tf.Tensor) -> tf.Tensor:
    """Offset of the TIFF header in a JPEG's first ``Exif`` APP1 segment, 0 if none (segments up to the image data)."""

    def visit(position):
        header = _bytes_at(data, position, 4)
        is_marker = tf.equal(header[0], 0xFF)
        length = tf.cast(header[2] * 256 + header[3], tf.int64)
        is_exif = is_marker & tf.equal(header[1], 0xE1) & tf.equal(_substring(data, position + 4, 6), _EXIF_HEADER)
        stop = tf.logical_not(is_marker) | tf.equal(header[1], 0xDA) | tf.equal(header[1], 0xD9) | (length < 2)
        return tf.where(is_exif, position + 10, -1), stop, position + 2 + length

    return _walk(data, 2, visit)


def _png_exif(data: tf.Tensor) -> tf.Tensor:
    """Offset of the TIFF header in a PNG's ``eXIf`` chunk, 0 if none (chunks before the image data)."""

    def visit(position):
        length = _unsigned(_bytes_at(data, position, 4), tf.constant(False))
        kind = _substring(data, position + 4, 4)
        stop = tf.equal(kind, b"IDAT") | tf.equal(kind, b"IEND")
        return tf.where(tf.equal(kind, b"eXIf"), position + 8, -1), stop, position + 12 + length

    return _walk(data, 8, visit)


def _substring(data: tf.Tensor, position, length: int) -> tf.Tensor:
    size = tf.cast(tf.strings.length(data), tf.int64)
    return tf.strings.substr(data, tf.cast(tf.clip_by_value(position, 0, size), tf.int32), length)


def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1-8) of encoded image bytes; 1 when there is none.

    Read as Pillow reads it for ``ImageOps.exif_transpose``: tag 0x0112 of
    the first IFD of a JPEG's first ``Exif`` APP1 segment or of a PNG's
    ``eXIf`` chunk.
    """
    data = tf.convert_to_tensor(data, tf.string)
    tiff = tf.case(
        [
            (tf.equal(tf.strings.substr(data, 0, 2), _JPEG_SOI), lambda: _jpeg_exif(data)),
            (tf.equal(tf.strings.substr(data, 0, 8), _PNG_SIGNATURE), lambda: _png_exif(data)),
        ],
        default=lambda: tf.constant(0, tf.int64),
    )
    header = _bytes_at(data, tiff, 8)
    little = tf.equal(header[0], ord("I"))
    valid = (tiff > 0) & (
        (little & tf.equal(header[1], ord("I"))) | (tf.equal(header[0], ord("M")) & tf.equal(header[1], ord("M")))
    )
    ifd = tiff + _unsigned(header[4:8], little)
    count = tf.minimum(_unsigned(_bytes_at(data, ifd, 2), little), _MAX_IFD_ENTRIES)
    entries = tf.reshape(_bytes_at(data, ifd + 2, 12 * _MAX_IFD_ENTRIES), [_MAX_IFD_ENTRIES, 12])
    tags = _unsigned(entries[:, 0:2], little)
    kinds = _unsigned(entries[:, 2:4], little)
    # A SHORT (type 3) fills the first two bytes of the value field, a LONG (4) all four.
    values = tf.where(tf.equal(kinds, 4), _unsigned(entries[:, 8:12], little), _unsigned(entries[:, 8:10], little))
    match = (
        tf.equal(tags, _ORIENTATION_TAG)
        & (tf.equal(kinds, 3) | tf.equal(kinds, 4))
        & (tf.range(_MAX_IFD_ENTRIES, dtype=tf.int64) < count)
    )
    orientation = tf.reduce_max(tf.where(match, values, 0))
    orientation = tf.where(valid & (orientation >= 1) & (orientation <= 8), orientation, 1)
    return tf.cast(orientation, tf.int32)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """``image`` turned upright for an EXIF orientation, as ``ImageOps.exif_transpose``."""
    branches = [
        lambda: image,  # 1 (and anything else): as stored
        lambda: tf.image.flip_left_right(image),  # 2
        lambda: tf.image.rot90(image, 2),  # 3
        lambda: tf.image.flip_up_down(image),  # 4
        lambda: tf.image.transpose(image),  # 5
        lambda: tf.image.rot90(image, 3),  # 6: turned 90 degrees clockwise
        lambda: tf.image.rot90(tf.image.transpose(image), 2),  # 7
        lambda: tf.image.rot90(image, 1),  # 8: turned 90 degrees counter-clockwise
    ]
    return tf.switch_case(tf.clip_by_value(orientation - 1, 0, 7), branches)


def _on_white(colour: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    alpha = alpha / 255.0
    return colour * alpha + 255.0 * (1.0 - alpha)


def _is_grey16_png(data: tf.Tensor) -> tf.Tensor:
    # IHDR, the first chunk, holds the bit depth at byte 24 and the colour type (0: grey) at 25.
    ihdr = _bytes_at(data, 24, 2)
    return tf.equal(tf.strings.substr(data, 0, 8), _PNG_SIGNATURE) & tf.equal(ihdr[0], 16) & tf.equal(ihdr[1], 0)


def _grey16_to_rgb(data: tf.Tensor) -> tf.Tensor:
    """A 16-bit grey PNG as Pillow's mode ``I;16`` becomes RGB in ``load_image``: scaled by its peak, truncated."""
    grey = tf.cast(tf.io.decode_png(data, channels=1, dtype=tf.uint16), tf.float64)
    peak = tf.maximum(tf.reduce_max(grey), 255.0)
    grey = tf.math.floor(tf.clip_by_value(grey * (255.0 / peak), 0.0, 255.0))
    return tf.tile(tf.cast(grey, tf.float32), [1, 1, 3])


def jpeg_scale_index(data: tf.Tensor, size: tuple[int, int], resize: str) -> tf.Tensor:
    """``images.jpeg_scale`` in the graph, as an index: 0 for 1/1, then 1/2, 1/4, 1/8."""
    shape = tf.io.extract_jpeg_shape(data)
    height, width = shape[0], shape[1]
    turned = tf.reduce_any(tf.equal(exif_orientation(data), list(TURNED_ORIENTATIONS)))
    target_h, target_w = size
    target_w, target_h = tf.where(turned, target_h, target_w), tf.where(turned, target_w, target_h)
    index = tf.constant(0)
    for position, scale in enumerate(sorted(JPEG_SCALES), start=1):  # 2, 4, 8: each fits if the larger one does
        wide = scale * JPEG_REDUCING_GAP * target_w <= width
        tall = scale * JPEG_REDUCING_GAP * target_h <= height
        fits = (wide & tall) if resize == "crop" else (wide | tall)
        index = tf.where(fits & (scale <= tf.minimum(width, height)), position, index)
    return index


def _decode_jpeg(data: tf.Tensor, size: tuple[int, int] | None, resize: str) -> tf.Tensor:
    # Pillow's libjpeg default is the accurate integer IDCT; TensorFlow's default differs by up to 5 units.
    def at(ratio):
        return lambda: tf.io.decode_jpeg(data, channels=0, ratio=ratio, dct_method="INTEGER_ACCURATE")

    if size is None:
        return at(1)()
    return tf.switch_case(jpeg_scale_index(data, size, resize), [at(r) for r in (1, *sorted(JPEG_SCALES))])


def decode_image(data: tf.Tensor, size: tuple[int, int] | None = None, resize: str = "crop") -> tf.Tensor:
    """Encoded image bytes (a scalar string) -> RGB ``uint8 (H, W, 3)``, upright, alpha on white.

    With the ``size`` and ``resize`` it will be fitted to, a large JPEG is
    decoded at the reduced scale ``load_image`` decodes it at.
    """
    data = tf.convert_to_tensor(data, tf.string)

    def decode_8_bit():
        image = tf.cond(
            tf.io.is_jpeg(data),
            lambda: _decode_jpeg(data, size, resize),
            lambda: tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False),
        )
        image = tf.cast(image, tf.float32)
        branches = [
            lambda: tf.tile(image[..., :1], [1, 1, 3]),  # grey
            lambda: _on_white(tf.tile(image[..., :1], [1, 1, 3]), image[..., 1:2]),  # grey + alpha
            lambda: image[..., :3],
            lambda: _on_white(image[..., :3], image[..., 3:4]),
        ]
        return tf.switch_case(tf.clip_by_value(tf.shape(image)[-1] - 1, 0, 3), branches)

    rgb = tf.cond(_is_grey16_png(data), lambda: _grey16_to_rgb(data), decode_8_bit)
    # Pillow's alpha_composite rounds halves up.
    rgb = tf.cast(tf.clip_by_value(tf.floor(rgb + 0.5), 0.0, 255.0), tf.uint8)
    rgb = tf.ensure_shape(rgb, [None, None, 3])
    return apply_orientation(rgb, exif_orientation(data))


def _resampling_weights(in_size: tf.Tensor, out_size: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Pillow's bilinear taps for one axis: first input index ``(out,)`` and fixed-point weights ``(out, taps)``.

    Pillow's ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` in float64,
    step for step: a triangle of half-width ``max(in / out, 1)`` around each
    output pixel's centre, normalised, then rounded to 22 fractional bits.
    """
    in_f, out_f = tf.cast(in_size, tf.float64), tf.cast(out_size, tf.float64)
    scale = in_f / out_f
    filter_scale = tf.maximum(scale, 1.0)
    support = filter_scale  # the bilinear filter's support is 1
    taps = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    center = (tf.range(out_f, dtype=tf.float64) + 0.5) * scale
    # C's (int) cast truncates towards zero, as tf.cast does.
    first = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)
    count = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size) - first
    offsets = tf.range(taps)
    x = tf.cast(first[:, None] + offsets[None, :], tf.float64) - center[:, None] + 0.5
    weights = tf.maximum(1.0 - tf.abs(x * (1.0 / filter_scale)), 0.0)
    weights = tf.where(offsets[None, :] < count[:, None], weights, 0.0)
    total = tf.reduce_sum(weights, axis=1, keepdims=True)
    weights = tf.where(tf.not_equal(total, 0.0), weights / total, weights)
    return first, tf.cast(weights * (1 << _PRECISION_BITS) + 0.5, tf.int32)


def _resample_rows(image: tf.Tensor, out_width: tf.Tensor) -> tf.Tensor:
    """``int32 (H, W, C)`` -> ``(H, out_width, C)``: one pass of Pillow's 8-bit resampler along the width."""
    in_width = tf.shape(image)[1]
    first, weights = _resampling_weights(in_width, out_width)
    taps = tf.shape(weights)[1]

    def add_tap(k, total):
        columns = tf.gather(image, tf.minimum(first + k, in_width - 1), axis=1)
        return k + 1, total + columns * weights[None, :, k, None]

    start = tf.fill(tf.stack([tf.shape(image)[0], out_width, tf.shape(image)[2]]), 1 << (_PRECISION_BITS - 1))
    _, total = tf.while_loop(lambda k, total: k < taps, add_tap, (tf.constant(0), start))
    return tf.clip_by_value(tf.bitwise.right_shift(total, _PRECISION_BITS), 0, 255)


def _resize(image: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Pillow's ``Image.resize(..., BILINEAR)`` of an RGB ``uint8`` image: width first, then height, in 8 bits.

    The same integer arithmetic as Pillow, so the pixels come out equal,
    not merely close (``tf.image.resize`` rounds differently: up to 2 units).
    """
    image = tf.cast(image, tf.int32)
    # Pillow skips a pass whose size does not change (a pass at scale 1 would be the identity anyway).
    rows = tf.cond(tf.equal(width, tf.shape(image)[1]), lambda: image, lambda: _resample_rows(image, width))
    columns = tf.transpose(rows, [1, 0, 2])
    columns = tf.cond(tf.equal(height, tf.shape(columns)[1]), lambda: columns, lambda: _resample_rows(columns, height))
    return tf.cast(tf.transpose(columns, [1, 0, 2]), tf.uint8)


def fit_image(image: tf.Tensor, size: tuple[int, int], resize: str = "crop") -> tf.Tensor:
    """An RGB ``uint8`` image brought to ``size = (height, width)`` as ``load_image(..., size, resize=resize)`` does."""
    check_resize_mode(resize)
    height, width = size
    shape = tf.cast(tf.shape(image), tf.float64)
    in_h, in_w = shape[0], shape[1]
    if resize == "crop":
        scale = tf.maximum(width / in_w, height / in_h)
        # Python's round() and tf.round both round halves to even.
        new_w = tf.maximum(tf.constant(width, tf.int32), tf.cast(tf.round(in_w * scale), tf.int32))
        new_h = tf.maximum(tf.constant(height, tf.int32), tf.cast(tf.round(in_h * scale), tf.int32))
        resized = _resize(image, new_h, new_w)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        out = resized[top : top + height, left : left + width]
    else:
        scale = tf.minimum(width / in_w, height / in_h)
        new_w = tf.minimum(width, tf.maximum(1, tf.cast(tf.round(in_w * scale), tf.int32)))
        new_h = tf.minimum(height, tf.maximum(1, tf.cast(tf.round(in_h * scale), tf.int32)))
        resized = _resize(image, new_h, new_w)
        top, left = (height - new_h) // 2, (width - new_w) // 2
        out = tf.stack(
            [
                tf.pad(
                    resized[..., c], [[top, height - new_h - top], [left, width - new_w - left]], constant_values=value
                )
                for c, value in enumerate(PAD_COLOUR)
            ],
            axis=-1,
        )
    return tf.ensure_shape(out, [height, width, 3])


def load_image_ops(data: tf.Tensor, size: tuple[int, int], resize: str = "crop") -> tf.Tensor:
    """Encoded bytes -> RGB ``uint8 (height, width, 3)``: :func:`decode_image` then :func:`fit_image`."""
    return fit_image(decode_image(data, size, resize), size, resize)

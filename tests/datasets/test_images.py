"""load_image: every image mode and file quirk a real dataset holds, and clear errors for bad files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin, features

from devise.datasets import images as images_module
from devise.datasets.images import load_image
from devise.errors import DataFormatError

ORIENTATION = 0x0112  # the EXIF tag id of Orientation


def _close(actual, expected, tolerance=6):
    """Lossy formats (JPEG, WebP) move colours a little."""
    return np.all(np.abs(np.asarray(actual, int) - np.asarray(expected, int)) <= tolerance)


def test_rgb_jpeg_and_resize_centre_crop(tmp_path):
    path = tmp_path / "rgb.jpg"
    Image.new("RGB", (40, 20), (10, 120, 230)).save(path, quality=95)
    array = load_image(path)
    assert array.shape == (20, 40, 3) and array.dtype == np.uint8
    assert _close(array[10, 20], (10, 120, 230))
    assert load_image(path, size=(8, 8)).shape == (8, 8, 3)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 30 wide x 20 high, left half red; Orientation=6 means "rotate
    # 90 degrees clockwise to display", so it decodes 20 wide x 30 high
    # with the red half on top.
    stored = Image.new("RGB", (30, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 15, 20))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)
    with Image.open(path) as check:
        assert check.getexif()[ORIENTATION] == 6 and check.size == (30, 20)

    array = load_image(path)
    assert array.shape == (30, 20, 3)
    assert _close(array[3, 10], (255, 0, 0), 20) and _close(array[26, 10], (0, 0, 255), 20)


def test_grayscale_l(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (6, 4), 77).save(path)
    array = load_image(path)
    assert array.shape == (4, 6, 3) and (array == 77).all()


def test_palette_with_transparency_composited_on_white(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    image.putpixel((0, 0), 1)
    image.putpixel((3, 3), 1)
    path = tmp_path / "palette.png"
    image.save(path, transparency=1)  # palette index 1 (green) is transparent
    array = load_image(path)
    assert array.shape == (4, 4, 3)
    assert tuple(array[1, 1]) == (255, 0, 0)
    assert tuple(array[0, 0]) == (255, 255, 255) and tuple(array[3, 3]) == (255, 255, 255)


def test_rgba_alpha_composited_on_white(tmp_path):
    image = Image.new("RGBA", (4, 2), (0, 0, 0, 0))  # fully transparent black
    image.putpixel((1, 0), (200, 10, 10, 255))  # opaque
    image.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black
    path = tmp_path / "rgba.png"
    image.save(path)
    array = load_image(path)
    assert tuple(array[0, 0]) == (255, 255, 255)
    assert tuple(array[0, 1]) == (200, 10, 10)
    assert _close(array[0, 2], (127, 127, 127), 2)


def test_la_alpha_composited_on_white(tmp_path):
    image = Image.new("LA", (3, 1), (0, 0))
    image.putpixel((1, 0), (50, 255))
    path = tmp_path / "la.png"
    image.save(path)
    array = load_image(path)
    assert tuple(array[0, 0]) == (255, 255, 255) and tuple(array[0, 1]) == (50, 50, 50)


def test_cmyk_jpeg(tmp_path):
    image = Image.new("CMYK", (8, 8), (0, 0, 0, 0))  # no ink: white
    image.paste((255, 0, 0, 0), (0, 0, 4, 8))  # full cyan on the left
    path = tmp_path / "cmyk.jpg"
    image.save(path, quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    array = load_image(path)
    assert array.shape == (8, 8, 3)
    assert _close(array[4, 1], (0, 255, 255), 12) and _close(array[4, 6], (255, 255, 255), 12)


def test_sixteen_bit_grayscale_png(tmp_path):
    values = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as check:
        assert check.mode in ("I;16", "I")
    array = load_image(path)
    assert array.shape == (1, 4, 3)
    assert _close(array[0, :, 0], [0, 64, 128, 255], 1)
    assert (array[..., 0] == array[..., 2]).all()


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (5, 5), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as check:
        assert getattr(check, "n_frames", 1) == 3
    array = load_image(path)
    assert array.shape == (5, 5, 3) and (array == (255, 0, 0)).all()


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp(tmp_path):
    path = tmp_path / "image.webp"
    Image.new("RGB", (10, 6), (20, 180, 90)).save(path, quality=95)
    array = load_image(path)
    assert array.shape == (6, 10, 3) and _close(array[3, 5], (20, 180, 90), 8)


# -- files that must fail, naming the file and why ----------------------------


def _jpeg_bytes() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` but holds one byte of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00"))
        + _png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.jpg", b"", r"empty file \(0 bytes\)"),
        ("truncated.jpg", _jpeg_bytes()[:1500], r"cannot decode image \(.*truncated"),
        ("notes.jpg", b"these are not the pixels you are looking for\n", r"cannot decode image \(cannot identify"),
        ("bomb.png", _png_header(20000, 20000), r"cannot decode image \(.*decompression bomb"),
    ],
)
def test_bad_files_raise_data_format_error_naming_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=reason) as caught:
        load_image(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_missing_file_raises_data_format_error(tmp_path):
    with pytest.raises(DataFormatError, match=r"absent\.jpg: file not found"):
        load_image(tmp_path / "absent.jpg")


def test_devise_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    # A header-only file: over the limit it must fail on the size, without
    # ever reaching the (missing) pixel data.
    path = tmp_path / "large.png"
    path.write_bytes(_png_header(300, 200))
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 50_000)
    with pytest.raises(DataFormatError, match=r"large\.png: 300x200 pixels is over the 50,000-pixel limit"):
        load_image(path)


# -- resize="crop" or "pad" ---------------------------------------------------

RED, BLUE, GREY = (230, 20, 20), (20, 20, 230), (128, 128, 128)


def _banner(path, width, height):
    """Grey, with a red band at the left end and a blue band at the right end (a tenth each)."""
    image = Image.new("RGB", (width, height), GREY)
    band = width // 10
    image.paste(RED, (0, 0, band, height))
    image.paste(BLUE, (width - band, 0, width, height))
    image.save(path)
    return path


def _has(array, colour, tolerance=12):
    return bool((np.abs(array.astype(int) - colour) <= tolerance).all(axis=-1).any())


def test_pad_keeps_both_ends_of_a_wide_image_that_crop_cuts(tmp_path):
    path = _banner(tmp_path / "wide.png", 400, 100)
    cropped = load_image(path, (64, 64))  # default: crop
    padded = load_image(path, (64, 64), resize="pad")
    assert cropped.shape == padded.shape == (64, 64, 3)
    assert not _has(cropped, RED) and not _has(cropped, BLUE) and _has(cropped, GREY)
    assert _has(padded, RED) and _has(padded, BLUE)
    # The 4:1 image is 64x16 in the middle; white above and below.
    assert _close(padded[32, 2], RED) and _close(padded[32, 61], BLUE) and _close(padded[32, 32], GREY)
    assert (padded[:23] == 255).all() and (padded[41:] == 255).all()
    assert (load_image(path, (64, 64), resize="crop") == cropped).all()


def test_pad_keeps_both_ends_of_a_tall_image(tmp_path):
    image = Image.new("RGB", (30, 300), GREY)
    image.paste(RED, (0, 0, 30, 30))
    image.paste(BLUE, (0, 270, 30, 300))
    image.save(tmp_path / "tall.png")
    padded = load_image(tmp_path / "tall.png", (50, 50), resize="pad")
    assert _close(padded[1, 25], RED) and _close(padded[48, 25], BLUE)
    assert (padded[:, :21] == 255).all() and (padded[:, 30:] == 255).all()  # 5 wide, centred


@pytest.mark.parametrize("resize", ["crop", "pad"])
@pytest.mark.parametrize("image_size", [(400, 100), (100, 400), (33, 33), (7, 5), (1000, 1), (1, 999)])
@pytest.mark.parametrize("size", [(224, 224), (37, 21), (21, 37), (1, 1), (15, 16)])
def test_output_is_exactly_the_requested_size(tmp_path, resize, image_size, size):
    path = tmp_path / "image.png"
    Image.new("RGB", image_size, (40, 160, 90)).save(path)
    array = load_image(path, size, resize=resize)
    assert array.shape == (*size, 3) and array.dtype == np.uint8
    # The image is centred (an odd pixel of padding goes after it), so the
    # middle pixel, rounded down, is always the image's, however thin.
    assert _close(array[(size[0] - 1) // 2, (size[1] - 1) // 2], (40, 160, 90), 2)


def test_pad_with_the_same_aspect_ratio_adds_no_border(tmp_path):
    path = tmp_path / "image.png"
    Image.new("RGB", (90, 60), (40, 160, 90)).save(path)
    padded = load_image(path, (30, 45), resize="pad")
    assert (padded == load_image(path, (30, 45), resize="crop")).all()
    assert _close(padded, np.broadcast_to((40, 160, 90), padded.shape), 0)


def test_resize_mode_is_checked(tmp_path):
    path = tmp_path / "image.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(ValueError, match=r"resize must be one of \('crop', 'pad'\), got 'squash'"):
        load_image(path, (2, 2), resize="squash")
    assert load_image(path, resize="pad").shape == (4, 4, 3)  # no size: no resizing at all


def test_jpeg_scale_keeps_twice_the_resized_size():
    from devise.datasets.images import jpeg_scale

    assert jpeg_scale(4032, 3024, (224, 224)) == 4  # a 12-megapixel photo: 1008x756, over 2 x 224
    assert jpeg_scale(4032, 3024, (224, 224), orientation=6) == 4
    assert jpeg_scale(895, 2000, (224, 224)) == 1  # 895 < 2 x 2 x 224
    assert jpeg_scale(896, 2000, (224, 224)) == 2
    assert jpeg_scale(7200, 7200, (224, 224)) == 8
    # A panorama: crop keeps its height's gap, pad only needs the width's.
    assert jpeg_scale(8000, 600, (224, 224), "crop") == 1
    assert jpeg_scale(8000, 600, (224, 224), "pad") == 8
    # Turned photos compare the stored width with the upright height.
    assert jpeg_scale(2000, 1000, (224, 448), "crop") == 2
    assert jpeg_scale(2000, 1000, (224, 448), "crop", orientation=6) == 1


def test_large_jpeg_is_decoded_reduced_and_stays_close_to_a_full_decode(tmp_path):
    """A camera-size JPEG decodes at 1/4 scale: within one level (mean below 0.3) of decoding every pixel."""
    import skimage.data

    rng = np.random.default_rng(1)
    photo = Image.fromarray(skimage.data.astronaut()).resize((4032, 3024), Image.Resampling.BICUBIC)
    photo = Image.fromarray((np.asarray(photo) + rng.integers(-10, 10, (3024, 4032, 3))).clip(0, 255).astype(np.uint8))
    path = tmp_path / "camera.jpg"
    photo.save(path, quality=90)
    calls = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        calls.append(size)
        return draft(self, mode, size)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
        reduced = load_image(path, (224, 224)).astype(int)
    assert calls == [(1008, 756)]
    with Image.open(path) as img:
        full = img.convert("RGB").resize((299, 224), Image.Resampling.BILINEAR).crop((37, 0, 261, 224))
    diff = np.abs(reduced - np.asarray(full, dtype=int))
    assert diff.max() <= 2 and diff.mean() < 0.3
    # Without a size (thumbnails' callers, the original pixels) nothing is reduced.
    assert load_image(path).shape == (3024, 4032, 3)


def test_damaged_exif_is_a_data_format_error(tmp_path):
    """One byte turns the EXIF tag Make (ASCII) into T4Options (LONG): Pillow's unpacking raised struct.error."""
    exif = Image.Exif()
    exif[0x010F] = "Camera"
    exif[ORIENTATION] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(buffer, "JPEG", exif=exif.tobytes())
    data = bytearray(buffer.getvalue())
    tiff = data.find(b"Exif\x00\x00") + 6
    assert data[tiff : tiff + 2] == b"MM" and data[tiff + 10 : tiff + 12] == b"\x01\x0f"  # the first entry: Make
    data[tiff + 11] = 0x24
    path = tmp_path / "damaged-exif.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match="damaged-exif.jpg: cannot decode image"):
        load_image(path, (32, 32))

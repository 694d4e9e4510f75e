"""Image decoding and fitting in TensorFlow ops against :func:`devise.datasets.images.load_image`, pixel for pixel."""

from __future__ import annotations

import io
import pathlib
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from devise.datasets.image_ops import exif_orientation, load_image_ops
from devise.datasets.images import load_image

EMOJI_IMAGES = pathlib.Path("/work/data/emoji/images")
SIZE = (224, 224)


def _save(image: Image.Image, path: pathlib.Path, **options) -> pathlib.Path:
    image.save(path, **options)
    return path


def _png16(array: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow writes 16-bit greyscale only)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    height, width = array.shape[:2]
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _big_endian_exif_jpeg(photo: np.ndarray, orientation: int) -> bytes:
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff += struct.pack(">I", 0)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\x00\x00" + tiff
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    return data[:2] + app1 + data[2:]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[pathlib.Path]:
    """Real photos in every format and mode load_image handles, shapes demo images and emoji renders."""
    import skimage.data

    from devise.datasets.shapes import generate_shapes

    folder = tmp_path_factory.mktemp("images")
    files = []
    for name in ("astronaut", "chelsea", "coffee"):  # 512x512, 451x300, 600x400 photos
        photo = Image.fromarray(getattr(skimage.data, name)())
        files.append(_save(photo, folder / f"{name}.jpg", quality=90))
        files.append(_save(photo, folder / f"{name}.png"))
        files.append(_save(photo.convert("L"), folder / f"{name}-grey.jpg", quality=90))
    cat = skimage.data.chelsea()
    photo = Image.fromarray(cat)
    for orientation in range(1, 9):
        exif = photo.getexif()
        exif[0x0112] = orientation
        files.append(_save(photo, folder / f"exif{orientation}.jpg", quality=90, exif=exif.tobytes()))
    exif[0x0112] = 6
    files.append(_save(photo, folder / "exif6.png", exif=exif.tobytes()))
    exif[0x0112] = 8  # behind a 60 kB ICC profile segment
    files.append(_save(photo, folder / "exif8-after-icc.jpg", exif=exif.tobytes(), icc_profile=b"x" * 60000))
    (folder / "exif6-big-endian.jpg").write_bytes(_big_endian_exif_jpeg(cat, 6))
    files.append(folder / "exif6-big-endian.jpg")
    ramp = (np.linspace(0, 255, cat.shape[1])[None, :] * np.ones((cat.shape[0], 1))).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([cat, ramp]), "RGBA")
    files.append(_save(rgba, folder / "alpha.png"))
    files.append(_save(rgba.convert("LA"), folder / "grey-alpha.png"))
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE)
    files.append(_save(palette, folder / "palette.png"))
    files.append(_save(palette, folder / "palette-transparent.png", transparency=0))
    files.append(_save(photo, folder / "photo.gif"))
    files.append(_save(photo, folder / "photo.bmp"))
    files.append(_save(photo, folder / "photo.webp", quality=90))
    files.append(_save(photo.convert("CMYK"), folder / "cmyk.jpg"))
    files.append(_save(Image.fromarray(cat[..., 0].astype(np.uint16) * 200), folder / "grey16.png"))
    wide = cat.astype(np.uint16) * 257 + np.arange(cat.shape[1], dtype=np.uint16)[None, :, None]
    (folder / "rgb16.png").write_bytes(_png16(wide, 2))
    (folder / "rgba16.png").write_bytes(_png16(np.dstack([wide, np.full(cat.shape[:2], 30000, np.uint16)]), 6))
    files += [folder / "rgb16.png", folder / "rgba16.png"]
    files.append(_save(photo.resize((50, 31)), folder / "tiny.png"))  # enlarged
    files.append(_save(photo.resize((1000, 90)), folder / "panorama.jpg", quality=90))
    files += _large_jpegs(folder)
    shapes = generate_shapes(folder / "shapes", images_per_category=1, image_size=128)
    files += sorted(shapes.rglob("*.jpg"))
    if EMOJI_IMAGES.is_dir():
        files += sorted(EMOJI_IMAGES.glob("*.png"))[::100]
    return files


def _large_jpegs(folder: pathlib.Path) -> list[pathlib.Path]:
    """JPEGs large enough for load_image to decode at 1/2, 1/4 or 1/8 scale (odd sizes, turned, grey, ...)."""
    import skimage.data

    coffee = Image.fromarray(skimage.data.coffee())  # 600x400, enlarged with detail added
    noise = np.random.default_rng(0).integers(-20, 20, (2300, 3700, 3))
    big = Image.fromarray(
        (np.asarray(coffee.resize((3700, 2300), Image.Resampling.BICUBIC)) + noise).clip(0, 255).astype(np.uint8)
    )
    files = []
    for width, height in ((3700, 2300), (1901, 1333), (999, 901), (3700, 700), (700, 2300)):
        files.append(_save(big.crop((0, 0, width, height)), folder / f"large-{width}x{height}.jpg", quality=85))
    exif = big.getexif()
    exif[0x0112] = 6
    files.append(_save(big.crop((0, 0, 1901, 1000)), folder / "large-exif6.jpg", quality=85, exif=exif.tobytes()))
    files.append(_save(big.crop((0, 0, 1901, 1333)), folder / "large-progressive.jpg", quality=85, progressive=True))
    files.append(_save(big.crop((0, 0, 1901, 1333)), folder / "large-444.jpg", quality=85, subsampling=0))
    files.append(_save(big.crop((0, 0, 1901, 1333)).convert("L"), folder / "large-grey.jpg", quality=85))
    return files


def test_large_jpegs_are_decoded_at_the_same_reduced_scale(image_files):
    """Every reduced scale and both resize modes are chosen alike in the graph (the pixel test checks the rest)."""
    from devise.datasets.image_ops import jpeg_scale_index
    from devise.datasets.images import jpeg_scale

    seen = set()
    for path in image_files:
        if path.suffix != ".jpg":
            continue
        data = path.read_bytes()
        with Image.open(path) as img:
            orientation = img.getexif().get(0x0112, 1)
            for resize in ("crop", "pad"):
                scale = jpeg_scale(img.width, img.height, SIZE, resize, orientation)
                assert [1, 2, 4, 8][int(jpeg_scale_index(tf.constant(data), SIZE, resize))] == scale, (path, resize)
                seen.add(scale)
    assert seen == {1, 2, 4, 8}


@pytest.mark.parametrize("resize", ["crop", "pad"])
def test_same_pixels_as_load_image(image_files, resize):
    fit = tf.function(lambda data: load_image_ops(data, SIZE, resize), input_signature=[tf.TensorSpec([], tf.string)])
    differ = []
    for path in image_files:
        expected = load_image(path, SIZE, resize=resize)
        got = fit(tf.constant(path.read_bytes())).numpy()
        if got.shape != expected.shape or not np.array_equal(got, expected):
            differ.append(path.name)
    assert len(image_files) > 50
    assert not differ


def test_exif_orientations_are_read(image_files):
    by_name = {path.name: path for path in image_files}
    read = tf.function(exif_orientation, input_signature=[tf.TensorSpec([], tf.string)])
    assert [int(read(by_name[f"exif{o}.jpg"].read_bytes())) for o in range(1, 9)] == list(range(1, 9))
    assert int(read(by_name["exif6-big-endian.jpg"].read_bytes())) == 6
    assert int(read(by_name["exif6.png"].read_bytes())) == 6
    assert int(read(by_name["exif8-after-icc.jpg"].read_bytes())) == 8
    assert int(read(by_name["astronaut.jpg"].read_bytes())) == 1
    for junk in (b"", b"\xff\xd8", b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00II*\x00", b"not an image"):
        assert int(read(junk)) == 1


def test_documented_gaps(tmp_path):
    """What NOT_MATCHED lists: GIF transparency is not composited, TIFF does not decode."""
    photo = Image.fromarray(np.full((40, 60, 3), 200, np.uint8))
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE)
    gif = _save(palette, tmp_path / "transparent.gif", transparency=0)
    assert not np.array_equal(load_image_ops(gif.read_bytes(), SIZE).numpy(), load_image(gif, SIZE))
    tiff = _save(photo, tmp_path / "photo.tiff")
    with pytest.raises(tf.errors.InvalidArgumentError):
        load_image_ops(tiff.read_bytes(), SIZE)

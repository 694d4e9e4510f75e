"""Every kind of bad data, end to end: reported item by item, never fatal, every good item kept.

Bad data is caught in two stages, each reporting to the same DataReport:

1. Loading (:func:`load_caption_dataset`) reads the annotations and checks
   each referenced image with one ``os.stat``: missing or empty images,
   missing / empty / non-UTF-8 caption files, duplicate image ids and
   malformed manifest lines are found here, cheaply, before any decoding.
2. Feature extraction (:meth:`FeatureExtractor.extract_files`) decodes the
   images: a truncated image or a file that is not an image at all passes
   stage 1 (it exists and is not empty) and is skipped and reported here,
   while every other image still gets its features. The trainer copies
   these failures into the run's report.

In strict mode stage 1 stops at the first problem: the reader's first
(annotation) problem in file order, else the first missing/empty image.
"""

from __future__ import annotations

import io
import pathlib
import re

import keras
import numpy as np
import pytest
from PIL import Image

from devise.datasets.loader import load_caption_dataset
from devise.datasets.report import DataReport
from devise.encoders.feature_extractor import FeatureExtractor
from devise.errors import DataFormatError

COLOURS = {"good1": (220, 20, 20), "good2": (20, 220, 20), "good3": (20, 20, 220)}


class MeanColour(FeatureExtractor):
    """Per-channel mean of an 8x8 image: a tiny stand-in for a real backbone."""

    name = "mean-colour"
    input_size = (8, 8)

    @property
    def output_dim(self) -> int:
        return 3

    def build_model(self):
        images = keras.Input((*self.input_size, 3))
        return keras.Model(images, keras.layers.GlobalAveragePooling2D()(images))


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


NOT_AN_IMAGE = b"<html>404 Not Found</html>\n"


def _pascal_fixture(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """A Pascal layout with three good images and one of every bad case."""
    images, sentences = root / "dataset" / "cat", root / "sentence" / "cat"
    images.mkdir(parents=True)
    sentences.mkdir(parents=True)
    for stem, colour in COLOURS.items():
        (images / f"{stem}.jpg").write_bytes(_jpeg(colour))
        (sentences / f"{stem}.txt").write_text(f"A {stem} cat.\nAnother {stem} cat.\n", encoding="utf-8")
    bad = {
        "missing_image": sentences / "gone.txt",  # captions, no image
        "zero_byte": images / "zero.jpg",
        "truncated": images / "truncated.jpg",
        "not_an_image": images / "fake.jpg",
        "caption_file_missing": images / "nocaption.jpg",
        "caption_file_empty": sentences / "blank.txt",
        "not_utf8": sentences / "latin1.txt",
        "duplicate_id": images / "good1.png",  # a second file for image id cat/good1
    }
    bad["missing_image"].write_text("A cat nobody photographed.\n", encoding="utf-8")
    bad["zero_byte"].write_bytes(b"")
    (sentences / "zero.txt").write_text("An empty file.\n", encoding="utf-8")
    bad["truncated"].write_bytes(_truncated_jpeg())
    (sentences / "truncated.txt").write_text("Half a cat.\n", encoding="utf-8")
    bad["not_an_image"].write_bytes(NOT_AN_IMAGE)
    (sentences / "fake.txt").write_text("A web page.\n", encoding="utf-8")
    bad["caption_file_missing"].write_bytes(_jpeg((9, 9, 9)))
    (images / "blank.jpg").write_bytes(_jpeg((9, 9, 9)))
    bad["caption_file_empty"].write_text("\n  \n", encoding="utf-8")
    (images / "latin1.jpg").write_bytes(_jpeg((9, 9, 9)))
    bad["not_utf8"].write_bytes("A cat.\nA caf\u00e9 cat.\n".encode("latin-1"))
    Image.new("RGB", (16, 16), (9, 9, 9)).save(bad["duplicate_id"])
    return bad


def _manifest_fixture(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A JSONL manifest with three good images (two captions each) and every bad case."""
    images = folder / "images"
    images.mkdir(parents=True)
    for stem, colour in COLOURS.items():
        (images / f"{stem}.jpg").write_bytes(_jpeg(colour))
    (images / "zero.jpg").write_bytes(b"")
    (images / "truncated.jpg").write_bytes(_truncated_jpeg())
    (images / "fake.jpg").write_bytes(NOT_AN_IMAGE)
    lines = [
        b'{"image": "good1.jpg", "caption": "A red square.", "split": "train"}',  # 1
        b'{"image": "good1.jpg", "caption": "Red.", "split": "train"}',  # 2
        b'{"image": "gone.jpg", "caption": "Never downloaded.", "split": "train"}',  # 3 missing image
        b'{"image": "zero.jpg", "caption": "Zero bytes.", "split": "train"}',  # 4 empty image
        b'{"image": "truncated.jpg", "caption": "Half a file.", "split": "val"}',  # 5 decode-time
        b'{"image": "fake.jpg", "caption": "A web page.", "split": "val"}',  # 6 decode-time
        b'{"image": "good2.jpg", "split": "val"}',  # 7 caption missing
        b'{"image": "good2.jpg", "caption": "  ", "split": "val"}',  # 8 caption empty
        b'{"image": "good2.jpg", "caption": "Caf\xe9.", "split": "val"}',  # 9 not UTF-8
        b'{"image": "good3.jpg", "image_id": "good1.jpg", "caption": "Clash.", "split": "train"}',  # 10 dup id
        b'{"image": "good2.jpg", "caption": "Unclosed',  # 11 bad JSON
        b'{"image": "good2.jpg", "caption": "Green.", "split": "validation"}',  # 12 unknown split
        b'["good2.jpg", "Green."]',  # 13 not an object
        b'{"image": "good2.jpg", "caption": "A green square.", "split": "val"}',  # 14
        b'{"image": "good2.jpg", "caption": "Green.", "split": "val"}',  # 15
        b'{"image": "good3.jpg", "caption": "A blue square.", "split": "test"}',  # 16
        b'{"image": "good3.jpg", "caption": "Blue.", "split": "test"}',  # 17
    ]
    manifest = folder / "captions.jsonl"
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    return manifest, images


def _problems(report: DataReport) -> list[tuple[str, int | None, str]]:
    return [(p.path, p.line, p.reason) for p in report.problems]


def test_pascal_layout_reports_every_bad_item_and_keeps_the_good(tmp_path):
    bad = _pascal_fixture(tmp_path)
    report = DataReport()
    records = load_caption_dataset("pascal", root=tmp_path, report=report)

    # Truncated and not-an-image files pass stage 1: they exist and are not empty.
    assert sorted({r.image_id for r in records}) == [
        "cat/fake",
        "cat/good1",
        "cat/good2",
        "cat/good3",
        "cat/truncated",
    ]
    assert len([r for r in records if r.image_id.startswith("cat/good")]) == 6
    assert {r.image_path for r in records if r.image_id == "cat/good1"} == {str(tmp_path / "dataset/cat/good1.jpg")}
    expected = {
        (str(bad["duplicate_id"]), None, "duplicate of good1.jpg; using that one"),
        (str(bad["missing_image"]), None, f"sentence file has no image (expected {tmp_path}/dataset/cat/gone.jpg)"),
        (str(bad["zero_byte"]), None, "empty image file (0 bytes)"),
        (
            str(bad["caption_file_missing"]),
            None,
            f"image has no sentence file (expected {tmp_path}/sentence/cat/nocaption.txt)",
        ),
        (str(bad["caption_file_empty"]), None, "sentence file has no captions"),
        (str(bad["not_utf8"]), 2, "not valid UTF-8 (byte 0xe9)"),
    }
    assert len(report) == len(expected) and set(_problems(report)) == expected

    _decode_stage(records, report, bad_paths={bad["truncated"], bad["not_an_image"]})
    assert len(report) == len(expected) + 2

    # Strict: fails naming the first bad item of the sorted walk (good1.png,
    # found while listing the images), and loads nothing.
    with pytest.raises(DataFormatError, match="^" + re.escape(f"{bad['duplicate_id']}: duplicate of good1.jpg")):
        load_caption_dataset("pascal", root=tmp_path, strict=True)


def test_manifest_reports_every_bad_line_and_keeps_the_good(tmp_path):
    manifest, images = _manifest_fixture(tmp_path)
    report = DataReport()
    records = load_caption_dataset("manifest", annotations=manifest, images=images, report=report)

    assert [(r.image_id, r.caption) for r in records] == [
        ("good1.jpg", "A red square."),
        ("good1.jpg", "Red."),
        ("truncated.jpg", "Half a file."),
        ("fake.jpg", "A web page."),
        ("good2.jpg", "A green square."),
        ("good2.jpg", "Green."),
        ("good3.jpg", "A blue square."),
        ("good3.jpg", "Blue."),
    ]
    m = str(manifest)
    expected = [
        # Stage 1a, the reader: the manifest's own lines, in file order.
        (m, 7, "missing or empty 'caption'"),
        (m, 8, "missing or empty 'caption'"),
        (m, 9, "not valid UTF-8 (byte 0xe9)"),
        (m, 10, f"image_id 'good1.jpg' is already used for {images / 'good1.jpg'} (line 1); item left out"),
        (m, 11, "invalid JSON ("),
        (m, 12, "unknown split 'validation' (expected one of train, val, test)"),
        (m, 13, "expected a JSON object, got list"),
        # Stage 1b, the loader: the image files the good lines name.
        (str(images / "gone.jpg"), None, f"image file not found (listed in {manifest})"),
        (str(images / "zero.jpg"), None, "empty image file (0 bytes)"),
    ]
    problems = _problems(report)
    assert [p[:2] for p in problems] == [e[:2] for e in expected]
    # Reasons are compared by their start: JSON error details vary by Python version.
    for (_, _, reason), (_, _, expected_reason) in zip(problems, expected, strict=True):
        assert reason.startswith(expected_reason), reason

    _decode_stage(records, report, bad_paths={images / "truncated.jpg", images / "fake.jpg"})
    assert len(report) == len(expected) + 2

    # Strict: the first bad line of the manifest.
    with pytest.raises(DataFormatError, match="^" + re.escape(f"{manifest}:7: missing or empty 'caption'")):
        load_caption_dataset("manifest", annotations=manifest, images=images, strict=True)
    # With the manifest fixed, strict stops at the first bad image file.
    good_lines = [line for number, line in enumerate(manifest.read_bytes().splitlines(), 1) if number <= 6]
    manifest.write_bytes(b"\n".join(good_lines) + b"\n")
    with pytest.raises(DataFormatError, match="^" + re.escape(f"{images / 'gone.jpg'}: image file not found")):
        load_caption_dataset("manifest", annotations=manifest, images=images, strict=True)


def _decode_stage(records, report: DataReport, bad_paths: set[pathlib.Path]) -> None:
    """Stage 2: decode every image once; the undecodable ones are skipped and reported."""
    paths = list(dict.fromkeys(r.image_path for r in records))
    result = MeanColour(batch_size=2).extract_files(paths, progress=False)
    for path, reason in result.failures:
        report.add(path, reason)

    assert {path for path, _ in result.failures} == {str(p) for p in bad_paths}
    assert all(reason.startswith(f"{path}: cannot decode image") for path, reason in result.failures)
    assert any("truncated" in reason for _, reason in result.failures)
    decoded = [paths[i] for i in result.indices]
    assert decoded == [p for p in paths if pathlib.Path(p) not in bad_paths]
    # Each good image kept its own features (the mean colour).
    for row, path in zip(result.features, decoded, strict=True):
        stem = pathlib.Path(path).stem
        assert np.allclose(row, COLOURS[stem], atol=4), (path, row)

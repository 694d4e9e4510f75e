"""Tests for the Pascal Sentences reader and the DataReport it fills."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

import pytest
from PIL import Image

from devise.datasets.images import load_image
from devise.datasets.pascal import (
    PASCAL_CATEGORIES,
    PascalItem,
    read_pascal_sentences,
    write_pascal_layout,
)
from devise.datasets.report import DataReport
from devise.errors import DataFormatError, MissingResourcesError


def _image(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (24, 16), colour)


def _good_layout(root: pathlib.Path) -> pathlib.Path:
    items = [
        PascalItem("cat", "2008_000002", _image((200, 0, 0)), ["A cat.", "  A sleeping cat.  "]),
        PascalItem("cat", "2008_000001", _image((0, 200, 0)), ["First cat.", "", "Second caption."]),
        PascalItem("aeroplane", "2008_000716", _image((0, 0, 200)), ["A plane in the sky."]),
    ]
    return write_pascal_layout(root, items)


def test_categories_are_the_twenty_pascal_classes():
    assert len(PASCAL_CATEGORIES) == 20
    assert tuple(sorted(PASCAL_CATEGORIES)) == PASCAL_CATEGORIES
    assert {"aeroplane", "diningtable", "tvmonitor", "pottedplant"} <= set(PASCAL_CATEGORIES)


def test_reads_one_record_per_caption_in_sorted_order(tmp_path):
    root = _good_layout(tmp_path)
    report = DataReport()
    records = read_pascal_sentences(root, report=report)

    assert len(report) == 0
    assert [(r.image_id, r.caption) for r in records] == [
        ("aeroplane/2008_000716", "A plane in the sky."),
        ("cat/2008_000001", "First cat."),
        ("cat/2008_000001", "Second caption."),
        ("cat/2008_000002", "A cat."),
        ("cat/2008_000002", "A sleeping cat."),
    ]
    assert all(r.category == r.image_id.split("/")[0] for r in records)
    first = records[0]
    assert pathlib.Path(first.image_path) == root / "dataset" / "aeroplane" / "2008_000716.jpg"
    assert load_image(first.image_path).shape == (16, 24, 3)


def test_accepts_jpeg_and_png_extensions_in_any_case(tmp_path):
    png = tmp_path / "x.png"
    _image((1, 2, 3)).save(png)
    write_pascal_layout(
        tmp_path / "data",
        [
            PascalItem("dog", "a", _image((9, 9, 9)), ["upper case jpg"], extension=".JPG"),
            PascalItem("dog", "b", _image((9, 9, 9)), ["jpeg"], extension=".jpeg"),
            PascalItem("dog", "c", png.read_bytes(), ["png"], extension=".png"),
        ],
    )
    (tmp_path / "data" / "dataset" / "dog" / "notes.md").write_text("not an image")
    records = read_pascal_sentences(tmp_path / "data")
    assert [r.image_id for r in records] == ["dog/a", "dog/b", "dog/c"]


def _broken_layout(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """A good item plus one of each problem the reader must report."""
    _good_layout(root)
    images, sentences = root / "dataset" / "cat", root / "sentence" / "cat"
    paths = {
        "no_sentence": images / "2008_000010.jpg",
        "no_image": sentences / "2008_000011.txt",
        "empty_sentences": sentences / "2008_000012.txt",
        "not_utf8": sentences / "2008_000013.txt",
        "zero_byte_image": images / "2008_000014.jpg",
    }
    _image((5, 5, 5)).save(paths["no_sentence"])
    paths["no_image"].write_text("orphan caption\n", encoding="utf-8")
    _image((5, 5, 5)).save(images / "2008_000012.jpg")
    paths["empty_sentences"].write_text("\n   \n\n", encoding="utf-8")
    _image((5, 5, 5)).save(images / "2008_000013.jpg")
    paths["not_utf8"].write_bytes("good line\ncaf\u00e9 in latin-1\n".encode("latin-1"))
    paths["zero_byte_image"].write_bytes(b"")
    (sentences / "2008_000014.txt").write_text("caption of an empty image\n", encoding="utf-8")
    return paths


def test_reports_each_bad_item_and_keeps_every_good_one(tmp_path):
    paths = _broken_layout(tmp_path)
    report = DataReport()
    records = read_pascal_sentences(tmp_path, report=report)

    # Only the three good images load; every bad one is left out.
    assert sorted({r.image_id for r in records}) == [
        "aeroplane/2008_000716",
        "cat/2008_000001",
        "cat/2008_000002",
    ]
    by_path = {p.path: p for p in report.problems}
    assert set(by_path) == {str(p) for p in paths.values()}
    assert "no sentence file" in by_path[str(paths["no_sentence"])].reason
    assert "has no image" in by_path[str(paths["no_image"])].reason
    assert "no captions" in by_path[str(paths["empty_sentences"])].reason
    not_utf8 = by_path[str(paths["not_utf8"])]
    assert "UTF-8" in not_utf8.reason and not_utf8.line == 2
    assert "0 bytes" in by_path[str(paths["zero_byte_image"])].reason
    assert all(p.line is None for p in report.problems if p is not not_utf8)


def test_strict_mode_raises_on_the_first_problem(tmp_path):
    paths = _broken_layout(tmp_path)
    with pytest.raises(DataFormatError) as caught:
        read_pascal_sentences(tmp_path, strict=True)
    # Sorted walk: stem 2008_000010 (image without sentences) comes first.
    assert str(caught.value).startswith(f"{paths['no_sentence']}: ")

    # strict=True wins over a lenient report passed in, which stays empty.
    report = DataReport()
    with pytest.raises(DataFormatError):
        read_pascal_sentences(tmp_path, strict=True, report=report)
    assert len(report) == 0


def test_strict_report_raises_with_line_number(tmp_path):
    _good_layout(tmp_path)
    _image((5, 5, 5)).save(tmp_path / "dataset" / "cat" / "x.jpg")
    (tmp_path / "sentence" / "cat" / "x.txt").write_bytes(b"ok\nok\n\xff\xfe\n")
    with pytest.raises(DataFormatError, match=r"x\.txt:3: not valid UTF-8"):
        read_pascal_sentences(tmp_path, report=DataReport(strict=True))


@pytest.mark.parametrize("missing", ["root", "dataset", "sentence"])
def test_missing_folders_raise_with_path_and_instructions(tmp_path, missing):
    root = tmp_path / "pascal"
    if missing != "root":
        _good_layout(root)
        shutil.rmtree(root / missing)
    with pytest.raises(MissingResourcesError) as caught:
        read_pascal_sentences(root)
    message = str(caught.value)
    expected_path = root if missing == "root" else root / missing
    assert str(expected_path) in message
    assert "dataset/<category>/<stem>.jpg" in message
    assert "sentence/<category>/<stem>.txt" in message
    assert "http://vision.cs.uiuc.edu/pascal-sentences/" in message
    assert f"devise-download pascal --dest {root}" in message
    assert isinstance(caught.value, FileNotFoundError)


def test_write_layout_rejects_unsafe_names_and_multiline_captions(tmp_path):
    with pytest.raises(ValueError):
        write_pascal_layout(tmp_path, [PascalItem("../cat", "a", _image((0, 0, 0)), ["x"])])
    with pytest.raises(ValueError):
        write_pascal_layout(tmp_path, [PascalItem("cat", "a", _image((0, 0, 0)), ["two\nlines"])])


def test_captions_with_unicode_line_separators_read_back_whole(tmp_path):
    # write_pascal_layout accepts these (only \n and \r are line breaks),
    # so each must come back as one caption, not be split in two.
    captions = ["A cat\u2028on a mat.", "Page\x0cbreak.", "Next\x85line.", "Old\x1cseparator."]
    root = write_pascal_layout(tmp_path, [PascalItem("cat", "a", _image((0, 0, 0)), captions)])
    (root / "sentence" / "cat" / "b.txt").write_bytes(b"Windows line.\r\nOld Mac line.\rLast.")
    shutil.copy(root / "dataset" / "cat" / "a.jpg", root / "dataset" / "cat" / "b.jpg")
    records = read_pascal_sentences(root)
    assert [r.caption for r in records] == [*captions, "Windows line.", "Old Mac line.", "Last."]


def test_unreadable_sentence_file_is_reported_not_raised(tmp_path, monkeypatch):
    root = _good_layout(tmp_path)
    unreadable = root / "sentence" / "cat" / "2008_000001.txt"
    read_bytes = pathlib.Path.read_bytes

    def failing_read_bytes(self):
        if self == unreadable:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", failing_read_bytes)
    report = DataReport()
    records = read_pascal_sentences(root, report=report)
    assert {r.image_id for r in records} == {"aeroplane/2008_000716", "cat/2008_000002"}
    assert [str(p) for p in report.problems] == [f"{unreadable}: cannot read sentence file (Permission denied)"]


def test_report_summary_and_json(tmp_path):
    report = DataReport()
    assert len(report) == 0 and "no data problems" in report.summary()
    for i in range(12):
        report.add(f"file{i}.txt", "bad thing", line=i + 1 if i % 2 else None)
    summary = report.summary(max_items=3)
    assert summary.splitlines() == [
        "12 data problems found:",
        "  file0.txt: bad thing",
        "  file1.txt:2: bad thing",
        "  file2.txt: bad thing",
        "  ... and 9 more",
    ]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["count"] == 12
    assert data["problems"][1] == {"path": "file1.txt", "line": 2, "reason": "bad thing"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.problems[0].reason = "changed"

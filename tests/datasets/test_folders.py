"""Tests for the class-per-folder reader, label files and per-class splitting."""

from __future__ import annotations

import pathlib

import pytest

from devise.datasets import (
    ClassImage,
    DataReport,
    class_images_by_split,
    read_class_folders,
    read_label_file,
    split_class_images,
)
from devise.errors import DataFormatError, DeviseError, MissingResourcesError


def _touch(path: pathlib.Path, data: bytes = b"\xff\xd8fake image") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_class_layout_reads_every_image_with_its_class(tmp_path):
    for name in ("b.JPG", "a.png", "c.webp"):
        _touch(tmp_path / "dog" / name)
    _touch(tmp_path / "polar_bear" / "x.jpeg")
    _touch(tmp_path / "polar_bear" / "more" / "y.bmp")  # class folders are read recursively
    report = DataReport()
    images = read_class_folders(tmp_path, report=report)
    assert [(i.image_id, i.class_name, i.split) for i in images] == [
        ("dog/a.png", "dog", None),
        ("dog/b.JPG", "dog", None),
        ("dog/c.webp", "dog", None),
        ("polar_bear/x.jpeg", "polar_bear", None),
        ("polar_bear/more/y.bmp", "polar_bear", None),
    ]
    assert images[0].image_path == str(tmp_path / "dog" / "a.png")
    assert images[0].label_words is None
    assert len(report) == 0


def test_split_layout_is_detected(tmp_path):
    _touch(tmp_path / "train" / "cat" / "1.jpg")
    _touch(tmp_path / "train" / "dog" / "2.jpg")
    _touch(tmp_path / "test" / "cat" / "3.gif")
    images = read_class_folders(tmp_path)
    assert [(i.image_id, i.class_name, i.split) for i in images] == [
        ("train/cat/1.jpg", "cat", "train"),
        ("train/dog/2.jpg", "dog", "train"),
        ("test/cat/3.gif", "cat", "test"),
    ]
    splits = class_images_by_split(images)
    assert [len(splits[name]) for name in ("train", "val", "test")] == [2, 0, 1]


def test_a_class_named_train_among_others_is_a_class(tmp_path):
    # Pascal VOC has a class "train": only folders that are all split names mean splits.
    _touch(tmp_path / "train" / "1.jpg")
    _touch(tmp_path / "bus" / "2.jpg")
    images = read_class_folders(tmp_path)
    assert {(i.class_name, i.split) for i in images} == {("train", None), ("bus", None)}
    # ... and the layout can be forced either way.
    only = tmp_path / "only"
    _touch(only / "train" / "1.jpg")
    assert read_class_folders(only, layout="classes")[0].class_name == "train"


def test_bad_files_are_reported_and_skipped(tmp_path):
    _touch(tmp_path / "dog" / "good.jpg")
    _touch(tmp_path / "dog" / "notes.txt", b"hello")
    _touch(tmp_path / "dog" / "empty.png", b"")
    _touch(tmp_path / "dog" / ".DS_Store", b"junk")  # hidden: skipped silently
    _touch(tmp_path / ".hidden_class" / "x.jpg")
    _touch(tmp_path / "README.md", b"top-level file")
    (tmp_path / "cat").mkdir()
    report = DataReport()
    images = read_class_folders(tmp_path, report=report)
    assert [i.image_id for i in images] == ["dog/good.jpg"]
    problems = {pathlib.Path(p.path).name: p.reason for p in report.problems}
    assert set(problems) == {"notes.txt", "empty.png", "README.md", "cat"}
    assert "not an image" in problems["notes.txt"]
    assert "0 bytes" in problems["empty.png"]
    assert "outside any class folder" in problems["README.md"]
    assert "no images" in problems["cat"]


def test_strict_mode_raises_on_the_first_problem(tmp_path):
    _touch(tmp_path / "dog" / "good.jpg")
    _touch(tmp_path / "dog" / "notes.txt", b"hello")
    with pytest.raises(DataFormatError, match="notes.txt.*not an image"):
        read_class_folders(tmp_path, strict=True)


def test_empty_or_missing_root_names_the_folder_and_the_layout(tmp_path):
    with pytest.raises(MissingResourcesError, match="does not exist"):
        read_class_folders(tmp_path / "nope")
    with pytest.raises(DataFormatError, match=r"no class folders.*<root>/<class>/<image>"):
        read_class_folders(tmp_path)
    _touch(tmp_path / "dog" / "notes.txt", b"hello")
    with pytest.raises(DataFormatError, match=f"{tmp_path}: no images found.*train,val,test"):
        read_class_folders(tmp_path)


def test_forced_split_layout_rejects_other_folders(tmp_path):
    _touch(tmp_path / "train" / "dog" / "1.jpg")
    _touch(tmp_path / "validation" / "dog" / "2.jpg")
    with pytest.raises(DataFormatError, match="validation are not train, val or test"):
        read_class_folders(tmp_path, layout="splits")
    with pytest.raises(ValueError, match="layout"):
        read_class_folders(tmp_path, layout="flat")


def test_label_file_parsing(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_bytes(
        "\ufeff# folder<TAB>words\n"
        "\n"
        "n02084071\tdog\n"
        "polar_bear\t  polar bear  \n"
        "no tab here\n"
        "\tmissing name\n"
        "cat\t\n"
        "n02084071\tpuppy\n"
        "bad\t\xff\n".encode("utf-8").replace(b"\xc3\xbf", b"\xff")
    )
    report = DataReport()
    labels = read_label_file(path, report=report)
    assert labels == {"n02084071": "dog", "polar_bear": "polar bear"}
    lines = {p.line: p.reason for p in report.problems}
    assert set(lines) == {5, 6, 7, 8, 9}
    assert "no tab" in lines[5]
    assert "empty folder name" in lines[6]
    assert "empty label words" in lines[7]
    assert "already labelled on line 3" in lines[8]
    assert "UTF-8" in lines[9]
    assert str(report.problems[0]).startswith(f"{path}:5: ")
    with pytest.raises(DataFormatError, match=r"labels.tsv:5: .*no tab"):
        read_label_file(path, strict=True)
    with pytest.raises(MissingResourcesError, match="label file"):
        read_label_file(tmp_path / "missing.tsv")


def test_label_file_words_go_on_the_images(tmp_path):
    _touch(tmp_path / "images" / "n02084071" / "1.jpg")
    _touch(tmp_path / "images" / "cat" / "2.jpg")
    labels = tmp_path / "labels.tsv"
    labels.write_text("n02084071\tdog\nn0208407\tdog typo\n", encoding="utf-8")
    report = DataReport()
    images = read_class_folders(tmp_path / "images", label_file=labels, report=report)
    assert {i.class_name: i.label_words for i in images} == {"n02084071": "dog", "cat": None}
    [problem] = report.problems
    assert "'n0208407'" in problem.reason and "did you mean 'n02084071'" in problem.reason


def _images(counts: dict[str, int]) -> list[ClassImage]:
    return [
        ClassImage(f"{name}/{i:03d}.jpg", f"/data/{name}/{i:03d}.jpg", name)
        for name, count in counts.items()
        for i in range(count)
    ]


def test_split_class_images_deals_each_class_by_fractions():
    images = _images({"cat": 10, "dog": 20, "emu": 3})
    splits = split_class_images(images, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    sizes = {
        name: {c: sum(i.class_name == c for i in split) for c in ("cat", "dog", "emu")}
        for name, split in splits.items()
    }
    assert sizes == {
        "train": {"cat": 6, "dog": 12, "emu": 2},
        # emu: boundaries round(1.8)=2, round(2.4)=2, 3.
        "val": {"cat": 2, "dog": 4, "emu": 0},
        "test": {"cat": 2, "dog": 4, "emu": 1},
    }
    ids = [i.image_id for split in splits.values() for i in split]
    assert sorted(ids) == sorted(i.image_id for i in images)  # each image exactly once
    assert all(i.split == name for name, split in splits.items() for i in split)


def test_split_class_images_is_deterministic_and_order_free():
    images = _images({"cat": 30, "dog": 30})
    first = split_class_images(images, seed=5)
    again = split_class_images(list(reversed(images)), seed=5)
    assert first == again
    other = split_class_images(images, seed=6)
    assert {i.image_id for i in first["test"]} != {i.image_id for i in other["test"]}


def test_split_class_images_rejects_bad_input():
    images = _images({"cat": 4})
    with pytest.raises(ValueError, match="sum to 1"):
        split_class_images(images, {"train": 0.5, "test": 0.2})
    with pytest.raises(ValueError, match=">= 0"):
        split_class_images(images, {"train": 1.5, "test": -0.5})
    with pytest.raises(DeviseError, match="already have a split"):
        split_class_images([ClassImage("a", "/a", "cat", split="train")])
    with pytest.raises(DeviseError, match="appears twice"):
        split_class_images(images + images[:1])
    with pytest.raises(DeviseError, match="split_class_images"):
        class_images_by_split(images)


def test_a_label_file_beside_the_class_folders_is_not_a_stray_file(tmp_path):
    from PIL import Image

    from devise.datasets.folders import read_class_folders
    from devise.datasets.report import DataReport

    (tmp_path / "polar_bear").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "polar_bear" / "a.png")
    (tmp_path / "labels.tsv").write_text("polar_bear\tpolar bear\n")
    (tmp_path / "notes.txt").write_text("stray\n")
    report = DataReport()
    images = read_class_folders(tmp_path, label_file=tmp_path / "labels.tsv", report=report)
    assert [image.label_words for image in images] == ["polar bear"]
    assert [problem["path"] for problem in report.to_dict()["problems"]] == [str(tmp_path / "notes.txt")]

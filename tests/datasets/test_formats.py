"""Caption dataset formats: each reader on a fixture in its real structure, and the loader.

The same three images with two captions each are written as Pascal
Sentences, a Karpathy split file, a Flickr8k token file with its split
files, a COCO captions file and JSONL/CSV/TSV manifests; every format must
give the same (image file, caption) pairs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pathlib

import pytest
from PIL import Image

from devise.datasets.coco import read_coco_captions
from devise.datasets.flickr import FLICKR8K_SPLIT_FILES, read_flickr_tokens
from devise.datasets.karpathy import read_karpathy_json
from devise.datasets.loader import DATASET_FORMATS, load_caption_dataset, splits_from_records
from devise.datasets.manifest import read_manifest
from devise.datasets.pascal import PascalItem, write_pascal_layout
from devise.datasets.records import CaptionRecord
from devise.datasets.report import DataReport
from devise.errors import ConfigError, DataFormatError, DeviseError, MissingResourcesError

# file name -> (colour, captions, split)
IMAGES = {
    "1000268201_693b08cb0e.jpg": ((200, 30, 30), ["A child in a pink dress .", "A girl, climbing stairs."], "train"),
    "1001773457_577c3a7d70.jpg": ((30, 200, 30), ["A black dog and a spotted dog .", 'Two dogs on "grass".'], "val"),
    "1002674143_1b742ab4b8.jpg": (
        (30, 30, 200),
        ["A little girl paints .", "A girl sits in front of a rainbow."],
        "test",
    ),
}


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 12), colour).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write_images(folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (colour, _, _) in IMAGES.items():
        (folder / name).write_bytes(_jpeg(colour))
    return folder


def _write_karpathy(folder: pathlib.Path) -> dict:
    images = [
        {
            "filename": name,
            "imgid": i,
            "split": split,
            "sentids": [2 * i, 2 * i + 1],
            "sentences": [
                {"raw": caption, "tokens": caption.lower().split(), "imgid": i, "sentid": 2 * i + j}
                for j, caption in enumerate(captions)
            ],
        }
        for i, (name, (_, captions, split)) in enumerate(IMAGES.items())
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dataset_flickr8k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr8k"}), encoding="utf-8")
    return {"annotations": path, "images": _write_images(folder / "Flicker8k_Dataset")}


def _write_flickr(folder: pathlib.Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{name}#{j}\t{caption}\n" for name, (_, captions, _) in IMAGES.items() for j, caption in enumerate(captions)
    ]
    token = folder / "Flickr8k.token.txt"
    token.write_text("".join(lines), encoding="utf-8")
    for split, file_name in FLICKR8K_SPLIT_FILES.items():
        names = [name for name, (_, _, s) in IMAGES.items() if s == split]
        (folder / file_name).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    return {"annotations": token, "images": _write_images(folder / "Flicker8k_Dataset")}


def _write_coco(folder: pathlib.Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    images = [
        {"id": 1000 + i, "file_name": name, "height": 12, "width": 20, "license": 1} for i, name in enumerate(IMAGES)
    ]
    annotations = [
        {"image_id": 1000 + i, "id": 10 * i + j, "caption": caption}
        for i, (_, captions, _) in enumerate(IMAGES.values())
        for j, caption in enumerate(captions)
    ]
    path = folder / "captions_val2014.json"
    data = {"info": {}, "licenses": [], "images": images, "annotations": annotations}
    path.write_text(json.dumps(data), encoding="utf-8")
    return {"annotations": path, "images": _write_images(folder / "val2014")}


def _write_manifest(folder: pathlib.Path, extension: str) -> dict:
    _write_images(folder / "images")
    rows = [
        {"image": f"images/{name}", "caption": caption, "split": split, "category": "photo"}
        for name, (_, captions, split) in IMAGES.items()
        for caption in captions
    ]
    path = folder / f"manifest{extension}"
    if extension == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif extension == ".tsv":
        # TSV as most tools write it: one tab between fields, no quoting.
        lines = ["image\tcaption\tsplit\tcategory\n"]
        lines += [f"{r['image']}\t{r['caption']}\t{r['split']}\t{r['category']}\n" for r in rows]
        path.write_text("".join(lines), encoding="utf-8")
    else:
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption", "split", "category"])
            writer.writerows([row["image"], row["caption"], row["split"], row["category"]] for row in rows)
    return {"annotations": path}


def _write_pascal(folder: pathlib.Path) -> dict:
    items = [
        PascalItem("photo", name.removesuffix(".jpg"), _jpeg(colour), captions)
        for name, (colour, captions, _) in IMAGES.items()
    ]
    return {"root": write_pascal_layout(folder, items)}


WRITERS = {
    "pascal": _write_pascal,
    "karpathy": _write_karpathy,
    "flickr_tokens": _write_flickr,
    "coco": _write_coco,
    "manifest.jsonl": lambda folder: _write_manifest(folder, ".jsonl"),
    "manifest.csv": lambda folder: _write_manifest(folder, ".csv"),
    "manifest.tsv": lambda folder: _write_manifest(folder, ".tsv"),
}


def _digest(path: str) -> str:
    return hashlib.sha1(pathlib.Path(path).read_bytes()).hexdigest()[:12]


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_format_gives_the_same_image_caption_pairs(tmp_path, name):
    format_name = name.split(".")[0]
    arguments = WRITERS[name](tmp_path / name)
    report = DataReport()
    records = load_caption_dataset(format_name, report=report, **arguments)

    assert len(report) == 0, report.summary()
    expected = sorted(
        (_digest_of(name_), caption) for name_, (_, captions, _) in IMAGES.items() for caption in captions
    )
    assert sorted((_digest(r.image_path), r.caption) for r in records) == expected
    assert {pathlib.Path(r.image_path).name for r in records} == set(IMAGES)
    assert len(records) == 6 and len({r.image_id for r in records}) == 3
    if format_name in ("karpathy", "flickr_tokens", "manifest"):
        # These files carry splits; the loader's grouping follows them.
        splits = splits_from_records(records)
        for split_name, split_records in splits.items():
            assert {pathlib.Path(r.image_path).name for r in split_records} == {
                n for n, (_, _, s) in IMAGES.items() if s == split_name
            }


def _digest_of(name: str) -> str:
    return hashlib.sha1(_jpeg(IMAGES[name][0])).hexdigest()[:12]


def test_formats_tuple_matches_the_writers():
    assert DATASET_FORMATS == ("pascal", "karpathy", "flickr_tokens", "coco", "manifest")
    assert {name.split(".")[0] for name in WRITERS} == set(DATASET_FORMATS)


# -- Karpathy -----------------------------------------------------------------


def test_karpathy_coco_style_filepath_restval_and_tokens(tmp_path):
    images = [
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000391895.jpg",
            "split": "restval",
            "imgid": 0,
            "sentences": [{"raw": " A man on a moped. ", "tokens": ["a", "man"]}, {"tokens": ["a", "red", "helmet"]}],
        },
        {
            "filepath": "train2014",
            "filename": "COCO_train2014_000000000009.jpg",
            "split": "test",
            "imgid": 1,
            "sentences": [{"raw": "Plates of food.", "tokens": []}],
        },
        {"filename": "bare.jpg", "split": "val", "sentences": [{"raw": "No folder."}]},
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}), encoding="utf-8")
    records = read_karpathy_json(path, tmp_path / "coco")

    assert records == [
        CaptionRecord(
            "val2014/COCO_val2014_000000391895.jpg",
            os.path.join(tmp_path / "coco", "val2014", "COCO_val2014_000000391895.jpg"),
            "A man on a moped.",
            None,
            "train",
        ),
        CaptionRecord(
            "val2014/COCO_val2014_000000391895.jpg",
            os.path.join(tmp_path / "coco", "val2014", "COCO_val2014_000000391895.jpg"),
            "a red helmet",
            None,
            "train",
        ),
        CaptionRecord(
            "train2014/COCO_train2014_000000000009.jpg",
            os.path.join(tmp_path / "coco", "train2014", "COCO_train2014_000000000009.jpg"),
            "Plates of food.",
            None,
            "test",
        ),
        CaptionRecord("bare.jpg", os.path.join(tmp_path / "coco", "bare.jpg"), "No folder.", None, "val"),
    ]


def test_karpathy_bad_entries_are_reported_by_index(tmp_path):
    images = [
        {"filename": "good.jpg", "split": "train", "sentences": [{"raw": "Fine."}, {"raw": ""}]},
        {"split": "train", "sentences": [{"raw": "No file name."}]},
        {"filename": "odd.jpg", "split": "holdout", "sentences": [{"raw": "Odd split."}]},
        {"filename": "silent.jpg", "split": "val", "sentences": []},
        "not an object",
    ]
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps({"images": images}), encoding="utf-8")
    report = DataReport()
    records = read_karpathy_json(path, tmp_path, report=report)

    assert [(r.image_id, r.caption) for r in records] == [("good.jpg", "Fine.")]
    assert [(p.path, p.line) for p in report.problems] == [(str(path), None)] * 5
    reasons = [p.reason for p in report.problems]
    assert "images[0] (good.jpg): sentences[1]" in reasons[0]
    assert reasons[1] == "images[1]: no 'filename'"
    assert "images[2] (odd.jpg): unknown split 'holdout'" in reasons[2]
    assert reasons[3] == "images[3] (silent.jpg): no sentences"
    assert reasons[4].startswith("images[4]: expected an object")

    with pytest.raises(DataFormatError, match=r"dataset_flickr8k\.json: images\[0\] \(good\.jpg\): sentences\[1\]"):
        read_karpathy_json(path, tmp_path, strict=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"images": [\n  {"filename": "caf\xe9.jpg"}]}', r"dataset\.json:2: not valid UTF-8 \(byte 0xe9\)"),
        (b'{"images": [\n  {"filename": "a.jpg",}\n]}', r"dataset\.json:2: invalid JSON"),
        (b'[{"filename": "a.jpg"}]', r"dataset\.json: not a Karpathy split file"),
    ],
)
def test_karpathy_unusable_file_raises_naming_it(tmp_path, content, message):
    path = tmp_path / "dataset.json"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=message):
        read_karpathy_json(path, tmp_path)


# -- Flickr tokens ------------------------------------------------------------


def test_flickr_tokens_records_and_split_files(tmp_path):
    arguments = _write_flickr(tmp_path)
    splits = {split: tmp_path / name for split, name in FLICKR8K_SPLIT_FILES.items()}
    records = read_flickr_tokens(arguments["annotations"], arguments["images"], splits=splits)
    first = "1000268201_693b08cb0e.jpg"
    assert records[0] == CaptionRecord(
        first, os.path.join(arguments["images"], first), "A child in a pink dress .", None, "train"
    )
    assert [r.split for r in records] == ["train", "train", "val", "val", "test", "test"]
    # Without split files every split is None.
    assert {r.split for r in read_flickr_tokens(arguments["annotations"], arguments["images"])} == {None}


def test_flickr_malformed_lines_are_reported_with_line_numbers(tmp_path):
    token = tmp_path / "results_20130124.token"
    token.write_bytes(
        b"1000092795.jpg#0\tTwo young guys with shaggy hair .\n"  # 1 good
        b"1000092795.jpg#1 Two men without a tab .\n"  # 2 no tab
        b"1000092795.jpg\tNo caption number .\n"  # 3 no #n
        b"1000092795.jpg#2\t   \n"  # 4 empty caption
        b"\n"  # 5 blank: skipped silently
        b"10002456.jpg#0\tCaf\xe9 in Latin-1 .\n"  # 6 not UTF-8
        b"10002456.jpg#1\tSeveral men in hard hats .\r\n"  # 7 good, CRLF
    )
    report = DataReport()
    records = read_flickr_tokens(token, tmp_path / "flickr30k-images", report=report)

    assert [(r.image_id, r.caption) for r in records] == [
        ("1000092795.jpg", "Two young guys with shaggy hair ."),
        ("10002456.jpg", "Several men in hard hats ."),
    ]
    assert [(p.line, p.reason) for p in report.problems] == [
        (2, "no tab between '<image file>#<n>' and the caption"),
        (3, "expected '<image file>#<n>' before the tab, got '1000092795.jpg'"),
        (4, "empty caption"),
        (6, "not valid UTF-8 (byte 0xe9)"),
    ]
    assert {p.path for p in report.problems} == {str(token)}

    with pytest.raises(DataFormatError, match=r"results_20130124\.token:2: no tab"):
        read_flickr_tokens(token, tmp_path, strict=True)


def test_flickr_split_file_problems(tmp_path):
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text("a.jpg#0\tA.\nb.jpg#0\tB.\nc.jpg#0\tC.\nd.jpg#0\tD.\n", encoding="utf-8")
    (tmp_path / "train.txt").write_text("a.jpg\nb.jpg\n", encoding="utf-8")
    (tmp_path / "test.txt").write_text("b.jpg\n\nmissing.jpg\n", encoding="utf-8")
    report = DataReport()
    records = read_flickr_tokens(
        token, tmp_path, splits={"train": tmp_path / "train.txt", "test": tmp_path / "test.txt"}, report=report
    )

    assert [(r.image_id, r.split) for r in records] == [("a.jpg", "train"), ("b.jpg", "train")]
    assert [(pathlib.Path(p.path).name, p.line) for p in report.problems] == [
        ("test.txt", 1),
        ("Flickr8k.token.txt", None),
        ("test.txt", 3),
    ]
    assert "already in the train split" in report.problems[0].reason
    assert "2 image(s) in none of the split files" in report.problems[1].reason
    assert "c.jpg, d.jpg" in report.problems[1].reason
    assert "missing.jpg has no captions" in report.problems[2].reason

    with pytest.raises(MissingResourcesError, match="nope.txt"):
        read_flickr_tokens(token, tmp_path, splits={"val": tmp_path / "nope.txt"})
    with pytest.raises(ValueError, match="dev"):
        read_flickr_tokens(token, tmp_path, splits={"dev": tmp_path / "train.txt"})


# -- COCO ---------------------------------------------------------------------


def test_coco_records_split_and_reported_problems(tmp_path):
    data = {
        "images": [
            {"id": 1, "file_name": "COCO_val2014_000000000001.jpg"},
            {"id": 2, "file_name": "COCO_val2014_000000000002.jpg"},
            {"id": 3},
            {"id": 1, "file_name": "again.jpg"},
        ],
        "annotations": [
            {"image_id": 1, "id": 11, "caption": " A cat on a mat. "},
            {"image_id": 99, "id": 12, "caption": "Nobody's image."},
            {"image_id": 1, "id": 13, "caption": ""},
            {"image_id": 1, "id": 14, "caption": "Still the cat."},
        ],
    }
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    report = DataReport()
    records = read_coco_captions(path, tmp_path / "val2014", split="val", report=report)

    name = "COCO_val2014_000000000001.jpg"
    assert records == [
        CaptionRecord(name, os.path.join(tmp_path / "val2014", name), "A cat on a mat.", None, "val"),
        CaptionRecord(name, os.path.join(tmp_path / "val2014", name), "Still the cat.", None, "val"),
    ]
    assert [p.reason for p in report.problems] == [
        "images[2] (id 3): no 'file_name'",
        "images[3]: image id 1 repeated; keeping COCO_val2014_000000000001.jpg",
        "annotations[1] (id 12): image_id 99 is not in 'images'",
        "annotations[2] (id 13): empty or missing 'caption'",
        "image id 2 (COCO_val2014_000000000002.jpg) has no captions",
    ]
    assert all(p.path == str(path) and p.line is None for p in report.problems)

    with pytest.raises(DataFormatError, match=r"captions_val2014\.json: images\[2\]"):
        read_coco_captions(path, tmp_path, strict=True)
    with pytest.raises(ValueError, match="split"):
        read_coco_captions(path, tmp_path, split="validation")


# -- manifests ----------------------------------------------------------------


def test_manifest_paths_resolve_against_images_dir_or_manifest_folder(tmp_path):
    path = tmp_path / "data" / "list.jsonl"
    path.parent.mkdir()
    absolute = tmp_path / "elsewhere" / "x.jpg"
    path.write_text(
        json.dumps({"image": "a.jpg", "caption": "A.", "extra": [1, 2]})
        + "\n"
        + json.dumps({"image": str(absolute), "caption": "X.", "image_id": "x", "category": "misc", "split": None})
        + "\n",
        encoding="utf-8",
    )
    records = read_manifest(path)
    assert records == [
        CaptionRecord("a.jpg", str(tmp_path / "data" / "a.jpg"), "A."),
        CaptionRecord("x", str(absolute), "X.", "misc", None),
    ]
    assert read_manifest(path, images_dir=tmp_path / "imgs")[0].image_path == str(tmp_path / "imgs" / "a.jpg")


def test_csv_manifest_quoting_and_tsv_literal_fields(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text('caption,image,notes\n"A dog, running.",a.jpg,x\n"Two\nlines",b.jpg,\n', encoding="utf-8")
    assert [(r.image_id, r.caption) for r in read_manifest(csv_path)] == [
        ("a.jpg", "A dog, running."),
        ("b.jpg", "Two\nlines"),
    ]
    tsv_path = tmp_path / "m.tsv"
    tsv_path.write_text('image\tcaption\n"a.jpg\t"Quoted" caption, with comma\n', encoding="utf-8")
    assert [(r.image_id, r.caption) for r in read_manifest(tsv_path)] == [('"a.jpg', '"Quoted" caption, with comma')]


@pytest.mark.parametrize("extension", [".jsonl", ".csv", ".tsv"])
def test_manifest_malformed_lines_are_reported_with_line_numbers(tmp_path, extension):
    if extension == ".jsonl":
        lines = [
            b'{"image": "a.jpg", "caption": "Good.", "split": "train"}',
            b'{"image": "b.jpg"}',
            b'{"image": "b.jpg", "caption": "Bad split.", "split": "training"}',
            b'{"image": "b.jpg", "caption": ',
            b'{"image": "c.jpg", "caption": "Caf\xe9."}',
            b'{"image": "a.jpg", "caption": "Other split.", "split": "test"}',
            b'{"image": "d.jpg", "image_id": "a.jpg", "caption": "Other image.", "split": "train"}',
            b'{"image": "e.jpg", "caption": 5}',
        ]
        expected_extra = [(4, "invalid JSON"), (8, "field 'caption' must be a string")]
    else:
        d = b"," if extension == ".csv" else b"\t"
        lines = [
            d.join([b"image", b"caption", b"split", b"image_id"]),
            d.join([b"a.jpg", b"Good.", b"train", b""]),
            d.join([b"b.jpg", b"", b"", b""]),
            d.join([b"b.jpg", b"Bad split.", b"training", b""]),
            d.join([b"b.jpg", b"too", b"many", b"fields", b"here"]),
            d.join([b"c.jpg", b"Caf\xe9.", b"", b""]),
            d.join([b"a.jpg", b"Other split.", b"test", b""]),
            d.join([b"d.jpg", b"Other image.", b"train", b"a.jpg"]),
        ]
        expected_extra = [(5, "expected 4 fields like the header, got 5")]
    path = tmp_path / f"manifest{extension}"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = DataReport()
    records = read_manifest(path, report=report)

    assert [(r.image_id, r.caption, r.split) for r in records] == [("a.jpg", "Good.", "train")]
    offset = 0 if extension == ".jsonl" else 1
    expected = sorted(
        [
            (2 + offset, "missing or empty 'caption'"),
            (3 + offset, "unknown split 'training'"),
            (5 + offset, "not valid UTF-8 (byte 0xe9)"),
            (6 + offset, "image_id 'a.jpg' is in split 'train' on line"),
            (7 + offset, "image_id 'a.jpg' is already used for"),
        ]
        + expected_extra
    )
    problems = sorted((p.line, p.reason) for p in report.problems)
    assert len(problems) == len(expected)
    for (line, reason), (expected_line, expected_start) in zip(problems, expected, strict=True):
        assert line == expected_line and reason.startswith(expected_start), (line, reason)
    assert {p.path for p in report.problems} == {str(path)}

    with pytest.raises(DataFormatError, match=rf"manifest\{extension}:{2 + offset}: missing or empty 'caption'"):
        read_manifest(path, strict=True)


def test_manifest_unusable_files_raise_naming_them(tmp_path):
    unknown = tmp_path / "captions.txt"
    unknown.write_text("a.jpg,A.\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"captions\.txt: cannot tell the manifest format.*\.jsonl"):
        read_manifest(unknown)
    no_column = tmp_path / "m.csv"
    no_column.write_text("\nfile,caption\na.jpg,A.\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"m\.csv:2: the header row must name the columns image, caption"):
        read_manifest(no_column)
    empty = tmp_path / "e.tsv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"e\.tsv: no header row"):
        read_manifest(empty)


# -- the loader ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("format_name", "arguments", "keys"),
    [
        ("pascal", {}, ["data.root"]),
        ("karpathy", {"images": "imgs"}, ["data.annotations"]),
        ("flickr_tokens", {"annotations": "t.txt"}, ["data.images"]),
        ("coco", {}, ["data.annotations", "data.images"]),
        ("manifest", {"images": "imgs"}, ["data.annotations"]),
    ],
)
def test_loader_names_the_missing_config_keys(format_name, arguments, keys):
    with pytest.raises(ConfigError) as caught:
        load_caption_dataset(format_name, **arguments)
    for key in keys:
        assert key in str(caught.value)
    assert isinstance(caught.value, DeviseError)


def test_loader_rejects_unknown_format():
    with pytest.raises(ConfigError, match=r"unknown dataset format 'flickr'.*flickr_tokens"):
        load_caption_dataset("flickr", annotations="a", images="b")


@pytest.mark.parametrize("format_name", ["karpathy", "flickr_tokens", "coco", "manifest"])
def test_loader_missing_annotation_file_or_image_folder(tmp_path, format_name):
    missing = tmp_path / "nowhere" / "captions.jsonl"
    with pytest.raises(MissingResourcesError, match=str(missing)):
        load_caption_dataset(format_name, annotations=missing, images=tmp_path)
    with pytest.raises(MissingResourcesError, match=r"no_images \(data\.images\) does not exist"):
        load_caption_dataset(format_name, annotations=missing, images=tmp_path / "no_images")


def test_loader_reports_missing_and_empty_images_and_split_conflicts(tmp_path):
    arguments = _write_karpathy(tmp_path)
    data = json.loads(arguments["annotations"].read_text(encoding="utf-8"))
    first, second = data["images"][0], data["images"][1]
    # The same image listed again in another split, plus a missing and an empty image.
    data["images"].append(dict(first, split="test"))
    data["images"].append({"filename": "gone.jpg", "split": "train", "sentences": [{"raw": "Gone."}]})
    data["images"].append({"filename": "empty.jpg", "split": "train", "sentences": [{"raw": "Empty."}]})
    (arguments["images"] / "empty.jpg").write_bytes(b"")
    arguments["annotations"].write_text(json.dumps(data), encoding="utf-8")
    report = DataReport()
    records = load_caption_dataset("karpathy", report=report, **arguments)

    assert len(records) == 6
    assert [(pathlib.Path(p.path).name, p.reason) for p in report.problems] == [
        (
            "dataset_flickr8k.json",
            (
                f"image id {first['filename']!r} is in both the 'train' and 'test' splits; "
                "keeping the first, leaving out the later captions"
            ),
        ),
        ("gone.jpg", f"image file not found (listed in {arguments['annotations']})"),
        ("empty.jpg", "empty image file (0 bytes)"),
    ]
    assert second["filename"] in {r.image_id for r in records}

    lenient = DataReport()
    with pytest.raises(DataFormatError, match="is in both the 'train' and 'test' splits"):
        load_caption_dataset("karpathy", strict=True, report=lenient, **arguments)
    assert len(lenient) == 0


def test_loader_drops_later_records_of_an_id_with_another_path(tmp_path, monkeypatch):
    # No reader produces this today (each derives the path from the id),
    # so a stand-in reader checks the loader's own guard.
    images = _write_images(tmp_path / "images")
    a, b = sorted(IMAGES)[:2]
    fake = [
        CaptionRecord("same", str(images / a), "First."),
        CaptionRecord("same", str(images / b), "Second."),
        CaptionRecord("same", str(images / b), "Third."),
        CaptionRecord("same", str(images / a), "Fourth."),
    ]
    monkeypatch.setattr("devise.datasets.loader.read_coco_captions", lambda *args, **kwargs: list(fake))
    report = DataReport()
    records = load_caption_dataset("coco", annotations=tmp_path / "c.json", images=images, report=report)
    assert [r.caption for r in records] == ["First.", "Fourth."]
    assert len(report) == 1 and "is used for both" in report.problems[0].reason


def test_loader_flickr_ignores_partial_split_files(tmp_path):
    arguments = _write_flickr(tmp_path)
    (tmp_path / FLICKR8K_SPLIT_FILES["val"]).unlink()
    records = load_caption_dataset("flickr_tokens", **arguments)
    assert len(records) == 6 and {r.split for r in records} == {None}


# -- splits from the file -----------------------------------------------------


def test_splits_from_records_groups_and_checks():
    records = [
        CaptionRecord("a", "/a.jpg", "x", split="test"),
        CaptionRecord("b", "/b.jpg", "y", split="train"),
        CaptionRecord("a", "/a.jpg", "z", split="test"),
    ]
    splits = splits_from_records(records)
    assert list(splits) == ["train", "val", "test"]
    assert [r.caption for r in splits["test"]] == ["x", "z"] and splits["val"] == []

    with pytest.raises(DeviseError, match=r"1 of 2 captions \(1 images.*'c'.*split by category"):
        splits_from_records([records[1], CaptionRecord("c", "/c.jpg", "w")])
    with pytest.raises(DeviseError, match="both the 'train' and 'test' splits"):
        splits_from_records([records[0], CaptionRecord("a", "/a.jpg", "w", split="train")])
    with pytest.raises(DeviseError, match="no usable captions"):
        splits_from_records([])

"""Every caption format, end to end: the same data in each real structure, trained through devise-train.

One small shapes dataset (20 categories x 4 images x 5 captions, Pascal
Sentences layout) is rewritten as a Karpathy split file, a Flickr8k token
file with its three split files, COCO captions files and JSONL/CSV/TSV
manifests. Each must load into the same (image, caption) pairs as the Pascal
reader, and each trains with ``devise-train`` where only the ``data.*``
config keys change.

The non-Pascal formats all name the images by file name in one flat folder
(as Flickr8k and COCO do), so their image ids agree and the shared feature
cache computes each image's features once for all of them.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import json
import os
import pathlib
import re
import shutil

import h5py
import pytest

from devise.cli.train import main
from devise.datasets.coco import read_coco_captions
from devise.datasets.flickr import FLICKR8K_SPLIT_FILES
from devise.datasets.loader import load_caption_dataset, splits_from_records
from devise.datasets.report import DataReport
from devise.datasets.shapes import CAPTIONS_PER_IMAGE, SHAPES_CATEGORIES, generate_shapes
from devise.encoders.feature_cache import FeatureCache

pytestmark = pytest.mark.slow

IMAGES_PER_CATEGORY = 4
# Position of an image within its category (sorted by file name) -> its split.
SPLIT_BY_POSITION = ("train", "train", "val", "test")
IMAGE_SIZE = 128


class Fixture:
    """The shapes dataset and its rewrites, with what each format should give."""

    def __init__(self, base: pathlib.Path):
        self.base = base
        self.shapes = generate_shapes(base / "shapes", images_per_category=IMAGES_PER_CATEGORY)
        report = DataReport()
        self.pascal = load_caption_dataset("pascal", root=self.shapes, report=report)
        assert len(report) == 0, report.summary()

        # file name -> (category, Pascal image path, captions); Pascal order.
        self.images: dict[str, tuple[str, str, list[str]]] = {}
        for record in self.pascal:
            name = os.path.basename(record.image_path)
            self.images.setdefault(name, (record.category, record.image_path, []))[2].append(record.caption)
        position = collections.Counter()
        self.split_of: dict[str, str] = {}
        for name, (category, _, _) in self.images.items():
            self.split_of[name] = SPLIT_BY_POSITION[position[category]]
            position[category] += 1

        # One flat image folder, as Flickr8k and COCO ship them.
        self.flat = base / "images"
        self.flat.mkdir()
        for name, (_, path, _) in self.images.items():
            try:
                os.link(path, self.flat / name)
            except OSError:
                shutil.copyfile(path, self.flat / name)

        self.karpathy = self._write_karpathy(base / "karpathy")
        self.flickr = self._write_flickr(base / "flickr")
        self.coco, self.coco_split_files = self._write_coco(base / "coco" / "annotations")
        self.manifests = {ext: self._write_manifest(base / "manifest", ext) for ext in ("jsonl", "csv", "tsv")}

    # -- writers, one per format, in its real structure ----------------------
    def _write_karpathy(self, folder: pathlib.Path) -> pathlib.Path:
        entries, sentence_id = [], 0
        for image_id, (name, (_, _, captions)) in enumerate(self.images.items()):
            sentences = []
            for caption in captions:
                tokens = re.findall(r"[a-z0-9]+", caption.lower())
                sentences.append({"tokens": tokens, "raw": caption, "imgid": image_id, "sentid": sentence_id})
                sentence_id += 1
            entries.append(
                {
                    "filename": name,
                    "imgid": image_id,
                    "split": self.split_of[name],
                    "sentids": [s["sentid"] for s in sentences],
                    "sentences": sentences,
                }
            )
        folder.mkdir()
        path = folder / "dataset_shapes.json"
        path.write_text(json.dumps({"images": entries, "dataset": "shapes"}), encoding="utf-8")
        return path

    def _write_flickr(self, folder: pathlib.Path) -> pathlib.Path:
        folder.mkdir()
        token = folder / "Flickr8k.token.txt"
        lines = [
            f"{name}#{number}\t{caption}\n"
            for name, (_, _, captions) in self.images.items()
            for number, caption in enumerate(captions)
        ]
        token.write_text("".join(lines), encoding="utf-8")
        for split, file_name in FLICKR8K_SPLIT_FILES.items():
            names = [name for name in self.images if self.split_of[name] == split]
            (folder / file_name).write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
        return token

    def _write_coco(self, folder: pathlib.Path) -> tuple[pathlib.Path, dict[str, pathlib.Path]]:
        """One captions file over every image, and one per split as COCO ships them."""
        folder.mkdir(parents=True)
        coco_ids = {name: 100_000 + 7 * i for i, name in enumerate(self.images)}

        def write(path: pathlib.Path, names: list[str]) -> pathlib.Path:
            images = [
                {"license": 1, "file_name": name, "height": IMAGE_SIZE, "width": IMAGE_SIZE, "id": coco_ids[name]}
                for name in names
            ]
            # Real files interleave the captions of different images.
            annotations = [
                {
                    "image_id": coco_ids[name],
                    "id": 500_000 + number * len(names) + i,
                    "caption": self.images[name][2][number],
                }
                for number in range(CAPTIONS_PER_IMAGE)
                for i, name in enumerate(names)
            ]
            data = {
                "info": {"description": "shapes in COCO captions format", "year": 2024},
                "licenses": [{"id": 1, "name": "test"}],
                "images": images,
                "annotations": annotations,
            }
            path.write_text(json.dumps(data), encoding="utf-8")
            return path

        every = write(folder / "captions_shapes.json", list(self.images))
        per_split = {
            split: write(folder / f"captions_{split}.json", [n for n in self.images if self.split_of[n] == split])
            for split in ("train", "val", "test")
        }
        return every, per_split

    def _write_manifest(self, folder: pathlib.Path, ext: str) -> pathlib.Path:
        folder.mkdir(exist_ok=True)
        path = folder / f"captions.{ext}"
        rows = [
            {"image": name, "caption": caption, "category": category, "split": self.split_of[name]}
            for name, (category, _, captions) in self.images.items()
            for caption in captions
        ]
        with open(path, "w", encoding="utf-8", newline="") as f:
            if ext == "jsonl":
                f.writelines(json.dumps(row) + "\n" for row in rows)
            else:
                writer = csv.DictWriter(
                    f,
                    fieldnames=["image", "caption", "category", "split"],
                    delimiter="," if ext == "csv" else "\t",
                    quoting=csv.QUOTE_MINIMAL if ext == "csv" else csv.QUOTE_NONE,
                    lineterminator="\n",
                )
                writer.writeheader()
                writer.writerows(rows)
        return path

    # -- what the formats should give ----------------------------------------
    def formats(self) -> dict[str, dict]:
        """name -> data.* settings (load_caption_dataset arguments) and how to split."""
        flat = str(self.flat)
        return {
            # The reference layout; its image ids are "<category>/<stem>".
            "pascal": {"format": "pascal", "root": self.shapes, "by": "category"},
            "karpathy": {"format": "karpathy", "annotations": self.karpathy, "images": flat, "by": "dataset"},
            "flickr_tokens": {"format": "flickr_tokens", "annotations": self.flickr, "images": flat, "by": "dataset"},
            # One COCO file is one split, so the whole set is split by category
            # (every image is in the one group of category None).
            "coco": {"format": "coco", "annotations": self.coco, "images": flat, "by": "category"},
            **{
                f"manifest_{ext}": {"format": "manifest", "annotations": path, "images": flat, "by": "dataset"}
                for ext, path in self.manifests.items()
            },
        }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Fixture:
    return Fixture(tmp_path_factory.mktemp("formats"))


_digests: dict[str, str] = {}


def _digest(path: str) -> str:
    """The image file's content, so a hard link or copy counts as the same image."""
    if path not in _digests:
        _digests[path] = hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
    return _digests[path]


def _pairs(records) -> collections.Counter:
    return collections.Counter((_digest(r.image_path), r.caption) for r in records)


def _load(spec: dict):
    report = DataReport()
    records = load_caption_dataset(
        spec["format"], annotations=spec["annotations"], images=spec["images"], report=report
    )
    assert len(report) == 0, report.summary()
    return records


def test_the_fixture_is_the_small_shapes_set(data):
    assert len(data.images) == len(SHAPES_CATEGORIES) * IMAGES_PER_CATEGORY == 80
    assert len(data.pascal) == 80 * CAPTIONS_PER_IMAGE
    assert collections.Counter(data.split_of.values()) == {"train": 40, "val": 20, "test": 20}


LOADED = ["karpathy", "flickr_tokens", "coco", "manifest_jsonl", "manifest_csv", "manifest_tsv"]


@pytest.mark.parametrize("name", LOADED)
def test_each_format_loads_the_same_pairs_as_pascal(data, name):
    spec = data.formats()[name]
    records = _load(spec)
    assert _pairs(records) == _pairs(data.pascal)
    # Every image is named by its file name in the flat folder.
    assert {r.image_id for r in records} == set(data.images)
    assert all(os.path.dirname(r.image_path) == str(data.flat) for r in records)
    # Captions keep their order within an image.
    by_image = collections.defaultdict(list)
    for r in records:
        by_image[r.image_id].append(r.caption)
    assert by_image == {name: captions for name, (_, _, captions) in data.images.items()}

    if spec["by"] == "dataset":
        splits = splits_from_records(records)
        assert {r.image_id: split for split, recs in splits.items() for r in recs} == data.split_of
    else:
        assert all(r.split is None for r in records)
    if spec["format"] == "manifest":
        assert {r.image_id: r.category for r in records} == {n: c for n, (c, _, _) in data.images.items()}
    else:
        assert all(r.category is None for r in records)


def test_coco_per_split_files_together_give_the_same_pairs_and_splits(data):
    records = []
    for split, path in data.coco_split_files.items():
        report = DataReport()
        records += read_coco_captions(path, data.flat, split=split, report=report)
        assert len(report) == 0, report.summary()
    assert _pairs(records) == _pairs(data.pascal)
    assert {r.image_id: r.split for r in records} == data.split_of


TRAINED = ["pascal", "karpathy", "flickr_tokens", "coco", "manifest_jsonl", "manifest_csv"]


@pytest.mark.parametrize("name", TRAINED)
def test_each_format_trains_through_devise_train(data, name, tiny_overrides, repo_root, monkeypatch, capsys):
    spec = data.formats()[name]
    monkeypatch.chdir(repo_root)
    if spec["format"] == "pascal":
        split = ["data.split={by: category, train: 2, val: 1, test: 1, seed: 0}"]
        data_keys = [f"data.root={spec['root']}"]
    elif spec["by"] == "dataset":
        split = ["data.split.by=dataset"]
        data_keys = [f"data.annotations={spec['annotations']}", f"data.images={spec['images']}"]
    else:
        # All 80 images form one group: deal them out 40/20/20, like the dataset splits.
        split = ["data.split={by: category, train: 40, val: 20, test: 20, seed: 0}"]
        data_keys = [f"data.annotations={spec['annotations']}", f"data.images={spec['images']}"]
    run = data.base / "runs" / name
    argv = [
        "--config", "configs/demo.yaml",
        *tiny_overrides(data.base),  # one feature cache (data.base/cache) for every format
        f"data.dataset={spec['format']}",
        *data_keys,
        *split,
        "trainer.epochs=1",
        "--quiet",
        "--run-dir", str(run),
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["epochs"] == 1
    assert metrics["images"] == 20 and metrics["captions"] == 20 * CAPTIONS_PER_IMAGE
    assert json.loads((run / "data_report.json").read_text())["count"] == 0
    assert (run / "text_stats.json").is_file() and (run / "model.keras").is_file()
    saved = (run / "config.yaml").read_text()
    assert f"dataset: {spec['format']}" in saved

    # The formats other than Pascal name images alike, so the shared cache
    # holds each image once for all of them (plus once under its Pascal id).
    (cache,) = (data.base / "cache").glob("*.h5")
    with h5py.File(cache, "r") as f:
        fingerprint = f.attrs["fingerprint"]
    ids = set(FeatureCache(cache, fingerprint).read())  # by the id each file was last asked under
    pascal_ids = {r.image_id for r in data.pascal}
    assert ids <= set(data.images) | pascal_ids
    assert (pascal_ids if spec["format"] == "pascal" else set(data.images)) <= ids


@pytest.mark.parametrize(
    "by, message",
    [
        ("dataset", "the dataset has no usable captions to split; see the data report"),
        ("category", "the train split has no usable images"),
    ],
)
def test_a_dataset_with_no_usable_images_stops_with_a_message(
    data, by, message, tiny_overrides, tmp_path, repo_root, monkeypatch, capsys
):
    """Every caption's image is missing: one error line, the data report saved, no traceback."""
    monkeypatch.chdir(repo_root)
    (tmp_path / "images").mkdir()
    argv = [
        "--config", "configs/demo.yaml",
        *tiny_overrides(data.base),
        "data.dataset=flickr_tokens",
        f"data.annotations={data.flickr}",
        f"data.images={tmp_path / 'images'}",
        f"data.split.by={by}",
        "--quiet",
        "--run-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"devise-train: error: {message}" in err
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["count"] == len(data.images)
    assert all("image file not found" in p["reason"] for p in report["problems"])

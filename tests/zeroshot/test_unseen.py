"""Zero-shot splits: unseen classes never reach training or validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from devise.datasets import ClassImage, split_class_images
from devise.errors import DeviseError
from devise.zeroshot import (
    ZeroShotSplit,
    assert_no_leak,
    assert_no_unseen_labels,
    check_unseen_names,
    split_unseen_classes,
)

CLASSES = ("ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen")


def _images(seed: int = 0) -> list[ClassImage]:
    rng = np.random.default_rng(seed)
    images = [
        ClassImage(f"{name}/{i:03d}.jpg", f"/data/{name}/{i:03d}.jpg", name)
        for name in CLASSES
        for i in range(int(rng.integers(5, 15)))
    ]
    return [image for split in split_class_images(images, seed=seed).values() for image in split]


@pytest.mark.parametrize("trial", range(25))
def test_unseen_classes_never_leak_into_training(trial):
    rng = np.random.default_rng(trial)
    images = _images(seed=trial)
    count = int(rng.integers(1, len(CLASSES) - 1))
    unseen = [str(name) for name in rng.choice(CLASSES, size=count, replace=False)]
    split = split_unseen_classes(images, unseen)
    assert_no_leak(split)

    # Checked again here without assert_no_leak, from the images themselves.
    held_out = set(unseen)
    assert not any(image.class_name in held_out for image in split.train + split.val + split.test_seen)
    every_unseen = [image.image_id for image in images if image.class_name in held_out]
    assert sorted(image.image_id for image in split.test_unseen) == sorted(every_unseen)
    for part, name in ((split.train, "train"), (split.val, "val"), (split.test_seen, "test")):
        assert all(image.split == name for image in part)  # seen classes keep their split
    parts = [split.train, split.val, split.test_seen, split.test_unseen]
    ids = [image.image_id for part in parts for image in part]
    assert sorted(ids) == sorted(image.image_id for image in images)  # each image exactly once
    assert split.unseen_classes == tuple(sorted(held_out))
    assert set(split.seen_classes) == set(CLASSES) - held_out
    assert_no_unseen_labels(split.class_ids(split.train), split.class_names, unseen)
    assert_no_unseen_labels(split.class_ids(split.val), split.class_names, unseen)


def test_unseen_images_from_train_and_val_go_to_test():
    images = [
        ClassImage("cat/1", "/c1", "cat", "train"),
        ClassImage("cat/2", "/c2", "cat", "test"),
        ClassImage("dog/1", "/d1", "dog", "train"),
        ClassImage("emu/1", "/e1", "emu", "train"),
        ClassImage("emu/2", "/e2", "emu", "val"),
        ClassImage("emu/3", "/e3", "emu", "test"),
    ]
    split = split_unseen_classes(images, ["emu"])
    assert [i.image_id for i in split.test_unseen] == ["emu/1", "emu/2", "emu/3"]
    assert [i.image_id for i in split.train] == ["cat/1", "dog/1"]
    assert split.val == ()
    assert [i.image_id for i in split.test] == ["cat/2", "emu/1", "emu/2", "emu/3"]
    assert split.class_names == ("cat", "dog", "emu")
    assert split.class_ids(split.test).tolist() == [0, 2, 2, 2]


def test_unknown_unseen_name_lists_classes_and_suggests():
    with pytest.raises(DeviseError, match=r"'doge' is not a class.*did you mean 'dog'.*known classes: ant, bee"):
        split_unseen_classes(_images(), ["doge"])
    with pytest.raises(DeviseError, match=r"use \['dog'\]"):
        check_unseen_names("dog", CLASSES)
    assert check_unseen_names(["dog", "cat", "dog"], CLASSES) == ("dog", "cat")


def test_split_refuses_what_it_cannot_make_leak_free():
    with pytest.raises(DeviseError, match="no split"):
        split_unseen_classes([ClassImage("a", "/a", "cat")], [])
    with pytest.raises(DeviseError, match="all 8 classes are unseen"):
        split_unseen_classes(_images(), list(CLASSES))
    only_test = [ClassImage("a", "/a", "cat", "train"), ClassImage("b", "/b", "dog", "test")]
    with pytest.raises(DeviseError, match="'dog' have no training images"):
        split_unseen_classes(only_test, [])
    twice = [ClassImage("a", "/a", "cat", "train"), ClassImage("a", "/a", "cat", "test")]
    with pytest.raises(DeviseError, match="appears twice"):
        split_unseen_classes(twice, [])


def test_assert_no_leak_catches_each_kind_of_leak():
    split = split_unseen_classes(_images(), ["cat", "dog"])
    leaked_cat = next(i for i in split.test_unseen if i.class_name == "cat")
    seen_image = split.train[0]
    bad = {
        "in train": dataclasses.replace(split, train=split.train + (leaked_cat,)),
        "in val": dataclasses.replace(split, val=split.val + (leaked_cat,)),
        "in test_seen": dataclasses.replace(split, test_seen=split.test_seen + (leaked_cat,)),
        "seen class": dataclasses.replace(split, test_unseen=split.test_unseen + (seen_image,)),
        "both seen and unseen": dataclasses.replace(split, seen_classes=split.seen_classes + ("cat",)),
        "twice in train": dataclasses.replace(split, train=split.train + (seen_image,)),
    }
    for what, broken in bad.items():
        with pytest.raises(DeviseError, match=what):
            assert_no_leak(broken)
    assert isinstance(split, ZeroShotSplit)


def test_assert_no_unseen_labels_counts_leaked_examples():
    with pytest.raises(DeviseError, match="2 training examples have the unseen class 'cat'"):
        assert_no_unseen_labels(np.array([0, 2, 2, 1]), ["ant", "bee", "cat"], ["cat"])
    assert_no_unseen_labels(np.array([0, 1]), ["ant", "bee", "cat"], ["cat"])

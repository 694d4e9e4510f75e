"""Zero-shot splits: some classes are held out of training entirely.

A zero-shot result means something only if no image of an unseen class
reached training, not in the training split and not in validation (early
stopping or model selection on them would leak too). :func:`split_unseen_classes`
builds such a split and :func:`assert_no_leak` checks one.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

from devise.datasets.records import SPLIT_NAMES
from devise.errors import DeviseError


class SplitImage(Protocol):
    """What a zero-shot split needs of an image record (e.g. a ``ClassImage``)."""

    image_id: str
    class_name: str
    split: str | None


@dataclasses.dataclass(frozen=True)
class ZeroShotSplit:
    """Train, validation and test images with some classes held out.

    Args:
        train: training images, of seen classes only.
        val: validation images, of seen classes only.
        test_seen: test images of seen classes.
        test_unseen: every image of the unseen classes, whatever split the
            dataset gave it.
        seen_classes: the classes training sees, sorted.
        unseen_classes: the held-out classes, sorted.
    """

    train: tuple[SplitImage, ...]
    val: tuple[SplitImage, ...]
    test_seen: tuple[SplitImage, ...]
    test_unseen: tuple[SplitImage, ...]
    seen_classes: tuple[str, ...]
    unseen_classes: tuple[str, ...]

    @property
    def class_names(self) -> tuple[str, ...]:
        """Every class, sorted; class ids (:meth:`class_ids`) index this."""
        return tuple(sorted(self.seen_classes + self.unseen_classes))

    @property
    def test(self) -> tuple[SplitImage, ...]:
        """All test images: seen, then unseen."""
        return self.test_seen + self.test_unseen

    def class_ids(self, images: Iterable[SplitImage]) -> np.ndarray:
        """Integer class id of each image: its index in :attr:`class_names`.

        Args:
            images: e.g. :attr:`train` or :attr:`test`.

        Returns:
            int64 array, one id per image.
        """
        index = {name: i for i, name in enumerate(self.class_names)}
        return np.asarray([index[image.class_name] for image in images], dtype=np.int64)


def check_unseen_names(unseen: Iterable[str], class_names: Sequence[str]) -> tuple[str, ...]:
    """Validate the names of the classes to hold out.

    Args:
        unseen: the class names to hold out (duplicates are dropped).
        class_names: the dataset's classes.

    Returns:
        The unseen names, first occurrence order, without duplicates.

    Raises:
        DeviseError: a name is not a class (the message suggests the closest
            class and lists the known ones), or ``unseen`` is a plain string
            (a common slip for a one-element list).
    """
    if isinstance(unseen, str):
        raise DeviseError(f"unseen must be a list of class names, got the string {unseen!r}; use [{unseen!r}]")
    known = list(class_names)
    names = tuple(dict.fromkeys(unseen))
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            listed = ", ".join(known[:50]) + (f", ... ({len(known)} in all)" if len(known) > 50 else "")
            raise DeviseError(f"unseen class {name!r} is not a class of the dataset{hint}; known classes: {listed}")
    return names


def split_unseen_classes(images: Sequence[SplitImage], unseen: Sequence[str]) -> ZeroShotSplit:
    """Hold classes out of training: all their images become unseen test images.

    Seen classes keep the dataset's split (train, val or test); every image
    of an unseen class goes to ``test_unseen`` even if the dataset put it in
    train or val, so training and validation see none of them. The result
    passes :func:`assert_no_leak`.

    Args:
        images: images with ``image_id``, ``class_name`` and ``split``
            (e.g. :class:`~devise.datasets.ClassImage` from the split layout,
            or after :func:`~devise.datasets.split_class_images`).
        unseen: the names of the classes to hold out.

    Returns:
        The :class:`ZeroShotSplit`, images in input order within each part.

    Raises:
        DeviseError: an unseen name is not a class (with a suggestion), an
            image has no split or an unknown one, an image id repeats, no
            class is left to train on, or a seen class has no training
            image (hold it out too, or give it training images).

    Example:
    ```python
    images = devise.datasets.read_class_folders("data/animals")
    images = [i for split in devise.datasets.split_class_images(images).values() for i in split]
    split = devise.zeroshot.split_unseen_classes(images, unseen=["zebra", "polar_bear"])
    devise.zeroshot.assert_no_leak(split)
    ```
    """
    classes = sorted({image.class_name for image in images})
    unseen_names = check_unseen_names(unseen, classes)
    held_out = set(unseen_names)
    parts: dict[str, list[SplitImage]] = {"train": [], "val": [], "test_seen": [], "test_unseen": []}
    ids: set[str] = set()
    for image in images:
        if image.split not in SPLIT_NAMES:
            what = "no split" if image.split is None else f"split {image.split!r}"
            raise DeviseError(
                f"image {image.image_id!r} has {what}; every image needs train, val or test "
                "(split class folders with split_class_images first)"
            )
        if image.image_id in ids:
            raise DeviseError(f"image id {image.image_id!r} appears twice; ids must be unique")
        ids.add(image.image_id)
        if image.class_name in held_out:
            parts["test_unseen"].append(image)
        else:
            parts["test_seen" if image.split == "test" else image.split].append(image)

    seen = tuple(name for name in classes if name not in held_out)
    if not seen:
        raise DeviseError(f"all {len(classes)} classes are unseen; leave some classes to train on")
    trained = {image.class_name for image in parts["train"]}
    untrained = [name for name in seen if name not in trained]
    if untrained:
        raise DeviseError(
            f"seen class(es) {', '.join(map(repr, untrained))} have no training images; "
            "list them as unseen too, or give them images in the train split"
        )
    split = ZeroShotSplit(
        train=tuple(parts["train"]),
        val=tuple(parts["val"]),
        test_seen=tuple(parts["test_seen"]),
        test_unseen=tuple(parts["test_unseen"]),
        seen_classes=seen,
        unseen_classes=tuple(sorted(unseen_names)),
    )
    assert_no_leak(split)
    return split


def assert_no_leak(split: ZeroShotSplit) -> None:
    """Check that no unseen class reached training or validation.

    Checks that train and val hold only seen classes, ``test_unseen`` only
    unseen ones and ``test_seen`` only seen ones, that the seen and unseen
    class lists do not overlap, and that no image id is in two parts (or
    twice in one). Raises instead of using ``assert``, so it also runs under
    ``python -O``.

    Args:
        split: the split to check.

    Raises:
        DeviseError: naming the first leak found.
    """
    unseen = set(split.unseen_classes)
    overlap = sorted(unseen & set(split.seen_classes))
    if overlap:
        raise DeviseError(f"zero-shot leak: class(es) {', '.join(overlap)} are both seen and unseen")
    for part in ("train", "val", "test_seen"):
        for image in getattr(split, part):
            if image.class_name in unseen:
                raise DeviseError(
                    f"zero-shot leak: image {image.image_id!r} of unseen class {image.class_name!r} is in {part}"
                )
    for image in split.test_unseen:
        if image.class_name not in unseen:
            raise DeviseError(
                f"image {image.image_id!r} of seen class {image.class_name!r} is among the unseen test images"
            )
    part_of: dict[str, str] = {}
    for part in ("train", "val", "test_seen", "test_unseen"):
        for image in getattr(split, part):
            first = part_of.get(image.image_id)
            if first is not None:
                where = f"twice in {part}" if first == part else f"in both {first} and {part}"
                raise DeviseError(f"zero-shot leak: image {image.image_id!r} is {where}")
            part_of[image.image_id] = part


def assert_no_unseen_labels(labels: np.ndarray, class_names: Sequence[str], unseen: Iterable[str]) -> None:
    """Check that integer training labels name no unseen class.

    The array-level twin of :func:`assert_no_leak`, for code that holds
    cached features and class ids rather than image records.

    Args:
        labels: class ids (indices into ``class_names``) of training or
            validation examples.
        class_names: every class, indexed by id.
        unseen: names of the held-out classes.

    Raises:
        DeviseError: an unseen class has training examples (named, with the
            count), or an unseen name is not a class.
    """
    labels = np.asarray(labels)
    names = list(class_names)
    for name in check_unseen_names(unseen, names):
        class_id = names.index(name)
        count = int(np.sum(labels == class_id))
        if count:
            raise DeviseError(f"zero-shot leak: {count} training examples have the unseen class {name!r}")

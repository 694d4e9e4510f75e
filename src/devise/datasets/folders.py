"""Class-per-folder image datasets (the layout of ImageNet and most classification sets).

Two layouts are read::

    <root>/<class>/<image>                 no split: split them with split_class_images
    <root>/<split>/<class>/<image>         split is train, val or test

The class of an image is the name of its class folder; its id is its path
relative to ``root`` (with ``/``), so ids are unique and stable across
machines. An optional label file gives the words a class folder stands for
(``n02084071<TAB>dog``), for datasets whose folder names are codes or
abbreviations; the zero-shot label vectors (:mod:`devise.zeroshot.labels`)
use those words instead of the folder name.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import pathlib
import types
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from devise.datasets._reading import ProblemRecorder, decoded_lines, problem_recorder, require_file
from devise.datasets.records import SPLIT_NAMES
from devise.datasets.report import DataReport
from devise.errors import DataFormatError, DeviseError, MissingResourcesError

#: File extensions read as images (compared case-insensitively).
CLASS_FOLDER_IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})

#: Values of ``layout`` for :func:`read_class_folders`.
CLASS_FOLDER_LAYOUTS: tuple[str, ...] = ("auto", "classes", "splits")

# Read-only so the shared default cannot be mutated by a caller.
DEFAULT_SPLIT_FRACTIONS: Mapping[str, float] = types.MappingProxyType({"train": 0.8, "val": 0.1, "test": 0.1})

_EXPECTED_LAYOUT = (
    "expected one folder per class, <root>/<class>/<image>, or split folders, "
    "<root>/{train,val,test}/<class>/<image> (images: " + ", ".join(sorted(CLASS_FOLDER_IMAGE_EXTENSIONS)) + ")"
)


@dataclasses.dataclass(frozen=True)
class ClassImage:
    """One image of a class-per-folder dataset.

    Args:
        image_id: the image's path relative to the dataset root, with ``/``
            separators (e.g. ``"train/dog/0001.jpg"``); unique in a dataset.
        image_path: the path of the image file on disk.
        class_name: the name of the class folder the image is in.
        split: ``"train"``, ``"val"`` or ``"test"`` from the split layout or
            :func:`split_class_images`, or ``None`` when not split yet.
        label_words: the label file's words for ``class_name``
            (e.g. ``"domestic dog"``), or ``None`` when the label file gives
            none (then the folder name is the label).
    """

    image_id: str
    image_path: str
    class_name: str
    split: str | None = None
    label_words: str | None = None


def read_class_folders(
    root: str | os.PathLike,
    *,
    label_file: str | os.PathLike | None = None,
    report: DataReport | None = None,
    strict: bool = False,
    layout: str = "auto",
) -> list[ClassImage]:
    """Read a class-per-folder image dataset, with or without split folders.

    With ``layout="auto"`` the layout is detected: when the visible folders
    of ``root`` are all named ``train``, ``val`` or ``test``, they are split
    folders; otherwise they are class folders (so a dataset with a class
    named ``train`` among others, like Pascal VOC, reads correctly; one
    whose only classes are called ``train``/``val``/``test`` needs
    ``layout="classes"``). Class folders are read recursively, in sorted
    order. Hidden files and folders (name starting with ``.``) are skipped
    silently; other files that are not images (by extension), empty (0 byte)
    image files, files outside any class folder and class folders without
    images are recorded in ``report`` and skipped, while every good image
    still loads. Nothing is decoded here: a corrupt image is found when
    features are extracted.

    Args:
        root: the dataset folder.
        label_file: optional UTF-8 text file with one ``folder_name<TAB>label
            words`` line per class (see :func:`read_label_file`); its words are
            stored on each image as ``label_words``. Entries naming no class
            folder are recorded in ``report``.
        report: where problems are recorded; a fresh one is used if omitted.
        strict: raise on the first problem instead of recording it.
        layout: ``"auto"``, ``"classes"`` (``<root>/<class>/...``) or
            ``"splits"`` (``<root>/<split>/<class>/...``).

    Returns:
        The images in a fixed order (split: train, val, test; then class
        folder name; then path); ``split`` is ``None`` in the class layout.

    Raises:
        MissingResourcesError: ``root`` or ``label_file`` does not exist.
        DataFormatError: ``root`` has no class folders, or no images at all
            (the message names the folder and the expected layout), a split
            layout has a folder other than train/val/test, or (strict mode)
            the first problem found.
        ValueError: ``layout`` is not one of :data:`CLASS_FOLDER_LAYOUTS`.

    Example:
    ```python
    images = devise.datasets.read_class_folders("data/animals", label_file="data/animals/labels.tsv")
    splits = devise.datasets.split_class_images(images, seed=0)   # when not split on disk
    ```
    """
    if layout not in CLASS_FOLDER_LAYOUTS:
        raise ValueError(f"layout must be one of {CLASS_FOLDER_LAYOUTS}, got {layout!r}")
    root_path = pathlib.Path(root)
    if not root_path.is_dir():
        raise MissingResourcesError([f"image folder {root_path} does not exist; {_EXPECTED_LAYOUT}"])
    if report is None:
        report = DataReport(strict=strict)
    record_problem = problem_recorder(report, strict)

    folders, loose_files = _visible_entries(root_path)
    if not folders:
        raise DataFormatError(f"{root_path}: no class folders found; {_EXPECTED_LAYOUT}")
    if layout == "auto":
        layout = "splits" if set(folders) <= set(SPLIT_NAMES) else "classes"
    label_path = pathlib.Path(label_file).resolve() if label_file is not None else None

    def stray_file(path: pathlib.Path, reason: str) -> None:
        if path.resolve() != label_path:  # a label file may sit beside the class folders
            record_problem(path, reason)

    if layout == "splits":  # (in the class layout the loop below reports them)
        for name in loose_files:
            stray_file(root_path / name, "file outside any class folder; skipped")

    # (split, folder holding the class folders); one entry without a split.
    if layout == "classes":
        class_parents: list[tuple[str | None, pathlib.Path]] = [(None, root_path)]
    else:
        unknown = [name for name in folders if name not in SPLIT_NAMES]
        if unknown:
            raise DataFormatError(
                f"{root_path}: split layout, but folder(s) {', '.join(unknown)} are not "
                f"train, val or test; {_EXPECTED_LAYOUT}"
            )
        class_parents = [(split, root_path / split) for split in SPLIT_NAMES if split in folders]

    images: list[ClassImage] = []
    for split, parent in class_parents:
        class_folders, stray = _visible_entries(parent)
        for name in stray:
            stray_file(parent / name, f"file outside any class folder (expected {parent}/<class>/); skipped")
        for class_name in class_folders:
            found = _images_in(root_path, parent / class_name, class_name, split, record_problem)
            if not found:
                record_problem(parent / class_name, "class folder has no images; skipped")
            images.extend(found)

    if not images:
        raise DataFormatError(f"{root_path}: no images found; {_EXPECTED_LAYOUT}")

    if label_file is not None:
        labels = read_label_file(label_file, report=report, strict=strict)
        classes = sorted({image.class_name for image in images})
        for name in labels:
            if name not in classes:
                record_problem(label_file, f"label for {name!r}, which is no class folder{_suggest(name, classes)}")
        images = [dataclasses.replace(image, label_words=labels.get(image.class_name)) for image in images]
    return images


def read_label_file(
    path: str | os.PathLike,
    *,
    report: DataReport | None = None,
    strict: bool = False,
) -> dict[str, str]:
    """Read a class label file: ``folder_name<TAB>label words``, one class a line.

    Blank lines and lines starting with ``#`` are ignored; whitespace around
    each field is stripped. A line without a tab, with an empty field, or
    repeating an earlier folder name is recorded in ``report`` (as
    ``file:line``) and skipped; a repeated name keeps its first words.

    Args:
        path: the label file (UTF-8, an optional BOM is ignored).
        report: where problems are recorded; a fresh one is used if omitted.
        strict: raise on the first problem instead of recording it.

    Returns:
        ``{folder name: label words}`` in file order.

    Raises:
        MissingResourcesError: ``path`` does not exist.
        DataFormatError: it cannot be read, or (strict mode) on the first
            bad line.

    Example:
    ```python
    # labels.tsv:
    #   n02084071<TAB>dog
    #   polar_bear<TAB>polar bear
    labels = devise.datasets.read_label_file("labels.tsv")   # {"n02084071": "dog", ...}
    ```
    """
    path = pathlib.Path(path)
    require_file(
        path,
        f"label file {path} does not exist; give one 'folder_name<TAB>label words' line per class, or omit it",
    )
    if report is None:
        report = DataReport(strict=strict)
    record_problem = problem_recorder(report, strict)
    labels: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, line in decoded_lines(path, record_problem):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if "\t" not in line:
            record_problem(path, f"expected 'folder_name<TAB>label words', got {text[:60]!r} (no tab)", number)
            continue
        # Split the unstripped line: a leading tab means an empty folder name.
        name, words = (field.strip() for field in line.split("\t", 1))
        if not name or not words:
            missing = "folder name" if not name else "label words"
            record_problem(path, f"empty {missing} in {text[:60]!r}", number)
            continue
        if name in labels:
            record_problem(path, f"{name!r} already labelled on line {first_line[name]}; keeping that one", number)
            continue
        labels[name] = words
        first_line[name] = number
    return labels


def split_class_images(
    images: Sequence[ClassImage],
    fractions: Mapping[str, float] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = 0,
) -> dict[str, list[ClassImage]]:
    """Deal each class's images into splits by fractions, deterministically.

    Within each class the images are sorted by id, shuffled with a generator
    seeded from ``seed`` and a stable hash of the class name, and dealt out
    in the order of ``fractions``: split ``i`` gets the images between
    ``round(n * (f_0 + ... + f_{i-1}))`` and ``round(n * (f_0 + ... + f_i))``,
    so every image lands in exactly one split and the sizes differ from
    ``n * f_i`` by less than one. A small class can leave a split empty
    (3 images at 0.8/0.1/0.1 give 2/1/0). The result depends only on the
    image ids, classes, ``fractions`` and ``seed``, not on the input order.

    Args:
        images: images without splits, e.g. from :func:`read_class_folders`
            in the class layout.
        fractions: ``{split name: fraction}``, non-negative and summing to 1;
            the default is 0.8/0.1/0.1 for train/val/test.
        seed: non-negative integer selecting the shuffle.

    Returns:
        ``{split name: images}`` (every key of ``fractions`` present), each
        image with its ``split`` set, sorted by id within a split.

    Raises:
        DeviseError: some image already has a split (from the split layout),
            or two images share an id.
        ValueError: ``fractions`` is empty, has a negative value or does not
            sum to 1, or ``seed`` is negative.

    Example:
    ```python
    images = devise.datasets.read_class_folders("data/animals")
    splits = devise.datasets.split_class_images(images, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=0)
    ```
    """
    if not fractions:
        raise ValueError("fractions must name at least one split")
    for name, fraction in fractions.items():
        if not fraction >= 0:
            raise ValueError(f"split {name!r}: fraction must be >= 0, got {fraction!r}")
    total = float(sum(fractions.values()))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {total:g} ({dict(fractions)})")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    already = [image for image in images if image.split is not None]
    if already:
        raise DeviseError(
            f"{len(already)} images already have a split (e.g. {already[0].image_id!r} is in "
            f"{already[0].split!r}); use the dataset's own splits instead of splitting again"
        )
    seen_ids: set[str] = set()
    by_class: dict[str, list[ClassImage]] = {}
    for image in images:
        if image.image_id in seen_ids:
            raise DeviseError(f"image id {image.image_id!r} appears twice; ids must be unique")
        seen_ids.add(image.image_id)
        by_class.setdefault(image.class_name, []).append(image)

    cumulative = np.cumsum([float(f) for f in fractions.values()]) / total
    splits: dict[str, list[ClassImage]] = {name: [] for name in fractions}
    for class_name, members in by_class.items():
        members = sorted(members, key=lambda image: image.image_id)
        rng = np.random.default_rng([seed, zlib.crc32(class_name.encode("utf-8"))])
        order = rng.permutation(len(members))
        # Half-up rounding of the cumulative boundaries (not banker's
        # rounding), and the last boundary is exactly n.
        bounds = np.floor(cumulative * len(members) + 0.5).astype(int)
        bounds[-1] = len(members)
        start = 0
        for name, stop in zip(fractions, bounds):
            splits[name].extend(dataclasses.replace(members[i], split=name) for i in order[start:stop])
            start = stop
    for name in splits:
        splits[name].sort(key=lambda image: image.image_id)
    return splits


def class_images_by_split(images: Sequence[ClassImage]) -> dict[str, list[ClassImage]]:
    """Group split images by their ``split``, e.g. those of the split layout.

    Args:
        images: images that all have a split.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` (every key present,
        possibly empty), in input order.

    Raises:
        DeviseError: an image has no split (the message suggests
            :func:`split_class_images`) or a split other than train/val/test.
    """
    splits: dict[str, list[ClassImage]] = {name: [] for name in SPLIT_NAMES}
    for image in images:
        if image.split is None:
            raise DeviseError(f"image {image.image_id!r} has no split; split the images first with split_class_images")
        if image.split not in splits:
            raise DeviseError(f"image {image.image_id!r} has split {image.split!r}; expected one of {SPLIT_NAMES}")
        splits[image.split].append(image)
    return splits


def _visible_entries(folder: pathlib.Path) -> tuple[list[str], list[str]]:
    """Sorted names of the visible sub-folders and files of ``folder``."""
    folders, files = [], []
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        (folders if entry.is_dir() else files).append(entry.name)
    return sorted(folders), sorted(files)


def _images_in(
    root: pathlib.Path,
    class_dir: pathlib.Path,
    class_name: str,
    split: str | None,
    record_problem: ProblemRecorder,
) -> list[ClassImage]:
    """The images under ``class_dir`` (recursively, sorted); other files are reported."""
    found: list[ClassImage] = []
    for folder, subfolders, files in os.walk(class_dir):
        # Sorted, and hidden folders pruned, so the walk is the same everywhere.
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = pathlib.Path(folder) / name
            if path.suffix.lower() not in CLASS_FOLDER_IMAGE_EXTENSIONS:
                record_problem(path, f"not an image file (extension {path.suffix or 'none'}); skipped")
                continue
            try:
                size = path.stat().st_size
            except OSError as exc:
                record_problem(path, f"cannot access image file ({exc.strerror or exc}); skipped")
                continue
            if size == 0:
                record_problem(path, "empty image file (0 bytes); skipped")
                continue
            found.append(
                ClassImage(
                    image_id=path.relative_to(root).as_posix(),
                    image_path=str(path),
                    class_name=class_name,
                    split=split,
                )
            )
    return found


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""

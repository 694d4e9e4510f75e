"""One entry point for every caption dataset format the config can name.

:func:`load_caption_dataset` picks the reader for ``data.format``, then runs
the checks every format shares, so a Flickr8k run and a manifest run meet
the same guarantees: one image path per image id, one split per image, and
every referenced image file present and non-empty. The image check is one
``os.stat`` per image; decoding (which finds truncated files and files that
are not images) happens later, when features are extracted, and those
failures go to the same :class:`~devise.datasets.report.DataReport`.
"""

from __future__ import annotations

import os
import pathlib
import stat
from collections.abc import Iterable, Sequence

from devise.datasets._reading import problem_recorder
from devise.datasets.coco import read_coco_captions
from devise.datasets.flickr import FLICKR8K_SPLIT_FILES, read_flickr_tokens
from devise.datasets.karpathy import read_karpathy_json
from devise.datasets.manifest import read_manifest
from devise.datasets.pascal import read_pascal_sentences
from devise.datasets.records import SPLIT_NAMES, CaptionRecord
from devise.datasets.report import DataReport
from devise.datasets.splits import assert_disjoint
from devise.errors import ConfigError, DeviseError, MissingResourcesError

#: Values of ``data.format``, in the order the docs list them.
DATASET_FORMATS: tuple[str, ...] = ("pascal", "karpathy", "flickr_tokens", "coco", "manifest")

# Which load_caption_dataset arguments each format needs, and what the
# annotations file is, for the error message when one is missing.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "pascal": ("root",),
    "karpathy": ("annotations", "images"),
    "flickr_tokens": ("annotations", "images"),
    "coco": ("annotations", "images"),
    "manifest": ("annotations",),
}
_CONFIG_KEYS = {"root": "data.root", "annotations": "data.annotations", "images": "data.images"}
_WHAT = {
    "root": "the folder holding dataset/ and sentence/",
    "annotations": {
        "karpathy": "a dataset_<name>.json split file",
        "flickr_tokens": "Flickr8k.token.txt or results_20130124.token",
        "coco": "a captions_<split>.json file",
        "manifest": "a .jsonl, .csv or .tsv manifest",
    },
    "images": "the folder the image file names are relative to",
}


def load_caption_dataset(
    format: str,  # named after the config key data.format
    *,
    root: str | os.PathLike | None = None,
    annotations: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    strict: bool = False,
    report: DataReport | None = None,
) -> list[CaptionRecord]:
    """Load a caption dataset in any supported format, checked the same way.

    Formats and the arguments they use:

    * ``"pascal"``: ``root`` (:func:`~devise.datasets.pascal.read_pascal_sentences`).
    * ``"karpathy"``: ``annotations`` = ``dataset_<name>.json``, ``images``
      (:func:`~devise.datasets.karpathy.read_karpathy_json`).
    * ``"flickr_tokens"``: ``annotations`` = the token file, ``images``
      (:func:`~devise.datasets.flickr.read_flickr_tokens`). When the three
      Flickr8k split files (:data:`~devise.datasets.flickr.FLICKR8K_SPLIT_FILES`)
      sit next to the token file they assign the splits.
    * ``"coco"``: ``annotations`` = ``captions_<split>.json``, ``images``
      (:func:`~devise.datasets.coco.read_coco_captions`); records get no
      split, since one COCO file is one split.
    * ``"manifest"``: ``annotations`` = the manifest, ``images`` optional
      (:func:`~devise.datasets.manifest.read_manifest`).

    After reading, for every format: a record whose image id was first seen
    with a different image path, or a different split, is left out and
    recorded (once per image); a record whose image file is missing, not a
    regular file or empty (0 bytes) is left out and recorded (once per
    image). Problems the reader finds come first in ``report``; in strict
    mode the first problem of either kind raises.

    Args:
        format: one of :data:`DATASET_FORMATS`.
        root: the Pascal Sentences folder (``data.root``).
        annotations: the annotation file (``data.annotations``).
        images: the image folder (``data.images``).
        strict: raise on the first problem instead of recording it.
        report: where problems are recorded; a fresh one is used if omitted.

    Returns:
        The records that passed every check, in the reader's order.

    Raises:
        ConfigError: ``format`` is unknown, or an argument it needs is
            missing (the message names the config key).
        MissingResourcesError: the annotation file or image folder does not
            exist.
        DataFormatError: the annotation file cannot be used at all (not
            UTF-8 JSON, no CSV header, ...), or in strict mode on the first
            problem found.
    """
    if format not in DATASET_FORMATS:
        raise ConfigError(
            f"data.format: unknown dataset format {format!r} (expected one of {', '.join(DATASET_FORMATS)})"
        )
    given = {"root": root, "annotations": annotations, "images": images}
    missing = [name for name in _REQUIRED[format] if given[name] is None or os.fspath(given[name]) == ""]
    if missing:
        needs = "; ".join(f"{_CONFIG_KEYS[name]} ({_what(name, format)})" for name in missing)
        example = f"{_CONFIG_KEYS[missing[0]]}=PATH"
        raise ConfigError(
            f"data.format={format} needs {needs}; set it in the config or on the command line ({example})"
        )
    if report is None:
        report = DataReport(strict=strict)
    if images is not None and format != "pascal" and not os.path.isdir(images):
        raise MissingResourcesError(
            [f"image folder {images} (data.images) does not exist; set data.images to {_WHAT['images']}"]
        )

    if format == "pascal":
        records = read_pascal_sentences(root, strict=strict, report=report)
    elif format == "karpathy":
        records = read_karpathy_json(annotations, images, strict=strict, report=report)
    elif format == "flickr_tokens":
        split_files = _flickr8k_split_files(pathlib.Path(annotations).parent)
        records = read_flickr_tokens(annotations, images, splits=split_files, strict=strict, report=report)
    elif format == "coco":
        records = read_coco_captions(annotations, images, strict=strict, report=report)
    else:
        records = read_manifest(annotations, images_dir=images, strict=strict, report=report)

    source = os.fspath(annotations if annotations is not None and format != "pascal" else root)
    return _checked(records, source, problem_recorder(report, strict))


def splits_from_records(records: Sequence[CaptionRecord]) -> dict[str, list[CaptionRecord]]:
    """Group records by the split their dataset file assigns.

    Args:
        records: e.g. from :func:`load_caption_dataset` for a format whose
            files carry splits (Karpathy, Flickr8k with its split files, a
            manifest with a ``split`` field).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` (every key present,
        possibly empty), records in dataset order.

    Raises:
        DeviseError: there are no records, some record has no split (the
            message counts them and suggests splitting by category instead),
            a split name is not train/val/test, or an image is in two splits.
    """
    if not records:
        raise DeviseError("the dataset has no usable captions to split; see the data report for why")
    unsplit = [record for record in records if record.split is None]
    if unsplit:
        images = len({record.image_id for record in unsplit})
        raise DeviseError(
            f"{len(unsplit)} of {len(records)} captions ({images} images, e.g. {unsplit[0].image_id!r}) "
            "have no split in the dataset file; give every item a split (train, val or test), "
            "or split by category instead (data.split.by=category)"
        )
    splits: dict[str, list[CaptionRecord]] = {name: [] for name in SPLIT_NAMES}
    for record in records:
        if record.split not in splits:
            raise DeviseError(
                f"image {record.image_id!r} has split {record.split!r}; expected one of {', '.join(SPLIT_NAMES)}"
            )
        splits[record.split].append(record)
    assert_disjoint(splits)
    return splits


def _checked(records: Iterable[CaptionRecord], source: str, record_problem) -> list[CaptionRecord]:
    """The records that pass the checks every format shares; the rest are reported."""
    first_of_id: dict[str, CaptionRecord] = {}
    reported: set[tuple[str, str, str | None]] = set()
    image_ok: dict[str, bool] = {}
    kept: list[CaptionRecord] = []
    for record in records:
        first = first_of_id.setdefault(record.image_id, record)
        conflict = None
        if first.image_path != record.image_path:
            conflict = f"image id {record.image_id!r} is used for both {first.image_path} and {record.image_path}"
        elif first.split != record.split:
            conflict = f"image id {record.image_id!r} is in both the {first.split!r} and {record.split!r} splits"
        if conflict is not None:
            # An image has several captions: report the conflict once.
            key = (record.image_id, record.image_path, record.split)
            if key not in reported:
                reported.add(key)
                record_problem(source, f"{conflict}; keeping the first, leaving out the later captions")
            continue
        ok = image_ok.get(record.image_path)
        if ok is None:
            ok = image_ok[record.image_path] = _image_file_ok(record.image_path, source, record_problem)
        if ok:
            kept.append(record)
    return kept


def _image_file_ok(path: str, source: str, record_problem) -> bool:
    """Whether ``path`` is a non-empty regular file; reports why not. One stat, no decoding."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        record_problem(path, f"image file not found (listed in {source})")
        return False
    except OSError as exc:
        record_problem(path, f"cannot access image file ({exc.strerror or exc})")
        return False
    if not stat.S_ISREG(info.st_mode):
        record_problem(path, "not a regular file")
        return False
    if info.st_size == 0:
        record_problem(path, "empty image file (0 bytes)")
        return False
    return True


def _flickr8k_split_files(folder: pathlib.Path) -> dict[str, pathlib.Path] | None:
    """Flickr8k's three split files in ``folder``, or None unless all three are there."""
    files = {split: folder / name for split, name in FLICKR8K_SPLIT_FILES.items()}
    # All or nothing: with only some present, the images of the missing
    # split would silently drop out of the dataset.
    return files if all(path.is_file() for path in files.values()) else None


def _what(name: str, format: str) -> str:
    what = _WHAT[name]
    return what[format] if isinstance(what, dict) else what

"""Reader for the Flickr8k / Flickr30k caption token files.

``Flickr8k.token.txt`` (and Flickr30k's ``results_20130124.token``) hold one
caption per line, keyed by image file name and caption number::

    1000268201_693b08cb0e.jpg#0<TAB>A child in a pink dress is climbing up ...
    1000268201_693b08cb0e.jpg#1<TAB>A girl going into a wooden building .

Flickr8k also ships split files, one image file name per line
(``Flickr_8k.trainImages.txt``, ``Flickr_8k.devImages.txt``,
``Flickr_8k.testImages.txt``); when given they assign each record's split.
"""

from __future__ import annotations

import os
import pathlib
import re
import types
from collections.abc import Mapping

from devise.datasets._reading import decoded_lines, problem_recorder, require_file
from devise.datasets.records import SPLIT_NAMES, CaptionRecord
from devise.datasets.report import DataReport

#: Split -> the Flickr8k split file that lists its images ("dev" is val).
FLICKR8K_SPLIT_FILES: Mapping[str, str] = types.MappingProxyType(
    {
        "train": "Flickr_8k.trainImages.txt",
        "val": "Flickr_8k.devImages.txt",
        "test": "Flickr_8k.testImages.txt",
    }
)

# "<image file>#<caption number>"; the file name itself may contain "#".
_KEY = re.compile(r"(?P<image>.+)#(?P<number>\d+)")
_HOW_TO_GET = (
    "set data.annotations to Flickr8k.token.txt (from Flickr8k_text.zip) or Flickr30k's results_20130124.token"
)


def read_flickr_tokens(
    path: str | os.PathLike,
    images_dir: str | os.PathLike,
    *,
    splits: Mapping[str, str | os.PathLike] | None = None,
    strict: bool = False,
    report: DataReport | None = None,
) -> list[CaptionRecord]:
    """Load a Flickr token file as one record per caption.

    The image id is the image file name, the image path is
    ``images_dir/<file name>`` and the category is ``None``. Records keep
    file order. A malformed line (no tab, no ``#<n>`` after the file name,
    empty caption, not UTF-8) is left out and recorded in ``report`` with its
    line number; every good line still loads.

    With ``splits``, each image gets the split whose file lists it. Images
    listed in no split file are left out (Flickr8k's token file names about
    a hundred such images) and recorded as one problem; an image listed in
    two split files keeps the first and the repeat is recorded, as is a
    listed image without captions. Without ``splits`` every split is
    ``None``. Whether the image files exist is not checked here (see
    :func:`devise.datasets.loader.load_caption_dataset`).

    Args:
        path: the token file.
        images_dir: the folder holding the images (e.g. ``Flicker8k_Dataset``).
        splits: ``{"train": file, "val": file, "test": file}`` (any subset),
            e.g. built from :data:`FLICKR8K_SPLIT_FILES`.
        strict: raise on the first problem instead of recording it.
        report: where problems are recorded; a fresh one is used if omitted.

    Returns:
        The records, in file order.

    Raises:
        ValueError: ``splits`` has a key other than train, val or test.
        MissingResourcesError: ``path`` or a split file does not exist.
        DataFormatError: in strict mode, on the first problem found.
    """
    path = pathlib.Path(path)
    if splits is not None:
        unknown = sorted(set(splits) - set(SPLIT_NAMES))
        if unknown:
            raise ValueError(f"splits keys must be among {', '.join(SPLIT_NAMES)}, got {unknown}")
    require_file(path, f"Flickr token file {path} does not exist; {_HOW_TO_GET}")
    if report is None:
        report = DataReport(strict=strict)
    record_problem = problem_recorder(report, strict)

    # image -> (split, split file, line) of the first listing.
    listed: dict[str, tuple[str, pathlib.Path, int]] | None = None
    if splits is not None:
        listed = _read_split_files(splits, record_problem)

    records: list[CaptionRecord] = []
    unlisted: dict[str, None] = {}  # an ordered set
    for number, line in decoded_lines(path, record_problem):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        if not tab:
            record_problem(path, "no tab between '<image file>#<n>' and the caption", number)
            continue
        match = _KEY.fullmatch(key.strip())
        if match is None:
            record_problem(path, f"expected '<image file>#<n>' before the tab, got {key.strip()!r}", number)
            continue
        caption = caption.strip()
        if not caption:
            record_problem(path, "empty caption", number)
            continue
        image = match["image"]
        split = None
        if listed is not None:
            if image not in listed:
                unlisted.setdefault(image)
                continue
            split = listed[image][0]
        records.append(CaptionRecord(image, os.path.join(images_dir, image), caption, None, split))

    if unlisted:
        names = list(unlisted)
        examples = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        record_problem(path, f"{len(unlisted)} image(s) in none of the split files were left out ({examples})")
    if listed is not None:
        with_captions = {record.image_id for record in records}
        for image, (_, split_path, line) in listed.items():
            if image not in with_captions:
                record_problem(split_path, f"{image} has no captions in {path}", line)
    return records


def _read_split_files(
    splits: Mapping[str, str | os.PathLike], record_problem
) -> dict[str, tuple[str, pathlib.Path, int]]:
    """Map image file name -> (split, split file, line) over every split file."""
    listed: dict[str, tuple[str, pathlib.Path, int]] = {}
    for split in SPLIT_NAMES:
        if split not in splits:
            continue
        split_path = pathlib.Path(splits[split])
        require_file(
            split_path,
            f"Flickr split file {split_path} ({split}) does not exist; it lists one image file "
            f"name per line, like Flickr8k's {FLICKR8K_SPLIT_FILES[split]}",
        )
        for number, line in decoded_lines(split_path, record_problem):
            image = line.strip()
            if not image:
                continue
            first = listed.setdefault(image, (split, split_path, number))
            if first[0] != split:
                record_problem(
                    split_path,
                    f"{image} is already in the {first[0]} split ({first[1]}:{first[2]}); keeping that",
                    number,
                )
    return listed

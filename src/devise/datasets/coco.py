"""Reader for MS-COCO caption annotation files.

``captions_train2014.json``, ``captions_val2014.json`` (and their 2017
counterparts) list the images and, separately, the captions that point at
them by image id::

    {"info": {...}, "licenses": [...],
     "images": [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg",
                 "height": 360, "width": 640, ...}, ...],
     "annotations": [{"image_id": 391895, "id": 770337,
                      "caption": "A man with a red helmet on a small moped ..."}, ...]}

Each file covers one COCO split, so the split a record gets is given by the
caller, not read from the file.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from devise.datasets._reading import load_json, problem_recorder
from devise.datasets.records import SPLIT_NAMES, CaptionRecord
from devise.datasets.report import DataReport
from devise.errors import DataFormatError

#: Split names a caller may assign.
COCO_SPLITS: tuple[str, ...] = SPLIT_NAMES

_HOW_TO_GET = (
    "set data.annotations to a captions_<split>.json file from the COCO annotations "
    "(e.g. captions_train2014.json in annotations_trainval2014.zip)"
)


def read_coco_captions(
    path: str | os.PathLike,
    images_dir: str | os.PathLike,
    *,
    split: str | None = None,
    strict: bool = False,
    report: DataReport | None = None,
) -> list[CaptionRecord]:
    """Load a COCO captions file as one record per caption.

    The image id is the image's ``file_name`` (unique across COCO's splits,
    and the same key the other readers use), the image path is
    ``images_dir/file_name`` and the category is ``None``. Records follow
    the order of ``images``, captions the order of ``annotations``. A
    problem (an image entry without ``id`` or ``file_name``, a repeated
    image id, a caption pointing at an image id not in ``images``, an empty
    caption, an image with no captions) is recorded in ``report`` with its
    index in the file; every good caption still loads. Whether the image
    files exist is not checked here (see
    :func:`devise.datasets.loader.load_caption_dataset`).

    Args:
        path: the ``captions_<split>.json`` file.
        images_dir: the folder holding the images it lists
            (e.g. ``coco/val2014``).
        split: the split every record is assigned (``"train"``, ``"val"``
            or ``"test"``), or ``None`` to assign none.
        strict: raise on the first problem instead of recording it.
        report: where problems are recorded; a fresh one is used if omitted.

    Returns:
        The records.

    Raises:
        ValueError: ``split`` is not one of :data:`COCO_SPLITS`.
        MissingResourcesError: ``path`` does not exist.
        DataFormatError: ``path`` is not UTF-8 JSON with ``images`` and
            ``annotations`` lists, or (in strict mode) on the first problem.
    """
    if split is not None and split not in COCO_SPLITS:
        raise ValueError(f"split must be one of {', '.join(COCO_SPLITS)} or None, got {split!r}")
    path = pathlib.Path(path)
    if report is None:
        report = DataReport(strict=strict)
    record_problem = problem_recorder(report, strict)
    data = load_json(path, f"COCO captions file {path} does not exist; {_HOW_TO_GET}")
    images = data.get("images") if isinstance(data, dict) else None
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise DataFormatError(
            f"{path}: not a COCO captions file (expected a JSON object with 'images' and "
            f"'annotations' lists); {_HOW_TO_GET}"
        )

    file_names: dict[Any, str] = {}
    for index, image in enumerate(images):
        where = f"images[{index}]"
        if not isinstance(image, dict):
            record_problem(path, f"{where}: expected an object, got {type(image).__name__}")
            continue
        image_id, file_name = image.get("id"), image.get("file_name")
        if not _is_id(image_id):
            record_problem(path, f"{where}: no 'id'")
            continue
        if not isinstance(file_name, str) or not file_name.strip():
            record_problem(path, f"{where} (id {image_id}): no 'file_name'")
            continue
        if image_id in file_names:
            record_problem(path, f"{where}: image id {image_id} repeated; keeping {file_names[image_id]}")
            continue
        file_names[image_id] = file_name

    captions: dict[Any, list[str]] = {image_id: [] for image_id in file_names}
    for index, annotation in enumerate(annotations):
        where = f"annotations[{index}]"
        if not isinstance(annotation, dict):
            record_problem(path, f"{where}: expected an object, got {type(annotation).__name__}")
            continue
        if "id" in annotation:
            where = f"{where} (id {annotation['id']})"
        image_id = annotation.get("image_id")
        if not _is_id(image_id):
            record_problem(path, f"{where}: no 'image_id'")
            continue
        if image_id not in captions:
            record_problem(path, f"{where}: image_id {image_id} is not in 'images'")
            continue
        caption = annotation.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            record_problem(path, f"{where}: empty or missing 'caption'")
            continue
        captions[image_id].append(caption.strip())

    records: list[CaptionRecord] = []
    for image_id, file_name in file_names.items():
        if not captions[image_id]:
            record_problem(path, f"image id {image_id} ({file_name}) has no captions")
            continue
        image_path = os.path.join(images_dir, file_name)
        records.extend(CaptionRecord(file_name, image_path, text, None, split) for text in captions[image_id])
    return records


def _is_id(value: Any) -> bool:
    # COCO ids are integers; strings are accepted for hand-made files, but
    # booleans (a JSON true is an int in Python) and floats are not ids.
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and bool(value))

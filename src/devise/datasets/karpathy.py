"""Reader for Karpathy's split JSON files (Flickr8k, Flickr30k, MS-COCO).

The ``dataset_<name>.json`` files of Karpathy & Fei-Fei's
``caption_datasets.zip`` fix the train/val/test splits most image-caption
papers report on. Their shape::

    {"dataset": "flickr8k",
     "images": [{"filename": "1000268201_693b08cb0e.jpg",
                 "filepath": "val2014",        # COCO only: sub-folder of the image
                 "split": "train",             # train, val, test or restval
                 "imgid": 0, "sentids": [0, 1, 2, 3, 4],
                 "sentences": [{"raw": "A child in a pink dress ...",
                                "tokens": ["a", "child", ...], ...}, ...]},
                ...]}

The split ``"restval"`` (the COCO val2014 images outside Karpathy's 5000
val and 5000 test images) is read as ``"train"``: the papers that use these
splits train on it, and keeping a fourth split name would leave it unused.
"""

from __future__ import annotations

import os
import pathlib
import types
from collections.abc import Mapping
from typing import Any

from devise.datasets._reading import load_json, problem_recorder
from devise.datasets.records import CaptionRecord
from devise.datasets.report import DataReport
from devise.errors import DataFormatError

#: Split names in the file -> the split the record gets.
KARPATHY_SPLITS: Mapping[str, str] = types.MappingProxyType(
    {"train": "train", "restval": "train", "val": "val", "test": "test"}
)

_HOW_TO_GET = (
    "set data.annotations to a dataset_<name>.json file from Karpathy's caption_datasets.zip "
    "(dataset_flickr8k.json, dataset_flickr30k.json or dataset_coco.json)"
)


def read_karpathy_json(
    path: str | os.PathLike,
    images_dir: str | os.PathLike,
    *,
    strict: bool = False,
    report: DataReport | None = None,
) -> list[CaptionRecord]:
    """Load a Karpathy split file as one record per caption.

    The image id is ``"<filepath>/<filename>"`` (just ``filename`` when the
    entry has no ``filepath``, as in Flickr8k/30k), the image path is that
    joined to ``images_dir``, the category is ``None`` and the split comes
    from the file (``restval`` read as ``train``). A caption is the
    sentence's ``raw`` text, stripped, or its ``tokens`` joined by spaces
    when ``raw`` is missing. An entry with a problem (not an object, no
    ``filename``, unknown split, no sentences) is left out and recorded in
    ``report`` with its index in ``images``; every good entry still loads.
    Whether the image files exist is not checked here (see
    :func:`devise.datasets.loader.load_caption_dataset`).

    Args:
        path: the ``dataset_<name>.json`` file.
        images_dir: the folder the ``filepath``/``filename`` of each entry
            is relative to (for COCO, the folder holding ``train2014/`` and
            ``val2014/``).
        strict: raise on the first problem instead of recording it.
        report: where problems are recorded; a fresh one is used if omitted.

    Returns:
        The records, in file order.

    Raises:
        MissingResourcesError: ``path`` does not exist.
        DataFormatError: ``path`` is not UTF-8 JSON with an ``images`` list,
            or (in strict mode) on the first problem found.
    """
    path = pathlib.Path(path)
    if report is None:
        report = DataReport(strict=strict)
    record_problem = problem_recorder(report, strict)
    data = load_json(path, f"Karpathy split file {path} does not exist; {_HOW_TO_GET}")
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataFormatError(
            f"{path}: not a Karpathy split file (expected a JSON object with an 'images' list); {_HOW_TO_GET}"
        )

    records: list[CaptionRecord] = []
    for index, entry in enumerate(images):
        where = f"images[{index}]"
        if not isinstance(entry, dict):
            record_problem(path, f"{where}: expected an object, got {type(entry).__name__}")
            continue
        filename = entry.get("filename")
        if not isinstance(filename, str) or not filename.strip():
            record_problem(path, f"{where}: no 'filename'")
            continue
        filepath = entry.get("filepath") or ""
        if not isinstance(filepath, str):
            record_problem(path, f"{where} ({filename}): 'filepath' must be a string, got {filepath!r}")
            continue
        where = f"{where} ({filename})"
        file_split = entry.get("split")
        if file_split is not None and file_split not in KARPATHY_SPLITS:
            record_problem(
                path, f"{where}: unknown split {file_split!r} (expected one of {', '.join(KARPATHY_SPLITS)})"
            )
            continue
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            record_problem(path, f"{where}: no sentences")
            continue
        captions = []
        for s_index, sentence in enumerate(sentences):
            caption = _caption(sentence)
            if caption is None:
                record_problem(path, f"{where}: sentences[{s_index}] has neither 'raw' text nor 'tokens'")
                continue
            captions.append(caption)
        # The id keeps the sub-folder: COCO file names are only unique
        # together with it in general, and it is what the file itself uses.
        # Stripping "/" also keeps a "/val2014" inside images_dir.
        filepath = filepath.strip("/")
        image_id = f"{filepath}/{filename}" if filepath else filename
        image_path = os.path.join(images_dir, filepath, filename)
        split = KARPATHY_SPLITS[file_split] if file_split is not None else None
        records.extend(CaptionRecord(image_id, image_path, caption, None, split) for caption in captions)
    return records


def _caption(sentence: Any) -> str | None:
    """The caption of one ``sentences`` entry, or None if it has none."""
    if not isinstance(sentence, dict):
        return None
    raw = sentence.get("raw")
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    tokens = sentence.get("tokens")
    if isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens):
        text = " ".join(tokens).strip()
        return text or None
    return None

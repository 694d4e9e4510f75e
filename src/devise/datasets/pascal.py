"""Reader (and writer) for the Pascal Sentences on-disk layout.

The official downloaders produce::

    <root>/dataset/<category>/<stem>.jpg     one image
    <root>/sentence/<category>/<stem>.txt    its captions, one per line

with 20 categories of 50 images and (normally) 5 captions each. The image id
is ``"<category>/<stem>"``. The embedded "shapes" demo dataset is written in
the same layout so one reader serves both.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import re
from collections.abc import Iterable, Sequence

from PIL import Image

from devise.datasets._reading import ProblemRecorder, problem_recorder
from devise.datasets.records import CaptionRecord
from devise.datasets.report import DataReport
from devise.errors import MissingResourcesError

PASCAL_CATEGORIES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

PASCAL_URL = "http://vision.cs.uiuc.edu/pascal-sentences/"
IMAGE_DIR = "dataset"
SENTENCE_DIR = "sentence"
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png"})
SENTENCE_EXTENSION = ".txt"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")

_EXPECTED_LAYOUT = f"{IMAGE_DIR}/<category>/<stem>.jpg and {SENTENCE_DIR}/<category>/<stem>.txt (one caption per line)"


@dataclasses.dataclass(frozen=True)
class PascalItem:
    """One image and its captions, to be written by :func:`write_pascal_layout`.

    Args:
        category: category folder name.
        stem: file name without extension; unique within the category.
        image: encoded image file bytes (written as they are), or a PIL image
            (saved as JPEG, quality 90).
        captions: one caption per entry; none may contain a line break.
        extension: image file extension, including the dot.
    """

    category: str
    stem: str
    image: bytes | Image.Image
    captions: Sequence[str]
    extension: str = ".jpg"


def read_pascal_sentences(
    root: str | os.PathLike,
    *,
    strict: bool = False,
    report: DataReport | None = None,
) -> list[CaptionRecord]:
    """Load a Pascal-Sentences-layout dataset as one record per caption.

    Categories and stems are walked in sorted order so the result is the same
    on every file system. Captions keep their file order; whitespace is
    stripped and blank lines are skipped. An item with a problem (image
    without sentence file, sentence file without image, empty or non-UTF-8
    sentence file, zero-byte image) is left out and recorded in ``report``
    while every good item still loads. Hidden files and files with other
    extensions are ignored.

    Args:
        root: the folder holding ``dataset/`` and ``sentence/``.
        strict: raise on the first problem instead of recording it.
        report: where problems are recorded; pass one in to read them
            afterwards. A fresh one is used if omitted.

    Returns:
        The records, grouped by category then image.

    Raises:
        MissingResourcesError: ``root``, ``root/dataset`` or
            ``root/sentence`` does not exist.
        DataFormatError: in strict mode, on the first problem found.
    """
    root_path = pathlib.Path(root)
    check_pascal_layout(root_path)
    if report is None:
        report = DataReport(strict=strict)
    record_problem = problem_recorder(report, strict)

    image_root = root_path / IMAGE_DIR
    sentence_root = root_path / SENTENCE_DIR
    categories = sorted(set(_subdirectories(image_root)) | set(_subdirectories(sentence_root)))

    records: list[CaptionRecord] = []
    for category in categories:
        images = _files_by_stem(image_root / category, IMAGE_EXTENSIONS, record_problem)
        sentences = _files_by_stem(sentence_root / category, frozenset({SENTENCE_EXTENSION}), record_problem)
        for stem in sorted(set(images) | set(sentences)):
            image_path = images.get(stem)
            sentence_path = sentences.get(stem)
            if sentence_path is None:
                expected = sentence_root / category / f"{stem}{SENTENCE_EXTENSION}"
                record_problem(image_path, f"image has no sentence file (expected {expected})")
                continue
            if image_path is None:
                expected = image_root / category / f"{stem}.jpg"
                record_problem(sentence_path, f"sentence file has no image (expected {expected})")
                continue
            if image_path.stat().st_size == 0:
                record_problem(image_path, "empty image file (0 bytes)")
                continue
            captions = _read_captions(sentence_path, record_problem)
            if captions is None:
                continue
            image_id = f"{category}/{stem}"
            records.extend(
                CaptionRecord(
                    image_id=image_id,
                    image_path=str(image_path),
                    caption=caption,
                    category=category,
                )
                for caption in captions
            )
    return records


def write_pascal_layout(root: str | os.PathLike, items: Iterable[PascalItem]) -> pathlib.Path:
    """Write images and sentence files in the Pascal Sentences layout.

    Existing files with the same names are overwritten; nothing else under
    ``root`` is touched.

    Args:
        root: destination folder; ``dataset/`` and ``sentence/`` are created
            inside it.
        items: the images and their captions.

    Returns:
        ``root`` as a path.

    Raises:
        ValueError: a category or stem is not a plain file name, or a
            caption contains a line break (it would read back as two).
    """
    root_path = pathlib.Path(root)
    for item in items:
        for name in (item.category, item.stem):
            if not name or name.startswith(".") or "/" in name or "\\" in name:
                raise ValueError(f"{name!r} is not a plain file name")
        for caption in item.captions:
            if "\n" in caption or "\r" in caption:
                raise ValueError(f"caption for {item.category}/{item.stem} has a line break: {caption!r}")
        image_dir = root_path / IMAGE_DIR / item.category
        sentence_dir = root_path / SENTENCE_DIR / item.category
        image_dir.mkdir(parents=True, exist_ok=True)
        sentence_dir.mkdir(parents=True, exist_ok=True)
        (image_dir / f"{item.stem}{item.extension}").write_bytes(_encode_image(item.image))
        text = "".join(f"{caption}\n" for caption in item.captions)
        (sentence_dir / f"{item.stem}{SENTENCE_EXTENSION}").write_text(text, encoding="utf-8")
    return root_path


def check_pascal_layout(root: str | os.PathLike) -> None:
    """Raise :class:`MissingResourcesError` unless ``root`` has the Pascal Sentences folders."""
    root = pathlib.Path(root)
    how_to_get = (
        f"expected the Pascal Sentences layout {_EXPECTED_LAYOUT}; download the images "
        f"and sentences from {PASCAL_URL} into that layout "
        f"(or run: devise-download pascal --dest {root})"
    )
    if not root.is_dir():
        raise MissingResourcesError([f"Pascal Sentences folder {root} does not exist; {how_to_get}"])
    missing = [str(root / name) for name in (IMAGE_DIR, SENTENCE_DIR) if not (root / name).is_dir()]
    if missing:
        raise MissingResourcesError([f"Pascal Sentences folder {' and '.join(missing)} missing; {how_to_get}"])


def _subdirectories(folder: pathlib.Path) -> list[str]:
    return [entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith(".")]


def _files_by_stem(
    folder: pathlib.Path, extensions: frozenset[str], record_problem: ProblemRecorder
) -> dict[str, pathlib.Path]:
    """Map stem -> file for the files in ``folder`` with one of ``extensions``."""
    if not folder.is_dir():
        return {}
    by_stem: dict[str, pathlib.Path] = {}
    for name in sorted(os.listdir(folder)):
        path = folder / name
        if name.startswith(".") or path.suffix.lower() not in extensions or not path.is_file():
            continue
        if path.stem in by_stem:
            # Sorted order keeps the choice stable; the duplicate is reported
            # so the user can remove whichever is wrong.
            record_problem(path, f"duplicate of {by_stem[path.stem].name}; using that one")
            continue
        by_stem[path.stem] = path
    return by_stem


def _read_captions(path: pathlib.Path, record_problem: ProblemRecorder) -> list[str] | None:
    """Non-blank stripped lines of a sentence file, or None after reporting why not."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        record_problem(path, f"cannot read sentence file ({exc.strerror or exc})")
        return None
    try:
        # utf-8-sig: a BOM left by some editors is not part of the first caption.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        record_problem(path, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})", line)
        return None
    # Only \n, \r\n and \r end a caption (what write_pascal_layout refuses);
    # str.splitlines would also split on U+2028, form feeds and the like.
    captions = [line.strip() for line in _LINE_BREAK.split(text)]
    captions = [caption for caption in captions if caption]
    if not captions:
        record_problem(path, "sentence file has no captions")
        return None
    return captions


def _encode_image(image: bytes | Image.Image) -> bytes:
    if isinstance(image, bytes):
        return image
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()

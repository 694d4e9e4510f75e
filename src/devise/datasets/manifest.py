"""Reader for plain caption manifests: JSON Lines, CSV or TSV.

A manifest lists one caption per item, with the image it describes:

* JSON Lines (``.jsonl``, ``.json-lines``, ``.ndjson``): one object per line,
  ``{"image": "dogs/1.jpg", "caption": "A dog runs.", "split": "train"}``.
* CSV (``.csv``) or TSV (``.tsv``): a header row naming the columns, then one
  row per caption. TSV fields are taken as written (no quoting), so they
  cannot hold a tab or a line break; CSV uses the usual double quotes.

Fields: ``image`` and ``caption`` are required; ``category``, ``split``
(``train``, ``val`` or ``test``) and ``image_id`` (default: ``image`` as
written) are optional. Other fields are ignored, so a manifest may carry
its own metadata.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

from devise.datasets._reading import decoded_lines, problem_recorder, require_file
from devise.datasets.records import SPLIT_NAMES, CaptionRecord
from devise.datasets.report import DataReport
from devise.errors import DataFormatError

#: Every field a manifest item may have; the first two are required.
MANIFEST_FIELDS: tuple[str, ...] = ("image", "caption", "category", "split", "image_id")
REQUIRED_FIELDS: tuple[str, ...] = ("image", "caption")
JSON_LINES_EXTENSIONS: frozenset[str] = frozenset({".jsonl", ".json-lines", ".ndjson"})
DELIMITERS: dict[str, str] = {".csv": ",", ".tsv": "\t"}

# (line number, fields) of one item before validation.
_Row = tuple[int, dict[str, Any]]


def read_manifest(
    path: str | os.PathLike,
    *,
    images_dir: str | os.PathLike | None = None,
    strict: bool = False,
    report: DataReport | None = None,
) -> list[CaptionRecord]:
    """Load a manifest as one record per item.

    The format is chosen by the file extension (see the module docstring).
    A relative ``image`` path resolves against ``images_dir``, or against
    the manifest's own folder when that is ``None``; absolute paths are kept.
    A bad item (invalid JSON, not an object, a required field missing or
    empty, a field of the wrong type, an unknown split name, a CSV row with
    the wrong number of fields, a line that is not UTF-8, an ``image_id``
    already used for another image or another split) is left out and
    recorded in ``report`` with its line number; every good item still
    loads. Whether the image files exist is not checked here (see
    :func:`devise.datasets.loader.load_caption_dataset`).

    Args:
        path: the manifest file.
        images_dir: folder relative image paths are resolved against.
        strict: raise on the first problem instead of recording it.
        report: where problems are recorded; a fresh one is used if omitted.

    Returns:
        The records, in file order.

    Raises:
        MissingResourcesError: ``path`` does not exist.
        DataFormatError: the extension names no known format, a CSV/TSV
            file has no header row with ``image`` and ``caption`` columns,
            or (in strict mode) on the first problem found.
    """
    path = pathlib.Path(path)
    require_file(
        path,
        f"manifest {path} does not exist; set data.annotations to a .jsonl, .csv or .tsv "
        f"file listing {', '.join(REQUIRED_FIELDS)} (and optionally "
        f"{', '.join(MANIFEST_FIELDS[2:])}) per caption",
    )
    suffix = path.suffix.lower()
    if suffix not in JSON_LINES_EXTENSIONS and suffix not in DELIMITERS:
        known = sorted(JSON_LINES_EXTENSIONS | set(DELIMITERS))
        raise DataFormatError(
            f"{path}: cannot tell the manifest format from the extension {suffix or '(none)'!r}; "
            f"rename it to end in one of {', '.join(known)}"
        )
    if report is None:
        report = DataReport(strict=strict)
    record_problem = problem_recorder(report, strict)
    base = pathlib.Path(images_dir) if images_dir is not None else path.parent

    lines = decoded_lines(path, record_problem)
    if suffix in JSON_LINES_EXTENSIONS:
        rows = _json_lines_rows(path, lines, record_problem)
    else:
        rows = _delimited_rows(path, lines, DELIMITERS[suffix], record_problem)

    records: list[CaptionRecord] = []
    # image_id -> (image path, split, line) of its first item.
    first_use: dict[str, tuple[str, str | None, int]] = {}
    for line, fields in rows:
        record = _record(fields, base, path, line, record_problem)
        if record is None:
            continue
        first_path, first_split, first_line = first_use.setdefault(
            record.image_id, (record.image_path, record.split, line)
        )
        if first_path != record.image_path:
            record_problem(
                path,
                f"image_id {record.image_id!r} is already used for {first_path} (line {first_line}); item left out",
                line,
            )
            continue
        if first_split != record.split:
            record_problem(
                path,
                f"image_id {record.image_id!r} is in split {first_split!r} on line {first_line} "
                f"but {record.split!r} here; item left out",
                line,
            )
            continue
        records.append(record)
    return records


def _record(
    fields: dict[str, Any], base: pathlib.Path, path: pathlib.Path, line: int, record_problem
) -> CaptionRecord | None:
    """Validate one item's fields into a record, or report why not and return None."""
    values: dict[str, str | None] = {}
    for name in MANIFEST_FIELDS:
        value = fields.get(name)
        if isinstance(value, str):
            value = value.strip() or None
        elif value is not None:
            record_problem(path, f"field {name!r} must be a string, got {value!r}", line)
            return None
        values[name] = value
    missing = [name for name in REQUIRED_FIELDS if values[name] is None]
    if missing:
        record_problem(path, f"missing or empty {' and '.join(repr(m) for m in missing)}", line)
        return None
    split = values["split"]
    if split is not None and split not in SPLIT_NAMES:
        record_problem(path, f"unknown split {split!r} (expected one of {', '.join(SPLIT_NAMES)})", line)
        return None
    image = values["image"]
    return CaptionRecord(
        image_id=values["image_id"] or image,
        image_path=str(base / image),  # an absolute image path stays as it is
        caption=values["caption"],
        category=values["category"],
        split=split,
    )


def _json_lines_rows(path: pathlib.Path, lines: Iterator[tuple[int, str]], record_problem) -> Iterator[_Row]:
    for number, text in lines:
        if not text.strip():
            continue
        try:
            item = json.loads(text)
        except json.JSONDecodeError as exc:
            record_problem(path, f"invalid JSON ({exc.msg} at column {exc.colno})", number)
            continue
        if not isinstance(item, dict):
            record_problem(path, f"expected a JSON object, got {type(item).__name__}", number)
            continue
        yield number, item


def _delimited_rows(
    path: pathlib.Path, lines: Iterator[tuple[int, str]], delimiter: str, record_problem
) -> Iterator[_Row]:
    # Physical line numbers of the lines fed to the csv reader, so a row
    # (which a quoted field may spread over several lines) can be reported
    # at the line it starts on.
    fed: list[int] = []

    def feed() -> Iterator[str]:
        for number, text in lines:
            fed.append(number)
            yield text + "\n"

    if delimiter == "\t":
        # TSV as most tools write it: fields taken literally, quotes included.
        reader = csv.reader(feed(), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(feed(), delimiter=delimiter)
    header: list[str] | None = None
    consumed = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # Typically an unclosed quote running to the end of the file.
            record_problem(path, f"malformed row ({exc})", fed[consumed] if consumed < len(fed) else None)
            break
        start = fed[consumed]
        consumed = len(fed)
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            missing = [name for name in REQUIRED_FIELDS if name not in header]
            if missing:
                raise DataFormatError(
                    f"{path}:{start}: the header row must name the columns "
                    f"{', '.join(REQUIRED_FIELDS)} (missing {', '.join(missing)}; found {', '.join(header)}); "
                    f"optional columns: {', '.join(MANIFEST_FIELDS[2:])}"
                )
            continue
        if len(row) != len(header):
            record_problem(
                path,
                f"expected {len(header)} fields like the header, got {len(row)}"
                + (" (an unquoted delimiter in a caption?)" if len(row) > len(header) else ""),
                start,
            )
            continue
        yield start, dict(zip(header, row, strict=True))
    if header is None:
        raise DataFormatError(
            f"{path}: no header row; the first row must name the columns "
            f"{', '.join(REQUIRED_FIELDS)} (optionally {', '.join(MANIFEST_FIELDS[2:])})"
        )

"""Helpers the caption readers share: problem recording and file decoding.

Private to :mod:`devise.datasets`; each reader keeps its own messages
(what the file is, how to get it) and passes them in.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

from devise.datasets.report import DataProblem, DataReport
from devise.errors import DataFormatError, MissingResourcesError

#: ``record(path, reason, line=None)``, as made by :func:`problem_recorder`.
ProblemRecorder = Callable[..., None]


def problem_recorder(report: DataReport, strict: bool) -> ProblemRecorder:
    """``record(path, reason, line=None)``: add to ``report``, or raise in strict mode."""

    def record(path: str | os.PathLike, reason: str, line: int | None = None) -> None:
        # A lenient report passed in alongside strict=True must still stop
        # at the first problem, without changing the caller's report.
        if strict and not report.strict:
            raise DataFormatError(str(DataProblem(str(path), line, reason)))
        report.add(str(path), reason, line)

    return record


def require_file(path: pathlib.Path, message: str) -> None:
    """Raise :class:`MissingResourcesError` with ``message`` unless ``path`` exists."""
    if not path.exists():
        raise MissingResourcesError([message])


def load_json(path: pathlib.Path, missing_message: str) -> Any:
    """Parse a UTF-8 JSON annotation file, raising a message that names it.

    Args:
        path: the file.
        missing_message: the message raised when ``path`` does not exist.

    Raises:
        MissingResourcesError: ``path`` does not exist.
        DataFormatError: it cannot be read, is not UTF-8 or is not JSON.
    """
    require_file(path, missing_message)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        # utf-8-sig: a BOM left by some editors is not part of the JSON.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataFormatError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); "
            "JSON annotation files must be UTF-8, re-save it as UTF-8"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None


def decoded_lines(path: pathlib.Path, record_problem: ProblemRecorder) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each UTF-8 line; other lines are reported and skipped."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    # A BOM left by some editors is not part of the first line.
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    # Split the bytes, not decoded text: one bad byte then costs one line,
    # and str.splitlines would also split on characters such as U+2028.
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            yield number, line.decode("utf-8")
        except UnicodeDecodeError as exc:
            record_problem(path, f"not valid UTF-8 (byte 0x{line[exc.start]:02x})", number)

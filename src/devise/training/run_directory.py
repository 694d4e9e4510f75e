"""Run directories: where each training run leaves its config, metrics and model."""

from __future__ import annotations

import datetime
import json
import os
from typing import Any


def create_run_directory(output_dir: str | os.PathLike, name: str) -> str:
    """Make ``<output_dir>/<name>-<YYYYmmdd-HHMMSS>`` (suffixed ``-2``, ``-3`` on a clash)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(os.fspath(output_dir), f"{name}-{stamp}")
    path, n = base, 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            n += 1
            path = f"{base}-{n}"


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text through a temporary file and a rename, so readers never see half a file.

    The temporary file is removed if writing fails (full disk, Ctrl-C), so a
    failed write leaves the previous file, if any, and nothing else.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON with :func:`write_text`."""
    # Serialise first: a value JSON cannot hold then fails before any file is touched.
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")

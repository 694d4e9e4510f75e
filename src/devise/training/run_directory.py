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


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False, default=_jsonable)
        f.write("\n")
    os.replace(tmp, path)


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")

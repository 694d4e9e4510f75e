"""Run directories: where each training run leaves its config, metrics and model.

This module is the writing side. A run directory is complete only once its
last file, :data:`COMPLETE_FILE`, is in place: the trainer writes it after
everything else, and a finished run directory is never trained into again.
The reading side (the completion check every reader of a run makes, the
saved config) is :mod:`devise.runs`, which search and evaluation share;
:data:`COMPLETE_FILE` and :func:`check_run_complete` are re-exported here.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

from devise.atomicfile import atomic_path, check_directory_writable
from devise.runs import COMPLETE_FILE, check_run_complete

__all__ = [
    "COMPLETE_FILE",
    "check_directory_writable",
    "check_run_complete",
    "check_run_dir_reusable",
    "create_run_directory",
    "mark_run_complete",
    "write_json",
    "write_text",
]


def mark_run_complete(run_dir: str | os.PathLike, files: list[str]) -> None:
    """Record that ``run_dir`` is finished (call after every other file is written)."""
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    write_json(os.path.join(os.fspath(run_dir), COMPLETE_FILE), {"finished": stamp, "files": sorted(files)})


def check_run_dir_reusable(run_dir: str | os.PathLike) -> None:
    """Refuse to train into a directory that holds a finished run, or that cannot be made or written.

    Raises:
        DeviseError: ``run_dir`` holds :data:`COMPLETE_FILE`, or see
            :func:`check_directory_writable`.
    """
    from devise.errors import DeviseError

    check_directory_writable(run_dir, "--run-dir")
    if os.path.isfile(os.path.join(os.fspath(run_dir), COMPLETE_FILE)):
        raise DeviseError(
            f"{run_dir}: already holds a finished run; choose another --run-dir (or delete this one first)"
        )


def create_run_directory(output_dir: str | os.PathLike, name: str) -> str:
    """Make ``<output_dir>/<name>-<YYYYmmdd-HHMMSS>`` (suffixed ``-2``, ``-3`` on a clash).

    Raises:
        DeviseError: ``output_dir`` cannot be made or written (see
            :func:`check_directory_writable`).
    """
    from devise.errors import DeviseError

    check_directory_writable(output_dir)
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
        except OSError as exc:  # what the check above cannot foresee: a read-only mount, a full disk
            raise DeviseError(
                f"{path}: cannot make the run directory ({exc.strerror or exc}); choose another output_dir"
            ) from None


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text through a temporary file and a rename, so readers never see half a file.

    The temporary file is removed if writing fails (full disk, Ctrl-C), so a
    failed write leaves the previous file, if any, and nothing else.
    """
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


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

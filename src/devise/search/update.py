"""Creating and incrementally updating the image index of a folder.

Updates are incremental (only new or changed files are embedded) and
atomic: every write goes to a temporary file that replaces the index in one
rename (:func:`devise.atomicfile.atomic_path`), and long updates
checkpoint, so a crash or Ctrl-C never leaves a corrupt index and a rerun
resumes. A damaged index (see :mod:`devise.search.index_file`) is rebuilt,
and so is one of an older format.

Each embedded photo's date (its EXIF date, else its modification time: see
:mod:`devise.search.photo_date`) is read from its header when it is
embedded; an unchanged row keeps the date stored with it, so an update opens
only the files it embeds.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable

import h5py
import numpy as np

from devise.atomicfile import atomic_path
from devise.errors import DataFormatError, DeviseError
from devise.progress import ProgressBar
from devise.search.index_file import (
    ImageIndex,
    IndexDamagedError,
    IndexWriteError,
    create_index_file,
    new_index_file,
    read_rows,
)
from devise.search.photo_date import DATE_SOURCES
from devise.search.scan import ImageFile, scan_images

# Rows copied per step when an update rewrites the file: bounds its memory.
_COPY_ROWS = 8192
# Paths handed to ``embed`` per call, so the progress bar moves between
# checkpoints (a checkpoint is still written only every ``checkpoint_every``).
_EMBED_BATCH = 256
# A checkpoint rewrites the whole index, so on a large index writing one after
# every ``checkpoint_every`` images would make a first build quadratic. Later
# checkpoints are therefore postponed until the time spent embedding since the
# last one is at least this many times the time that checkpoint took to write.
_CHECKPOINT_WORK_RATIO = 4.0


@dataclasses.dataclass
class UpdateReport:
    """What :func:`update_index` did.

    Attributes:
        added: new images embedded and indexed.
        updated: changed images re-embedded.
        removed: rows dropped: images deleted from the folder, and changed
            images that no longer decode.
        unchanged: rows kept as they were.
        failures: ``(path, reason)`` of images that could not be embedded;
            they are not indexed, so a fixed file is picked up next time.
        shards: with feature shards (``SearchEngine.update_index(features=...)``),
            one line saying how many images they served; ``""`` without.
    """

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    shards: str = ""

    @property
    def total(self) -> int:
        """Images in the index after the update."""
        return self.added + self.updated + self.unchanged

    def summary(self) -> str:
        """One line, e.g. ``"120 images indexed: 3 added, 1 updated, 0 removed, 116 unchanged"``."""
        line = (
            f"{self.total} images indexed: {self.added} added, {self.updated} updated, "
            f"{self.removed} removed, {self.unchanged} unchanged"
        )
        if self.failures:
            line += f"; {len(self.failures)} could not be read and were skipped"
        return line


@dataclasses.dataclass(slots=True)
class _Row:
    """One row of an index being written: its file and where its embedding is."""

    file: ImageFile
    base_row: int = -1  # row in the base index file, or -1
    new: int = -1  # position in the pending embeddings, or -1


def update_index(
    index_path: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    model_fingerprint: str,
    run_dir: str,
    embed: Callable[[list[str]], tuple[np.ndarray, list[int], list[tuple[str, str]]]],
    progress: bool = True,
    checkpoint_every: int = 1024,
    rebuild: bool = False,
) -> UpdateReport:
    """Create or incrementally update the index of every image under ``image_root``.

    Rows whose file is unchanged (same id, ``mtime_ns`` and size) are kept;
    new and changed files are embedded; rows of deleted files are dropped.
    Images that fail to embed are reported and not indexed. Nothing is
    written when nothing changed.

    Writes are atomic (a temporary file next to the index, then
    ``os.replace``), and a checkpoint is written after every
    ``checkpoint_every`` newly embedded images, so an interrupted update
    keeps its progress and a rerun resumes from it. On a large index, where
    a checkpoint (a full rewrite) is costly, later checkpoints are postponed
    so that writing them takes at most about a fifth of the run.

    Args:
        index_path: the ``.h5`` index file (created if absent).
        image_root: the folder of images.
        model_fingerprint: fingerprint of the model that ``embed`` uses.
        run_dir: the training run of that model, recorded in the index.
        embed: ``embed(paths) -> (embeddings, positions, failures)``: the
            ``float32`` embeddings ``(len(positions), dim)`` of the images that
            decoded, their positions in ``paths``, and ``(path, reason)`` of
            the others.
        progress: show a progress bar on stderr.
        checkpoint_every: newly embedded images between checkpoints.
        rebuild: embed every image again instead of keeping unchanged rows
            (the existing index is still replaced only by a complete new
            one). A damaged index is rebuilt without being asked.

    Returns:
        What changed.

    Raises:
        IndexMismatchError: the index was built by another model.
        DeviseError: the index covers another folder, or ``image_root`` is missing.
        DataFormatError: ``index_path`` exists but is not an image index.
        IndexWriteError: the index file cannot be written.
    """
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    index_path = os.path.abspath(os.fspath(index_path))
    image_root = os.path.abspath(os.fspath(image_root))
    run_dir = os.path.abspath(run_dir) if run_dir else ""

    base: ImageIndex | None = None
    if os.path.exists(index_path):
        # Refuses another model's index, and any file that is not an index,
        # rather than overwriting it.
        try:
            base = ImageIndex.open(index_path, model_fingerprint=model_fingerprint, upgrade=True)
            if base.date_ns is None:
                print(
                    f"{index_path}: format version 2 index, from before indexes stored each photo's date; "
                    "reading the dates and rewriting it as version 3 (changed files only are embedded again)",
                    file=sys.stderr,
                )
            # Every chunk is read once (its checksum checked) before rows are kept from it.
            if not rebuild:
                _check_embeddings(base)
        except IndexDamagedError as exc:
            # Still a devise index (its format attribute says so), so it is ours to replace.
            print(f"warning: {exc}; rebuilding it from the images", file=sys.stderr)
            base = None
        if base is not None and os.path.realpath(base.image_root) != os.path.realpath(image_root):
            raise DeviseError(
                f"{index_path}: this image index is of the folder {base.image_root}, not {image_root}. "
                f"Update it with that folder, or index {image_root} into a new file with a different --out."
            )
        if rebuild:
            base = None
    files = scan_images(image_root)
    scanned = {f.id for f in files}

    report = UpdateReport()
    # id -> (mtime_ns, size) the row was embedded at.
    old: dict[str, tuple[int, int]] = {}
    if base is not None:
        old = {i: (int(t), int(s)) for i, t, s in zip(base.ids, base.mtime_ns, base.sizes)}
    todo: list[ImageFile] = []
    for f in files:
        if old.get(f.id) == (f.mtime_ns, f.size):
            report.unchanged += 1
        else:
            todo.append(f)
    report.removed = sum(1 for i in old if i not in scanned)
    dim = base.dim if base is not None and len(base) else 0
    if not todo and base is not None and not report.removed and base.run_dir == run_dir and base.date_ns is not None:
        return report

    writer = _IndexWriter(index_path, model_fingerprint, run_dir, image_root, base)
    failed: set[str] = set()
    pending: dict[str, tuple[ImageFile, np.ndarray]] = {}  # id -> (the file with its date, its embedding)
    bar = ProgressBar("indexing images") if progress and todo else None
    since_checkpoint = 0
    last_checkpoint = time.monotonic()
    batch_size = min(checkpoint_every, _EMBED_BATCH)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        for f, vector, reason in _embed_batch(embed, batch, dim, index_path):
            if reason is not None:
                failed.add(f.id)
                report.failures.append((f.path, reason))
                continue
            dim = len(vector)
            pending[f.id] = (f.dated(), vector)
            if f.id in old:
                report.updated += 1
            else:
                report.added += 1
        since_checkpoint += len(batch)
        if bar is not None:
            bar.update(start + len(batch), len(todo))
        done = start + len(batch) >= len(todo)
        worked = time.monotonic() - last_checkpoint
        if not done and since_checkpoint >= checkpoint_every and worked >= _CHECKPOINT_WORK_RATIO * writer.last_write_s:
            writer.write(files, pending, failed, dim, final=False)
            pending.clear()
            since_checkpoint = 0
            last_checkpoint = time.monotonic()
    writer.write(files, pending, failed, dim, final=True)
    # Changed files that now fail lost their (stale) row.
    report.removed += sum(1 for i in failed if i in old)
    return report


def _check_embeddings(index: ImageIndex) -> None:
    """Read every chunk of an index's embeddings, so that a damaged one raises :class:`IndexDamagedError`."""
    for _ in index.blocks(4 * _COPY_ROWS, reuse=True):
        pass


def _embed_batch(embed, batch: list[ImageFile], dim: int, index_path: str):
    """``(file, vector or None, failure reason or None)`` for each file of ``batch``."""
    # HDF5 stores ids as UTF-8; a name that is not (undecodable bytes that
    # os.walk passed through as surrogates) cannot be indexed.
    good: list[ImageFile] = []
    for f in batch:
        try:
            f.id.encode("utf-8")
        except UnicodeEncodeError:
            yield f, None, "file name is not valid UTF-8; rename the file"
            continue
        good.append(f)
    if not good:
        return
    vectors, positions, failures = embed([f.path for f in good])
    vectors = np.asarray(vectors, np.float32)
    positions = [int(p) for p in positions]
    if vectors.ndim != 2 or len(vectors) != len(positions):
        raise ValueError(f"embed returned {vectors.shape} embeddings for {len(positions)} positions; they must match")
    if dim and len(positions) and vectors.shape[1] != dim:
        raise DataFormatError(
            f"{index_path}: the index holds {dim}-d embeddings but the model gives {vectors.shape[1]}-d; "
            "build a new index with a different --out"
        )
    reasons = {path: reason for path, reason in failures}
    embedded = set()
    for vector, p in zip(vectors, positions):
        embedded.add(p)
        if not np.isfinite(vector).all():
            yield good[p], None, "the model gave a non-finite embedding"
        else:
            yield good[p], vector, None
    for p, f in enumerate(good):
        if p not in embedded:
            yield f, None, reasons.get(f.path, "could not be embedded")


class _IndexWriter:
    """Writes successive versions of one index file, each atomically.

    After each write the new file becomes the base that the next one copies
    kept rows from, so the pending embeddings never have to stay in memory
    beyond one checkpoint.
    """

    def __init__(
        self,
        path: str,
        fingerprint: str,
        run_dir: str,
        image_root: str,
        base: ImageIndex | None,
    ):
        self.path = path
        self.fingerprint = fingerprint
        self.run_dir = run_dir
        self.image_root = image_root
        self.base = base
        self.last_write_s = 0.0

    def write(
        self,
        files: list[ImageFile],
        pending: dict[str, tuple[ImageFile, np.ndarray]],
        failed: set[str],
        dim: int,
        *,
        final: bool,
    ) -> None:
        """Write the index of ``files``: pending embeddings (and dates), else the base's row and date.

        A file whose embedding failed is left out. Before the final write,
        a file not yet re-embedded keeps its base row with the base's stats,
        so the next run still sees it as changed.
        """
        began = time.monotonic()
        new_ids = list(pending)
        new_pos = {image_id: i for i, image_id in enumerate(new_ids)}
        rows: list[_Row] = []
        for f in files:
            if f.id in failed:
                continue
            if f.id in new_pos:
                rows.append(_Row(pending[f.id][0], new=new_pos[f.id]))
                continue
            row = self.base.row_of(f.id) if self.base is not None else None
            if row is None:
                continue  # new file not embedded yet
            stamp = (int(self.base.mtime_ns[row]), int(self.base.sizes[row]))
            if stamp != (f.mtime_ns, f.size):
                if final:
                    continue  # defensive: every changed file was re-embedded or failed
                f = ImageFile(f.id, f.path, *stamp)
            if self.base.date_ns is None:  # a version 2 index: its kept rows' dates are read once, here
                rows.append(_Row(f.dated(), base_row=row))
                continue
            date = int(self.base.date_ns[row]), DATE_SOURCES[int(self.base.date_source[row])]
            rows.append(_Row(dataclasses.replace(f, date_ns=date[0], date_source=date[1]), base_row=row))
        new_matrix = np.stack([pending[i][1] for i in new_ids]) if new_ids else np.zeros((0, dim), np.float32)

        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with atomic_path(self.path) as tmp, new_index_file(tmp) as f:
                self._fill(f, rows, new_matrix, dim)
        except OSError as exc:
            # An unwritable --out or a full disk is the user's to fix: one
            # line naming the file, not a traceback.
            raise IndexWriteError(f"{self.path}: cannot write the image index ({exc})") from exc
        self.base = ImageIndex.open(self.path, model_fingerprint=self.fingerprint)
        self.last_write_s = time.monotonic() - began

    def _fill(self, f: h5py.File, rows: list[_Row], new_matrix: np.ndarray, dim: int) -> None:
        n = len(rows)
        writer = create_index_file(
            f,
            [r.file for r in rows],
            model_fingerprint=self.fingerprint,
            run_dir=self.run_dir,
            image_root=self.image_root,
            dim=dim,
        )
        if n == 0 or dim == 0:
            writer.finish()
            return
        base_row = np.array([r.base_row for r in rows], np.int64)
        new = np.array([r.new for r in rows], np.int64)
        source = None
        try:
            if (base_row >= 0).any():
                source = self.base.open_embeddings()
            for lo in range(0, n, _COPY_ROWS):
                hi = min(lo + _COPY_ROWS, n)
                block = np.empty((hi - lo, dim), np.float32)
                from_new = new[lo:hi] >= 0
                block[from_new] = new_matrix[new[lo:hi][from_new]]
                wanted = base_row[lo:hi]
                if (~from_new).any():
                    picks = np.flatnonzero(~from_new)
                    order = np.argsort(wanted[picks], kind="stable")
                    data = read_rows(source["embeddings"], wanted[picks][order])
                    block[picks[order]] = data
                writer.write(block)
        finally:
            if source is not None:
                source.close()
        writer.finish()

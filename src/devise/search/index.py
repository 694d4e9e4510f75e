"""An HDF5 index of a photo folder's joint-space embeddings, and exact top-k search over it.

The index file records which model built it (``model_fingerprint``) and
which folder it covers (``image_root``); readers refuse an index built by
another model instead of mixing two vector spaces. Updates are incremental
(only new or changed files are embedded) and atomic: every write goes to a
temporary file that replaces the index in one rename, and long updates
checkpoint, so a crash or Ctrl-C never leaves a corrupt index and a rerun
resumes.

Layout (format_version 1)::

    attrs:    format="devise-image-index", format_version=1, model_fingerprint,
              run_dir, image_root, dim
    ids       (N,) utf-8   path relative to image_root, POSIX separators, sorted
    paths     (N,) utf-8   absolute path
    embeddings (N, dim) float32, chunked by rows so it streams block by block
    mtime_ns  (N,) int64   stat of the file when it was embedded
    size      (N,) int64
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence

import h5py
import numpy as np

from devise.errors import DataFormatError, DeviseError
from devise.progress import ProgressBar

FORMAT = "devise-image-index"
FORMAT_VERSION = 1

#: File extensions (lower case) that :func:`scan_images` picks up.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})

# Rows per HDF5 chunk of ``embeddings``: 8192 x 512 float32 is 16 MiB, large
# enough that a streamed read is one system call per chunk.
_CHUNK_ROWS = 8192
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


class IndexMismatchError(DeviseError):
    """An index was built by another model than the one searching or updating it.

    Constructed with a message, like any exception; :meth:`for_index` writes
    the standard message for an image index.
    """

    @classmethod
    def for_index(
        cls, path: str, found: str, expected: str, run_dir: str = ""
    ) -> IndexMismatchError:
        """The error for the index at ``path``, built by ``found`` and wanted by ``expected``.

        Args:
            path: the index file.
            found: the fingerprint recorded in the index.
            expected: the fingerprint of the model in use.
            run_dir: the run that built the index, if recorded.

        Returns:
            The error, whose message names the file, both fingerprints
            (shortened) and what to do.
        """
        built_by = f" (the run at {run_dir})" if run_dir else ""
        return cls(
            f"{path}: this image index was built by model {_short(found)}{built_by}, "
            f"not by the model in use ({_short(expected)}); embeddings of two models cannot be mixed. "
            "Search it with the run that built it, or build a new index for this model "
            "with a different --out."
        )


class IndexWriteError(DeviseError, OSError):
    """The index file could not be written (unwritable folder, full disk, ...).

    The index on disk is left as it was.
    """


def _short(fingerprint: str) -> str:
    """First 12 characters of a fingerprint (a sha256 hex digest in practice)."""
    return (
        fingerprint[:12] + ("..." if len(fingerprint) > 12 else "")
        if fingerprint
        else "(none)"
    )


# -- scanning ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ImageFile:
    """An image file found by :func:`scan_images`.

    Attributes:
        id: path relative to the scanned folder, with ``/`` separators.
        path: absolute path.
        mtime_ns: modification time in nanoseconds.
        size: size in bytes.
    """

    id: str
    path: str
    mtime_ns: int
    size: int


def scan_images(root: str | os.PathLike) -> list[ImageFile]:
    """Every image file under ``root``, recursively, sorted by id.

    Files with the extensions in :data:`IMAGE_EXTENSIONS` (any case) are
    listed; hidden files and folders (name starting with ``.``) are skipped,
    and symlinked folders are not followed (they can loop, or pull in a
    whole other tree). Files that vanish or cannot be stat'ed while scanning
    are skipped.

    Args:
        root: the folder to scan.

    Returns:
        The images, sorted by :attr:`ImageFile.id`.

    Raises:
        DeviseError: ``root`` does not exist or is not a folder.
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.exists(root):
        raise DeviseError(f"{root}: image folder not found; check the path")
    if not os.path.isdir(root):
        raise DeviseError(
            f"{root}: not a folder; give the folder that holds the images"
        )
    found: list[ImageFile] = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        # Pruning in place stops os.walk from descending into hidden folders.
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if (
                name.startswith(".")
                or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS
            ):
                continue
            path = os.path.join(directory, name)
            try:
                st = os.stat(path)
            except OSError:  # vanished, or a broken symlink
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            found.append(ImageFile(rel, path, int(st.st_mtime_ns), int(st.st_size)))
    found.sort(key=lambda f: f.id)
    return found


# -- reading -----------------------------------------------------------------


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _file_token(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ImageIndex:
    """An image index file opened for searching.

    Metadata (ids, paths, stats) is held in memory; the embeddings stay on
    disk and are read block by block (:meth:`iter_blocks`) or a few rows at a
    time (:meth:`embeddings`), so an index larger than memory can be searched.

    Use :meth:`open`; the constructor is for this module.

    Attributes:
        path: absolute path of the index file.
        model_fingerprint: fingerprint of the model that built it.
        run_dir: the training run that built it.
        image_root: the indexed folder.
        dim: embedding dimension.
        ids: image ids (paths relative to ``image_root``), one per row.
        paths: absolute image paths, one per row.
        mtime_ns: ``int64`` modification times the rows were embedded at.
        sizes: ``int64`` file sizes the rows were embedded at.
    """

    def __init__(
        self,
        path: str,
        *,
        model_fingerprint: str,
        run_dir: str,
        image_root: str,
        dim: int,
        ids: list[str],
        paths: list[str],
        mtime_ns: np.ndarray,
        sizes: np.ndarray,
        token: tuple[int, int, int] | None = None,
    ):
        self.path = path
        self.model_fingerprint = model_fingerprint
        self.run_dir = run_dir
        self.image_root = image_root
        self.dim = dim
        self.ids = ids
        self.paths = paths
        self.mtime_ns = mtime_ns
        self.sizes = sizes
        self._token = token
        self._row_of: dict[str, int] | None = None

    @classmethod
    def open(
        cls, path: str | os.PathLike, *, model_fingerprint: str | None = None
    ) -> ImageIndex:
        """Open an index file and read its metadata.

        Args:
            path: the ``.h5`` index file.
            model_fingerprint: if given, the fingerprint of the model that
                will use the index; an index built by another model is refused.

        Returns:
            The opened index.

        Raises:
            DeviseError: ``path`` is not a file.
            DataFormatError: the file is not a devise image index, or is damaged.
            IndexMismatchError: the index was built by another model.
        """
        path = os.path.abspath(os.fspath(path))
        if os.path.isdir(path):
            raise DeviseError(
                f"{path}: is a folder, not an image index file; give the index's .h5 file"
            )
        if not os.path.isfile(path):
            raise DeviseError(
                f"{path}: image index not found; build it first or check the path"
            )
        try:
            token = _file_token(path)
            with h5py.File(path, "r") as f:
                fmt = _text(f.attrs.get("format", ""))
                if fmt != FORMAT:
                    raise DataFormatError(
                        f"{path}: not a devise image index (HDF5 file without format='{FORMAT}'); "
                        "give the index file that the indexing command wrote"
                    )
                version = int(f.attrs.get("format_version", 0))
                if version != FORMAT_VERSION:
                    raise DataFormatError(
                        f"{path}: image index format version {version} is not supported "
                        f"(this devise reads version {FORMAT_VERSION}); rebuild the index or upgrade devise"
                    )
                found = _text(f.attrs.get("model_fingerprint", ""))
                if model_fingerprint is not None and found != model_fingerprint:
                    raise IndexMismatchError.for_index(
                        path,
                        found,
                        model_fingerprint,
                        _text(f.attrs.get("run_dir", "")),
                    )
                dim = int(f.attrs["dim"])
                ids = list(f["ids"].asstr()[()])
                paths = list(f["paths"].asstr()[()])
                mtime_ns = np.asarray(f["mtime_ns"][()], np.int64)
                sizes = np.asarray(f["size"][()], np.int64)
                shape = f["embeddings"].shape
                index = cls(
                    path,
                    model_fingerprint=found,
                    run_dir=_text(f.attrs.get("run_dir", "")),
                    image_root=_text(f.attrs.get("image_root", "")),
                    dim=dim,
                    ids=ids,
                    paths=paths,
                    mtime_ns=mtime_ns,
                    sizes=sizes,
                    token=token,
                )
        except DeviseError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            # h5py raises OSError for a file that is not HDF5, KeyError for a
            # missing dataset or attribute.
            raise DataFormatError(
                f"{path}: not a readable devise image index ({exc}); "
                "give the index file that the indexing command wrote, or rebuild it"
            ) from None
        n = len(ids)
        if (
            len(paths) != n
            or len(mtime_ns) != n
            or len(sizes) != n
            or tuple(shape) != (n, dim)
        ):
            raise DataFormatError(
                f"{path}: damaged image index ({n} ids, {len(paths)} paths, embeddings {tuple(shape)}); rebuild it"
            )
        return index

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"ImageIndex({self.path!r}, {len(self)} images, dim={self.dim})"

    def row_of(self, image_id: str) -> int | None:
        """The row of an image id, or ``None`` if it is not indexed."""
        if self._row_of is None:
            self._row_of = {image_id: row for row, image_id in enumerate(self.ids)}
        return self._row_of.get(image_id)

    def _open_embeddings(self) -> h5py.File:
        """Open the file for reading embeddings, checking it is still the one opened."""
        try:
            token = _file_token(self.path)
        except OSError:
            token = None
        if self._token is not None and token != self._token:
            raise DeviseError(
                f"{self.path}: the image index changed on disk since it was opened; open it again"
            )
        return h5py.File(self.path, "r")

    def iter_blocks(self, block_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Stream the embeddings from disk.

        The file is opened for the iteration and closed when it ends (or the
        iterator is closed). Each block is a new array the caller may keep.

        Args:
            block_rows: rows per block (the last block may be shorter).

        Returns:
            An iterator of ``(start_row, block)`` with ``block`` a ``float32``
            array ``(rows, dim)``.
        """
        return self._blocks(block_rows, reuse=False)

    def _blocks(
        self, block_rows: int, *, reuse: bool
    ) -> Iterator[tuple[int, np.ndarray]]:
        """:meth:`iter_blocks`; with ``reuse`` every block is read into one buffer.

        Reusing the buffer saves allocating (and page-faulting) a large block
        per step; only callers that are done with a block before asking for
        the next one may use it. (Reading the next block in a thread while
        the caller computes was measured slower on a 2-core machine: the
        reader competes with the BLAS threads for cores and memory bandwidth.)
        """
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        n = len(self)
        if n == 0:
            return
        with self._open_embeddings() as f:
            dataset = f["embeddings"]
            buffer = (
                np.empty((min(block_rows, n), self.dim), np.float32) if reuse else None
            )
            for start in range(0, n, block_rows):
                stop = min(start + block_rows, n)
                out = (
                    buffer[: stop - start]
                    if buffer is not None
                    else np.empty((stop - start, self.dim), np.float32)
                )
                dataset.read_direct(out, np.s_[start:stop], np.s_[0 : stop - start])
                yield start, out

    def embeddings(self, rows: Sequence[int]) -> np.ndarray:
        """The embeddings of some rows, in the order given.

        Args:
            rows: row numbers (repeats allowed).

        Returns:
            ``float32`` array ``(len(rows), dim)``.
        """
        rows = np.asarray(rows, np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row out of range for an index of {len(self)} images")
        if rows.size == 0:
            return np.zeros((0, self.dim), np.float32)
        unique, inverse = np.unique(rows, return_inverse=True)
        with self._open_embeddings() as f:
            data = _read_rows(f["embeddings"], unique)
        return data[inverse.reshape(-1)]


def _read_rows(
    dataset: h5py.Dataset, rows: np.ndarray, span: int = _COPY_ROWS
) -> np.ndarray:
    """Rows (sorted, unique) of a 2-D dataset, read as contiguous slices.

    One slice covers the rows within ``span`` of its first row, so a dense
    run of rows is one read and memory stays bounded by ``span`` rows;
    h5py's point selection would be far slower for thousands of rows.
    """
    out = np.empty((len(rows), dataset.shape[1]), np.float32)
    i = 0
    while i < len(rows):
        lo = int(rows[i])
        j = int(np.searchsorted(rows, lo + span, side="left"))
        hi = int(rows[j - 1]) + 1
        piece = np.asarray(dataset[lo:hi], np.float32)
        out[i:j] = piece[rows[i:j] - lo]
        i = j
    return out


# -- exact search ------------------------------------------------------------

_NO_ROW = np.iinfo(np.int64).max  # ranks after every real row at equal score


class _TopK:
    """Running top-k of each query's scores over blocks of consecutive rows.

    Blocks arrive in row order, so a later row never beats an earlier one at
    an equal score: once ``k`` rows are held, a block only matters where a
    score is strictly above the query's current k-th best. Most blocks are
    rejected by one max-reduction per query, and only the few candidates
    above the bar are gathered and merged.
    """

    def __init__(self, queries: int, k: int):
        self.k = k
        self.scores = np.full((queries, k), -np.inf, np.float32)
        self.rows = np.full((queries, k), _NO_ROW, np.int64)
        self.seen = 0

    def push(self, scores: np.ndarray, start: int) -> None:
        """Merge a block of scores ``(Q, m)`` of rows ``start .. start+m-1``."""
        k = self.k
        queries, m = scores.shape
        if queries == 1:
            self._push_one(scores[0], start)
            return
        full = self.seen >= k
        self.seen += m
        which = np.arange(queries)
        if full:
            # fmax ignores NaN, so one NaN score cannot hide a block.
            active = np.fmax.reduce(scores, axis=1) > self.scores[:, -1]
            if not active.any():
                return
            which = np.flatnonzero(active)
            block = scores[which] if len(which) < queries else scores
            qi, col = _nonzero(block > self.scores[which, -1][:, None])
        elif m > 2 * k and np.isfinite(bar := _group_bar(scores, k)).all():
            # Scores below the bar cannot make this block's top k; the ties
            # at it are all kept, so the lower rows of a tie are never lost.
            block = scores
            qi, col = _nonzero(block >= bar[:, None])
        else:
            # Every score is a candidate (a small block, or too few finite
            # scores for a bar); NaN ranks last.
            block = np.where(np.isnan(scores), np.float32(-np.inf), scores)
            qi, col = np.divmod(np.arange(queries * m), m)
        cand_scores, cand_rows = self._pad(len(which), qi, block[qi, col], col + start)
        self._merge(which, *self._prune(which, cand_scores, cand_rows))

    def _push_one(self, scores: np.ndarray, start: int) -> None:
        """:meth:`push` for a single query, on 1-D arrays: no padding, fewer calls.

        A single query over a small index is where per-call overheads show.
        """
        k = self.k
        full = self.seen >= k
        self.seen += len(scores)
        if full:
            bar = self.scores[0, -1]
            if not np.fmax.reduce(scores) > bar:
                return
            cols = np.flatnonzero(scores > bar)
            cand = scores[cols]
        elif len(scores) > 2 * k and np.isfinite(bar := _group_bar(scores[None], k)[0]):
            cols = np.flatnonzero(scores >= bar)
            cand = scores[cols]
        else:
            cols = np.arange(len(scores))
            cand = np.where(np.isnan(scores), np.float32(-np.inf), scores)
        if len(cand) > 2 * k:
            kth = np.partition(cand, len(cand) - k)[len(cand) - k]
            keep = cand >= kth
            cols, cand = cols[keep], cand[keep]
        merged_scores = np.concatenate([self.scores[0], cand])
        merged_rows = np.concatenate([self.rows[0], cols + start])
        order = np.lexsort((merged_rows, -merged_scores))[:k]
        self.scores[0] = merged_scores[order]
        self.rows[0] = merged_rows[order]

    def _prune(
        self, which: np.ndarray, cand_scores: np.ndarray, cand_rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cut padded candidates down to each query's k best and the ties at its k-th.

        Only needed when there are many (a small or adversarial block); the
        sort in :meth:`_merge` then stays small.
        """
        width = cand_scores.shape[1]
        if width <= 2 * self.k:
            return cand_scores, cand_rows
        kth = np.partition(cand_scores, width - self.k, axis=1)[:, width - self.k]
        qi, col = _nonzero(cand_scores >= kth[:, None])
        return self._pad(len(which), qi, cand_scores[qi, col], cand_rows[qi, col])

    @staticmethod
    def _pad(
        queries: int, qi: np.ndarray, scores: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Lay candidates ``(query, score, row)``, grouped by query, out as one padded row per query."""
        counts = np.bincount(qi, minlength=queries)
        width = int(counts.max()) if len(qi) else 0
        pos = np.arange(len(qi)) - (np.cumsum(counts) - counts)[qi]
        padded_scores = np.full((queries, width), -np.inf, np.float32)
        padded_rows = np.full((queries, width), _NO_ROW, np.int64)
        padded_scores[qi, pos] = scores
        padded_rows[qi, pos] = rows
        return padded_scores, padded_rows

    def _merge(
        self, which: np.ndarray, cand_scores: np.ndarray, cand_rows: np.ndarray
    ) -> None:
        scores = np.concatenate([self.scores[which], cand_scores], axis=1)
        rows = np.concatenate([self.rows[which], cand_rows], axis=1)
        # Score descending, then row ascending (lexsort's last key is the primary one).
        order = np.lexsort((rows, -scores), axis=1)[:, : self.k]
        self.scores[which] = np.take_along_axis(scores, order, axis=1)
        self.rows[which] = np.take_along_axis(rows, order, axis=1)


def _nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a C-contiguous 2-D mask, about ten times faster.

    numpy's 2-D nonzero takes a slow multi-index path; the flat one is a
    vectorised scan, and the few hits are split into (row, column) here.
    """
    return np.divmod(np.flatnonzero(mask), mask.shape[1])


def _group_bar(scores: np.ndarray, k: int) -> np.ndarray:
    """A lower bound on each query's k-th best score in a block, in one pass.

    The block is cut into ``8k`` groups of columns; the k-th largest of the
    group maxima is reached by at least k scores (one per group), so the
    k-th best score is at least as high. Only the few scores at or above it
    need sorting, where a partition of the whole block would cost a multiple
    of the matrix product for a single query. -inf where fewer than k
    groups have a finite maximum.
    """
    queries, m = scores.shape
    groups = min(m, 8 * k)
    size = m // groups
    maxima = np.fmax.reduce(
        scores[:, : groups * size].reshape(queries, groups, size), axis=2
    )
    # np.partition sorts NaN (an all-NaN group) above everything: make it lowest.
    maxima[np.isnan(maxima)] = -np.inf
    return np.partition(maxima, groups - k, axis=1)[:, groups - k]


def _compute_rows(queries: int) -> int:
    """Rows per matrix product: a ``(Q, rows)`` float32 score block of at most 8 MiB.

    It stays in the last-level cache between the product that writes it and
    the reductions that read it, and few, large products keep the per-call
    costs (Python, and waking BLAS threads, which a busy machine makes
    expensive) small next to the arithmetic.
    """
    return int(max(4096, min(65536, (8 << 20) // (4 * queries))))


def exact_search(
    source: ImageIndex | np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    block_rows: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner-product search (cosine for unit vectors).

    Scores are computed block by block (``queries @ block.T``) and merged
    into a running top-k, so an :class:`ImageIndex` is streamed from disk and
    never loaded whole: the memory held is ``O(Q * (k + block_rows))``.

    Args:
        source: an opened index, or an array ``(N, D)`` of embeddings.
        queries: ``(Q, D)``, or ``(D,)`` for one query.
        k: how many results per query.
        block_rows: rows read from ``source`` per step (an upper bound; the
            products are taken over smaller, cache-sized blocks).

    Returns:
        ``(scores, rows)``, each ``(Q, min(k, N))``: ``float32`` scores sorted
        descending (ties broken by the lower row; NaN ranks last) and the
        ``int64`` rows they belong to.

    Raises:
        ValueError: ``k < 1``, or the shapes do not match.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    q = np.asarray(queries, np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2:
        raise ValueError(f"queries must be (Q, D) or (D,), got shape {q.shape}")
    q = np.ascontiguousarray(q)
    if isinstance(source, ImageIndex):
        n, dim = len(source), source.dim
        blocks: Iterator[tuple[int, np.ndarray]] = source._blocks(
            block_rows, reuse=True
        )
    else:
        matrix = np.asarray(source)
        if matrix.ndim != 2:
            raise ValueError(
                f"source must be an ImageIndex or an (N, D) array, got shape {matrix.shape}"
            )
        n, dim = matrix.shape
        # Row slices of a C-contiguous array are views: no block is copied.
        blocks = (
            (start, matrix[start : start + block_rows])
            for start in range(0, n, block_rows)
        )
    top_k = min(k, n)
    if top_k == 0 or q.shape[0] == 0:
        return np.zeros((q.shape[0], top_k), np.float32), np.zeros(
            (q.shape[0], top_k), np.int64
        )
    if q.shape[1] != dim:
        raise ValueError(f"queries have dimension {q.shape[1]}, the embeddings {dim}")

    best = _TopK(q.shape[0], top_k)
    step = _compute_rows(q.shape[0])
    scratch = np.empty((q.shape[0], min(step, block_rows, n)), np.float32)
    for start, block in blocks:
        for offset in range(0, len(block), step):
            part = block[offset : offset + step]
            if part.dtype != np.float32:
                part = part.astype(np.float32)
            rows = len(part)
            # Into a reused buffer: a fresh (Q, rows) array per block would be
            # page-faulted in every time.
            out = (
                scratch
                if rows == scratch.shape[1]
                else np.empty((q.shape[0], rows), np.float32)
            )
            np.matmul(q, part.T, out=out)
            best.push(out, start + offset)
    return best.scores, best.rows


# -- updating ----------------------------------------------------------------


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
    """

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)

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
        base = ImageIndex.open(index_path, model_fingerprint=model_fingerprint)
        if os.path.realpath(base.image_root) != os.path.realpath(image_root):
            raise DeviseError(
                f"{index_path}: this image index is of the folder {base.image_root}, not {image_root}. "
                f"Update it with that folder, or index {image_root} into a new file with a different --out."
            )
    files = scan_images(image_root)
    scanned = {f.id for f in files}

    report = UpdateReport()
    # id -> (mtime_ns, size) the row was embedded at.
    old: dict[str, tuple[int, int]] = {}
    if base is not None:
        old = {
            i: (int(t), int(s)) for i, t, s in zip(base.ids, base.mtime_ns, base.sizes)
        }
    todo: list[ImageFile] = []
    for f in files:
        if old.get(f.id) == (f.mtime_ns, f.size):
            report.unchanged += 1
        else:
            todo.append(f)
    report.removed = sum(1 for i in old if i not in scanned)
    dim = base.dim if base is not None and len(base) else 0
    if not todo and base is not None and not report.removed and base.run_dir == run_dir:
        return report

    writer = _IndexWriter(index_path, model_fingerprint, run_dir, image_root, base)
    failed: set[str] = set()
    pending: dict[str, np.ndarray] = {}
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
            pending[f.id] = vector
            if f.id in old:
                report.updated += 1
            else:
                report.added += 1
        since_checkpoint += len(batch)
        if bar is not None:
            bar.update(start + len(batch), len(todo))
        done = start + len(batch) >= len(todo)
        worked = time.monotonic() - last_checkpoint
        if (
            not done
            and since_checkpoint >= checkpoint_every
            and worked >= _CHECKPOINT_WORK_RATIO * writer.last_write_s
        ):
            writer.write(files, pending, failed, dim, final=False)
            pending.clear()
            since_checkpoint = 0
            last_checkpoint = time.monotonic()
    writer.write(files, pending, failed, dim, final=True)
    # Changed files that now fail lost their (stale) row.
    report.removed += sum(1 for i in failed if i in old)
    return report


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
        raise ValueError(
            f"embed returned {vectors.shape} embeddings for {len(positions)} positions; they must match"
        )
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
        pending: dict[str, np.ndarray],
        failed: set[str],
        dim: int,
        *,
        final: bool,
    ) -> None:
        """Write the index of ``files``: pending embeddings, else the base's row.

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
                rows.append(_Row(f, new=new_pos[f.id]))
                continue
            row = self.base.row_of(f.id) if self.base is not None else None
            if row is None:
                continue  # new file not embedded yet
            stamp = (int(self.base.mtime_ns[row]), int(self.base.sizes[row]))
            if stamp != (f.mtime_ns, f.size):
                if final:
                    continue  # defensive: every changed file was re-embedded or failed
                f = ImageFile(f.id, f.path, *stamp)
            rows.append(_Row(f, base_row=row))
        new_matrix = (
            np.stack([pending[i] for i in new_ids])
            if new_ids
            else np.zeros((0, dim), np.float32)
        )

        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with h5py.File(tmp, "w") as f:
                self._fill(f, rows, new_matrix, dim)
            os.replace(tmp, self.path)
        except OSError as exc:
            # An unwritable --out or a full disk is the user's to fix: one
            # line naming the file, not a traceback.
            raise IndexWriteError(f"{self.path}: cannot write the image index ({exc})") from exc
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        self.base = ImageIndex.open(self.path, model_fingerprint=self.fingerprint)
        self.last_write_s = time.monotonic() - began

    def _fill(
        self, f: h5py.File, rows: list[_Row], new_matrix: np.ndarray, dim: int
    ) -> None:
        n = len(rows)
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["model_fingerprint"] = self.fingerprint
        f.attrs["run_dir"] = self.run_dir
        f.attrs["image_root"] = self.image_root
        f.attrs["dim"] = dim
        text = h5py.string_dtype("utf-8")
        f.create_dataset(
            "ids", data=np.array([r.file.id for r in rows], dtype=object), dtype=text
        )
        f.create_dataset(
            "paths",
            data=np.array([r.file.path for r in rows], dtype=object),
            dtype=text,
        )
        f.create_dataset(
            "mtime_ns", data=np.array([r.file.mtime_ns for r in rows], np.int64)
        )
        f.create_dataset("size", data=np.array([r.file.size for r in rows], np.int64))
        # HDF5 chunks must be non-empty; a 0-d index (nothing embedded yet) is contiguous.
        chunks = (min(n, _CHUNK_ROWS) or 1, dim) if dim else None
        out = f.create_dataset(
            "embeddings", shape=(n, dim), dtype=np.float32, chunks=chunks
        )
        if n == 0 or dim == 0:
            return
        base_row = np.array([r.base_row for r in rows], np.int64)
        new = np.array([r.new for r in rows], np.int64)
        source = None
        try:
            if (base_row >= 0).any():
                source = self.base._open_embeddings()
            for lo in range(0, n, _COPY_ROWS):
                hi = min(lo + _COPY_ROWS, n)
                block = np.empty((hi - lo, dim), np.float32)
                from_new = new[lo:hi] >= 0
                block[from_new] = new_matrix[new[lo:hi][from_new]]
                wanted = base_row[lo:hi]
                if (~from_new).any():
                    picks = np.flatnonzero(~from_new)
                    order = np.argsort(wanted[picks], kind="stable")
                    data = _read_rows(source["embeddings"], wanted[picks][order])
                    block[picks[order]] = data
                out[lo:hi] = block
        finally:
            if source is not None:
                source.close()

"""The image index file: its format, the reader that checks it, and the function that writes it.

The index file records which model built it (``model_fingerprint``) and
which folder it covers (``image_root``); readers refuse an index built by
another model instead of mixing two vector spaces. Nothing read from it is
trusted unchecked. Each embedding row has a check value, its dot product
with a fixed vector (:func:`check_vector`), stored when it was written and
compared with the row read back: :func:`devise.search.exact.exact_search`
computes it as one more row of the same matrix product that scores the
queries, so a search verifies every row it scans at almost no cost. The
file list, attributes and check values carry a SHA-256 digest checked on
opening; results that unit vectors cannot give (a score above the query's
norm, a stored row that is not unit length) are refused.

Why not a checksum of the bytes: HDF5's Fletcher-32 filter made streaming a
100k x 512 index 3x slower on the 2-core machine, and zlib's CRC-32 2x
slower; the folded check value costs next to nothing. It passes damage that
moves a row by less than :data:`CHECK_TOLERANCE` (a flip of a low mantissa
bit), which moves a score by as little, and catches any larger change.
A damaged index raises :class:`IndexDamagedError`, whose message says to
rebuild it; ``devise-index`` rebuilds a damaged index by itself.

Layout (format_version 3)::

    attrs:    format="devise-image-index", format_version=3, model_fingerprint,
              run_dir, image_root, dim, metadata_sha256 (see :func:`metadata_digest`)
    ids       (N,) utf-8   path relative to image_root, POSIX separators, sorted
    paths     (N,) utf-8   absolute path
    embeddings (N, dim) float32 unit rows, chunked by rows
    row_check (N,) float32  each row's dot product with check_vector(dim), as written
    mtime_ns  (N,) int64   stat of the file when it was embedded
    size      (N,) int64
    date_ns   (N,) int64   the photo's date: EXIF date, else mtime_ns (see devise.search.photo_date)
    date_source (N,) uint8 where date_ns came from: 0 = mtime, 1 = exif (DATE_SOURCES)

written in HDF5's latest file format, whose own metadata is checksummed.
The digest covers every dataset but the embeddings (which the check values cover).

Older versions are refused with the advice to rebuild (``devise-index`` on
the same ``--out`` rebuilds them by itself): version 1 had no checksums,
version 2 no photo dates. An update opens a version 2 index that verifies
(``open(..., upgrade=True)``: no dates) and reads only the dates.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterator, Sequence

import h5py
import numpy as np

from devise.errors import DataFormatError, DeviseError
from devise.search.photo_date import DATE_SOURCES, date_text
from devise.search.scan import ImageFile
from devise.storage import h5_text

FORMAT = "devise-image-index"
FORMAT_VERSION = 3
# What an index of each older version lacks, for the message asking to rebuild it.
_OLDER_VERSIONS = {
    1: "from before indexes carried checksums",
    2: "from before indexes stored each photo's date (EXIF, else modification time)",
}

#: Rows per HDF5 chunk of ``embeddings``: 8192 x 512 float32 is 16 MiB, large
#: enough that a streamed read is one system call per chunk.
CHUNK_ROWS = 8192
#: How far a row's check value may be from the one stored, relative to 1 + its size
#: (float32 sums taken in another order differ by ~1e-6).
CHECK_TOLERANCE = 1e-4
#: How far from 1 a stored row's norm may be (float32 rounding is ~1e-7).
UNIT_TOLERANCE = 1e-3
# The attributes covered by ``metadata_sha256``.
_DIGESTED_ATTRS = ("format", "format_version", "model_fingerprint", "run_dir", "image_root", "dim")


class IndexMismatchError(DeviseError):
    """An index was built by another model than the one searching or updating it.

    Constructed with a message, like any exception; :meth:`for_index` writes
    the standard message for an image index.
    """

    @classmethod
    def for_index(cls, path: str, found: str, expected: str, run_dir: str = "") -> IndexMismatchError:
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
    return fingerprint[:12] + ("..." if len(fingerprint) > 12 else "") if fingerprint else "(none)"


class IndexDamagedError(DataFormatError):
    """An index file that cannot be trusted: damaged, or from a format without checksums. Rebuild it."""

    @classmethod
    def at(cls, path: str, what: str, *, damaged: bool = True) -> IndexDamagedError:
        """The error for the index at ``path``; ``what`` says what was found."""
        state = "is damaged" if damaged else "must be rebuilt"
        return cls(
            f"{path}: the image index {state} ({what}); rebuild it: run devise-index again with the "
            "same --out (it rebuilds a damaged index), or delete the file and index the folder anew"
        )


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
        date_ns: ``int64`` each photo's date (EXIF, else modification time;
            nanoseconds since the epoch), which date filters compare.
        date_source: ``uint8`` where each date came from: an index into
            :data:`~devise.search.photo_date.DATE_SOURCES` (see :meth:`photo_date`).
        row_check: ``float32`` check value of each row (see :meth:`verify_rows`).
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
        row_check: np.ndarray,
        date_ns: np.ndarray,
        date_source: np.ndarray,
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
        self.row_check = row_check
        self.date_ns = date_ns
        self.date_source = date_source
        self._token = token
        self._row_of: dict[str, int] | None = None

    @classmethod
    def open(
        cls, path: str | os.PathLike, *, model_fingerprint: str | None = None, upgrade: bool = False
    ) -> ImageIndex:
        """Open an index file and read its metadata.

        Args:
            path: the ``.h5`` index file.
            model_fingerprint: if given, the fingerprint of the model that
                will use the index; an index built by another model is refused.
            upgrade: also open a format version 2 index (checked by its own
                digest), with ``date_ns`` and ``date_source`` ``None``: for an update to read its dates.

        Returns:
            The opened index.

        Raises:
            DeviseError: ``path`` is not a file.
            DataFormatError: the file is not a devise image index, or is damaged.
            IndexMismatchError: the index was built by another model.
        """
        path = os.path.abspath(os.fspath(path))
        if os.path.isdir(path):
            raise DeviseError(f"{path}: is a folder, not an image index file; give the index's .h5 file")
        if not os.path.isfile(path):
            raise DeviseError(f"{path}: image index not found; build it first or check the path")
        try:
            token = _file_token(path)
            with h5py.File(path, "r") as f:
                fmt = h5_text(f.attrs.get("format", ""))
                if fmt != FORMAT:
                    raise DataFormatError(
                        f"{path}: not a devise image index (HDF5 file without format='{FORMAT}'); "
                        "give the index file that the indexing command wrote"
                    )
                version = int(f.attrs.get("format_version", 0))
                if version > FORMAT_VERSION:
                    raise DataFormatError(
                        f"{path}: image index format version {version} is newer than this devise reads "
                        f"({FORMAT_VERSION}); upgrade devise, or rebuild the index with this one"
                    )
                if version < FORMAT_VERSION and not (upgrade and version == 2):
                    lacks = _OLDER_VERSIONS.get(version, "from an older devise")
                    raise IndexDamagedError.at(path, f"format version {version}, {lacks}", damaged=False)
                attrs = {key: h5_text(f.attrs.get(key, "")) for key in _DIGESTED_ATTRS}
                dim = int(f.attrs["dim"])
                ids = list(f["ids"].asstr()[()])
                paths = list(f["paths"].asstr()[()])
                mtime_ns = np.asarray(f["mtime_ns"][()], np.int64)
                sizes = np.asarray(f["size"][()], np.int64)
                row_check = np.asarray(f["row_check"][()], np.float32)
                dated = version >= 3  # version 2 stored no dates
                date_ns = np.asarray(f["date_ns"][()], np.int64) if dated else None
                date_source = np.asarray(f["date_source"][()], np.uint8) if dated else None
                shape = f["embeddings"].shape
                stored_digest = h5_text(f.attrs.get("metadata_sha256", ""))
        except DeviseError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            # h5py raises OSError for a file that is not HDF5 (or whose
            # metadata checksums fail), KeyError for a missing dataset or attribute.
            raise DataFormatError(
                f"{path}: not a readable devise image index ({exc}); "
                "give the index file that the indexing command wrote, or rebuild it"
            ) from None
        if metadata_digest(attrs, ids, paths, mtime_ns, sizes, row_check, date_ns, date_source) != stored_digest:
            raise IndexDamagedError.at(path, "its file list or attributes do not match their checksum")
        found = attrs["model_fingerprint"]
        if model_fingerprint is not None and found != model_fingerprint:
            raise IndexMismatchError.for_index(path, found, model_fingerprint, attrs["run_dir"])
        index = cls(
            path,
            model_fingerprint=found,
            run_dir=attrs["run_dir"],
            image_root=attrs["image_root"],
            dim=dim,
            ids=ids,
            paths=paths,
            mtime_ns=mtime_ns,
            sizes=sizes,
            row_check=row_check,
            date_ns=date_ns,
            date_source=date_source,
            token=token,
        )
        n = len(ids)
        lengths = {len(a) for a in (paths, mtime_ns, sizes, row_check, date_ns, date_source) if a is not None}
        if lengths != {n} or tuple(shape) != (n, dim):
            raise IndexDamagedError.at(path, f"{n} ids, {len(paths)} paths, embeddings {tuple(shape)}")
        if n and date_source is not None and int(date_source.max()) >= len(DATE_SOURCES):
            raise IndexDamagedError.at(path, f"a date source code {int(date_source.max())} that no devise writes")
        return index

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"ImageIndex({self.path!r}, {len(self)} images, dim={self.dim})"

    def photo_date(self, row: int) -> tuple[str, str]:
        """A row's date as ISO 8601 local time (``2024-06-01T14:30:00+02:00``) and its source (``exif``/``mtime``)."""
        return date_text(int(self.date_ns[row])), DATE_SOURCES[int(self.date_source[row])]

    def row_of(self, image_id: str) -> int | None:
        """The row of an image id, or ``None`` if it is not indexed."""
        if self._row_of is None:
            self._row_of = {image_id: row for row, image_id in enumerate(self.ids)}
        return self._row_of.get(image_id)

    def open_embeddings(self) -> h5py.File:
        """Open the file for reading embeddings, checking it is still the one opened."""
        try:
            token = _file_token(self.path)
        except OSError:
            token = None
        if self._token is not None and token != self._token:
            raise DeviseError(f"{self.path}: the image index changed on disk since it was opened; open it again")
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
        return self.blocks(block_rows, reuse=False)

    def blocks(self, block_rows: int, *, reuse: bool = False, verify: bool = True) -> Iterator[tuple[int, np.ndarray]]:
        """:meth:`iter_blocks`; with ``reuse`` every block is read into one buffer.

        With ``verify`` (the default) each block's rows are checked against
        their stored check values (one extra pass over the block);
        :func:`~devise.search.exact.exact_search` passes ``False`` and checks
        them inside its own matrix product instead.

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
        with self.open_embeddings() as f:
            dataset = f["embeddings"]
            buffer = np.empty((min(block_rows, n), self.dim), np.float32) if reuse else None
            for start in range(0, n, block_rows):
                stop = min(start + block_rows, n)
                out = buffer[: stop - start] if buffer is not None else np.empty((stop - start, self.dim), np.float32)
                try:
                    dataset.read_direct(out, np.s_[start:stop], np.s_[0 : stop - start])
                except OSError as exc:
                    raise IndexDamagedError.at(self.path, f"rows {start}-{stop - 1} cannot be read ({exc})") from None
                if verify:
                    self.verify_rows(np.arange(start, stop), out @ check_vector(self.dim))
                yield start, out

    def verify_rows(self, rows: np.ndarray, products: np.ndarray) -> None:
        """Compare rows' check values, as computed from what was read, with those stored.

        Args:
            rows: the row numbers (an array or a slice).
            products: the rows read, times :func:`check_vector` (``float32``).

        Raises:
            IndexDamagedError: a row differs from what was written.
        """
        stored = self.row_check[rows]
        ok = np.abs(products - stored) <= CHECK_TOLERANCE * (1.0 + np.abs(stored))  # False for NaN
        if not ok.all():
            bad = np.arange(len(self))[rows][~ok]
            raise IndexDamagedError.at(
                self.path, f"{len(bad)} stored embedding(s) differ from what was written (row {int(bad[0])})"
            )

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
        with self.open_embeddings() as f:
            try:
                data = read_rows(f["embeddings"], unique)
            except OSError as exc:
                raise IndexDamagedError.at(self.path, f"embeddings cannot be read ({exc})") from None
        self.verify_rows(unique, data @ check_vector(self.dim))
        norms = np.linalg.norm(data, axis=1)
        if not (np.isfinite(norms).all() and np.all(np.abs(norms - 1.0) <= UNIT_TOLERANCE)):
            raise IndexDamagedError.at(self.path, "stored embeddings are not unit vectors")
        return data[inverse.reshape(-1)]

    def check_scores(self, scores: np.ndarray, queries: np.ndarray) -> None:
        """Refuse search results that unit-vector rows cannot give (a damaged index).

        Every row is a unit vector, so a score is finite and at most the
        query's norm in size; anything else was read from damaged data.

        Raises:
            IndexDamagedError: a score is out of range.
        """
        bound = np.linalg.norm(queries, axis=1, keepdims=True) * (1.0 + UNIT_TOLERANCE) + 1e-6
        if scores.size and not (np.isfinite(scores).all() and np.all(np.abs(scores) <= bound)):
            raise IndexDamagedError.at(self.path, "a search read an embedding that is not a unit vector")


def read_rows(dataset: h5py.Dataset, rows: np.ndarray, span: int = 8192) -> np.ndarray:
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


@functools.cache
def check_vector(dim: int) -> np.ndarray:
    """The fixed vector whose dot product with each row is its check value.

    Entries are +-[0.5, 1.5) (seeded, the same for every index of this
    dimension), so a change of any component by more than
    ``2 * CHECK_TOLERANCE`` changes the check value by more than the tolerance.
    """
    rng = np.random.default_rng(20131205 + dim)
    vector = rng.uniform(0.5, 1.5, dim) * rng.choice([-1.0, 1.0], dim)
    vector = vector.astype(np.float32)
    vector.flags.writeable = False
    return vector


def metadata_digest(
    attrs: dict[str, str], ids: Sequence[str], paths: Sequence[str], mtime_ns, sizes, row_check, date_ns, date_source
) -> str:
    """SHA-256 over an index's attributes (as text), ids, paths, mtimes, sizes, row check values and dates (if any)."""
    h = hashlib.sha256(json.dumps({k: str(attrs[k]) for k in _DIGESTED_ATTRS}, sort_keys=True).encode())
    for texts in (ids, paths):
        h.update(str(len(texts)).encode())
        h.update("\0".join(texts).encode("utf-8", "surrogatepass"))
    numbers_and_types = ((mtime_ns, "<i8"), (sizes, "<i8"), (row_check, "<f4"), (date_ns, "<i8"), (date_source, "u1"))
    for numbers, dtype in (nt for nt in numbers_and_types if nt[0] is not None):  # version 2: no dates
        h.update(np.ascontiguousarray(numbers, dtype).tobytes())
    return h.hexdigest()


def new_index_file(path: str | os.PathLike) -> h5py.File:
    """Open ``path`` for writing an index, in HDF5's latest file format.

    That format checksums HDF5's own metadata (object headers, B-trees,
    heaps), so damage there is an error on reading; the HDF5 1.8 format
    h5py writes by default has no such checksums, and a flipped byte in its
    metadata was measured to crash the reading process. Needs HDF5 >= 1.10
    to read (every h5py wheel since 2.10 has it).
    """
    return h5py.File(path, "w", libver="latest")


class IndexFileWriter:
    """Fills a new index file's embeddings in row order, then seals it with their check values.

    Made by :func:`create_index_file`. Call :meth:`write` with consecutive
    blocks of unit rows, then :meth:`finish`; a file never finished has no
    digest and is refused as damaged.
    """

    def __init__(self, f: h5py.File, attrs: dict, files: Sequence[ImageFile], dataset: h5py.Dataset):
        self._f = f
        self._attrs = attrs
        self._files = files
        self._dataset = dataset
        self._checks: list[np.ndarray] = []
        self._written = 0

    def write(self, block: np.ndarray) -> None:
        """Write the next rows (``float32``, ``(rows, dim)``)."""
        n = self._dataset.shape[0]
        block = np.ascontiguousarray(block, np.float32)
        start, stop = self._written, self._written + len(block)
        if stop > n or block.ndim != 2 or block.shape[1] != self._dataset.shape[1]:
            raise ValueError(f"rows {start}-{stop} {block.shape} do not fit an index of {self._dataset.shape}")
        if len(block):
            self._dataset[start:stop] = block
            self._checks.append(block @ check_vector(block.shape[1]))
        self._written = stop

    def finish(self) -> None:
        """Write the check values and the digest that make the file valid."""
        n = self._dataset.shape[0]
        if self._written != n:
            raise ValueError(f"{self._written} of {n} rows written")
        checks = np.concatenate(self._checks).astype(np.float32) if self._checks else np.zeros(0, np.float32)
        self._f.create_dataset("row_check", data=checks)
        files = self._files
        self._f.attrs["metadata_sha256"] = metadata_digest(
            {k: str(v) for k, v in self._attrs.items()},
            [r.id for r in files],
            [r.path for r in files],
            np.array([r.mtime_ns for r in files], np.int64),
            np.array([r.size for r in files], np.int64),
            checks,
            *_dates(files),
        )


def create_index_file(
    f: h5py.File,
    files: Sequence[ImageFile],
    *,
    model_fingerprint: str,
    run_dir: str,
    image_root: str,
    dim: int,
) -> IndexFileWriter:
    """Start an index in the open, empty ``f`` (see :func:`new_index_file`): attributes and file list.

    Args:
        f: the open, empty file.
        files: the indexed files, in row order, each with its date read
            (:meth:`~devise.search.scan.ImageFile.dated`).
        model_fingerprint, run_dir, image_root, dim: the attributes.

    Returns:
        The writer of the ``(len(files), dim)`` embeddings, in the order of
        ``files``; the file is valid once :meth:`IndexFileWriter.finish` ran.

    Raises:
        ValueError: a file's date was not read.
    """
    n = len(files)
    date_ns, date_source = _dates(files)
    attrs = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_fingerprint": model_fingerprint,
        "run_dir": run_dir,
        "image_root": image_root,
        "dim": dim,
    }
    for key, value in attrs.items():
        f.attrs[key] = value
    text = h5py.string_dtype("utf-8")
    f.create_dataset("ids", data=np.array([r.id for r in files], dtype=object), dtype=text)
    f.create_dataset("paths", data=np.array([r.path for r in files], dtype=object), dtype=text)
    f.create_dataset("mtime_ns", data=np.array([r.mtime_ns for r in files], np.int64))
    f.create_dataset("size", data=np.array([r.size for r in files], np.int64))
    f.create_dataset("date_ns", data=date_ns)
    f.create_dataset("date_source", data=date_source)
    # HDF5 chunks need a non-empty shape: an empty index is contiguous.
    chunks = (min(n, CHUNK_ROWS), dim) if n and dim else None
    dataset = f.create_dataset("embeddings", shape=(n, dim), dtype=np.float32, chunks=chunks)
    return IndexFileWriter(f, attrs, files, dataset)


def _dates(files: Sequence[ImageFile]) -> tuple[np.ndarray, np.ndarray]:
    """``(date_ns int64, date_source uint8)`` of files whose dates were read."""
    undated = next((r for r in files if r.date_ns is None or r.date_source not in DATE_SOURCES), None)
    if undated is not None:
        raise ValueError(f"{undated.path}: its date was not read (ImageFile.dated()) before indexing")
    return (
        np.array([r.date_ns for r in files], np.int64),
        np.array([DATE_SOURCES.index(r.date_source) for r in files], np.uint8),
    )

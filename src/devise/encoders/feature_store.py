"""The feature cache's file: an append-only HDF5 file of feature rows that a crash never leaves half-valid.

Format 3 (what :class:`devise.encoders.FeatureCache` reads and writes, and
what other writers, such as a distributed pipeline's shards, may write with
:class:`FeatureStore`):

* ``features`` ``float32 (N, dim)``, ``sha256`` ``uint8 (N, 32)`` (of the
  image file's bytes) and ``stat`` ``int64 (N, 3)`` (file size, ``mtime_ns``
  and the end offset of the row's text): resizable datasets
  (``maxshape=None``) in chunks of :data:`ROWS_PER_CHUNK` rows;
* ``text`` ``uint8``: each row's absolute image path and image id, UTF-8,
  joined by a NUL byte, one row after the other;
* ``appends`` ``uint8 (K, 96)``, one chunk per append: its first and end
  row, first and end text byte (four little-endian ``int64``), then the
  SHA-256 of its metadata (text, ``stat``, ``sha256``) and the SHA-256 of its
  features;
* attributes ``fingerprint`` (the extractor's), ``format_version`` (3),
  ``dim`` and ``appends``, the number of committed appends.

An append writes its rows at the first chunk boundary after the last
committed row (and its text at the first :data:`TEXT_CHUNK` boundary), so
no chunk holding committed data is ever written again; then its record in
``appends``; then, once those are flushed and synced, the ``appends``
count, the commit. A process killed before that leaves rows that no reader
counts and that the next append overwrites. Readers check each append's
digests (the metadata when the file is opened, the features when they are
first read), so a flipped byte anywhere in committed rows is found, and the
rows from that append on are recomputed. The rows of a file whose image
changed are not rewritten either: a new row is appended, and the last row of
a path wins. Superseded rows stay in the file (a full rebuild drops them).

HDF5 is not journaled: a process killed while the library writes its own
metadata (the moment of a flush) can leave a file HDF5 cannot open. That
file is then untrusted and rebuilt, like any damaged one, never read as
valid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from collections.abc import Iterable, Sequence

import h5py
import numpy as np

from devise.atomicfile import atomic_path
from devise.errors import DataFormatError, DeviseError
from devise.storage import h5_text

FORMAT_VERSION = 3
#: Rows per HDF5 chunk; every append starts on a chunk boundary.
ROWS_PER_CHUNK = 16
#: Bytes per chunk of the ``text`` dataset; every append's text starts on a chunk boundary.
TEXT_CHUNK = 4096
_RECORD = 96  # bytes of one ``appends`` record: 4 int64 + 2 SHA-256


class UntrustedStore(Exception):
    """The file cannot be trusted as a whole (another format, unreadable, inconsistent); the message says why."""


class DamagedAppend(Exception):
    """The rows of append ``index`` (and so every later one) fail their digest."""

    def __init__(self, index: int, reason: str):
        super().__init__(reason)
        self.index = index


@dataclasses.dataclass(frozen=True)
class RowInfo:
    """What one row of a store records about the image file its features came from.

    Attributes:
        path: absolute path of the image file.
        image_id: the id it was requested under.
        size: file size in bytes when it was read.
        mtime_ns: modification time then.
        sha256: 32-byte SHA-256 of the file's bytes.
    """

    path: str
    image_id: str
    size: int
    mtime_ns: int
    sha256: bytes


@dataclasses.dataclass(frozen=True)
class _Append:
    row_start: int
    row_end: int
    text_start: int
    text_end: int
    meta_digest: bytes
    feature_digest: bytes


def _align(n: int, unit: int) -> int:
    return -(-n // unit) * unit


class FeatureStore:
    """An open feature cache file (format 3): committed rows by number, and appends.

    Open one with :meth:`open` (an existing file) or :meth:`create` (a new,
    empty one, replacing any file at ``path`` atomically); use it as a
    context manager or call :meth:`close`.

    Example:
    ```python
    with FeatureStore.create("f.h5", extractor.fingerprint(), extractor.output_dim) as store:
        store.append([RowInfo(path, "img1", size, mtime_ns, digest)], features[:1])
    with FeatureStore.open("f.h5", extractor.fingerprint()) as store:
        rows = store.rows()                   # RowInfo of every committed row
        vectors = store.read_features([0])    # checked against the append's digest
    ```
    """

    def __init__(self, path: str, file: h5py.File, fingerprint: str, dim: int):
        self.path = path
        self.fingerprint = fingerprint
        self.dim = dim
        self._file = file
        self._appends: list[_Append] = []
        self._rows: list[RowInfo] = []
        self._verified: set[int] = set()
        self._damaged: tuple[int, str] | None = None
        self._first = np.zeros(1, np.int64)

    # -- opening --------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, fingerprint: str, dim: int) -> FeatureStore:
        """A new empty store at ``path`` (an existing file is replaced in one rename), open for appending."""
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_path(path, durable=True) as tmp, h5py.File(tmp, "w") as f:
            f.attrs["fingerprint"] = fingerprint
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["dim"] = dim
            f.attrs["appends"] = 0
            r = ROWS_PER_CHUNK
            f.create_dataset("features", (0, dim), np.float32, maxshape=(None, dim), chunks=(r, dim))
            f.create_dataset("sha256", (0, 32), np.uint8, maxshape=(None, 32), chunks=(r, 32))
            f.create_dataset("stat", (0, 3), "<i8", maxshape=(None, 3), chunks=(r, 3))
            f.create_dataset("text", (0,), np.uint8, maxshape=(None,), chunks=(TEXT_CHUNK,))
            f.create_dataset("appends", (0, _RECORD), np.uint8, maxshape=(None, _RECORD), chunks=(1, _RECORD))
        return cls.open(path, fingerprint, writable=True)

    @classmethod
    def open(
        cls, path: str | os.PathLike, fingerprint: str, *, dim: int | None = None, writable: bool = False
    ) -> FeatureStore:
        """Open an existing store and read (and check) the metadata of its committed rows.

        Metadata that fails its digest ends the committed rows before that
        append (see :meth:`damaged`): the rows before it stay usable.

        Raises:
            DeviseError: the file was written by another extractor (``fingerprint`` differs),
                or another process is writing it.
            UntrustedStore: the file cannot be opened, is another format,
                or is inconsistent; the message says why.
        """
        path = os.fspath(path)
        try:
            file = h5py.File(path, "r+" if writable else "r")
        except BlockingIOError:
            # HDF5's file lock: another process has it open for writing. Not
            # damage: rebuilding would throw away that process's good rows.
            raise DeviseError(
                f"{path}: the feature cache is open in another process (devise-train or devise-extract?); "
                "wait for it to finish, or use another image_encoder.cache_dir"
            ) from None
        except OSError as exc:
            raise UntrustedStore(f"damaged or unreadable feature cache ({exc})") from None
        try:
            found = h5_text(file.attrs.get("fingerprint", ""))
            if found != fingerprint:
                raise DeviseError(
                    f"{path}: feature cache was written by '{found}', not '{fingerprint}'. "
                    "Use another cache path for this extractor, or delete the file to rebuild it."
                )
            version = int(file.attrs.get("format_version", 0))
            if version == 1:
                raise UntrustedStore(
                    "feature cache format 1 (rows keyed by image id, not by image file: "
                    "its features may be stale) is not trusted"
                )
            if version != FORMAT_VERSION:
                raise UntrustedStore(
                    f"feature cache format {version} is not format {FORMAT_VERSION}, the one this devise reads"
                )
            store_dim = int(file.attrs["dim"])
            if dim is not None and store_dim != dim:
                raise UntrustedStore(f"feature cache holds {store_dim}-d features, not {dim}-d")
            store = cls(path, file, fingerprint, store_dim)
            store._load()
        except (DeviseError, UntrustedStore):
            file.close()
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            file.close()
            raise UntrustedStore(f"damaged or unreadable feature cache ({exc})") from None
        return store

    def _load(self) -> None:
        f = self._file
        count = int(f.attrs["appends"])
        shapes = {name: f[name].shape for name in ("features", "sha256", "stat", "text", "appends")}
        if (
            f["features"].dtype != np.float32
            or shapes["features"][1:] != (self.dim,)
            or shapes["sha256"][1:] != (32,)
            or shapes["stat"][1:] != (3,)
            or shapes["appends"][1:] != (_RECORD,)
            or not 0 <= count <= shapes["appends"][0]
        ):
            raise UntrustedStore(
                f"feature cache is not intact ({count} appends; datasets "
                + ", ".join(f"{name} {shape}" for name, shape in shapes.items())
                + ")"
            )
        records = f["appends"][:count]
        row_end = text_end = 0
        for k, record in enumerate(records):
            bounds = np.frombuffer(record[:32].tobytes(), "<i8")
            a = _Append(*(int(b) for b in bounds), record[32:64].tobytes(), record[64:96].tobytes())
            if not (
                _align(row_end, ROWS_PER_CHUNK) == a.row_start <= a.row_end <= shapes["features"][0]
                and a.row_end <= min(shapes["sha256"][0], shapes["stat"][0])
                and _align(text_end, TEXT_CHUNK) == a.text_start <= a.text_end <= shapes["text"][0]
            ):
                raise UntrustedStore(f"feature cache is not intact (append {k} has bounds {bounds.tolist()})")
            try:
                rows = self._read_rows(a)
            except DamagedAppend as exc:
                self._damaged = (k, str(exc))
                break
            self._appends.append(a)
            self._rows.extend(rows)
            row_end, text_end = a.row_end, a.text_end
        self._index_rows()

    def _read_rows(self, a: _Append) -> list[RowInfo]:
        f = self._file
        text = f["text"][a.text_start : a.text_end].tobytes()
        stat = np.asarray(f["stat"][a.row_start : a.row_end], "<i8")
        sha = np.asarray(f["sha256"][a.row_start : a.row_end], np.uint8)
        if _meta_digest(text, stat, sha) != a.meta_digest:
            raise DamagedAppend(-1, f"rows {a.row_start}-{a.row_end - 1}: metadata fail their checksum")
        rows = []
        start = 0
        for (size, mtime_ns, end), digest in zip(stat.tolist(), sha):
            end -= a.text_start
            path, _, image_id = text[start:end].decode("utf-8").partition("\0")
            rows.append(RowInfo(path, image_id, size, mtime_ns, digest.tobytes()))
            start = end
        return rows

    def _index_rows(self) -> None:
        """The row number (as :meth:`rows` counts) each append starts at, for :meth:`read_features`."""
        self._first = np.cumsum([0] + [a.row_end - a.row_start for a in self._appends], dtype=np.int64)

    # -- reading --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def rows(self) -> list[RowInfo]:
        """What every committed row records, in row order (row ``i`` is ``rows()[i]``)."""
        return list(self._rows)

    def damaged(self) -> tuple[int, str] | None:
        """``(append, reason)`` if the metadata of an append failed its check when the file was opened.

        That append and every later one are not counted; :meth:`truncate`
        makes the file say so, so the next append overwrites them.
        """
        return self._damaged

    def read_features(self, rows: Sequence[int]) -> np.ndarray:
        """Features ``float32 (len(rows), dim)`` of committed rows (numbers as :meth:`rows` counts them).

        Each append's features are checked against its digest when first
        read; reading in row order reads each append once.

        Raises:
            DamagedAppend: an append touched fails its digest (its ``index``
                says which; :meth:`truncate` drops it and every later one).
        """
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= len(self._rows):
            raise IndexError(f"{self.path}: rows must be in [0, {len(self._rows)}), got {rows.min()}..{rows.max()}")
        which = np.searchsorted(self._first, rows, side="right") - 1
        for k in np.unique(which):
            picks = np.flatnonzero(which == k)
            out[picks] = self._append_features(int(k))[rows[picks] - self._first[k]]
        return out

    def iter_features(self, rows: Iterable[int], block_rows: int = 4096):
        """``(row numbers, features)`` blocks of at most ``block_rows``: bounded memory for any number of rows."""
        batch: list[int] = []
        for row in rows:
            batch.append(int(row))
            if len(batch) == block_rows:
                yield batch, self.read_features(batch)
                batch = []
        if batch:
            yield batch, self.read_features(batch)

    def _append_features(self, k: int) -> np.ndarray:
        a = self._appends[k]
        block = np.asarray(self._file["features"][a.row_start : a.row_end], np.float32)
        if k not in self._verified:
            if hashlib.sha256(np.ascontiguousarray(block, "<f4").tobytes()).digest() != a.feature_digest:
                raise DamagedAppend(k, f"features of rows {a.row_start}-{a.row_end - 1} fail their checksum")
            self._verified.add(k)
        return block

    def verify(self, appends: Iterable[int] | None = None) -> None:
        """Check the features of ``appends`` (all when ``None``) against their digests.

        Raises:
            DamagedAppend: the first one that fails.
        """
        for k in sorted(set(range(len(self._appends)) if appends is None else appends)):
            self._append_features(k)

    def append_of(self, row: int) -> int:
        """The append that wrote committed row ``row``."""
        return int(np.searchsorted(self._first, row, side="right") - 1)

    # -- writing --------------------------------------------------------------
    def truncate(self, appends: int) -> None:
        """Stop counting appends from ``appends`` on (their rows are overwritten by the next append)."""
        appends = max(0, min(appends, len(self._appends)))
        kept = sum(a.row_end - a.row_start for a in self._appends[:appends])
        self._appends = self._appends[:appends]
        self._rows = self._rows[:kept]
        self._verified = {k for k in self._verified if k < appends}
        self._damaged = None
        self._file.attrs["appends"] = appends
        self._sync()
        self._index_rows()

    def append(self, infos: Sequence[RowInfo], features: np.ndarray) -> None:
        """Append rows and commit them: afterwards they survive any crash; before, none of them counts.

        Args:
            infos: what each row records (absolute path, id, size, mtime, SHA-256).
            features: ``float32 (len(infos), dim)``.
        """
        features = np.ascontiguousarray(features, "<f4")
        if features.shape != (len(infos), self.dim):
            raise ValueError(f"features {features.shape} do not match {len(infos)} rows of {self.dim}")
        if not infos:
            return
        f = self._file
        last = self._appends[-1] if self._appends else None
        row_start = _align(last.row_end if last else 0, ROWS_PER_CHUNK)
        text_start = _align(last.text_end if last else 0, TEXT_CHUNK)
        row_end = row_start + len(infos)
        pieces = [f"{info.path}\0{info.image_id}".encode() for info in infos]
        ends = text_start + np.cumsum([len(p) for p in pieces], dtype=np.int64)
        text = np.frombuffer(b"".join(pieces), np.uint8)
        stat = np.array([[info.size, info.mtime_ns, end] for info, end in zip(infos, ends)], "<i8").reshape(-1, 3)
        sha = np.frombuffer(b"".join(info.sha256 for info in infos), np.uint8).reshape(-1, 32)
        text_end = text_start + len(text)
        for name, end in (("features", row_end), ("sha256", row_end), ("stat", row_end), ("text", text_end)):
            if f[name].shape[0] < end:
                f[name].resize(end, axis=0)
        f["features"][row_start:row_end] = features
        f["sha256"][row_start:row_end] = sha
        f["stat"][row_start:row_end] = stat
        if len(text):
            f["text"][text_start:text_end] = text
        record = _Append(
            row_start,
            row_end,
            text_start,
            text_end,
            _meta_digest(text.tobytes(), stat, sha),
            hashlib.sha256(features.tobytes()).digest(),
        )
        k = len(self._appends)
        if f["appends"].shape[0] <= k:
            f["appends"].resize(k + 1, axis=0)
        f["appends"][k] = np.frombuffer(
            np.array([row_start, row_end, text_start, text_end], "<i8").tobytes()
            + record.meta_digest
            + record.feature_digest,
            np.uint8,
        )
        self._sync()  # the rows and their record are on disk before the count that commits them
        f.attrs["appends"] = k + 1
        self._sync()
        self._appends.append(record)
        self._rows.extend(infos)
        self._verified.add(k)
        self._index_rows()

    def _sync(self) -> None:
        self._file.flush()
        # A driver without a file descriptor (in-memory files) has nothing to sync.
        with contextlib.suppress(OSError, ValueError, TypeError):
            os.fsync(self._file.id.get_vfd_handle())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stored_fingerprint(path: str | os.PathLike) -> str:
    """The extractor fingerprint a feature cache file records (to open it without knowing its extractor).

    Raises:
        DataFormatError: the file is missing or is not an HDF5 file with one.
        DeviseError: another process is writing it.
    """
    path = os.fspath(path)
    try:
        with h5py.File(path, "r") as f:
            found = h5_text(f.attrs.get("fingerprint", ""))
    except FileNotFoundError:
        raise DataFormatError(f"{path}: feature cache not found") from None
    except BlockingIOError:
        raise DeviseError(f"{path}: the feature cache is open in another process; wait for it to finish") from None
    except OSError as exc:
        raise DataFormatError(f"{path}: not a readable HDF5 feature cache ({exc})") from None
    if not found:
        raise DataFormatError(f"{path}: an HDF5 file, but not a devise feature cache (no fingerprint)")
    return found


def _meta_digest(text: bytes, stat: np.ndarray, sha: np.ndarray) -> bytes:
    digest = hashlib.sha256(text)
    digest.update(np.ascontiguousarray(stat, "<i8").tobytes())
    digest.update(np.ascontiguousarray(sha, np.uint8).tobytes())
    return digest.digest()

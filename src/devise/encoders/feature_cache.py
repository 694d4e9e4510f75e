"""HDF5 cache of image features keyed by image file: compute once, train many times."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sys
from collections.abc import Callable, Sequence

import h5py
import numpy as np

from devise.atomicfile import atomic_path
from devise.encoders.feature_extractor import FeatureExtractor, progress_callback
from devise.encoders.feature_store import FORMAT_VERSION, DamagedAppend, FeatureStore, RowInfo, UntrustedStore
from devise.errors import DataFormatError, DeviseError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

#: re-stamped rows' features read per block: memory stays bounded however many rows are re-stamped.
_BLOCK_ROWS = 1024

__all__ = ["FORMAT_VERSION", "CacheCompaction", "CacheUpdate", "FeatureCache", "FeatureTable", "default_cache_path"]


def default_cache_path(cache_dir: str | os.PathLike, extractor: FeatureExtractor) -> str:
    """``<cache_dir>/<extractor name>-<hash of its fingerprint>.h5``."""
    digest = hashlib.sha1(extractor.fingerprint().encode()).hexdigest()[:10]
    return os.path.join(os.fspath(cache_dir), f"{extractor.name}-{digest}.h5")


@dataclasses.dataclass
class FeatureTable:
    """Features of the requested images that could be computed.

    Attributes:
        ids: image ids, in request order, of the rows of ``features``.
        features: ``float32`` ``(len(ids), dim)``.
        failures: ``(image path, reason)`` of images skipped.
        computed: how many images were computed now (the rest came from the cache).
    """

    ids: list[str]
    features: np.ndarray
    failures: list[tuple[str, str]]
    computed: int

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(zip(self.ids, self.features))


@dataclasses.dataclass
class CacheUpdate:
    """What :meth:`FeatureCache.update` did (the features stay in the file).

    Attributes:
        requested: images asked for.
        cached: images whose features were already in the cache.
        computed: images extracted now (those that failed included).
        failures: ``(image path, reason)`` of images skipped.
        rows: cache rows written now (new images, and files touched or
            copied whose features were found by content).
    """

    requested: int
    cached: int
    computed: int
    failures: list[tuple[str, str]]
    rows: int


@dataclasses.dataclass
class CacheCompaction:
    """What :meth:`FeatureCache.compact` did.

    Attributes:
        rows_before: committed rows before.
        kept: rows kept (the current version of each file, under each id it was cached under).
        stale: rows dropped because their file changed since (a newer row replaces them).
        missing: rows dropped because their file is gone (only with ``drop_missing``).
        bytes_before, bytes_after: the file's size.
    """

    rows_before: int
    kept: int
    stale: int
    missing: int
    bytes_before: int
    bytes_after: int

    def summary(self) -> str:
        return (
            f"{self.rows_before} rows: kept {self.kept}, dropped {self.stale} stale and {self.missing} of missing "
            f"files; {self.bytes_before / 1e6:.1f} MB -> {self.bytes_after / 1e6:.1f} MB"
        )


@dataclasses.dataclass
class _Plan:
    """Which requested images the cache holds (``found``: request -> row) and which to extract."""

    found: dict[int, int]
    todo: list[int]
    # Files requested under another id: their features are appended again
    # under the new id. (Touched or copied files are found by content in
    # the decode worker, which hashes the very bytes it would decode.)
    restamp: dict[int, RowInfo]


class FeatureCache:
    """An HDF5 file of image features, one row per image file.

    A row records the file it was computed from: absolute path, size,
    ``mtime_ns`` (as the search index does) and the SHA-256 of its bytes.
    A row is reused while the file's size and mtime are unchanged; when they
    changed, the file is hashed, and its features are reused only if some
    row has the same bytes (a touched or copied file), otherwise the image
    is extracted again. So a dataset regenerated into the same folder
    re-extracts exactly the images whose content changed, and the same image
    ids in another folder are not taken for the same images. The file is
    stat'ed and hashed before it is read for extraction, so a file changed
    during a run is found changed on the next one; only a change that keeps
    both size and mtime (a rewrite within the file system's timestamp
    resolution of the previous one, or an mtime set back by hand) goes
    unseen.

    The file records the extractor's fingerprint, and a cache written by
    another extractor (or other weights, or input size) is refused rather
    than mixed. New rows are appended in chunks of ``checkpoint_every``
    images, each committed only once it is on disk, and nothing written is
    ever rewritten (:mod:`devise.encoders.feature_store` has the format), so
    an interrupted run (crash, ``kill -9``, Ctrl-C) keeps every committed
    chunk and resumes after it, and the cost of an append does not grow
    with the file. Rows are read on demand, each chunk checked against its
    digest; a chunk that fails its check is recomputed (with the ones after
    it), and a file that is not intact as a whole (an older format, a file
    HDF5 cannot open) is recomputed, each with a warning on stderr.

    Args:
        path: the ``.h5`` file.
        fingerprint: :meth:`FeatureExtractor.fingerprint` of the extractor.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: str):
        self.path = os.fspath(path)
        self.fingerprint = fingerprint

    def read(self) -> dict[str, np.ndarray]:
        """Cached features by the image id each row was written under (the last row of each file).

        Loads every row: for small caches and inspection. Empty if the file
        does not exist or is not intact. The rows are not checked against the
        image files: :meth:`get_or_compute` does that.
        """
        store = self._open(None, writable=False)
        if store is None:
            return {}
        with store:
            latest = {info.path: n for n, info in enumerate(store.rows())}
            rows = sorted(latest.values())
            try:
                features = store.read_features(rows)
            except DamagedAppend as exc:
                self._warn(str(exc))
                return {}
            infos = store.rows()
            return {infos[n].image_id: vector for n, vector in zip(rows, features)}

    def open(self) -> FeatureStore | None:
        """The file as a :class:`FeatureStore` for reading rows on demand, or ``None`` if absent or untrusted."""
        return self._open(None, writable=False)

    def _warn(self, reason: str, action: str = "recomputing its features") -> None:
        print(f"warning: {self.path}: {reason}; {action}", file=sys.stderr)

    def _open(self, dim: int | None, *, writable: bool) -> FeatureStore | None:
        """The store, or ``None`` (with a warning) if the file is absent or cannot be trusted."""
        if not os.path.exists(self.path):
            return None
        if not h5py.is_hdf5(self.path):  # never overwrite what is not a cache (an image, a typo'd --out)
            raise DataFormatError(
                f"{self.path}: exists and is not an HDF5 feature cache; refusing to overwrite it "
                "(move it away or choose another cache path)"
            )
        try:
            store = FeatureStore.open(self.path, self.fingerprint, dim=dim, writable=writable)
        except UntrustedStore as exc:
            self._warn(str(exc))
            return None
        if store.damaged() is not None:
            k, reason = store.damaged()
            self._warn(reason, "recomputing them and the rows written after them")
            if writable:
                store.truncate(k)
        return store

    def get_or_compute(
        self,
        extractor: FeatureExtractor,
        ids: Sequence[str],
        paths: Sequence[str | os.PathLike],
        *,
        progress: Callable[[int, int], None] | bool = True,
        checkpoint_every: int = 512,
        workers: int | None = None,
    ) -> FeatureTable:
        """Features for ``ids`` (images at ``paths``), computing only new or changed files.

        Images that fail to decode are skipped and listed in
        :attr:`FeatureTable.failures`; they are not cached, so a fixed file
        is picked up on the next run.

        Args:
            extractor: the extractor whose fingerprint the cache has.
            ids: image ids, returned in this order.
            paths: their image files.
            progress: ``True`` for a progress bar on stderr (images/s and
                ETA), ``False`` for none, or a ``(done, total)`` callback.
            checkpoint_every: newly extracted images per committed append.
            workers: decoding threads (see :meth:`FeatureExtractor.iter_features`).
        """
        out: dict[int, np.ndarray] = {}
        result = self._run(extractor, ids, paths, progress, checkpoint_every, workers, out)
        keep = [i for i in range(len(ids)) if i in out]
        dim = extractor.output_dim
        matrix = np.stack([out[i] for i in keep]).astype(np.float32) if keep else np.zeros((0, dim), np.float32)
        return FeatureTable([ids[i] for i in keep], matrix, result.failures, computed=result.computed)

    def update(
        self,
        extractor: FeatureExtractor,
        ids: Sequence[str],
        paths: Sequence[str | os.PathLike],
        *,
        progress: Callable[[int, int], None] | bool = True,
        checkpoint_every: int = 512,
        workers: int | None = None,
    ) -> CacheUpdate:
        """As :meth:`get_or_compute`, but the features stay in the file.

        Features are streamed (re-stamped rows in blocks, new ones every
        ``checkpoint_every``); what grows with the images is the row
        metadata (path, id, stat, digest: ~500 bytes a row) and the plan.
        The cached rows' features are still read once, to check them.
        """
        return self._run(extractor, ids, paths, progress, checkpoint_every, workers, None)

    def compact(self, *, drop_missing: bool = False) -> CacheCompaction:
        """Rewrite the cache without the rows no lookup can use again; appends never shrink the file.

        A file that changed is extracted again into a new row, and its old
        rows stay (nothing written is rewritten). Compaction keeps, for each
        file and id, the last row, if it is of the file's current version
        (its latest size and mtime); with ``drop_missing``, also only rows
        whose file still exists (without it, a photo on an unplugged disk
        keeps its features). Every kept row's features are checked against
        their digest on the way. The new file is written beside the old one
        and replaces it in one rename, so a crash or Ctrl-C leaves the old
        cache as it was. Holds the cache's write lock throughout.

        Raises:
            DeviseError: there is no intact cache at the path, or part of it
                fails its checks (run an extraction on it first: that
                recomputes those rows), or another process is writing it.
        """
        with _write_lock(self.path):
            if not os.path.exists(self.path):
                raise DeviseError(f"{self.path}: no feature cache to compact")
            try:
                store = FeatureStore.open(self.path, self.fingerprint)
            except UntrustedStore as exc:
                raise DeviseError(
                    f"{self.path}: {exc}; nothing to compact (an extraction into it rebuilds it)"
                ) from None
            try:
                if store.damaged() is not None:
                    raise DeviseError(
                        f"{self.path}: {store.damaged()[1]}; extract into it first (devise-extract), "
                        "which recomputes those rows, then compact"
                    )
                rows = store.rows()
                current = {info.path: (info.size, info.mtime_ns) for info in rows}  # the last row of a file wins
                last = {(info.path, info.image_id): n for n, info in enumerate(rows)}
                keep = sorted(n for n in last.values() if (rows[n].size, rows[n].mtime_ns) == current[rows[n].path])
                stale = len(rows) - len(keep)
                if drop_missing:
                    present = [n for n in keep if os.path.isfile(rows[n].path)]
                    missing, keep = len(keep) - len(present), present
                else:
                    missing = 0
                before = os.path.getsize(self.path)
                if len(keep) == len(rows):
                    return CacheCompaction(len(rows), len(keep), 0, 0, before, before)
                with atomic_path(self.path, durable=True) as tmp:
                    with FeatureStore.create(tmp, self.fingerprint, store.dim) as new:
                        for numbers, features in store.iter_features(keep, block_rows=_BLOCK_ROWS * 4):
                            new.append([rows[n] for n in numbers], features)
                    store.close()  # before the rename: Windows cannot replace an open file
            except DamagedAppend as exc:
                raise DeviseError(
                    f"{self.path}: {exc}; extract into it first (devise-extract), which recomputes those rows"
                ) from None
            finally:
                store.close()
        return CacheCompaction(len(rows), len(keep), stale, missing, before, os.path.getsize(self.path))

    def _run(self, extractor, ids, paths, progress, checkpoint_every, workers, out) -> CacheUpdate:
        if len(ids) != len(paths):
            raise ValueError("ids and paths must have the same length")
        if extractor.fingerprint() != self.fingerprint:
            raise ValueError("extractor fingerprint differs from the cache's")
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        dim = extractor.output_dim
        answered = self._read_only_run(ids, paths, dim, out)
        if answered is not None:
            return answered
        with _write_lock(self.path):
            return self._locked_run(extractor, ids, paths, progress, checkpoint_every, workers, out, dim)

    def _read_only_run(self, ids, paths, dim, out) -> CacheUpdate | None:
        """The answer when the cache already holds every request as it is (nothing to write), else ``None``.

        Without the write lock, so commands that only read a cache (devise-eval
        while a notebook trains on the same one) do not refuse each other;
        HDF5's own lock still keeps a reader off a file being written. Anything
        else (a file to extract, a row to re-stamp, a damaged chunk, a foreign
        or untrusted file) goes the locked way, which deals with it.
        """
        if not os.path.exists(self.path) or not h5py.is_hdf5(self.path):
            return None
        try:
            store = FeatureStore.open(self.path, self.fingerprint, dim=dim)
        except (UntrustedStore, DeviseError):
            return None
        with store:
            if store.damaged() is not None:
                return None
            plan = _plan(store, ids, paths)
            if plan.todo or plan.restamp:
                return None
            try:
                _read_found(store, plan, out)
            except DamagedAppend:
                if out is not None:
                    out.clear()
                return None
        return CacheUpdate(len(ids), len(plan.found), 0, [], 0)

    def _locked_run(self, extractor, ids, paths, progress, checkpoint_every, workers, out, dim) -> CacheUpdate:
        store = self._open(dim, writable=True)
        writer = _Appender(self, store, dim, checkpoint_every)
        try:
            plan = self._plan_checked(store, ids, paths, out)
            if store is not None and plan.restamp:  # streamed in blocks: memory stays bounded
                restamps = list(plan.restamp.items())
                for rows, features in store.iter_features([plan.found[i] for i, _ in restamps], block_rows=_BLOCK_ROWS):
                    for (_, info), vector in zip(restamps[: len(rows)], features):
                        writer.add(info, vector)
                    restamps = restamps[len(rows) :]
            failures: list[tuple[str, str]] = []
            reused = 0
            if plan.todo:
                by_content = {info.sha256: n for n, info in enumerate(store.rows())} if store is not None else {}
                report = progress_callback(progress, f"{extractor.name} features")
                todo = plan.todo
                batches = extractor.iter_features(
                    [paths[i] for i in todo], workers=workers, known=frozenset(by_content)
                )
                with contextlib.closing(batches):
                    for batch in batches:
                        for k, vector in zip(batch.indices, batch.features):
                            self._take(writer, out, todo[k], ids, paths, batch.identities[k], vector)
                        for k in batch.known:  # touched, rewritten with the same bytes, or copied
                            vector = store.read_features([by_content[batch.identities[k].sha256]])[0]
                            self._take(writer, out, todo[k], ids, paths, batch.identities[k], vector)
                        reused += len(batch.known)
                        failures.extend(batch.failures)
                        report(batch.done, len(todo))
                report(len(todo), len(todo))
            writer.flush()
            found = len(plan.found) + reused
            return CacheUpdate(len(ids), found, len(plan.todo) - reused, failures, writer.written)
        finally:
            writer.close()

    @staticmethod
    def _take(writer, out, i, ids, paths, identity, vector) -> None:
        """Record request ``i``'s features under exactly what the decode worker read."""
        if out is not None:
            out[i] = vector
        info = RowInfo(os.path.abspath(paths[i]), ids[i], identity.size, identity.mtime_ns, identity.sha256)
        writer.add(info, vector)

    def _plan_checked(self, store, ids, paths, out) -> _Plan:
        """The plan, once the cached rows it relies on pass their checks (a failing chunk is dropped)."""
        while True:
            plan = _plan(store, ids, paths)
            if store is None:
                return plan
            try:
                _read_found(store, plan, out)
            except DamagedAppend as exc:
                self._warn(str(exc), "recomputing them and the rows written after them")
                store.truncate(exc.index)
                if out is not None:
                    out.clear()
                continue
            return plan


def _read_found(store: FeatureStore, plan: _Plan, out: dict[int, np.ndarray] | None) -> None:
    """Check the cached rows ``plan`` relies on, reading them into ``out`` when given (raises DamagedAppend)."""
    wanted: dict[int, list[int]] = {}  # row -> the requests it answers
    for i, n in plan.found.items():
        wanted.setdefault(n, []).append(i)
    rows = sorted(wanted)
    if out is not None:
        for row_numbers, features in store.iter_features(rows):
            for n, vector in zip(row_numbers, features):
                for i in wanted[n]:
                    out[i] = vector
    elif rows:
        store.verify({store.append_of(n) for n in rows})


@contextlib.contextmanager
def _write_lock(path: str):
    """Hold ``path + ".lock"`` exclusively (``flock``) for a whole update, or fail at once with one line.

    Two processes starting on a missing or untrusted cache would otherwise
    both create it, the second replacing the first's file under it. The
    lock is not waited for: the other run owns the cache until it finishes.
    The ``.lock`` file stays (removing it would race with a new holder).
    Where ``fcntl`` does not exist (Windows) only HDF5's own lock applies.
    """
    if fcntl is None:
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeviseError(
                f"{path}: another process is writing this cache; wait for it to finish (or use another cache path)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class _Appender:
    """Collects new rows and appends them to the store every ``every`` rows (creating the file at the first)."""

    def __init__(self, cache: FeatureCache, store: FeatureStore | None, dim: int, every: int):
        self.cache = cache
        self.store = store
        self.dim = dim
        self.every = every
        self.infos: list[RowInfo] = []
        self.features: list[np.ndarray] = []
        self.written = 0

    def add(self, info: RowInfo, vector: np.ndarray) -> None:
        self.infos.append(info)
        self.features.append(vector)
        if len(self.infos) >= self.every:
            self.flush()

    def extend(self, rows: list[tuple[RowInfo, np.ndarray]]) -> None:
        for info, vector in rows:
            self.add(info, vector)

    def flush(self) -> None:
        if not self.infos:
            return
        if self.store is None:
            self.store = FeatureStore.create(self.cache.path, self.cache.fingerprint, self.dim)
        self.store.append(self.infos, np.stack(self.features))
        self.written += len(self.infos)
        self.infos, self.features = [], []

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def _plan(store: FeatureStore | None, ids: Sequence[str], paths: Sequence[str | os.PathLike]) -> _Plan:
    rows = store.rows() if store is not None else []
    by_path = {info.path: n for n, info in enumerate(rows)}  # the last row of a file wins
    # Rows are also keyed by (file, id): a file requested under several ids is found under each, so it is not
    # re-stamped (a row appended) on every run.
    by_key = {(info.path, info.image_id): n for n, info in enumerate(rows)}
    plan = _Plan({}, [], {})
    for i, (image_id, path) in enumerate(zip(ids, paths)):
        key = os.path.abspath(path)
        try:
            st = os.stat(key)
        except OSError:
            plan.todo.append(i)  # iter_features says why it cannot be read
            continue
        stamp = (st.st_size, st.st_mtime_ns)
        n = by_key.get((key, image_id))
        if n is not None and (rows[n].size, rows[n].mtime_ns) == stamp:
            plan.found[i] = n  # this file under this id, unchanged: nothing to write
            continue
        n = by_path.get(key)
        if n is not None and (rows[n].size, rows[n].mtime_ns) == stamp:
            plan.found[i] = n  # another dataset's name for it: recorded once under this id too
            plan.restamp[i] = dataclasses.replace(rows[n], image_id=image_id)
        else:  # new or changed: the decode worker hashes the bytes it decodes (found by content there)
            plan.todo.append(i)
    return plan

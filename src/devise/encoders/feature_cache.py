"""HDF5 cache of image features keyed by image file: compute once, train many times."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from collections.abc import Sequence

import h5py
import numpy as np

from devise.atomicfile import atomic_path
from devise.download import file_sha256
from devise.encoders.feature_extractor import FeatureExtractor, progress_callback
from devise.errors import DeviseError

# Version 1 keyed rows by image id alone, so a dataset regenerated into the
# same folder read the old features; such a file is recomputed, not trusted.
FORMAT_VERSION = 2
# Every dataset is fixed-size (strings included), so that HDF5's fletcher32
# checksum, which variable-length data cannot carry, covers all of them.
_DATASETS = ("ids", "paths", "size", "mtime_ns", "sha256", "features")


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


@dataclasses.dataclass(frozen=True)
class _Row:
    """The features of one image file, and what the file was when they were taken."""

    image_id: str
    size: int
    mtime_ns: int
    sha256: bytes
    features: np.ndarray


class _Untrusted(Exception):
    """The cache file cannot be trusted; the message says why."""


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
    than mixed. Every write goes to a temporary file that replaces the old
    one in a single rename, so a crash or Ctrl-C leaves the previous cache
    intact; long extractions write such a checkpoint every
    ``checkpoint_every`` images, so an interrupted run resumes. A file that
    is not intact (an older format, a failed HDF5 checksum, datasets of
    unequal lengths) is recomputed with a warning on stderr.

    Args:
        path: the ``.h5`` file.
        fingerprint: :meth:`FeatureExtractor.fingerprint` of the extractor.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: str):
        self.path = os.fspath(path)
        self.fingerprint = fingerprint

    def read(self) -> dict[str, np.ndarray]:
        """Cached features by the image id each row was last requested under.

        Empty if the file does not exist or is not intact. The rows are not
        checked against the image files: :meth:`get_or_compute` does that.
        """
        return {row.image_id: row.features for row in self._read().values()}

    def _read(self, dim: int | None = None) -> dict[str, _Row]:
        """The rows by absolute image path; empty (with a warning) if the file cannot be trusted."""
        if not os.path.exists(self.path):
            return {}
        try:
            return self._read_rows(dim)
        except _Untrusted as exc:
            reason = str(exc)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            reason = f"damaged or unreadable feature cache ({exc})"
        print(f"warning: {self.path}: {reason}; recomputing its features", file=sys.stderr)
        return {}

    def _read_rows(self, dim: int | None) -> dict[str, _Row]:
        with h5py.File(self.path, "r") as f:
            found = _text(f.attrs.get("fingerprint", ""))
            if found != self.fingerprint:
                raise DeviseError(
                    f"{self.path}: feature cache was written by '{found}', not '{self.fingerprint}'. "
                    "Use another cache path for this extractor, or delete the file to rebuild it."
                )
            version = int(f.attrs.get("format_version", 0))
            if version == 1:
                raise _Untrusted(
                    "feature cache format 1 (rows keyed by image id, not by image file: "
                    "its features may be stale) is not trusted"
                )
            if version != FORMAT_VERSION:
                raise _Untrusted(
                    f"feature cache format {version} is not format {FORMAT_VERSION}, the one this devise reads"
                )
            # Reading a dataset checks its fletcher32 checksums (OSError on a mismatch).
            data = {name: f[name][()] for name in _DATASETS}
        n = len(data["paths"])
        features = np.asarray(data["features"])
        sha = np.asarray(data["sha256"])
        if (
            any(len(data[name]) != n for name in _DATASETS)
            or features.ndim != 2
            or features.dtype != np.float32
            or (dim is not None and features.shape[1] != dim)
            or sha.dtype != np.uint8
            or sha.shape[1:] != (32,)
        ):
            raise _Untrusted(
                "feature cache is not intact (datasets "
                + ", ".join(f"{name} {np.shape(data[name])}" for name in _DATASETS)
                + ")"
            )
        return {
            path.decode("utf-8"): _Row(image_id.decode("utf-8"), int(size), int(mtime), bytes(digest), row)
            for image_id, path, size, mtime, digest, row in zip(
                data["ids"], data["paths"], data["size"], data["mtime_ns"], sha, features
            )
        }

    def _write(self, rows: dict[str, _Row], dim: int) -> None:
        """Atomically replace the file with ``rows``."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        values = list(rows.values())
        columns = {
            "ids": _fixed_strings([r.image_id for r in values]),
            "paths": _fixed_strings(list(rows)),
            "size": np.array([r.size for r in values], np.int64),
            "mtime_ns": np.array([r.mtime_ns for r in values], np.int64),
            "sha256": np.frombuffer(b"".join(r.sha256 for r in values), np.uint8).reshape(-1, 32),
            "features": (
                np.stack([r.features for r in values]).astype(np.float32) if values else np.zeros((0, dim), np.float32)
            ),
        }
        with atomic_path(self.path) as tmp, h5py.File(tmp, "w") as f:
            f.attrs["fingerprint"] = self.fingerprint
            f.attrs["format_version"] = FORMAT_VERSION
            for name, data in columns.items():
                f.create_dataset(name, data=data, fletcher32=True)

    def get_or_compute(
        self,
        extractor: FeatureExtractor,
        ids: Sequence[str],
        paths: Sequence[str | os.PathLike],
        *,
        progress: bool = True,
        checkpoint_every: int = 512,
    ) -> FeatureTable:
        """Features for ``ids`` (images at ``paths``), computing only new or changed files.

        Images that fail to decode are skipped and listed in
        :attr:`FeatureTable.failures`; they are not cached, so a fixed file
        is picked up on the next run.
        """
        if len(ids) != len(paths):
            raise ValueError("ids and paths must have the same length")
        if extractor.fingerprint() != self.fingerprint:
            raise ValueError("extractor fingerprint differs from the cache's")
        dim = extractor.output_dim
        rows = self._read(dim)
        by_content = {row.sha256: row.features for row in rows.values()}
        found: dict[int, np.ndarray] = {}
        todo: list[int] = []
        # (size, mtime_ns, sha256) of each file to extract, taken before it is read.
        identity: dict[int, tuple[int, int, bytes]] = {}
        changed = False
        for i, (image_id, path) in enumerate(zip(ids, paths)):
            key = os.path.abspath(path)
            try:
                st = os.stat(key)
                row = rows.get(key)
                if row is not None and (row.size, row.mtime_ns) == (st.st_size, st.st_mtime_ns):
                    found[i] = row.features
                    if row.image_id != image_id:
                        rows[key] = dataclasses.replace(row, image_id=image_id)
                        changed = True
                    continue
                digest = bytes.fromhex(file_sha256(key))
            except OSError:
                todo.append(i)  # extract_files says why it cannot be read
                continue
            if digest in by_content:  # touched, rewritten with the same bytes, or copied
                found[i] = by_content[digest]
                rows[key] = _Row(image_id, st.st_size, st.st_mtime_ns, digest, found[i])
            else:
                rows.pop(key, None)  # its features are stale, whether or not it still decodes
                todo.append(i)
                identity[i] = (st.st_size, st.st_mtime_ns, digest)
            changed = True

        failures: list[tuple[str, str]] = []
        if todo:
            report = progress_callback(progress, f"{extractor.name} features")
            done = 0
            for start in range(0, len(todo), checkpoint_every):
                chunk = todo[start : start + checkpoint_every]
                result = extractor.extract_files(
                    [paths[i] for i in chunk],
                    progress=lambda d, t, base=done: report(base + d, len(todo)),
                )
                for row, k in enumerate(result.indices):
                    i = chunk[k]
                    found[i] = result.features[row]
                    if i in identity:  # else it could not be stat'ed: not cached
                        size, mtime_ns, digest = identity[i]
                        rows[os.path.abspath(paths[i])] = _Row(ids[i], size, mtime_ns, digest, found[i])
                failures.extend(result.failures)
                done += len(chunk)
                self._write(rows, dim)
        elif changed:
            self._write(rows, dim)
        keep = [i for i in range(len(ids)) if i in found]
        matrix = np.stack([found[i] for i in keep]).astype(np.float32) if keep else np.zeros((0, dim), np.float32)
        return FeatureTable([ids[i] for i in keep], matrix, failures, computed=len(todo))


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _fixed_strings(values: list[str]) -> np.ndarray:
    """UTF-8 strings as one fixed-size bytes array (checksummable, unlike variable-length strings)."""
    encoded = [v.encode("utf-8") for v in values]
    return np.array(encoded, dtype=f"S{max((len(e) for e in encoded), default=1) or 1}")

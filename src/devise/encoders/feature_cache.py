"""HDF5 cache of image features keyed by image id: compute once, train many times."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from collections.abc import Sequence

import h5py
import numpy as np

from devise.encoders.feature_extractor import FeatureExtractor, _progress_callback
from devise.errors import DeviseError

_FORMAT_VERSION = 1


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


class FeatureCache:
    """An HDF5 file holding ``ids`` (strings) and ``features`` (float32).

    The file records the extractor's fingerprint, and a cache written by
    another extractor (or other weights, or input size) is refused rather
    than mixed. Every write goes to a temporary file that replaces the old
    one in a single rename, so a crash or Ctrl-C leaves the previous cache
    intact; long extractions write such a checkpoint every
    ``checkpoint_every`` images, so an interrupted run resumes.

    Args:
        path: the ``.h5`` file.
        fingerprint: :meth:`FeatureExtractor.fingerprint` of the extractor.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: str):
        self.path = os.fspath(path)
        self.fingerprint = fingerprint

    def read(self) -> dict[str, np.ndarray]:
        """Cached features by id; empty if the file does not exist."""
        if not os.path.exists(self.path):
            return {}
        try:
            with h5py.File(self.path, "r") as f:
                found = f.attrs.get("fingerprint", "")
                if found != self.fingerprint:
                    raise DeviseError(
                        f"{self.path}: feature cache was written by '{found}', not '{self.fingerprint}'. "
                        "Use another cache path for this extractor, or delete the file to rebuild it."
                    )
                ids = [s.decode("utf-8") if isinstance(s, bytes) else s for s in f["ids"][()]]
                features = np.asarray(f["features"][()], np.float32)
        except DeviseError:
            raise
        except (OSError, KeyError) as exc:
            print(
                f"warning: {self.path}: unreadable feature cache ({exc}); recomputing",
                file=sys.stderr,
            )
            return {}
        return dict(zip(ids, features))

    def write(self, features: dict[str, np.ndarray], dim: int) -> None:
        """Atomically replace the file with ``features``."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        tmp = f"{self.path}.tmp-{os.getpid()}"
        ids = list(features)
        matrix = np.stack([features[i] for i in ids]).astype(np.float32) if ids else np.zeros((0, dim), np.float32)
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["fingerprint"] = self.fingerprint
                f.attrs["format_version"] = _FORMAT_VERSION
                f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
                f.create_dataset("features", data=matrix)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def get_or_compute(
        self,
        extractor: FeatureExtractor,
        ids: Sequence[str],
        paths: Sequence[str | os.PathLike],
        *,
        progress: bool = True,
        checkpoint_every: int = 512,
    ) -> FeatureTable:
        """Features for ``ids`` (images at ``paths``), computing only the missing ones.

        Images that fail to decode are skipped and listed in
        :attr:`FeatureTable.failures`; they are not cached, so a fixed file
        is picked up on the next run.
        """
        if len(ids) != len(paths):
            raise ValueError("ids and paths must have the same length")
        if extractor.fingerprint() != self.fingerprint:
            raise ValueError("extractor fingerprint differs from the cache's")
        cached = self.read()
        todo = [i for i, image_id in enumerate(ids) if image_id not in cached]
        failures: list[tuple[str, str]] = []
        if todo:
            report = _progress_callback(progress, f"{extractor.name} features")
            done = 0
            for start in range(0, len(todo), checkpoint_every):
                chunk = todo[start : start + checkpoint_every]
                result = extractor.extract_files(
                    [paths[i] for i in chunk],
                    progress=lambda d, t, base=done: report(base + d, len(todo)),
                )
                for row, k in enumerate(result.indices):
                    cached[ids[chunk[k]]] = result.features[row]
                failures.extend(result.failures)
                done += len(chunk)
                self.write(cached, extractor.output_dim)
        keep = [image_id for image_id in ids if image_id in cached]
        matrix = (
            np.stack([cached[i] for i in keep]).astype(np.float32)
            if keep
            else np.zeros((0, extractor.output_dim), np.float32)
        )
        return FeatureTable(keep, matrix, failures, computed=len(todo))

"""Sharded image features with a manifest: what a parallel extraction writes and the Trainer and devise-index read.

A folder of shards, each an HDF5 file of rows (one per image file: its path,
size, ``mtime_ns``, the SHA-256 of its bytes, its features and, when a
trained run was given, its joint-space embedding), plus ``manifest.json``,
written last, that lists every shard with its row count and the SHA-256 of
its bytes, the extractor's fingerprint and the model that made the
embeddings. The Apache Beam pipeline (:mod:`devise.pipelines.beam_extract`)
writes it; :class:`FeatureShards` reads it back, checking every shard's
digest before trusting a row, so a damaged, truncated, swapped or missing
shard, or a manifest edited by hand, is refused with a message naming the
file, never read as features.

A row serves an image file when the file is the one it was computed from:
same absolute path, size and ``mtime_ns`` (as the feature cache and the
search index decide), or else the same bytes (SHA-256), so a collection
copied to another machine, or extracted from ``gs://`` and read locally,
still matches.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import h5py
import numpy as np

from devise.atomicfile import atomic_path, write_bytes
from devise.download import file_sha256
from devise.errors import DataFormatError, DeviseError
from devise.storage import h5_text, is_url

#: The manifest's file name in a shard folder.
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "devise-feature-shards"
SHARD_FORMAT = "devise-feature-shard"
FORMAT_VERSION = 1
# Every dataset is fixed-size so that HDF5's fletcher32 checksum covers it (as in the feature cache).
_COLUMNS = ("paths", "size", "mtime_ns", "sha256", "features")


@dataclasses.dataclass
class ShardRows:
    """Rows of one shard, in the order they are written.

    Attributes:
        paths: image paths as the extraction read them (absolute, or URLs such as ``gs://...``).
        size: file sizes in bytes.
        mtime_ns: modification times (nanoseconds).
        sha256: ``uint8 (N, 32)``: SHA-256 of each file's bytes.
        features: ``float32 (N, feature_dim)``.
        embeddings: ``float32 (N, joint_dim)``, or ``None`` without a trained run.
    """

    paths: list[str]
    size: np.ndarray
    mtime_ns: np.ndarray
    sha256: np.ndarray
    features: np.ndarray
    embeddings: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """A written shard as the manifest lists it: file name (in the manifest's folder), rows and SHA-256."""

    file: str
    rows: int
    sha256: str


def write_shard(
    path: str | os.PathLike,
    rows: ShardRows,
    *,
    extractor_fingerprint: str,
    model_fingerprint: str = "",
) -> ShardInfo:
    """Write one shard atomically and return what the manifest records of it."""
    path = os.fspath(path)
    n = len(rows.paths)
    columns = {
        "paths": _fixed_strings(rows.paths),
        "size": np.asarray(rows.size, np.int64).reshape(n),
        "mtime_ns": np.asarray(rows.mtime_ns, np.int64).reshape(n),
        "sha256": np.asarray(rows.sha256, np.uint8).reshape(n, 32),
        "features": np.asarray(rows.features, np.float32),
    }
    if rows.embeddings is not None:
        columns["embeddings"] = np.asarray(rows.embeddings, np.float32)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = SHARD_FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["extractor_fingerprint"] = extractor_fingerprint
            f.attrs["model_fingerprint"] = model_fingerprint
            for name, data in columns.items():
                f.create_dataset(name, data=data, fletcher32=True)
        digest = file_sha256(tmp)
    return ShardInfo(os.path.basename(path), n, digest)


def write_manifest(
    folder: str | os.PathLike,
    shards: Sequence[ShardInfo],
    *,
    extractor_fingerprint: str,
    feature_dim: int,
    model_fingerprint: str = "",
    embedding_dim: int = 0,
    run_dir: str = "",
    failures: Sequence[tuple[str, str]] = (),
    source: str = "",
) -> str:
    """Write ``manifest.json`` (atomically, after every shard) and return its path."""
    shards = sorted(shards, key=lambda s: s.file)
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": FORMAT_VERSION,
        "source": source,
        "extractor_fingerprint": extractor_fingerprint,
        "feature_dim": int(feature_dim),
        "model_fingerprint": model_fingerprint,
        "embedding_dim": int(embedding_dim),
        "run_dir": run_dir,
        "rows": sum(s.rows for s in shards),
        "shards": [dataclasses.asdict(s) for s in shards],
        "failures": [{"path": p, "reason": r} for p, r in sorted(failures)],
    }
    path = os.path.join(os.fspath(folder), MANIFEST_FILE)
    write_bytes(path, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
    return path


@dataclasses.dataclass
class Lookup:
    """What :meth:`FeatureShards.lookup` found for a list of image files.

    Attributes:
        vectors: ``float32 (len(positions), dim)``: features or embeddings.
        positions: positions (in the requested list) of the rows of ``vectors``.
        missing: positions of the files the shards hold no row for (new, changed or unreadable).
    """

    vectors: np.ndarray
    positions: list[int]
    missing: list[int]


class FeatureShards:
    """A verified shard folder: features (and embeddings) of image files, found by file.

    Open it with :meth:`open`; every shard's SHA-256, row count, format and
    fingerprint are checked there, before any row is used.

    Example:
    ```python
    shards = FeatureShards.open("features/manifest.json", extractor_fingerprint=extractor.fingerprint())
    found = shards.lookup(["photos/a.jpg", "photos/b.jpg"])
    ```
    """

    def __init__(self, path: str, manifest: dict, shard_paths: list[str], keys: list[str], sha: np.ndarray):
        self.path = path
        self.manifest = manifest
        self._shard_paths = shard_paths
        self._keys = keys  # absolute path (or URL) of each row, shard after shard
        self._sha = sha  # (rows, 32)
        counts = [s["rows"] for s in manifest["shards"]]
        self._starts = np.cumsum([0, *counts])
        self._by_path = {k: i for i, k in enumerate(keys)}
        self._by_content = {bytes(d): i for i, d in enumerate(sha)}
        self._stats: np.ndarray | None = None

    # -- opening --------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        extractor_fingerprint: str | None = None,
        model_fingerprint: str | None = None,
    ) -> FeatureShards:
        """Read and verify a manifest and its shards.

        Args:
            path: ``manifest.json``, or the folder that holds it.
            extractor_fingerprint: refuse shards made by another extractor.
            model_fingerprint: refuse shards whose embeddings another model made (or that have none).

        Raises:
            DataFormatError: the manifest or a shard is missing, damaged or
                does not match; the message names the file and what to do.
            DeviseError: the shards were made by another extractor or model.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, MANIFEST_FILE)
        manifest = _read_manifest(path)
        rerun = "rerun devise-beam-extract into an empty folder"
        if extractor_fingerprint is not None:
            _check_extractor(path, manifest, extractor_fingerprint)
        if model_fingerprint is not None and manifest["model_fingerprint"] != model_fingerprint:
            raise DeviseError(
                f"{path}: these embeddings were made by another model than this run's "
                f"({manifest['model_fingerprint'] or 'none were made'}); extract again with --run of this run"
            )
        folder = os.path.dirname(os.path.abspath(path))
        shard_paths, keys, shas = [], [], []
        for shard in manifest["shards"]:
            shard_path = os.path.join(folder, shard["file"])
            if not os.path.isfile(shard_path):
                raise DataFormatError(f"{path}: shard {shard['file']} is missing; copy the whole folder, or {rerun}")
            if file_sha256(shard_path) != shard["sha256"]:
                raise DataFormatError(
                    f"{shard_path}: the shard's SHA-256 differs from the one in {MANIFEST_FILE}: it is damaged or "
                    f"from another extraction; {rerun}"
                )
            paths, sha = _check_shard(shard_path, shard["rows"], manifest)
            shard_paths.append(shard_path)
            keys += paths
            shas.append(sha)
        sha = np.concatenate(shas) if shas else np.zeros((0, 32), np.uint8)
        return cls(path, manifest, shard_paths, keys, sha)

    # -- what it holds --------------------------------------------------------
    def __len__(self) -> int:
        return len(self._keys)

    @property
    def extractor_fingerprint(self) -> str:
        return self.manifest["extractor_fingerprint"]

    def check_extractor(self, extractor_fingerprint: str) -> None:
        """Refuse (:class:`DeviseError`) features another extractor made, as :meth:`open` does when given one."""
        _check_extractor(self.path, self.manifest, extractor_fingerprint)

    @property
    def model_fingerprint(self) -> str:
        """The fingerprint of the model whose embeddings the shards hold ("" for none)."""
        return self.manifest["model_fingerprint"]

    @property
    def paths(self) -> list[str]:
        """The image path of every row, shard after shard."""
        return list(self._keys)

    @property
    def failures(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of every image the extraction skipped."""
        return [(f["path"], f["reason"]) for f in self.manifest["failures"]]

    def read(self, rows: Sequence[int], what: str = "features") -> np.ndarray:
        """Rows (global row numbers) of ``"features"`` or ``"embeddings"``, in the order asked."""
        if what not in ("features", "embeddings"):
            raise ValueError(f"what must be 'features' or 'embeddings', not {what!r}")
        if what == "embeddings" and not self.model_fingerprint:
            raise DeviseError(f"{self.path}: holds no embeddings (extracted without --run)")
        rows = np.asarray(rows, np.int64)
        dim = self.manifest["feature_dim" if what == "features" else "embedding_dim"]
        out = np.empty((len(rows), dim), np.float32)
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1
        for s in np.unique(shard_of):
            picks = np.flatnonzero(shard_of == s)
            local = rows[picks] - self._starts[s]
            order = np.argsort(local, kind="stable")
            unique, inverse = np.unique(local[order], return_inverse=True)
            with h5py.File(self._shard_paths[s], "r") as f:
                data = f[what][unique]  # h5py wants increasing, distinct indices
            out[picks[order]] = data[inverse]
        return out

    def match(self, paths: Sequence[str | os.PathLike]) -> list[int | None]:
        """The row that serves each image file, or ``None``.

        A row serves a file with the same absolute path, size and
        ``mtime_ns``; failing that, one computed from the same bytes (the
        file is hashed only then). Unreadable files match nothing.
        """
        stats = self._row_stats()
        found: list[int | None] = []
        for path in paths:
            key = _key(path)
            row = self._by_path.get(key)
            try:
                st = os.stat(key) if not is_url(key) else None
                if row is not None and st is not None and (st.st_size, st.st_mtime_ns) == tuple(stats[row]):
                    found.append(row)
                    continue
                found.append(self._by_content.get(bytes.fromhex(file_sha256(key))) if st is not None else None)
            except OSError:
                found.append(None)
        return found

    def lookup(self, paths: Sequence[str | os.PathLike], what: str = "features") -> Lookup:
        """Features (or embeddings) of the image files the shards hold (see :meth:`match`)."""
        rows = self.match(paths)
        positions = [i for i, r in enumerate(rows) if r is not None]
        missing = [i for i, r in enumerate(rows) if r is None]
        return Lookup(self.read([rows[i] for i in positions], what), positions, missing)

    def _row_stats(self) -> np.ndarray:
        """``(rows, 2)``: size and mtime_ns of every row, read once."""
        if self._stats is None:
            parts = []
            for shard_path in self._shard_paths:
                with h5py.File(shard_path, "r") as f:
                    parts.append(np.stack([f["size"][()], f["mtime_ns"][()]], axis=1))
            self._stats = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
        return self._stats


def embed_from_shards(
    shards: FeatureShards,
    *,
    model_fingerprint: str,
    project: Callable[[np.ndarray], np.ndarray],
    fallback: Callable[[list[str]], tuple[np.ndarray, list[int], list[tuple[str, str]]]],
    counts: dict[str, int] | None = None,
) -> Callable[[list[str]], tuple[np.ndarray, list[int], list[tuple[str, str]]]]:
    """An ``embed(paths) -> (embeddings, positions, failures)`` function that reads the shards first.

    The shape :func:`devise.search.update_index` takes. Files the shards hold
    get the shards' embeddings when the same model made them, else their
    features projected by ``project``; the others go to ``fallback`` (the
    usual extraction).

    Args:
        shards: verified shards (of the model's extractor).
        model_fingerprint: the fingerprint of the model that embeds.
        project: features to joint-space embeddings.
        fallback: embeds the files the shards do not hold.
        counts: if given, ``"from_shards"`` and ``"not_in_shards"`` (files sent to ``fallback``) are added up in it.
    """
    what = "embeddings" if shards.model_fingerprint == model_fingerprint else "features"
    tally = counts if counts is not None else {}
    tally.setdefault("from_shards", 0)
    tally.setdefault("not_in_shards", 0)

    def embed(paths: list[str]):
        found = shards.lookup(paths, what)
        vectors = found.vectors if what == "embeddings" else project(found.vectors)
        positions = list(found.positions)
        failures: list[tuple[str, str]] = []
        if found.missing:
            more, more_positions, failures = fallback([paths[i] for i in found.missing])
            vectors = np.concatenate([np.asarray(vectors, np.float32), np.asarray(more, np.float32)])
            positions += [found.missing[p] for p in more_positions]
        tally["from_shards"] += len(found.positions)
        tally["not_in_shards"] += len(found.missing)
        return vectors, positions, failures

    return embed


def served_line(shards: FeatureShards, counts: dict[str, int], model_fingerprint: str) -> str:
    """One line on what :func:`embed_from_shards`'s ``counts`` say the shards served and what went to the extractor."""
    what = "embeddings" if shards.model_fingerprint == model_fingerprint else "features"
    return (
        f"{shards.path}: {counts.get('from_shards', 0)} images' {what} read from its shards; "
        f"{counts.get('not_in_shards', 0)} not in them went to the extractor"
    )


def _key(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return path if is_url(path) else os.path.abspath(path)


def _check_extractor(path: str, manifest: dict, extractor_fingerprint: str) -> None:
    if manifest["extractor_fingerprint"] != extractor_fingerprint:
        raise DeviseError(
            f"{path}: these features were extracted by '{manifest['extractor_fingerprint']}', not "
            f"'{extractor_fingerprint}'; extract them again with this image_encoder"
        )


def _read_manifest(path: str) -> dict:
    what = f"{path}: not a devise feature manifest"
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise DataFormatError(
            f"{path}: no feature manifest here (devise-beam-extract writes it last: did the pipeline finish?)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{what} ({exc}); rerun devise-beam-extract") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataFormatError(f"{what} (no format {MANIFEST_FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataFormatError(
            f"{path}: feature manifest version {manifest.get('format_version')!r} is not {FORMAT_VERSION}, "
            "the one this devise reads; extract again with this version"
        )
    expected = {
        "extractor_fingerprint": str,
        "feature_dim": int,
        "model_fingerprint": str,
        "embedding_dim": int,
        "run_dir": str,
        "rows": int,
        "shards": list,
        "failures": list,
    }
    for key, kind in expected.items():
        if not isinstance(manifest.get(key), kind):
            raise DataFormatError(f"{what} (key {key!r} missing or not a {kind.__name__}); rerun devise-beam-extract")
    for shard in manifest["shards"]:
        if (
            not isinstance(shard, dict)
            or not isinstance(shard.get("file"), str)
            or os.path.basename(shard["file"]) != shard["file"]
            or shard["file"] in ("", ".", "..")
            or not isinstance(shard.get("rows"), int)
            or shard["rows"] < 0
            or not isinstance(shard.get("sha256"), str)
        ):
            raise DataFormatError(f"{what} (bad shard entry {str(shard)[:80]}); rerun devise-beam-extract")
    if sum(s["rows"] for s in manifest["shards"]) != manifest["rows"]:
        raise DataFormatError(f"{path}: the shards' row counts do not add up to 'rows'; rerun devise-beam-extract")
    if any(not isinstance(f, dict) or not {"path", "reason"} <= set(f) for f in manifest["failures"]):
        raise DataFormatError(f"{what} (bad 'failures' entry); rerun devise-beam-extract")
    return manifest


def _check_shard(path: str, rows: int, manifest: dict) -> tuple[list[str], np.ndarray]:
    """The paths and SHA-256 column of a shard whose bytes matched the manifest, after checking its contents."""
    try:
        with h5py.File(path, "r") as f:
            if h5_text(f.attrs.get("format", "")) != SHARD_FORMAT:
                raise DataFormatError(f"{path}: not a devise feature shard")
            if h5_text(f.attrs.get("extractor_fingerprint", "")) != manifest["extractor_fingerprint"] or (
                h5_text(f.attrs.get("model_fingerprint", "")) != manifest["model_fingerprint"]
            ):
                raise DataFormatError(f"{path}: the shard's fingerprints differ from its manifest's")
            shapes = {name: f[name].shape for name in f}
            paths = [p.decode("utf-8", "surrogateescape") for p in f["paths"][()]]
            sha = np.asarray(f["sha256"][()])
    except DataFormatError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise DataFormatError(f"{path}: unreadable feature shard ({exc}); rerun devise-beam-extract") from None
    wanted = {name: (rows,) for name in ("paths", "size", "mtime_ns")}
    wanted["sha256"] = (rows, 32)
    wanted["features"] = (rows, manifest["feature_dim"])
    if manifest["model_fingerprint"]:
        wanted["embeddings"] = (rows, manifest["embedding_dim"])
    if any(shapes.get(name) != shape for name, shape in wanted.items()):
        raise DataFormatError(f"{path}: the shard's datasets {shapes} do not match its manifest entry")
    return paths, sha


def _fixed_strings(values: list[str]) -> np.ndarray:
    """UTF-8 strings as one fixed-size bytes array (checksummable, unlike variable-length strings).

    A file name that is not UTF-8 comes from ``os.listdir`` with its bytes as surrogate escapes
    (``'caf\\udce9.jpg'``); ``surrogateescape`` writes those bytes back (and reading decodes them the same way).
    """
    encoded = [v.encode("utf-8", "surrogateescape") for v in values]
    return np.array(encoded, dtype=f"S{max((len(e) for e in encoded), default=1) or 1}")

"""Image features (and joint-space embeddings) of a large collection, in parallel shards, on Apache Beam.

The pipeline lists the images (a folder, a glob pattern such as
``gs://bucket/photos/**.jpg``, or a file of paths), batches them
(``BatchElements``), extracts each batch on a worker that built the backbone
(and, with a trained run, loaded its model) once in ``setup()``, groups the
rows into shards by a hash of their path and writes each shard as an HDF5
file with its own SHA-256, then, last, ``manifest.json``
(:mod:`devise.encoders.feature_shards`). Images that cannot be read or
decoded are skipped, counted (Beam metrics ``devise/images_skipped``) and
listed in the manifest. ``devise-index --features`` and the Trainer
(``image_encoder.features``) read the result directly.

Features come from the same code as everywhere else in devise: the backbone
is built by the encoders' registry from an ``image_encoder`` config section,
and each batch goes through :meth:`FeatureExtractor.extract_files`, so they
equal those of ``devise-extract`` and the feature cache. Files a worker
cannot open as local paths (``gs://``, ``s3://``: whatever Beam's
``FileSystems`` reads) are first copied to a local temporary file.

Why Beam rather than devise's own process pool: the same pipeline runs on
the direct runner (in tests, on one machine) and on Dataflow, Flink or Spark
by pipeline options alone, with their scheduling, retries, autoscaling and
monitoring; writing a shard is idempotent (its rows are decided by the
paths), so a retried bundle rewrites the same file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence

from devise.errors import OptionalDependencyError

try:
    import apache_beam as beam
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.metrics.metric import Metrics, MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise OptionalDependencyError("apache-beam", "beam", "The Apache Beam extraction pipeline") from _exc

import numpy as np

from devise.atomicfile import check_directory_writable
from devise.config import ImageEncoderConfig
from devise.download import file_sha256
from devise.encoders.feature_shards import MANIFEST_FILE, ShardInfo, ShardRows, write_manifest, write_shard
from devise.encoders.registry import feature_extractor_from_config
from devise.errors import DeviseError
from devise.model import MODEL_FILE, DeViSEModel
from devise.progress import ProgressBar
from devise.runs import COMPLETE_FILE, CONFIG_FILE, check_run_complete, read_run_config
from devise.search.scan import scan_images
from devise.storage import is_url

NAMESPACE = "devise"
_FAILURES = "failures"
_SHARD_PREFIX = "features-"
# Bytes as they are: Beam would otherwise guess a compression from the file name.
_RAW = CompressionTypes.UNCOMPRESSED


@dataclasses.dataclass
class ExtractionSummary:
    """What :func:`run_extraction` did.

    Attributes:
        manifest: path of the manifest written.
        images: images listed.
        rows: images extracted (rows in the shards).
        skipped: images that could not be read or decoded.
        shards: shard files written.
        seconds: wall time of the pipeline.
    """

    manifest: str
    images: int
    rows: int
    skipped: int
    shards: int
    seconds: float

    def summary(self) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.rows} of {self.images} images extracted into {self.shards} shards "
            f"({self.skipped} skipped) in {self.seconds:.1f}s, {rate:.1f} images/s; manifest {self.manifest}"
        )


def list_images(images: str | None = None, file_list: str | None = None) -> list[str]:
    """The image paths a pipeline reads: a folder (as devise-index scans it), a glob pattern, or a file of paths.

    Raises:
        DeviseError: nothing given, nothing found, or the list file is unreadable.
    """
    if (images is None) == (file_list is None):
        raise DeviseError("give either a folder or glob pattern of images, or a file that lists image paths")
    if file_list is not None:
        try:
            with open(file_list, encoding="utf-8") as f:
                paths = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DeviseError(f"{file_list}: cannot read the list of images ({exc})") from None
        found = [p if is_url(p) else os.path.abspath(p) for p in paths]
    elif not is_url(images) and os.path.isdir(images):
        found = [f.path for f in scan_images(images)]
    else:
        try:
            matched = FileSystems.match([images])[0].metadata_list
        except Exception as exc:  # Beam raises BeamIOError and others, by file system
            raise DeviseError(f"{images}: cannot list images ({exc})") from None
        found = sorted(m.path for m in matched)
    if not found:
        raise DeviseError(f"{images or file_list}: no images found")
    return found


def run_extraction(
    images: Sequence[str],
    out_dir: str,
    *,
    image_encoder: ImageEncoderConfig | None = None,
    run_dir: str | None = None,
    num_shards: int = 16,
    pipeline_args: Sequence[str] = (),
    source: str = "",
    progress: bool = True,
) -> ExtractionSummary:
    """Extract ``images`` into shards and a manifest in ``out_dir`` on the runner the options name.

    Args:
        images: image paths (local, or URLs Beam's ``FileSystems`` reads).
        out_dir: the shard folder (local, or a URL such as ``gs://bucket/features``).
        image_encoder: the backbone (the ``image_encoder`` section of a
            config); with ``run_dir`` it must be the run's, and ``None``
            takes the run's (or the default backbone without a run).
        run_dir: a finished training run: also write joint-space embeddings.
        num_shards: how many shards the rows are hashed into (at most).
        pipeline_args: Beam pipeline options (``--runner``, ``--project`` ...);
            none runs on the direct runner.
        source: what the images were listed from, recorded in the manifest.
        progress: each worker prints its progress on its stderr (on the
            direct runner, the terminal; on a cluster, the worker logs, next
            to the runner's own monitoring of the ``devise`` counters).

    Raises:
        DeviseError: an unfinished run, an extractor that is not the run's,
            an ``out_dir`` that cannot be written, or local paths with a
            runner whose workers run on other machines.
    """
    if num_shards < 1:
        raise DeviseError(f"--shards must be at least 1, got {num_shards}")
    images = list(images)
    if not images:
        raise DeviseError("no images to extract")
    options = PipelineOptions(list(pipeline_args))
    _check_paths_reach_workers(options, images, out_dir, run_dir)
    model_file = ""
    model_fingerprint, embedding_dim = "", 0
    if run_dir is not None:
        with _local_run(run_dir) as local:
            check_run_complete(local)
            # A given image_encoder must make the run's features (checked by fingerprint below).
            image_encoder = image_encoder or read_run_config(local).image_encoder
            model = DeViSEModel.load(local)
            model_fingerprint, embedding_dim = model.fingerprint(), model.joint_dim
        model_file = _join(run_dir, MODEL_FILE)
    image_encoder = image_encoder or ImageEncoderConfig()
    extractor = feature_extractor_from_config(image_encoder)
    if run_dir is not None and model.image_fingerprint and model.image_fingerprint != extractor.fingerprint():
        raise DeviseError(
            f"{run_dir}: the model was trained on '{model.image_fingerprint}' features, not "
            f"'{extractor.fingerprint()}'; leave out --config to use the run's image_encoder"
        )
    _prepare_out_dir(out_dir)

    pipeline = beam.Pipeline(options=options)
    rows, failures = (
        pipeline
        | "ListImages" >> beam.Create(images)
        | "Spread" >> beam.Reshuffle()
        | "Batch"
        >> beam.BatchElements(min_batch_size=image_encoder.batch_size, max_batch_size=image_encoder.batch_size)
        | "Extract"
        >> beam.ParDo(_ExtractFn(image_encoder, model_file, len(images) if progress else 0)).with_outputs(
            _FAILURES, main="rows"
        )
    )
    fingerprints = {"extractor_fingerprint": extractor.fingerprint(), "model_fingerprint": model_fingerprint}
    shards = (
        rows
        | "ByShard" >> beam.Map(lambda row: (_shard_of(row[0], num_shards), row))
        | "GroupShards" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(_WriteShardFn(out_dir, fingerprints))
    )
    _ = (
        shards
        | "AllShards" >> beam.combiners.ToList()
        | "WriteManifest"
        >> beam.Map(
            _write_manifest,
            beam.pvalue.AsList(failures),
            out_dir=out_dir,
            manifest={
                **fingerprints,
                "feature_dim": extractor.output_dim,
                "embedding_dim": embedding_dim,
                "run_dir": os.path.abspath(run_dir) if run_dir and not is_url(run_dir) else (run_dir or ""),
                "source": source,
            },
        )
    )
    start = time.monotonic()
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.monotonic() - start
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    }
    return ExtractionSummary(
        manifest=_join(out_dir, MANIFEST_FILE),
        images=len(images),
        rows=int(counters.get("images_extracted", 0)),
        skipped=int(counters.get("images_skipped", 0)),
        shards=int(counters.get("shards_written", 0)),
        seconds=seconds,
    )


class _ExtractFn(beam.DoFn):
    """Batches of image paths in; rows ``(path, size, mtime_ns, sha256, features, embedding)`` out.

    The backbone (and the run's model) is built once per worker, in ``setup()``.
    """

    def __init__(self, image_encoder: ImageEncoderConfig, model_file: str, total: int = 0):
        self.image_encoder = image_encoder
        self.model_file = model_file
        self.total = total  # images in the whole job; 0: no progress shown
        self.extracted = Metrics.counter(NAMESPACE, "images_extracted")
        self.skipped = Metrics.counter(NAMESPACE, "images_skipped")

    def setup(self):
        self._tmp = tempfile.mkdtemp(prefix="devise-beam-")
        self._extractor = feature_extractor_from_config(self.image_encoder)
        _ = self._extractor.model  # build it now, once, not in the first batch
        self._model = None
        if self.model_file:
            local = self.model_file
            if is_url(local):
                local = os.path.join(self._tmp, MODEL_FILE)
                _copy_down(self.model_file, local)
            self._model = DeViSEModel.load(local)
        # A worker sees its share of the job: with several workers no bar reaches the total.
        self._done = 0
        self._bar = ProgressBar("devise-beam-extract (this worker)") if self.total else None

    def teardown(self):
        shutil.rmtree(getattr(self, "_tmp", ""), ignore_errors=True)

    def process(self, paths: Sequence[str]) -> Iterable:
        staged: list[tuple[str, str, int, int, bytes]] = []
        for path in paths:
            try:
                staged.append((path, *self._stage(path, len(staged))))
            except OSError as exc:
                self.skipped.inc()
                yield beam.pvalue.TaggedOutput(_FAILURES, (path, f"cannot read the file ({exc.strerror or exc})"))
        try:
            result = self._extractor.extract_files([s[1] for s in staged], progress=False)
            original = {s[1]: s[0] for s in staged}
            for local, reason in result.failures:
                self.skipped.inc()
                yield beam.pvalue.TaggedOutput(_FAILURES, (original[local], reason.replace(local, original[local])))
            embeddings = self._model.embed_image_features(result.features) if self._model is not None else None
            for row, i in enumerate(result.indices):
                path, _, size, mtime_ns, sha = staged[i]
                embedding = embeddings[row] if embeddings is not None else None
                yield (path, size, mtime_ns, sha, result.features[row], embedding)
            self.extracted.inc(len(result.indices))
            self._done += len(paths)
            if self._bar is not None:
                self._bar.update(self._done, self.total)
        finally:
            for path, local, *_ in staged:
                if local != path:
                    with contextlib.suppress(OSError):
                        os.remove(local)

    def _stage(self, path: str, n: int) -> tuple[str, int, int, bytes]:
        """A local file with ``path``'s bytes, and the file's size, mtime_ns and SHA-256."""
        if not is_url(path):
            st = os.stat(path)
            return path, st.st_size, st.st_mtime_ns, bytes.fromhex(file_sha256(path))
        local = os.path.join(self._tmp, f"{n}{os.path.splitext(path)[1]}")
        _copy_down(path, local)
        mtime_ns = int(FileSystems.last_updated(path) * 1e9)
        return local, os.path.getsize(local), mtime_ns, bytes.fromhex(file_sha256(local))


class _WriteShardFn(beam.DoFn):
    """``(shard number, rows)`` in; the shard file written (sorted by path, so a retry writes the same) out."""

    def __init__(self, out_dir: str, fingerprints: dict[str, str]):
        self.out_dir = out_dir
        self.fingerprints = fingerprints
        self.written = Metrics.counter(NAMESPACE, "shards_written")

    def process(self, element) -> Iterable[ShardInfo]:
        key, rows = element
        rows = sorted(rows, key=lambda row: row[0])
        with_embeddings = rows[0][5] is not None
        shard = ShardRows(
            paths=[r[0] for r in rows],
            size=np.array([r[1] for r in rows], np.int64),
            mtime_ns=np.array([r[2] for r in rows], np.int64),
            sha256=np.frombuffer(b"".join(r[3] for r in rows), np.uint8).reshape(-1, 32),
            features=np.stack([r[4] for r in rows]).astype(np.float32),
            embeddings=np.stack([r[5] for r in rows]).astype(np.float32) if with_embeddings else None,
        )
        name = f"{_SHARD_PREFIX}{key:05d}.h5"
        with _local_target(self.out_dir, name) as local:
            info = write_shard(local, shard, **self.fingerprints)
        self.written.inc()
        yield dataclasses.replace(info, file=name)


# Runners whose workers run on the launching machine (None: Beam's default, the direct runner).
_LOCAL_RUNNERS = {None, "direct", "bundlebaseddirect", "switchingdirect", "prism", "fnapi", "interactive"}


def _check_paths_reach_workers(options, images: Sequence[str], out_dir: str, run_dir: str | None) -> None:
    """Refuse local paths when the runner's workers run elsewhere: they would read and write their own disks."""
    runner = options.view_as(StandardOptions).runner
    name = runner if runner is None or isinstance(runner, str) else type(runner).__name__
    if (name.lower().removesuffix("runner") if name else None) in _LOCAL_RUNNERS:
        return
    local_image = next((p for p in images if not is_url(p)), None)
    for what, path in (("--out", out_dir), ("--run", run_dir), ("image", local_image)):
        if path is not None and not is_url(path):
            raise DeviseError(
                f"{what} {path} is a local path, which {name}'s workers cannot reach: give a URL they can "
                "(gs://bucket/...), or leave out --runner to run on this machine"
            )


def _write_manifest(shards: list[ShardInfo], failures: list[tuple[str, str]], *, out_dir: str, manifest: dict):
    with _local_target(out_dir, MANIFEST_FILE) as local:
        write_manifest(os.path.dirname(local), shards, failures=failures, **manifest)
    return _join(out_dir, MANIFEST_FILE)


def _shard_of(path: str, num_shards: int) -> int:
    """A stable shard number for a path (Python's ``hash`` differs between worker processes)."""
    return int.from_bytes(hashlib.sha1(path.encode("utf-8", "surrogateescape")).digest()[:8], "big") % num_shards


def _join(folder: str, name: str) -> str:
    return FileSystems.join(folder, name) if is_url(folder) else os.path.join(folder, name)


@contextlib.contextmanager
def _local_target(out_dir: str, name: str):
    """A local path to write ``name`` to; for a remote ``out_dir`` it is uploaded afterwards."""
    if not is_url(out_dir):
        os.makedirs(out_dir, exist_ok=True)
        yield os.path.join(out_dir, name)
        return
    with tempfile.TemporaryDirectory(prefix="devise-beam-") as tmp:
        local = os.path.join(tmp, name)
        yield local
        with open(local, "rb") as src, FileSystems.create(_join(out_dir, name), compression_type=_RAW) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def _copy_down(url: str, local: str) -> None:
    with FileSystems.open(url, compression_type=_RAW) as src, open(local, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


@contextlib.contextmanager
def _local_run(run_dir: str):
    """The run directory itself, or for a URL a local copy of the files a reader needs."""
    if not is_url(run_dir):
        yield run_dir
        return
    with tempfile.TemporaryDirectory(prefix="devise-run-") as tmp:
        for name in (CONFIG_FILE, COMPLETE_FILE, MODEL_FILE):
            with contextlib.suppress(OSError):  # a missing file is reported by the checks below
                _copy_down(_join(run_dir, name), os.path.join(tmp, name))
        yield tmp


def _prepare_out_dir(out_dir: str) -> None:
    """A local ``out_dir`` writable; its previous manifest removed first and then its old shards (also at a URL).

    The manifest goes first: a run stopped half-way then leaves no manifest, so
    no reader takes new shards and old ones for one extraction. Old shards go
    because a previous run with more ``--shards`` left files this one does not rewrite.
    """
    if is_url(out_dir):
        manifest = _join(out_dir, MANIFEST_FILE)
        try:
            if FileSystems.exists(manifest):
                FileSystems.delete([manifest])
            old = [m.path for m in FileSystems.match([_join(out_dir, _SHARD_PREFIX + "*.h5")])[0].metadata_list]
            if old:
                FileSystems.delete(old)
        except Exception as exc:  # Beam raises BeamIOError and others, by file system
            raise DeviseError(f"--out {out_dir}: cannot remove the previous extraction's files ({exc})") from None
        return
    check_directory_writable(out_dir, "--out")
    if not os.path.isdir(out_dir):
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out_dir, MANIFEST_FILE))
    for name in os.listdir(out_dir):
        if name.startswith(_SHARD_PREFIX) and name.endswith(".h5"):
            os.remove(os.path.join(out_dir, name))

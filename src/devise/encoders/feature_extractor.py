"""The device-agnostic interface every image backbone implements, and its parallel file pipeline.

Reading, decoding and resizing image files run in a pool of threads while
the traced forward pass computes the previous batch (:meth:`FeatureExtractor.iter_features`).
The decoding is Pillow's, through :func:`devise.datasets.images.load_image`,
rather than ``tf.data`` with TensorFlow's image ops, because the pixels must
stay exactly those ``load_image`` gives (feature caches, saved models and
tests depend on them: TensorFlow's JPEG decoder and resize differ from
Pillow's by a few levels), and Pillow releases the GIL while it decodes and
resizes, so threads run in parallel with each other and with TensorFlow's
kernels. The window of images in flight is bounded (two batches plus one
image per thread), so memory stays flat however many files there are.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from devise.datasets.images import check_resize_mode, decoding, load_image
from devise.errors import ConfigError, DataFormatError


@dataclasses.dataclass
class ExtractionResult:
    """Features of the images that decoded, and why the others did not.

    Attributes:
        features: ``float32`` array ``(N_ok, output_dim)``.
        indices: positions (in the input list) of the rows of ``features``.
        failures: ``(path, reason)`` for every image skipped.
    """

    features: np.ndarray
    indices: list[int]
    failures: list[tuple[str, str]]


@dataclasses.dataclass
class FeatureBatch:
    """One batch of :meth:`FeatureExtractor.iter_features`: the unit a cache or a pipeline consumes.

    Attributes:
        indices: positions (in the input list) of the rows of ``features``.
        features: ``float32`` array ``(len(indices), output_dim)``.
        failures: ``(path, reason)`` of the images skipped since the previous batch.
        done: input files handled so far (decoded or skipped), for progress.
    """

    indices: list[int]
    features: np.ndarray
    failures: list[tuple[str, str]]
    done: int
    #: with ``known``: what each file read was (decoded or known), by input position.
    identities: dict[int, FileIdentity] = dataclasses.field(default_factory=dict)
    #: with ``known``: positions whose content digest was in ``known`` (read and hashed, not decoded).
    known: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class FileIdentity:
    """A file as one read saw it: ``fstat`` size and mtime, and the SHA-256 of exactly the bytes decoded."""

    size: int
    mtime_ns: int
    sha256: bytes


def _read_and_decode(path, size, resize, known):
    """Read ``path`` once; hash, ``fstat`` and decode those same bytes (a file rewritten meanwhile cannot mix)."""
    name = os.fspath(path)
    with decoding(name), open(name, "rb") as handle:
        st = os.fstat(handle.fileno())
        data = handle.read()
    identity = FileIdentity(st.st_size, st.st_mtime_ns, hashlib.sha256(data).digest())
    if identity.sha256 in known:
        return None, identity
    return load_image(name, size, resize=resize, data=data), identity


def default_workers() -> int:
    """Decoding threads when none are asked for: one per CPU core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


class FeatureExtractor(abc.ABC):
    """Images in, ``float32`` features ``(N, output_dim)`` out.

    Subclasses build a Keras model that takes RGB images as ``float32`` in
    ``[0, 255]`` with shape ``(N, H, W, 3)`` (their own preprocessing is part
    of the model) and returns the feature layer. Work is placed by the
    ``device`` argument (e.g. ``"/GPU:0"``) when given, else by the active
    ``tf.distribute`` strategy's default device: nothing is hard-coded, and
    the same code runs on CPU, one GPU or many.

    Args:
        batch_size: images per forward pass.
        device: a TensorFlow device string, or ``None`` to use the default
            placement.
        resize: how :meth:`extract_files` brings images to
            :attr:`input_size`: ``"crop"`` (shorter side fits, centre crop,
            the ImageNet convention) or ``"pad"`` (longer side fits, padded
            with white: nothing is cut). See
            :func:`devise.datasets.images.load_image`.
        workers: threads that read, decode and resize image files in
            :meth:`iter_features` (``None``: one per CPU core).
        mixed_precision: build the network with Keras' ``mixed_float16``
            policy (float16 compute, float32 features). For GPUs only: on a
            machine without one it is refused with a :class:`ConfigError`
            (float16 on CPU is slower and less exact, never useful).
    """

    #: short name stored in feature caches and fingerprints.
    name: str = "feature-extractor"
    #: ``(height, width)`` the backbone expects.
    input_size: tuple[int, int] = (224, 224)

    def __init__(
        self,
        *,
        batch_size: int = 32,
        device: str | None = None,
        resize: str = "crop",
        workers: int | None = None,
        mixed_precision: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.batch_size = batch_size
        self.device = device
        self.resize = check_resize_mode(resize)
        self.workers = workers
        self.mixed_precision = bool(mixed_precision)
        self._model = None
        self._forward = None

    # -- to implement -------------------------------------------------------
    @property
    @abc.abstractmethod
    def output_dim(self) -> int:
        """Size of one feature vector."""

    @abc.abstractmethod
    def build_model(self):
        """Return a ``keras.Model`` from RGB float images in [0, 255] to features."""

    @property
    def weights_id(self) -> str:
        """Identifies the weights by what they are, never by a file name.

        ``"none"`` for random weights, ``"imagenet"`` for published weights
        checked against their known hash, ``"sha256:<hex>"`` (from
        :func:`weights_file_digest`) for a weights file: two different files
        with the same name must never share an id, or a feature cache would
        serve one's features for the other.
        """
        return "unknown"

    # -- provided -----------------------------------------------------------
    def fingerprint(self) -> str:
        """A string that changes whenever the features would change."""
        h, w = self.input_size
        fingerprint = f"{self.name}|{self.weights_id}|{h}x{w}|{self.output_dim}"
        # "crop" was the only mode before there was a choice, and float32 the
        # only precision: leaving them out keeps the caches and saved models
        # made then valid.
        if self.resize != "crop":
            fingerprint += f"|resize={self.resize}"
        if self.mixed_precision:
            fingerprint += "|mixed_float16"
        return fingerprint

    @property
    def model(self):
        if self._model is None:
            with self._placement(), self._precision():
                self._model = self.build_model()
        return self._model

    def _precision(self):
        """Keras' ``mixed_float16`` policy while the model is built, when asked for (GPU only)."""
        if not self.mixed_precision:
            return contextlib.nullcontext()
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            raise ConfigError(
                "image_encoder.mixed_precision=true needs a GPU and TensorFlow sees none; "
                "set it to false on this machine (float32 is faster on CPUs)"
            )
        return dtype_policy("mixed_float16")

    def _placement(self):
        if self.device is None:
            return contextlib.nullcontext()
        import tensorflow as tf

        return tf.device(self.device)

    def _trace(self, model):
        """``model`` as one traced function for batches of any size at :attr:`input_size`."""
        import tensorflow as tf

        h, w = self.input_size
        # One traced graph for every batch: several times faster on CPU
        # than calling model.predict per batch (see docs/architecture.md).
        return tf.function(
            lambda x: tf.cast(model(x, training=False), tf.float32),
            input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32)],
        )

    def _check_images(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or tuple(images.shape[1:3]) != tuple(self.input_size):
            raise ValueError(
                f"{type(self).__name__} expects images of shape (N, {self.input_size[0]}, "
                f"{self.input_size[1]}, 3), got {images.shape}"
            )
        return images

    def _run_batched(self, forward, images: np.ndarray, width: int) -> np.ndarray:
        """``forward`` over checked ``images`` in batches of :attr:`batch_size`, as ``float32 (N, width)``."""
        out = np.empty((len(images), width), np.float32)
        with self._placement():
            for start in range(0, len(images), self.batch_size):
                batch = images[start : start + self.batch_size].astype(np.float32)
                out[start : start + len(batch)] = forward(batch).numpy()
        return out

    def extract(self, images: np.ndarray) -> np.ndarray:
        """Features of a batch of RGB images.

        Args:
            images: ``(N, H, W, 3)`` array (``uint8`` or float in [0, 255])
                already at :attr:`input_size`.
        """
        images = self._check_images(images)  # before building the model: a shape error is cheap
        if self._forward is None:
            self._forward = self._trace(self.model)
        return self._run_batched(self._forward, images, self.output_dim)

    def iter_features(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        workers: int | None = None,
        known: frozenset[bytes] | set[bytes] | None = None,
    ) -> Iterator[FeatureBatch]:
        """Features of image files, one :class:`FeatureBatch` per forward pass.

        The one extraction function: :meth:`extract_files`, the feature
        cache (so the Trainer and ``devise-extract``) and the search index
        (``devise-index``) all read images through it. ``workers`` threads
        read, decode and resize the files (exactly as
        :func:`devise.datasets.images.load_image`) while the forward pass
        runs on the previous batch; at most two batches plus one image per
        thread are held decoded. An image that cannot be decoded is skipped
        and reported in the next batch's ``failures``; it never stops the
        others.

        Args:
            paths: image files.
            workers: decoding threads (``None``: the extractor's
                ``workers``, else one per CPU core).
            known: when given, each file is read once and its SHA-256,
                ``fstat`` and pixels all come from those bytes (reported in
                ``identities``); a file whose digest is in ``known`` is not
                decoded (reported in ``known``). The feature cache uses this.
        """
        paths = list(paths)
        workers = workers or self.workers or default_workers()
        window = self.batch_size + workers  # futures queued beyond the batch being assembled
        size, resize = self.input_size, self.resize
        pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="devise-decode")
        pending: collections.deque = collections.deque()
        todo = iter(enumerate(paths))

        def refill():
            while len(pending) < window:
                item = next(todo, None)
                if item is None:
                    return
                if known is None:
                    future = pool.submit(load_image, item[1], size, resize=resize)
                else:
                    future = pool.submit(_read_and_decode, item[1], size, resize, known)
                pending.append((item[0], item[1], future))

        try:
            refill()
            images: list[np.ndarray] = []
            indices: list[int] = []
            failures: list[tuple[str, str]] = []
            identities: dict[int, FileIdentity] = {}
            reused: list[int] = []
            while pending:
                i, path, future = pending.popleft()
                refill()
                try:
                    image = future.result()
                    if known is not None:
                        image, identities[i] = image
                    if image is None:
                        reused.append(i)
                    else:
                        images.append(image)
                        indices.append(i)
                except DataFormatError as exc:
                    failures.append((os.fspath(path), str(exc)))
                if len(images) == self.batch_size or not pending:
                    features = self.extract(np.stack(images)) if images else np.zeros((0, self.output_dim), np.float32)
                    yield FeatureBatch(indices, features, failures, done=i + 1, identities=identities, known=reused)
                    images, indices, failures, identities, reused = [], [], [], {}, []
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def extract_files(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        progress: Callable[[int, int], None] | bool = True,
        workers: int | None = None,
    ) -> ExtractionResult:
        """Decode and embed image files, skipping (and reporting) bad ones.

        All of :meth:`iter_features`, gathered into one array.

        Args:
            paths: image files.
            progress: ``True`` for a progress bar on stderr, ``False`` for
                none, or a callback ``(done, total)``.
            workers: decoding threads (see :meth:`iter_features`).
        """
        total = len(paths)
        report = progress_callback(progress, f"{self.name} features")
        features: list[np.ndarray] = []
        indices: list[int] = []
        failures: list[tuple[str, str]] = []
        with contextlib.closing(self.iter_features(paths, workers=workers)) as batches:
            for batch in batches:
                features.append(batch.features)
                indices.extend(batch.indices)
                failures.extend(batch.failures)
                report(batch.done, total)
        report(total, total)
        feats = np.concatenate(features) if features else np.zeros((0, self.output_dim), np.float32)
        return ExtractionResult(feats, indices, failures)


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Keras' global dtype policy is ``name`` inside (layers built there keep it); restored on exit."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


_DIGESTS: dict[tuple, str] = {}
_DIGESTS_LOCK = threading.Lock()


def weights_file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a weights file, computed once per process for each version of it.

    The file is read in 1 MiB blocks (about a second for the 528 MB of VGG16);
    the result is remembered for the file's (path, device, inode, size,
    mtime), so the several fingerprints a run takes hash it once, and a file
    rewritten in place is hashed again.

    Raises:
        OSError: the file cannot be read.
    """
    path = os.path.realpath(os.fspath(path))
    st = os.stat(path)
    key = (algorithm, path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _DIGESTS_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    after = os.stat(path)
    if (after.st_ino, after.st_size, after.st_mtime_ns) == key[3:]:  # not remembered while being written
        with _DIGESTS_LOCK:
            _DIGESTS[key] = value
    return value


def progress_callback(progress: Callable[[int, int], None] | bool, label: str) -> Callable[[int, int], None]:
    """The ``(done, total)`` callback a ``progress`` argument asks for.

    Args:
        progress: a callback (returned as is), ``True`` for a progress bar
            on stderr labelled ``label``, or ``False`` for none.
        label: the bar's label.
    """
    if callable(progress):
        return progress
    if not progress:
        return lambda done, total: None
    from devise.progress import ProgressBar

    bar = ProgressBar(label)
    return bar.update

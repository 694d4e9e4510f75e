"""The device-agnostic interface every image backbone implements."""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import os
import threading
from collections.abc import Callable, Sequence

import numpy as np

from devise.datasets.images import check_resize_mode, load_image
from devise.errors import DataFormatError


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
    """

    #: short name stored in feature caches and fingerprints.
    name: str = "feature-extractor"
    #: ``(height, width)`` the backbone expects.
    input_size: tuple[int, int] = (224, 224)

    def __init__(self, *, batch_size: int = 32, device: str | None = None, resize: str = "crop"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = device
        self.resize = check_resize_mode(resize)
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
        # "crop" was the only mode before there was a choice: leaving it out
        # keeps the caches and saved models made then valid.
        return fingerprint if self.resize == "crop" else f"{fingerprint}|resize={self.resize}"

    @property
    def model(self):
        if self._model is None:
            with self._placement():
                self._model = self.build_model()
        return self._model

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
            lambda x: model(x, training=False),
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

    def extract_files(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        progress: Callable[[int, int], None] | bool = True,
    ) -> ExtractionResult:
        """Decode and embed image files, skipping (and reporting) bad ones.

        Args:
            paths: image files.
            progress: ``True`` for a progress bar on stderr, ``False`` for
                none, or a callback ``(done, total)``.
        """
        total = len(paths)
        report = progress_callback(progress, f"{self.name} features")
        features: list[np.ndarray] = []
        indices: list[int] = []
        failures: list[tuple[str, str]] = []
        batch: list[np.ndarray] = []
        batch_idx: list[int] = []

        def flush():
            if batch:
                features.append(self.extract(np.stack(batch)))
                indices.extend(batch_idx)
                batch.clear()
                batch_idx.clear()

        for i, path in enumerate(paths):
            try:
                batch.append(load_image(path, self.input_size, resize=self.resize))
                batch_idx.append(i)
            except DataFormatError as exc:
                failures.append((os.fspath(path), str(exc)))
            if len(batch) == self.batch_size:
                flush()
                report(i + 1, total)
        flush()
        report(total, total)
        feats = np.concatenate(features) if features else np.zeros((0, self.output_dim), np.float32)
        return ExtractionResult(feats, indices, failures)


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

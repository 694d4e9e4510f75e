"""Image and text encoders: CNN feature extractors (by backbone name), the feature cache, the text encoder and the projector.

Names load on first use: the Keras layers and extractors import TensorFlow,
while :mod:`devise.encoders.text_numpy` and :mod:`devise.encoders.keras_archive`
(a text query without TensorFlow) must not pay for it.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "EfficientNetLite0FeatureExtractor": "devise.encoders.efficientnet_lite",
    "build_efficientnet_lite0": "devise.encoders.efficientnet_lite",
    "build_efficientnet_lite0_classifier": "devise.encoders.efficientnet_lite",
    "load_efficientnet_lite0_weights": "devise.encoders.efficientnet_lite",
    "CacheCompaction": "devise.encoders.feature_cache",
    "CacheUpdate": "devise.encoders.feature_cache",
    "FeatureCache": "devise.encoders.feature_cache",
    "FeatureTable": "devise.encoders.feature_cache",
    "default_cache_path": "devise.encoders.feature_cache",
    "FeatureShards": "devise.encoders.feature_shards",
    "embed_from_shards": "devise.encoders.feature_shards",
    "ExtractionResult": "devise.encoders.feature_extractor",
    "FeatureBatch": "devise.encoders.feature_extractor",
    "FeatureExtractor": "devise.encoders.feature_extractor",
    "FeatureStore": "devise.encoders.feature_store",
    "RowInfo": "devise.encoders.feature_store",
    "KerasApplicationFeatureExtractor": "devise.encoders.keras_applications",
    "KerasModelFeatureExtractor": "devise.encoders.keras_applications",
    "application_names": "devise.encoders.keras_applications",
    "L2Normalize": "devise.encoders.projector",
    "LinearProjector": "devise.encoders.projector",
    "extractor_names": "devise.encoders.registry",
    "feature_extractor_from_config": "devise.encoders.registry",
    "make_feature_extractor": "devise.encoders.registry",
    "register_extractor": "devise.encoders.registry",
    "TEXT_ENCODER_KINDS": "devise.encoders.text_encoder",
    "TextEncoder": "devise.encoders.text_encoder",
    "NumpyTextEncoder": "devise.encoders.text_numpy",
    "load_torch_state_dict": "devise.encoders.torch_state_dict",
    "VGG16FeatureExtractor": "devise.encoders.vgg16",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'devise.encoders' has no attribute {name!r}")
    value = getattr(importlib.import_module(_NAMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

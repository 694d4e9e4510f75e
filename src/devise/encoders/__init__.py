"""Image and text encoders: CNN feature extractors (by backbone name), the feature cache, the text encoder and the projector."""

from devise.encoders.efficientnet_lite import (
    EfficientNetLite0FeatureExtractor,
    build_efficientnet_lite0,
    build_efficientnet_lite0_classifier,
    load_efficientnet_lite0_weights,
)
from devise.encoders.feature_cache import FeatureCache, FeatureTable, default_cache_path
from devise.encoders.feature_extractor import ExtractionResult, FeatureExtractor
from devise.encoders.projector import L2Normalize, LinearProjector
from devise.encoders.registry import (
    extractor_names,
    feature_extractor_from_config,
    make_feature_extractor,
    register_extractor,
)
from devise.encoders.text_encoder import TEXT_ENCODER_KINDS, TextEncoder
from devise.encoders.torch_state_dict import load_torch_state_dict
from devise.encoders.vgg16 import VGG16FeatureExtractor

__all__ = [
    "EfficientNetLite0FeatureExtractor",
    "ExtractionResult",
    "FeatureCache",
    "FeatureExtractor",
    "FeatureTable",
    "L2Normalize",
    "TEXT_ENCODER_KINDS",
    "TextEncoder",
    "LinearProjector",
    "VGG16FeatureExtractor",
    "build_efficientnet_lite0",
    "build_efficientnet_lite0_classifier",
    "default_cache_path",
    "extractor_names",
    "feature_extractor_from_config",
    "load_efficientnet_lite0_weights",
    "load_torch_state_dict",
    "make_feature_extractor",
    "register_extractor",
]

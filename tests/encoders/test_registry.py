import typing

import pytest

from devise.config import ImageEncoderConfig, load_config
from devise.encoders import (
    EfficientNetLite0FeatureExtractor,
    FeatureExtractor,
    VGG16FeatureExtractor,
    extractor_names,
    feature_extractor_from_config,
    make_feature_extractor,
    register_extractor,
    registry,
)
from devise.errors import ConfigError


def test_every_backbone_the_config_accepts_is_registered():
    backbones = typing.get_args(typing.get_type_hints(ImageEncoderConfig)["backbone"])
    assert set(backbones) <= set(extractor_names())


def test_a_backbone_is_built_from_its_name_and_options():
    vgg = make_feature_extractor("vgg16", weights=None, batch_size=4, resize="pad", allow_download=True)
    assert isinstance(vgg, VGG16FeatureExtractor)
    assert (vgg.weights, vgg.batch_size, vgg.resize, vgg.allow_download) == (None, 4, "pad", True)
    lite = make_feature_extractor("efficientnet_lite0", weights=None)
    assert isinstance(lite, EfficientNetLite0FeatureExtractor)
    assert lite.batch_size == EfficientNetLite0FeatureExtractor(None).batch_size  # the backbone's default


def test_a_config_section_names_the_same_extractor():
    overrides = ["image_encoder.backbone=vgg16", "image_encoder.weights=none", "image_encoder.batch_size=8"]
    config = load_config(None, overrides)
    extractor = feature_extractor_from_config(config.image_encoder)
    assert isinstance(extractor, VGG16FeatureExtractor)
    assert extractor.batch_size == 8
    assert extractor.fingerprint() == make_feature_extractor("vgg16", weights=None).fingerprint()


def test_an_unknown_backbone_names_the_registered_ones():
    with pytest.raises(
        ConfigError, match="unknown image backbone .resnet9.*efficientnet_lite0, keras_application, keras_model, vgg16"
    ):
        make_feature_extractor("resnet9")


def test_a_new_backbone_is_one_registration(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))

    class Tiny(VGG16FeatureExtractor):
        name = "tiny"

    register_extractor("tiny", Tiny)
    assert isinstance(make_feature_extractor("tiny", weights=None), FeatureExtractor)
    assert "tiny" in extractor_names()
    with pytest.raises(ValueError, match="already registered"):
        register_extractor("tiny", Tiny)
    register_extractor("tiny", VGG16FeatureExtractor, replace=True)
    assert type(make_feature_extractor("tiny", weights=None)) is VGG16FeatureExtractor


@pytest.mark.parametrize(
    ("backbone", "key", "value"),
    [
        ("vgg16", "layer", "fc1"),
        ("efficientnet_lite0", "pooling", "max"),
        ("vgg16", "application", "ResNet50"),
        ("efficientnet_lite0", "input_size", "64"),
        ("keras_model", "input_size", "64"),
    ],
)
def test_a_key_the_backbone_does_not_take_is_refused_not_ignored(backbone, key, value):
    config = load_config(None, [f"image_encoder.backbone={backbone}", f"image_encoder.{key}={value}"])
    with pytest.raises(ConfigError, match=f"image_encoder.{key}: backbone {backbone} does not take it"):
        feature_extractor_from_config(config.image_encoder)

"""keras_application and keras_model backbones: any keras.applications network by name, or a user's .keras file.

ImageNet weights cannot be downloaded here: the networks run with random
weights (``weights=None``) or weights files written by the test, at small
input sizes where the network allows.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from devise.config import load_config
from devise.encoders import feature_extractor_from_config, make_feature_extractor
from devise.encoders.keras_applications import (
    ApplicationPreprocessing,
    KerasApplicationFeatureExtractor,
    KerasModelFeatureExtractor,
    application_names,
)
from devise.errors import ConfigError, DataFormatError, MissingResourcesError

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)  # 32x32: the smallest most networks take


def test_the_keras_applications_are_offered_with_their_own_preprocessing():
    names = application_names()
    for name in ("VGG16", "VGG19", "ResNet50", "EfficientNetB0", "MobileNetV2", "InceptionV3", "ConvNeXtTiny"):
        assert name in names
    x = RNG.uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    for module in ("resnet", "mobilenet_v2", "vgg19"):
        expected = getattr(keras.applications, module).preprocess_input(x.copy())
        got = keras.ops.convert_to_numpy(ApplicationPreprocessing(module)(x))
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)


@pytest.mark.slow  # ResNet50's graph: ~15 s to build and trace on 2 cores
def test_a_pooled_application_at_a_small_input_size():
    extractor = make_feature_extractor(
        "keras_application", application="ResNet50", weights=None, input_size=(32, 32), batch_size=2
    )
    assert isinstance(extractor, KerasApplicationFeatureExtractor)
    assert extractor.input_size == (32, 32) and extractor.output_dim == 2048
    features = extractor.extract(IMAGES)
    assert features.shape == (3, 2048) and features.dtype == np.float32
    assert extractor.fingerprint() == "keras-resnet50-avg|none|32x32|2048"
    # The same network applied by hand (its preprocess_input, then the pooled trunk).
    trunk = extractor.model.get_layer("resnet50_trunk")
    by_hand = trunk(keras.applications.resnet.preprocess_input(IMAGES.astype(np.float32)))
    np.testing.assert_allclose(features, keras.ops.convert_to_numpy(by_hand), rtol=1e-4, atol=1e-4)


def test_a_named_layer_with_max_pooling_and_the_input_size_each_network_declares():
    extractor = KerasApplicationFeatureExtractor(
        "MobileNetV2", weights=None, layer="block_13_expand_relu", pooling="max", input_size=(32, 32)
    )
    assert extractor.extract(IMAGES).shape == (3, extractor.output_dim)
    assert extractor.name == "keras-mobilenetv2-block_13_expand_relu-max"
    assert KerasApplicationFeatureExtractor("InceptionV3", weights=None).input_size == (299, 299)
    assert KerasApplicationFeatureExtractor("EfficientNetB3", weights=None).input_size == (300, 300)
    assert KerasApplicationFeatureExtractor("VGG19", weights=None, layer="fc2").input_size == (224, 224)


def test_a_classifier_head_layer_needs_the_networks_own_input_size():
    extractor = KerasApplicationFeatureExtractor("VGG19", weights=None, layer="fc2", input_size=(32, 32))
    with pytest.raises(ConfigError, match="'fc2' is in VGG19's classifier head, which needs input_size 224x224"):
        extractor.extract(IMAGES)


def test_unknown_application_and_missing_name_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="'ResNet51' is not a keras.applications network; choose one of .*ResNet50"):
        KerasApplicationFeatureExtractor("ResNet51")
    with pytest.raises(ConfigError, match="needs the network's name"):
        make_feature_extractor("keras_application", weights=None)
    with pytest.raises(ConfigError, match="pooling"):
        KerasApplicationFeatureExtractor("ResNet50", pooling="sum")


def test_a_weights_file_is_loaded_and_named_by_its_content(tmp_path):
    network = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    path = tmp_path / "mine.weights.h5"
    network.save_weights(path)
    extractor = KerasApplicationFeatureExtractor("MobileNet", weights=str(path), input_size=(32, 32))
    random = KerasApplicationFeatureExtractor("MobileNet", weights=None, input_size=(32, 32))
    assert extractor.weights_id.startswith("sha256:") and random.weights_id == "none"
    assert extractor.fingerprint() != random.fingerprint()
    expected = network(keras.applications.mobilenet.preprocess_input(IMAGES.astype(np.float32)))
    np.testing.assert_allclose(extractor.extract(IMAGES), keras.ops.convert_to_numpy(expected), rtol=1e-4, atol=1e-4)
    with pytest.raises(MissingResourcesError, match="does not exist"):
        KerasApplicationFeatureExtractor("MobileNet", weights=str(tmp_path / "gone.h5")).fingerprint()


def test_a_config_section_builds_a_keras_application():
    config = load_config(
        None,
        [
            "image_encoder.backbone=keras_application",
            "image_encoder.application=EfficientNetB0",
            "image_encoder.input_size=32",
            "image_encoder.weights=none",
            "image_encoder.workers=3",
        ],
    )
    extractor = feature_extractor_from_config(config.image_encoder)
    assert (extractor.application, extractor.input_size, extractor.workers) == ("EfficientNetB0", (32, 32), 3)
    assert extractor.extract(IMAGES[:1]).shape == (1, 1280)


def _user_model(tmp_path):
    images = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(images)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5, name="embedding")(x)
    model = keras.Model(images, keras.layers.Dense(2, name="logits")(x))
    path = tmp_path / "mine.keras"
    model.save(path)
    return model, str(path)


def test_a_users_keras_model_gives_a_named_layers_features(tmp_path):
    model, path = _user_model(tmp_path)
    images = RNG.integers(0, 256, (4, 16, 16, 3)).astype(np.uint8)
    extractor = make_feature_extractor("keras_model", weights=path, layer="embedding")
    assert isinstance(extractor, KerasModelFeatureExtractor)
    assert extractor.input_size == (16, 16) and extractor.output_dim == 5
    expected = keras.Model(model.input, model.get_layer("embedding").output)(images.astype(np.float32))
    np.testing.assert_allclose(extractor.extract(images), keras.ops.convert_to_numpy(expected), rtol=1e-5, atol=1e-5)
    assert extractor.fingerprint().startswith("keras-model-embedding-avg|sha256:")
    conv = KerasModelFeatureExtractor(path, layer="conv", pooling="max")
    assert conv.extract(images).shape == (4, 4)
    with pytest.raises(ConfigError, match="has no layer 'fc9'"):
        KerasModelFeatureExtractor(path, layer="fc9").extract(images)


def test_avg_and_max_pooling_of_one_layer_have_different_fingerprints(tmp_path):
    def name(pooling):
        return KerasApplicationFeatureExtractor(
            "MobileNetV2", weights=None, layer="block_13_expand_relu", pooling=pooling
        ).name

    assert name("avg") != name("max")
    _, path = _user_model(tmp_path)
    avg, top = (KerasModelFeatureExtractor(path, layer="conv", pooling=p) for p in ("avg", "max"))
    assert avg.fingerprint() != top.fingerprint()


def test_mixed_precision_is_refused_for_a_keras_model(tmp_path):
    _, path = _user_model(tmp_path)
    with pytest.raises(ConfigError, match="mixed_precision: not supported for keras_model"):
        KerasModelFeatureExtractor(path, mixed_precision=True)


def test_a_bad_keras_model_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="needs the path of a .keras file"):
        make_feature_extractor("keras_model", weights="imagenet")
    with pytest.raises(MissingResourcesError, match="does not exist"):
        KerasModelFeatureExtractor(tmp_path / "gone.keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match="bad.keras: cannot load this Keras model"):
        _ = KerasModelFeatureExtractor(bad).input_size


def test_imagenet_weights_missing_from_the_keras_cache_are_not_downloaded_unless_allowed(tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    calls = []

    def fake_get_file(fname=None, origin=None, **kwargs):  # mock: no network here, and no download may start
        calls.append(fname)
        raise RuntimeError("Keras would fetch it now")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(file_utils, "get_file", fake_get_file)
    with pytest.raises(MissingResourcesError, match="image_encoder.allow_download=true") as info:
        _ = KerasApplicationFeatureExtractor("MobileNetV2", input_size=(32, 32)).output_dim
    assert calls == []  # refused before Keras was asked
    name = os.path.basename(str(info.value).split(" is not in the Keras cache")[0].split(": ")[-1])
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / name).write_bytes(b"cached")  # present: handed to Keras (which checks its hash)
    with pytest.raises(RuntimeError, match="Keras would fetch it now"):
        _ = KerasApplicationFeatureExtractor("MobileNetV2", input_size=(32, 32)).output_dim
    assert calls == [name]
    (tmp_path / "models" / name).unlink()
    with pytest.raises(RuntimeError, match="Keras would fetch it now"):  # allowed: Keras may download
        _ = KerasApplicationFeatureExtractor("MobileNetV2", input_size=(32, 32), allow_download=True).output_dim


def test_too_small_an_input_size_is_blamed_on_input_size():
    with pytest.raises(ConfigError, match="image_encoder.input_size: InceptionV3 cannot be built at 40x40"):
        _ = KerasApplicationFeatureExtractor("InceptionV3", weights=None, input_size=(40, 40)).output_dim

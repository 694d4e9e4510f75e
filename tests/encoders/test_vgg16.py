"""VGG16 fc7 features (random weights) and the weight-availability checks."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from PIL import Image

from devise.datasets.images import load_image
from devise.encoders.vgg16 import (
    VGG16_WEIGHTS_FILE,
    VGG16_WEIGHTS_URL,
    CaffeImagePreprocessing,
    VGG16FeatureExtractor,
    vgg16_weights_problem,
)
from devise.errors import MissingResourcesError


@pytest.fixture(scope="module")
def extractor():
    """The one VGG16 of this module: 138M random parameters (~550 MB)."""
    keras.utils.set_random_seed(0)
    ex = VGG16FeatureExtractor(weights=None, batch_size=2)
    _ = ex.model  # builds it once, here
    return ex


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def _expected_weights_path(home) -> str:
    return os.path.join(str(home), "models", VGG16_WEIGHTS_FILE)


def _write_jpeg(path, size, seed):
    rng = np.random.default_rng(seed)
    w, h = size
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(path, "JPEG")
    return str(path)


# -- features ------------------------------------------------------------------


def test_identity(extractor):
    assert extractor.output_dim == 4096
    assert extractor.input_size == (224, 224)
    assert extractor.weights is None
    fingerprint = extractor.fingerprint().lower()
    assert "vgg16" in fingerprint and "none" in fingerprint
    assert VGG16FeatureExtractor(weights="none").fingerprint() == extractor.fingerprint()
    assert VGG16FeatureExtractor(weights="imagenet").fingerprint() != extractor.fingerprint()


def test_extract_gives_float32_fc7_features(extractor):
    images = np.random.default_rng(1).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    features = extractor.extract(images)
    assert features.shape == (3, 4096)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()
    assert (features >= 0).all()  # fc2 ends in a ReLU
    # uint8 and float input agree; a batch split over several passes agrees with single images.
    np.testing.assert_allclose(extractor.extract(images.astype(np.float32)), features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(extractor.extract(images[1:2])[0], features[1], rtol=1e-4, atol=1e-4)


def test_extract_rejects_wrong_image_shape(extractor):
    with pytest.raises(ValueError, match="224"):
        extractor.extract(np.zeros((1, 100, 100, 3), np.uint8))
    with pytest.raises(ValueError):
        extractor.extract(np.zeros((224, 224, 3), np.uint8))


def test_extract_files_skips_a_corrupt_file_and_keeps_order(extractor, tmp_path):
    paths = [
        _write_jpeg(tmp_path / "wide.jpg", (300, 200), 2),
        str(tmp_path / "corrupt.jpg"),
        _write_jpeg(tmp_path / "tall.jpg", (100, 150), 3),
        _write_jpeg(tmp_path / "square.jpg", (224, 224), 4),
    ]
    with open(paths[1], "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not really a JPEG")

    result = extractor.extract_files(paths, progress=False)
    assert result.features.shape == (3, 4096)
    assert result.features.dtype == np.float32
    assert result.indices == [0, 2, 3]
    assert [p for p, _ in result.failures] == [paths[1]]
    assert "corrupt.jpg" in result.failures[0][1]
    # Rows are the good images, in input order.
    decoded = np.stack([load_image(paths[i], (224, 224)) for i in (0, 2, 3)])
    np.testing.assert_allclose(result.features, extractor.extract(decoded), rtol=1e-4, atol=1e-4)


# -- preprocessing ---------------------------------------------------------------


def test_caffe_preprocessing_matches_keras_vgg16_preprocess_input():
    rgb = np.random.default_rng(5).uniform(0, 255, (2, 7, 5, 3)).astype(np.float32)
    ours = keras.ops.convert_to_numpy(CaffeImagePreprocessing()(rgb))
    theirs = keras.applications.vgg16.preprocess_input(rgb.copy())
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    # Spelled out: BGR order, ImageNet means subtracted.
    np.testing.assert_allclose(ours[..., 0], rgb[..., 2] - 103.939, atol=1e-4)
    np.testing.assert_allclose(ours[..., 2], rgb[..., 0] - 123.68, atol=1e-4)


# -- weight availability ---------------------------------------------------------


def test_imagenet_weights_missing_names_path_and_how_to_get_them(keras_home):
    problem = vgg16_weights_problem("imagenet", allow_download=False)
    assert problem is not None
    assert _expected_weights_path(keras_home) in problem
    assert VGG16_WEIGHTS_URL in problem
    assert "allow_download" in problem


def test_imagenet_weights_present_or_downloadable(keras_home):
    assert vgg16_weights_problem("imagenet", allow_download=True) is None

    target = _expected_weights_path(keras_home)
    os.makedirs(os.path.dirname(target))
    open(target, "wb").close()  # an empty file does not count
    assert vgg16_weights_problem("imagenet", allow_download=False) is not None

    with open(target, "wb") as f:
        f.write(b"dummy weights")
    assert vgg16_weights_problem("imagenet", allow_download=False) is None


@pytest.mark.parametrize("weights", [None, "none"])
def test_random_weights_need_nothing(keras_home, weights):
    assert vgg16_weights_problem(weights, allow_download=False) is None


def test_local_weights_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    problem = vgg16_weights_problem(os.path.join("weights", "vgg.h5"), allow_download=True)
    assert problem is not None
    assert str(tmp_path / "weights" / "vgg.h5") in problem

    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "vgg.h5").write_bytes(b"x")
    assert vgg16_weights_problem(os.path.join("weights", "vgg.h5"), allow_download=False) is None


def test_build_model_without_weights_or_downloads_raises(keras_home):
    ex = VGG16FeatureExtractor(weights="imagenet", allow_download=False)
    with pytest.raises(MissingResourcesError) as info:
        ex.build_model()
    assert len(info.value.problems) == 1
    assert _expected_weights_path(keras_home) in str(info.value)
    with pytest.raises(MissingResourcesError):
        _ = ex.model  # the lazy property goes the same way


def test_build_model_with_missing_local_file_raises(tmp_path):
    missing = tmp_path / "nowhere.h5"
    with pytest.raises(MissingResourcesError, match="nowhere.h5"):
        VGG16FeatureExtractor(weights=str(missing)).build_model()


# -- weights identified by content (issue 8 item 10) -----------------------------


def test_local_weights_are_identified_by_content_not_by_name(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b, renamed = tmp_path / "a" / "vgg.h5", tmp_path / "b" / "vgg.h5", tmp_path / "b" / "other_name.h5"
    a.write_bytes(b"weights of run A")
    b.write_bytes(b"weights of run B")
    renamed.write_bytes(a.read_bytes())
    fa, fb = (VGG16FeatureExtractor(weights=str(p)).fingerprint() for p in (a, b))
    assert fa != fb
    assert VGG16FeatureExtractor(weights=str(renamed)).fingerprint() == fa
    assert "sha256:" in fa and "vgg.h5" not in fa

    # The same file rewritten with other bytes is other weights.
    a.write_bytes(b"weights of run A, fine-tuned")
    assert VGG16FeatureExtractor(weights=str(a)).fingerprint() not in (fa, fb)


def test_missing_local_weights_file_has_no_fingerprint(tmp_path):
    with pytest.raises(MissingResourcesError, match="nowhere.h5"):
        VGG16FeatureExtractor(weights=str(tmp_path / "nowhere.h5")).fingerprint()


def test_imagenet_fingerprint_names_a_file_that_is_not_the_official_one(keras_home):
    official = VGG16FeatureExtractor(weights="imagenet").fingerprint()
    assert official == "vgg16-fc7|imagenet|224x224|4096"  # to be downloaded (and hash-checked) by Keras
    target = _expected_weights_path(keras_home)
    os.makedirs(os.path.dirname(target))
    prints = []
    for content in (b"some other weights", b"yet other weights"):
        with open(target, "wb") as f:
            f.write(content)
        prints.append(VGG16FeatureExtractor(weights="imagenet").fingerprint())
    assert len({official, *prints}) == 3
    assert all("sha256:" in p for p in prints)

"""FeatureExtractor(resize=...): validated, used by extract_files, in the fingerprint only when not "crop"."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from devise.datasets.images import load_image
from devise.encoders.efficientnet_lite import EfficientNetLite0FeatureExtractor
from devise.encoders.feature_cache import default_cache_path
from devise.encoders.feature_extractor import FeatureExtractor
from devise.encoders.vgg16 import VGG16FeatureExtractor


class Pixels(FeatureExtractor):
    """The 8x8 image itself, flattened: features show exactly what was decoded."""

    name = "pixels"
    input_size = (8, 8)

    @property
    def output_dim(self) -> int:
        return 8 * 8 * 3

    def build_model(self):
        images = keras.Input((*self.input_size, 3))
        return keras.Model(images, keras.layers.Flatten()(images))


def _wide_image(path):
    """400x100: red left end, blue right end, grey between."""
    image = Image.new("RGB", (400, 100), (128, 128, 128))
    image.paste((230, 20, 20), (0, 0, 40, 100))
    image.paste((20, 20, 230), (360, 0, 400, 100))
    image.save(path)
    return str(path)


def test_default_is_crop_and_other_modes_are_rejected():
    assert Pixels().resize == "crop"
    assert Pixels(resize="pad").resize == "pad"
    with pytest.raises(ValueError, match=r"resize must be one of \('crop', 'pad'\), got 'stretch'"):
        Pixels(resize="stretch")


def test_extract_files_decodes_with_the_extractor_mode(tmp_path):
    path = _wide_image(tmp_path / "wide.png")
    for resize in ("crop", "pad"):
        features = Pixels(resize=resize).extract_files([path], progress=False).features
        want = load_image(path, (8, 8), resize=resize).astype(np.float32).reshape(1, -1)
        np.testing.assert_array_equal(features, want)
    cropped = Pixels().extract_files([path], progress=False).features.reshape(8, 8, 3)
    padded = Pixels(resize="pad").extract_files([path], progress=False).features.reshape(8, 8, 3)
    # The 4:1 image is 8x2 at rows 3-4 after pad; only pad keeps its red and blue ends.
    # (Downsampling 50 times blends the 40-pixel bands a little with the grey.)
    assert padded[4, 0, 0] - padded[4, 0, 2] > 100 and padded[4, 7, 2] - padded[4, 7, 0] > 100
    assert np.ptp(cropped[4, 0]) < 10 and np.ptp(cropped[4, 7]) < 10  # grey: both ends cut


def test_fingerprint_is_unchanged_for_crop_and_differs_for_pad(tmp_path):
    assert Pixels().fingerprint() == "pixels|unknown|8x8|192"  # as before resize existed
    assert Pixels(resize="crop").fingerprint() == Pixels().fingerprint()
    assert Pixels(resize="pad").fingerprint() == "pixels|unknown|8x8|192|resize=pad"
    # So the two modes never share a cache file.
    assert default_cache_path(tmp_path, Pixels()) != default_cache_path(tmp_path, Pixels(resize="pad"))


def test_backbones_pass_resize_through():
    # Neither builds its model (nor needs weights) until it extracts.
    lite = EfficientNetLite0FeatureExtractor(None, resize="pad")
    vgg = VGG16FeatureExtractor(weights=None, resize="pad")
    assert lite.resize == vgg.resize == "pad"
    assert lite.fingerprint() == "efficientnet-lite0|none|224x224|1280|resize=pad"
    assert vgg.fingerprint() == "vgg16-fc7|none|224x224|4096|resize=pad"
    assert EfficientNetLite0FeatureExtractor(None).fingerprint() == "efficientnet-lite0|none|224x224|1280"
    assert VGG16FeatureExtractor(weights=None).fingerprint() == "vgg16-fc7|none|224x224|4096"
    with pytest.raises(ValueError, match="resize must be one of"):
        EfficientNetLite0FeatureExtractor(None, resize="fit")
    with pytest.raises(ValueError, match="resize must be one of"):
        VGG16FeatureExtractor(weights=None, resize="fit")

"""FeatureExtractor.iter_features: Pillow-exact pixels, order kept, bad files skipped, decoding overlapping the model."""

from __future__ import annotations

import threading
import time

import keras
import numpy as np
import pytest
from PIL import Image

from devise.datasets.images import load_image
from devise.encoders import feature_extractor
from devise.encoders.feature_extractor import FeatureExtractor
from devise.errors import ConfigError


class Flatten(FeatureExtractor):
    """Every pixel of a 6x5 image as the feature: any change of a decoded pixel shows."""

    name = "flatten"
    input_size = (6, 5)

    @property
    def output_dim(self) -> int:
        return 6 * 5 * 3

    def build_model(self):
        images = keras.Input((*self.input_size, 3))
        return keras.Model(images, keras.layers.Flatten()(images))


def _photos(tmp_path, n: int, bad: tuple[int, ...] = ()) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        path = tmp_path / f"p{k:03d}.{'jpg' if k % 2 else 'png'}"
        if k in bad:
            path.write_bytes(b"not an image")
        else:
            size = (int(rng.integers(7, 40)), int(rng.integers(7, 40)))
            Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("resize", ["crop", "pad"])
def test_pixels_order_and_failures_are_those_of_the_serial_load_image(tmp_path, resize):
    paths = _photos(tmp_path, 23, bad=(4, 11))
    extractor = Flatten(batch_size=4, resize=resize, workers=3)
    batches = list(extractor.iter_features(paths))
    indices = [i for b in batches for i in b.indices]
    good = [i for i in range(23) if i not in (4, 11)]
    assert indices == good
    assert [p for b in batches for p, _ in b.failures] == [paths[4], paths[11]]
    assert all(len(b.indices) <= 4 for b in batches) and batches[-1].done == 23
    expected = np.stack([load_image(paths[i], (6, 5), resize=resize) for i in good]).reshape(len(good), -1)
    np.testing.assert_array_equal(np.concatenate([b.features for b in batches]), expected.astype(np.float32))

    result = extractor.extract_files(paths, progress=False)
    assert result.indices == good and [p for p, _ in result.failures] == [paths[4], paths[11]]
    np.testing.assert_array_equal(result.features, expected.astype(np.float32))


def test_decoded_images_in_flight_stay_bounded_and_decoding_overlaps_the_model(tmp_path, monkeypatch):
    paths = _photos(tmp_path, 40)
    started = []
    real_load = feature_extractor.load_image

    def counting_load(path, size, *, resize):
        started.append(path)
        return real_load(path, size, resize=resize)

    monkeypatch.setattr(feature_extractor, "load_image", counting_load)

    class Watched(Flatten):
        consumed = 0
        most_ahead = 0
        overlapped = False

        def extract(self, images):
            if self.consumed == 0:
                # While the first batch is in the model, the threads go on
                # decoding the next one (waited for, not timed).
                deadline = time.monotonic() + 30
                while len(started) < 2 * self.batch_size and time.monotonic() < deadline:
                    time.sleep(0.01)
                self.overlapped = len(started) >= 2 * self.batch_size
            self.most_ahead = max(self.most_ahead, len(started) - self.consumed)
            self.consumed += len(images)
            return super().extract(images)

    extractor = Watched(batch_size=4, workers=2)
    result = extractor.extract_files(paths, progress=False)
    assert len(result.indices) == 40
    assert extractor.overlapped
    assert extractor.most_ahead <= 2 * 4 + 2  # two batches plus one image per thread


def test_an_unexpected_error_in_a_worker_stops_the_run_and_no_thread_is_left(tmp_path, monkeypatch):
    paths = _photos(tmp_path, 12)

    def broken(path, size, *, resize):
        if path.endswith("p007.jpg"):
            raise MemoryError("out of memory")
        return load_image(path, size, resize=resize)

    monkeypatch.setattr(feature_extractor, "load_image", broken)
    before = threading.active_count()
    with pytest.raises(MemoryError):
        Flatten(batch_size=2, workers=2).extract_files(paths, progress=False)
    assert threading.active_count() == before


def test_mixed_precision_runs_on_a_gpu_and_is_refused_clearly_without_one():
    import tensorflow as tf

    extractor = Flatten(mixed_precision=True)
    assert extractor.fingerprint().endswith("|mixed_float16")
    images = np.zeros((1, 6, 5, 3), np.uint8)
    if tf.config.list_physical_devices("GPU"):  # not the case on CI; benchmarks/gpu_check.sh covers GPU machines
        features = extractor.extract(images)
        assert features.dtype == np.float32 and features.shape[0] == 1
    else:
        with pytest.raises(ConfigError, match="mixed_precision=true needs a GPU"):
            extractor.extract(images)

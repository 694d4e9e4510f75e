"""Every recipe choice trains through the config, beats chance, and reloads to the same model."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

import devise

# Each run combines several choices, so that four short runs cover them all.
RECIPES = {
    "gru-sampled-regularised": [
        "model.text_encoder=gru",
        "loss.negatives=sampled",
        "model.image_dropout=0.2",
        "trainer.weight_decay=0.0001",
        "model.standardize_features=true",
    ],
    # Hardest-negative training starts slowly (one violator per row): it gets more epochs.
    "bilstm-hardest": [
        "model.text_encoder=bilstm",
        "loss.negatives=hardest",
        "model.lstm_units=32",
        "trainer.epochs=8",
    ],
    "mean-float16": ["model.text_encoder=mean", "word_vectors.dtype=float16"],
    "regression": ["loss.kind=regression", "model.standardize_features=true"],
}


@pytest.fixture(scope="module")
def tiny_data(tiny_run, tmp_path_factory):
    """A writable copy of the tiny demo's shapes and feature cache."""
    base = tmp_path_factory.mktemp("recipes")
    for name in ("shapes", "cache"):
        shutil.copytree(tiny_run.parent / name, base / name)
    return base


def _train(tiny_overrides, tmp_path, data, extra):
    config = devise.load_config(
        "configs/demo.yaml",
        [
            *tiny_overrides(tmp_path),
            f"data.root={data / 'shapes'}",
            f"image_encoder.cache_dir={data / 'cache'}",
            "word_vectors.max_words=20000",
            "trainer.epochs=4",
            *extra,
        ],
    )
    return devise.Trainer(config, run_dir=str(tmp_path / "run"), verbose=False).run()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_trains_beats_chance_and_reloads(name, tiny_data, tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.chdir(pathlib.Path(__file__).resolve().parents[2])
    result = _train(tiny_overrides, tmp_path, tiny_data, RECIPES[name])
    metrics = result.metrics
    # 20 test images (chance R@10 is 50%): judge the R-sum, both directions.
    rsum = sum(metrics[d][k] for d in ("text_to_image", "image_to_text") for k in ("R@1", "R@5", "R@10"))
    chance = sum(metrics["chance"][d][k] for d in ("text_to_image", "image_to_text") for k in ("R@1", "R@5", "R@10"))
    assert rsum > 1.5 * chance, metrics
    config = devise.load_config(tmp_path / "run" / "config.yaml")
    encoder = result.model.text_encoder
    if name == "regression":
        assert encoder.kind == "mean" and not encoder.project and encoder.output_dim == 50
        history = json.loads((tmp_path / "run" / "history.json").read_text())
        assert len(history["ridge_penalty"]) == 6  # chosen on the validation split
    else:
        assert encoder.kind == config.model.text_encoder
    assert result.model.image_projector.standardize == config.model.standardize_features
    assert encoder.word_vectors_dtype == config.word_vectors.dtype
    # The saved model reproduces the trained one.
    loaded = devise.DeViSEModel.load(tmp_path / "run" / "model.keras")
    texts = ["two crimson discs", "a dog", "blue star"]
    np.testing.assert_allclose(loaded.embed_texts(texts), result.model.embed_texts(texts), atol=1e-6)


def test_pad_resize_gets_its_own_feature_cache_and_extractor():
    from devise.training.trainer import make_feature_extractor

    crop = make_feature_extractor(devise.load_config("configs/demo.yaml"))
    pad = make_feature_extractor(devise.load_config("configs/demo.yaml", ["image_encoder.resize=pad"]))
    assert pad.resize == "pad" and crop.resize == "crop"
    assert pad.fingerprint() != crop.fingerprint() and "resize=pad" in pad.fingerprint()


@pytest.mark.slow
def test_fine_tuned_vectors_move_training_words_only(tiny_data, tiny_overrides, tmp_path, monkeypatch):
    from devise.embeddings import load_offline_glove_50d

    monkeypatch.chdir(pathlib.Path(__file__).resolve().parents[2])
    result = _train(tiny_overrides, tmp_path, tiny_data, ["word_vectors.train=true", "trainer.epochs=2"])
    model = result.model
    table = np.asarray(model.text_encoder.word_vectors)
    row = {word: i + 2 for i, word in enumerate(model.words)}
    glove = load_offline_glove_50d()
    # "red" is in every red caption; "dog" and "coffee" never occur in the shapes captions.
    assert np.abs(table[row["red"]] - glove.get("red")).max() > 1e-4
    for unseen in ("dog", "coffee"):
        np.testing.assert_array_equal(table[row[unseen]], glove.get(unseen))


@pytest.mark.slow
def test_a_diverging_run_stops_with_a_clear_error(tiny_data, tiny_overrides, tmp_path, monkeypatch):
    from devise.encoders.feature_cache import FeatureCache

    monkeypatch.chdir(pathlib.Path(__file__).resolve().parents[2])
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    # One NaN feature makes every loss NaN. (Written into the cache file, it
    # would fail the file's checksums and be recomputed.)
    real = FeatureCache.get_or_compute

    def with_nan(self, *args, **kwargs):
        table = real(self, *args, **kwargs)
        table.features[:, 0] = np.nan
        return table

    monkeypatch.setattr(FeatureCache, "get_or_compute", with_nan)
    with pytest.raises(devise.DeviseError, match="training diverged"):
        _train(tiny_overrides, tmp_path, data, ["trainer.epochs=2"])

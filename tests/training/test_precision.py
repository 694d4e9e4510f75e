"""trainer.mixed_precision: layers compute in float16/bfloat16, the normalisation and the loss stay float32."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from devise.losses import HingeRankLoss
from devise.model import build_devise_model
from devise.training.precision import precision_policy


def _tiny_model():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(10)]
    model = build_devise_model(
        words=words,
        embedding_matrix=rng.normal(size=(len(words) + 2, 8)).astype(np.float32),
        image_dim=12,
        joint_dim=6,
        units=5,
        max_caption_length=4,
    )
    x = {
        "image_features": rng.normal(size=(8, 12)).astype(np.float32),
        "tokens": np.array([[f"w{i}" for i in rng.integers(len(words), size=4)] for _ in range(8)]),
    }
    y = np.stack([np.arange(8), np.arange(8)], axis=1).astype(np.int32)
    return model, tf.data.Dataset.from_tensor_slices((x, y)).batch(8), x


@pytest.mark.parametrize("mixed_precision", ["float16", "bfloat16"])
def test_mixed_policy_keeps_outputs_and_loss_in_float32(mixed_precision):
    keras.utils.set_random_seed(0)
    with precision_policy(mixed_precision):
        model, data, x = _tiny_model()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=HingeRankLoss(0.5))
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    compute = {"float16": "float16", "bfloat16": "bfloat16"}[mixed_precision]
    assert model.image_projector.dense.compute_dtype == compute
    assert model.text_encoder.sequence.compute_dtype == compute
    assert model.image_projector.dense.kernel.dtype == "float32"
    # Keras scales the float16 loss so small gradients do not underflow; bfloat16 needs no scaling.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (mixed_precision == "float16")

    out = model(x, training=False)
    for side in ("image", "text"):
        assert out[side].dtype == "float32"
        norms = np.linalg.norm(keras.ops.convert_to_numpy(out[side]), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    before = [w.copy() for w in model.get_weights()]
    # Dynamic loss scaling starts at 2**15 and skips the steps whose float16 gradients overflow,
    # halving the scale each time, so the first few steps may leave the weights as they are.
    history = model.fit(data, epochs=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and history.history["loss"][0] > 0
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize("text_encoder", ["lstm", "bilstm", "gru", "mean"])
def test_a_saved_mixed_precision_model_loads_as_trained(tmp_path, text_encoder):
    from devise.model import DeViSEModel

    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(10)]
    with precision_policy("float16"):
        model = DeViSEModel(
            build_devise_model(
                words=words, embedding_matrix=rng.normal(size=(12, 8)).astype(np.float32), image_dim=12,
                joint_dim=6, units=5, max_caption_length=4, text_encoder=text_encoder,
            )
        )  # fmt: skip
    model.save(tmp_path)
    loaded = DeViSEModel.load(tmp_path)
    assert loaded.text_encoder.projection.compute_dtype == "float16"
    features = rng.normal(size=(3, 12)).astype(np.float32)
    texts = ["w1 w2", "w3 zz"]
    np.testing.assert_array_equal(loaded.embed_image_features(features), model.embed_image_features(features))
    np.testing.assert_array_equal(loaded.embed_texts(texts), model.embed_texts(texts))
    assert loaded.embed_texts(texts).dtype == np.float32


def test_off_builds_float32_layers():
    with precision_policy("off"):
        model, _, x = _tiny_model()
    assert model.image_projector.dense.compute_dtype == "float32"
    assert model(x)["text"].dtype == "float32"
    with pytest.raises(ValueError, match="mixed_precision"), precision_policy("half"):
        pass


@pytest.mark.slow
def test_trainer_runs_with_mixed_precision(tiny_overrides, tmp_path, repo_root):
    from devise.training import Trainer, load_config

    overrides = [*tiny_overrides(tmp_path), "trainer.epochs=2", "trainer.mixed_precision=float16"]
    config = load_config(repo_root / "configs" / "demo.yaml", overrides)
    result = Trainer(config, run_dir=str(tmp_path / "run"), verbose=False).run()
    assert keras.mixed_precision.global_policy().name == "float32"
    assert all(np.isfinite(result.history["loss"]))
    assert result.model.keras_model.image_projector.dense.compute_dtype == "float16"
    assert result.model.embed_texts(["a red circle"]).dtype == np.float32
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics  # evaluated like any run

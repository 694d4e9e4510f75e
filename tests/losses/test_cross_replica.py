"""Two replicas give the one-device loss, gradients and fit() step: in-batch negatives span the global batch.

TensorFlow fixes its logical devices when it first initialises, so the two
replicas (two logical CPUs) live in a child process: this file run as a
script, which prints its measurements as JSON for the tests to check.
"""

import json
import os
import subprocess
import sys

import pytest

NEGATIVES = ("all", "hardest", "sampled")


def _measure() -> dict:
    """Per ``negatives``: the loss, gradients and weights after ``fit`` on one device and on two replicas."""
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from devise.losses import HingeRankLoss
    from devise.model import build_devise_model

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(20)]
    table = rng.normal(size=(len(words) + 2, 8)).astype(np.float32)
    n = 23  # batches of 16 and 7: the second splits unevenly (4 and 3 rows)
    x = {
        "image_features": rng.normal(size=(n, 12)).astype(np.float32),
        "tokens": np.array([[f"w{i}" for i in rng.integers(len(words), size=4)] for _ in range(n)]),
    }
    # Two captions per image; two pairs share a caption string on different images.
    captions = np.arange(n)
    captions[5] = captions[8]
    y = np.stack([np.arange(n) // 2, captions], axis=1).astype(np.int32)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    strategies = {"one": tf.distribute.get_strategy(), "two": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])}
    initial = None

    def model(strategy, negatives):
        nonlocal initial
        with strategy.scope():
            m = build_devise_model(
                words=words, embedding_matrix=table, image_dim=12, joint_dim=6, units=5, max_caption_length=4
            )
            initial = m.get_weights() if initial is None else initial
            m.set_weights(initial)
            m.compile(optimizer=keras.optimizers.SGD(0.5), loss=HingeRankLoss(0.5, negatives=negatives, seed=0))
        return m

    def loss_and_gradients(strategy, m):
        """The loss and its gradients as ``fit`` makes them: per replica, then summed across replicas."""

        @tf.function
        def step(x, y):
            def replica(x, y):
                with tf.GradientTape() as tape:
                    loss = m.compute_loss(x, y, m(x, training=True))
                return loss, [tf.convert_to_tensor(g) for g in tape.gradient(loss, m.trainable_variables)]

            return strategy.reduce("SUM", strategy.run(replica, args=(x, y)), axis=None)

        return [step(xb, yb) for xb, yb in strategy.experimental_distribute_dataset(data)]

    out = {}
    for negatives in NEGATIVES:
        got = {}
        for name, strategy in strategies.items():
            m = model(strategy, negatives)
            steps = loss_and_gradients(strategy, m)
            m.fit(data, epochs=1, verbose=0)  # two steps: 16 rows, then 7
            got[name] = {
                "losses": [float(loss) for loss, _ in steps],
                "gradients": [[g.numpy() for g in grads] for _, grads in steps],
                "weights": m.get_weights(),
            }
        one, two = got["one"], got["two"]
        out[negatives] = {
            "replicas": strategies["two"].num_replicas_in_sync,
            "losses_one": one["losses"],
            "losses_two": two["losses"],
            "gradient_diff": max(
                float(np.abs(a - b).max())
                for step_one, step_two in zip(one["gradients"], two["gradients"])
                for a, b in zip(step_one, step_two)
            ),
            "gradient_size": max(float(np.abs(g).max()) for grads in one["gradients"] for g in grads),
            "weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(one["weights"], two["weights"])),
            "weight_change": max(float(np.abs(a - b).max()) for a, b in zip(one["weights"], initial)),
        }
    return out


@pytest.fixture(scope="module")
def measured():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=900, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("negatives", NEGATIVES)
def test_two_replicas_give_the_one_device_loss_and_gradients(measured, negatives):
    m = measured[negatives]
    assert m["replicas"] == 2
    assert all(loss > 0 for loss in m["losses_one"])  # something to compare
    assert m["losses_two"] == pytest.approx(m["losses_one"], rel=1e-5, abs=1e-5)
    assert m["gradient_size"] > 1e-3
    assert m["gradient_diff"] <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("negatives", NEGATIVES)
def test_fit_under_mirrored_strategy_updates_weights_as_one_device(measured, negatives):
    # "sampled" too: every replica draws the global batch's keys from the same seed state.
    m = measured[negatives]
    assert m["weight_change"] > 1e-2
    assert m["weight_diff"] <= 1e-5


if __name__ == "__main__":
    print(json.dumps(_measure()))

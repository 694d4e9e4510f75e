"""Two worker processes (MultiWorkerMirroredStrategy over gRPC on 127.0.0.1) give the one-device loss and fit().

Each worker is this file run as a script with its own ``TF_CONFIG``; the
collectives go between the two processes, not through shared memory. Worker
``i`` feeds rows ``[8 i, 8 i + 8)`` of each global batch of 16, so the global
batch is the one-device batch in the same order and every ``negatives``
(``sampled`` too) must agree. Each worker also computes the one-device
reference itself, outside the strategy, and prints both as JSON.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

NEGATIVES = ("all", "hardest", "sampled")
GLOBAL_BATCH = 16


def _worker(index: int, ports: list[str]) -> dict:
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    )
    import tensorflow as tf

    # Collective ops are configured when the strategy is made: before any other TensorFlow op.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras
    import numpy as np

    from devise.losses import HingeRankLoss
    from devise.model import build_devise_model

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(20)]
    table = rng.normal(size=(len(words) + 2, 8)).astype(np.float32)
    n = 2 * GLOBAL_BATCH
    x = {
        "image_features": rng.normal(size=(n, 12)).astype(np.float32),
        "tokens": np.array([[f"w{i}" for i in rng.integers(len(words), size=4)] for _ in range(n)]),
    }
    y = np.stack([np.arange(n) // 2, np.arange(n)], axis=1).astype(np.int32)

    def shard(context):
        """This worker's half of every global batch, in the global batch's order."""
        share = context.get_per_replica_batch_size(GLOBAL_BATCH)
        rows = np.concatenate(
            [np.arange(start, start + share) + context.input_pipeline_id * share for start in range(0, n, GLOBAL_BATCH)]
        )
        return tf.data.Dataset.from_tensor_slices(({k: v[rows] for k, v in x.items()}, y[rows])).batch(share)

    def model(negatives):
        m = build_devise_model(
            words=words, embedding_matrix=table, image_dim=12, joint_dim=6, units=5, max_caption_length=4
        )
        m.set_weights(
            [np.random.default_rng(i).normal(size=w.shape).astype(w.dtype) * 0.3 for i, w in enumerate(m.get_weights())]
        )
        m.compile(optimizer=keras.optimizers.SGD(0.5), loss=HingeRankLoss(0.5, negatives=negatives, seed=0))
        return m

    def loss_and_gradients(m, strategy, x, y):
        @tf.function
        def step(x, y):
            def replica(x, y):
                with tf.GradientTape() as tape:
                    loss = m.compute_loss(x, y, m(x, training=True))
                return loss, [tf.convert_to_tensor(g) for g in tape.gradient(loss, m.trainable_variables)]

            return tf.nest.map_structure(
                lambda v: strategy.reduce("SUM", v, axis=None), strategy.run(replica, args=(x, y))
            )

        loss, gradients = step(x, y)
        return float(loss), [g.numpy() for g in gradients]

    out = {"replicas": strategy.num_replicas_in_sync}
    one_batch = ({k: v[:GLOBAL_BATCH] for k, v in x.items()}, y[:GLOBAL_BATCH])
    for negatives in NEGATIVES:
        reference = model(negatives)  # one device, outside the strategy
        loss_one, gradients_one = loss_and_gradients(reference, tf.distribute.get_strategy(), *one_batch)
        reference.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH), epochs=1, verbose=0)
        with strategy.scope():
            distributed = model(negatives)
        data = strategy.distribute_datasets_from_function(shard)
        loss_two, gradients_two = loss_and_gradients(distributed, strategy, *next(iter(data)))
        history = distributed.fit(strategy.distribute_datasets_from_function(shard), epochs=1, verbose=0)
        initial = model(negatives).get_weights()
        out[negatives] = {
            "loss_one": loss_one,
            "loss_workers": loss_two,
            "fit_loss": float(np.ravel(history.history["loss"])[0]),
            "gradient_diff": max(float(np.abs(a - b).max()) for a, b in zip(gradients_one, gradients_two)),
            "gradient_size": max(float(np.abs(g).max()) for g in gradients_one),
            "weight_diff": max(
                float(np.abs(a - b).max()) for a, b in zip(reference.get_weights(), distributed.get_weights())
            ),
            "weight_change": max(float(np.abs(a - b).max()) for a, b in zip(reference.get_weights(), initial)),
        }
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workers():
    ports = f"{_free_port()},{_free_port()}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(i), ports],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    results = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=900)
            assert proc.returncode == 0, stderr[-4000:]
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.mark.slow
@pytest.mark.parametrize("negatives", NEGATIVES)
def test_two_workers_give_the_one_device_loss_gradients_and_fit(workers, negatives):
    for result in workers:
        assert result["replicas"] == 2
        m = result[negatives]
        assert m["loss_one"] > 0 and m["gradient_size"] > 1e-3 and m["weight_change"] > 1e-2
        assert m["loss_workers"] == pytest.approx(m["loss_one"], rel=1e-5, abs=1e-5)
        assert m["gradient_diff"] <= 1e-5
        assert m["weight_diff"] <= 1e-5
        assert m["fit_loss"] > 0
    # Both workers hold the same weights (they compared against the same reference).
    assert workers[0][negatives]["weight_diff"] == pytest.approx(workers[1][negatives]["weight_diff"], abs=1e-6)


if __name__ == "__main__":
    print(json.dumps(_worker(int(sys.argv[1]), sys.argv[2].split(","))))

"""``devise-train`` with ``trainer.strategy=multi_worker_mirrored``: two worker processes end where one process does.

The slow tests start two real ``devise-train`` processes on 127.0.0.1, each
with its own ``TF_CONFIG`` (collectives over gRPC between the processes), on
the tiny demo with its default gradient clipping (``trainer.clip_norm`` 2.0,
which bites in the first epoch), and compares the chief's run directory with
a one-process run of the same config: same global batches, so the same
losses, validation scores, weights and test metrics up to float rounding.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from devise.errors import DeviseError
from devise.training.distribution import is_chief, make_strategy, replica_batches


def _shares(rows: int, batch: int, pipelines: int, pipeline: int, replicas: int) -> list[list[int]]:
    context = tf.distribute.InputContext(
        num_input_pipelines=pipelines, input_pipeline_id=pipeline, num_replicas_in_sync=replicas
    )
    data = replica_batches(tf.data.Dataset.range(rows).batch(batch), context)
    return [share.numpy().tolist() for share in data]


def test_each_worker_keeps_its_replicas_contiguous_shares_of_every_global_batch():
    # 11 rows in batches of 8 and 3; 2 workers; the last batch splits 2 + 1. 10 rows on 4 replicas: 3, 3, 2, 2.
    assert _shares(11, 8, pipelines=2, pipeline=0, replicas=2) == [[0, 1, 2, 3], [8, 9]]
    assert _shares(11, 8, pipelines=2, pipeline=1, replicas=2) == [[4, 5, 6, 7], [10]]
    # 2 workers with 2 replicas each: worker 1 holds replicas 2 and 3, one share each per batch.
    assert _shares(10, 10, pipelines=2, pipeline=1, replicas=4) == [[6, 7], [8, 9]]
    assert _shares(10, 10, pipelines=2, pipeline=0, replicas=4) == [[0, 1, 2], [3, 4, 5]]
    # One worker, one replica: the batches as they are.
    assert _shares(5, 2, pipelines=1, pipeline=0, replicas=1) == [[0, 1], [2, 3], [4]]


def test_strategy_names():
    assert is_chief(make_strategy("off"))
    with pytest.raises(DeviseError, match="trainer.strategy: unknown strategy 'ring'"):
        make_strategy("ring")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_process(tiny_run, tiny_overrides, tmp_path_factory, repo_root):
    """(overrides, the one-process TrainResult) of the tiny demo: its images and feature cache, 2 epochs."""
    from devise.training import Trainer, load_config

    base = tmp_path_factory.mktemp("multi_worker")
    overrides = [
        *tiny_overrides(tiny_run.parent),
        f"output_dir={base}/runs",
        "trainer.epochs=2",
        "word_vectors.max_words=5000",
    ]
    config = load_config(repo_root / "configs" / "demo.yaml", overrides)
    return overrides, Trainer(config, run_dir=str(base / "one"), verbose=False).run()


def _start_workers(overrides: list[str], run_dir, repo_root) -> list[subprocess.Popen]:
    """Two ``devise-train`` processes, workers 0 and 1 of one TF_CONFIG cluster on 127.0.0.1."""
    ports = [_free_port(), _free_port()]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    procs = []
    for index in range(2):
        tf_config = {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
        command = [sys.executable, "-m", "devise.cli.train", "--config", str(repo_root / "configs" / "demo.yaml")]
        command += [*overrides, "trainer.strategy=multi_worker_mirrored", "--run-dir", str(run_dir)]
        procs.append(
            subprocess.Popen(
                command,
                env={**env, "TF_CONFIG": json.dumps(tf_config)},
                cwd=repo_root,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _finish(procs: list[subprocess.Popen]) -> list[tuple[str, str]]:
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=600))
            assert proc.returncode == 0, outputs[-1][1][-4000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


def _assert_same_run(run_dir, one) -> None:
    from devise.model import DeViSEModel

    history = json.loads((run_dir / "history.json").read_text())
    for key in ("loss", "val_loss", "val_rsum"):
        np.testing.assert_allclose(history[key], one.history[key], rtol=1e-5, atol=1e-5, err_msg=key)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for direction in ("text_to_image", "image_to_text"):
        for key in ("R@1", "R@5", "R@10", "medr"):
            assert metrics[direction][key] == pytest.approx(one.metrics[direction][key], abs=1e-6)
    trained = DeViSEModel.load(run_dir).keras_model.get_weights()
    reference = one.model.keras_model.get_weights()
    assert max(float(np.abs(a - b).max()) for a, b in zip(trained, reference)) <= 1e-5


@pytest.mark.slow
def test_two_devise_train_workers_end_where_one_process_does(one_process, tmp_path, repo_root):
    overrides, one = one_process
    two = tmp_path / "two"
    outputs = _finish(_start_workers(overrides, two, repo_root))

    # The chief (worker 0) wrote the run directory; worker 1 wrote a temporary copy and removed it.
    assert (two / "run_complete.json").is_file() and not (two / "resume").exists()
    scratch = re.search(r"this worker's copy goes to (\S+) and is removed", outputs[1][1])
    assert scratch and not os.path.exists(scratch.group(1)), outputs[1][1][-2000:]
    assert "this worker's copy" not in outputs[0][1] and "worker 0: the chief" in outputs[0][1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]
    _assert_same_run(two, one)


@pytest.mark.slow
def test_killed_workers_resume_from_the_chiefs_checkpoint(one_process, tmp_path, repo_root):
    """Both workers SIGKILLed once the chief has a checkpoint; rerun, every worker resumes from it."""
    overrides, one = one_process
    run = tmp_path / "run"
    procs = _start_workers(overrides, run, repo_root)
    checkpoint = run / "resume" / "checkpoint.h5"
    try:
        deadline = time.monotonic() + 600
        while not checkpoint.exists() and time.monotonic() < deadline and procs[0].poll() is None:
            time.sleep(0.05)
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()
    assert checkpoint.exists() and not (run / "run_complete.json").exists()

    outputs = _finish(_start_workers(overrides, run, repo_root))
    resumed = [re.search(r"resuming from the checkpoint written after epoch (\d+) ", stderr) for _, stderr in outputs]
    assert all(resumed), outputs[1][1][-2000:]
    assert {m.group(1) for m in resumed} <= {"1", "2"} and len({m.group(1) for m in resumed}) == 1
    print(f"both workers resumed after epoch {resumed[0].group(1)} of 2")
    assert (run / "run_complete.json").is_file() and not (run / "resume").exists()
    _assert_same_run(run, one)

"""An interrupted training run, rerun with the same command and --run-dir, continues and ends as an uninterrupted one.

Tolerance: on CPU a resumed run has been bit-identical to an uninterrupted
one in every measurement (same losses, same metrics); the tests allow 1e-5
on the per-epoch losses and validation scores and require the same final
metrics, so a harmless change in floating-point order would show up as a
loss difference first.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import pytest

import devise
from devise.training import resume as resume_module
from devise.training.resume import CHECKPOINT_FILE, CheckpointError
from devise.training.run_directory import COMPLETE_FILE


def _assert_same_run(run_dir, reference_dir):
    history = json.loads((run_dir / "history.json").read_text())
    expected = json.loads((reference_dir / "history.json").read_text())
    assert history.keys() == expected.keys()
    for key in expected:
        assert history[key] == pytest.approx(expected[key], abs=1e-5), key
    metrics = json.loads((run_dir / "metrics.json").read_text())
    reference = json.loads((reference_dir / "metrics.json").read_text())
    assert metrics == reference


def _checkpoint_epoch(path) -> int:
    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs["epoch"])
    except (OSError, KeyError):
        return 0


@pytest.mark.slow
def test_sigkilled_devise_train_resumes_to_the_uninterrupted_result(tiny_run, tiny_overrides, tmp_path, repo_root):
    """The real thing: devise-train is killed with SIGKILL mid-run and rerun with the same command."""
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "devise.cli.train", "--config", str(repo_root / "configs" / "demo.yaml"),
        "--run-dir", str(run), *tiny_overrides(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    checkpoint = run / CHECKPOINT_FILE
    with open(tmp_path / "first.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while _checkpoint_epoch(checkpoint) < 3 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        killed_after = _checkpoint_epoch(checkpoint)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    assert 3 <= killed_after < 8 and not (run / COMPLETE_FILE).exists()

    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = _resumed_from(second.stdout + second.stderr)  # the kill may land after a later checkpoint
    assert resumed >= killed_after
    assert f"Epoch {resumed}/8" not in second.stdout and f"Epoch {resumed + 1}/8" in second.stdout
    _assert_same_run(run, tiny_run)
    assert (run / COMPLETE_FILE).exists() and not (run / "resume").exists()


def _resumed_from(output: str) -> int:
    marker = "resuming from the checkpoint written after epoch "
    assert marker in output, output[-3000:]
    return int(output.split(marker, 1)[1].split()[0])


@pytest.fixture(scope="module")
def noisy_recipe(tiny_overrides, repo_root):
    """A recipe with every source of randomness: dropout on both sides, sampled negatives, weight decay."""

    def config(base, **extra):
        overrides = [
            *tiny_overrides(base),
            "trainer.epochs=4",
            "model.image_dropout=0.2",
            "model.text_dropout=0.1",
            "loss.negatives=sampled",
            "trainer.weight_decay=0.01",
            f"image_encoder.cache_dir={base.parent}/shared_cache",
        ]
        overrides += [f"{k}={v}" for k, v in extra.items()]
        return devise.load_config(repo_root / "configs" / "demo.yaml", overrides)

    return config


@pytest.fixture(scope="module")
def interrupted_run(noisy_recipe, tmp_path_factory, monkeypatch_module):
    """(uninterrupted reference run, a copy of a run stopped by Ctrl-C after epoch 2) of the noisy recipe."""
    base = tmp_path_factory.mktemp("resume")
    devise.Trainer(noisy_recipe(base / "a"), run_dir=str(base / "reference"), verbose=False).run()
    original = resume_module.TrainingCheckpoint.on_epoch_end

    def stop_after_second(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch + 1 == 2:
            raise KeyboardInterrupt

    monkeypatch_module.setattr(resume_module.TrainingCheckpoint, "on_epoch_end", stop_after_second)
    log = io.StringIO()
    with pytest.raises(KeyboardInterrupt), contextlib.redirect_stderr(log):
        devise.Trainer(noisy_recipe(base / "a"), run_dir=str(base / "stopped"), verbose=True).run()
    (base / "stopped.log").write_text(log.getvalue())
    monkeypatch_module.undo()
    return base / "reference", base / "stopped", base


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def test_ctrl_c_says_how_to_resume(interrupted_run):
    _, stopped, base = interrupted_run
    last = (base / "stopped.log").read_text().strip().splitlines()[-1]
    assert last == f"interrupted; resume with: devise-train --config {stopped / 'config.yaml'} --run-dir {stopped}"


def test_every_random_state_is_restored(interrupted_run, noisy_recipe, tmp_path):
    reference, stopped, base = interrupted_run
    assert _checkpoint_epoch(stopped / CHECKPOINT_FILE) == 2
    run = shutil.copytree(stopped, tmp_path / "run")
    devise.Trainer(noisy_recipe(base / "a"), run_dir=str(run), verbose=False).run()
    _assert_same_run(run, reference)


def test_a_run_killed_after_its_last_epoch_finishes_without_training(interrupted_run, noisy_recipe, tmp_path):
    """Killed after the final checkpoint but before the model was saved: the rerun only evaluates and saves."""
    _, stopped, base = interrupted_run
    run = shutil.copytree(stopped, tmp_path / "run")
    trainer = devise.Trainer(noisy_recipe(base / "a"), run_dir=str(run), verbose=False)
    state = resume_module.read_checkpoint(str(run / CHECKPOINT_FILE), trainer._config_hash)
    state.epoch = 4  # as if written after the last of the 4 epochs
    resume_module.write_checkpoint(str(run / CHECKPOINT_FILE), state, trainer._config_hash)
    result = trainer.run()
    assert result.history == state.history and len(result.history["loss"]) == 2  # no epoch was trained
    assert (run / COMPLETE_FILE).exists() and not (run / "resume").exists()


def test_a_checkpoint_of_another_config_is_refused_before_anything_is_overwritten(
    interrupted_run, noisy_recipe, tmp_path
):
    _, stopped, base = interrupted_run
    run = shutil.copytree(stopped, tmp_path / "run")
    before = (run / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match="different config"):
        devise.Trainer(
            noisy_recipe(base / "a", **{"trainer.learning_rate": 0.01}), run_dir=str(run), verbose=False
        ).run()
    assert (run / "config.yaml").read_text() == before


def test_a_damaged_checkpoint_is_refused(interrupted_run, noisy_recipe, tmp_path):
    _, stopped, base = interrupted_run
    run = shutil.copytree(stopped, tmp_path / "run")
    with h5py.File(run / CHECKPOINT_FILE, "r+") as f:
        data = f["state"]["1"][()]
        data.flat[0] += 1.0
        f["state"]["1"][...] = data
    with pytest.raises(CheckpointError, match="damaged.*resume/"):
        devise.Trainer(noisy_recipe(base / "a"), run_dir=str(run), verbose=False).run()
    (run / CHECKPOINT_FILE).write_bytes((stopped / CHECKPOINT_FILE).read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot be read"):
        devise.Trainer(noisy_recipe(base / "a"), run_dir=str(run), verbose=False).run()


def test_the_cli_reports_a_bad_checkpoint_in_one_line(interrupted_run, noisy_recipe, tmp_path, capsys):
    from devise.cli.train import main

    _, stopped, base = interrupted_run
    run = shutil.copytree(stopped, tmp_path / "run")
    (run / CHECKPOINT_FILE).write_bytes(b"not hdf5")
    config = tmp_path / "config.yaml"
    devise.training.config.save_config(noisy_recipe(base / "a"), config)
    assert main(["--config", str(config), "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert "cannot be read" in err and "Traceback" not in err and len(err.splitlines()) == 1

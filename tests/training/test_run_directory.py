"""A run directory counts only once its run finished; a finished one is never trained into again."""

from __future__ import annotations

import json
import shutil

import pytest

import devise
from devise.cli.classify import main as classify_main
from devise.cli.eval import main as eval_main
from devise.search.engine import SearchEngine
from devise.training.run_directory import (
    COMPLETE_FILE,
    check_directory_writable,
    check_run_dir_reusable,
    create_run_directory,
)


def test_a_finished_run_is_marked_complete_last(tiny_run):
    marker = json.loads((tiny_run / COMPLETE_FILE).read_text())
    assert {"config.yaml", "model.keras", "metrics.json"} <= set(marker["files"])
    newest = max((p.stat().st_mtime_ns, p.name) for p in tiny_run.iterdir() if p.is_file())
    assert newest[1] == COMPLETE_FILE


def test_a_finished_run_directory_is_not_trained_into_again(tiny_run, tiny_overrides, tmp_path, repo_root):
    config = devise.load_config(repo_root / "configs" / "demo.yaml", tiny_overrides(tmp_path))
    before = {p.name: p.stat().st_mtime_ns for p in tiny_run.iterdir()}
    with pytest.raises(devise.DeviseError, match="already holds a finished run"):
        devise.Trainer(config, run_dir=str(tiny_run), verbose=False).run()
    assert {p.name: p.stat().st_mtime_ns for p in tiny_run.iterdir()} == before


def test_an_unfinished_run_is_refused_by_every_reader(tiny_run, tmp_path, capsys):
    """As a run killed half-way: the new config.yaml beside an older model.keras must not be read."""
    run = shutil.copytree(tiny_run, tmp_path / "run")
    (run / COMPLETE_FILE).unlink()
    assert eval_main(["--run", str(run), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "did not finish" in err and len(err.splitlines()) == 1
    with pytest.raises(devise.DeviseError, match="did not finish"):
        SearchEngine.load(run)
    photo = next((tiny_run.parent / "shapes" / "dataset" / "red_circle").iterdir())
    assert classify_main(["--run", str(run), str(photo), "--labels", "red circle,blue star"]) == 1
    assert "did not finish" in capsys.readouterr().err


def test_a_run_directory_cannot_be_made_under_a_regular_file(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for path in (blocker, blocker / "runs", blocker / "runs" / "deeper"):
        with pytest.raises(devise.DeviseError, match="not a folder") as info:
            create_run_directory(path, "demo")
        assert str(blocker) in str(info.value) and "\n" not in str(info.value)
        with pytest.raises(devise.DeviseError, match="not a folder"):
            check_directory_writable(path)
    check_directory_writable(tmp_path / "new" / "runs")  # missing folders are fine: they are made
    assert not (tmp_path / "new").exists()


def test_a_finished_run_check_also_refuses_an_impossible_run_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(devise.DeviseError, match="not a folder"):
        check_run_dir_reusable(blocker / "run")


def test_a_run_directory_cannot_be_made_in_a_read_only_folder(locked_folder):
    locked = locked_folder
    for call in (lambda: create_run_directory(locked, "demo"), lambda: check_directory_writable(locked / "runs")):
        with pytest.raises(devise.DeviseError, match="not writable") as info:
            call()
        assert str(locked) in str(info.value)


def test_an_interrupted_run_is_refused_with_the_command_that_resumes_it(tiny_run, tmp_path, capsys):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    for name in (COMPLETE_FILE, "model.keras", "model.json"):  # as a run stopped after an epoch
        (run / name).unlink()
    (run / "resume").mkdir()
    (run / "resume" / "checkpoint.h5").write_bytes(b"a checkpoint")
    resume = f"devise-train --config {run / 'config.yaml'} --run-dir {run}"
    assert eval_main(["--run", str(run), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "did not finish (interrupted, or still running)" in err and err.endswith(resume)
    with pytest.raises(devise.DeviseError, match="resume it with devise-train"):
        SearchEngine.load(run)

"""A run directory counts only once its run finished; a finished one is never trained into again."""

from __future__ import annotations

import json
import shutil

import pytest

import devise
from devise.cli.classify import main as classify_main
from devise.cli.eval import main as eval_main
from devise.search.engine import SearchEngine
from devise.training.run_directory import COMPLETE_FILE


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

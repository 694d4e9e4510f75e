"""The zero-shot experiment end to end (devise-train on class folders) and devise-classify."""

from __future__ import annotations

import json
import shutil

import pytest

from devise.cli.classify import main as classify_main
from devise.cli.train import main as train_main

UNSEEN = ["blue_star", "red_cross"]


@pytest.fixture(scope="module")
def zeroshot_run(tiny_run, tmp_path_factory, repo_root):
    """A zero-shot run on the tiny demo's shape images as class folders (8 per class), 2 classes unseen."""
    base = tmp_path_factory.mktemp("zeroshot")
    shutil.copytree(tiny_run.parent / "cache", base / "cache")
    args = [
        "--config",
        str(repo_root / "configs" / "zeroshot.yaml"),
        "--run-dir",
        str(base / "run"),
        f"data.root={tiny_run.parent / 'shapes' / 'dataset'}",
        f"zeroshot.unseen=[{', '.join(UNSEEN)}]",
        "image_encoder.resize=crop",  # the tiny run's cached features
        f"image_encoder.cache_dir={base / 'cache'}",
        "zeroshot.epochs=60",
    ]
    assert train_main(args) == 0
    return base / "run"


@pytest.mark.slow
def test_zeroshot_run_prints_and_writes_every_method(zeroshot_run, capsys):
    result = json.loads((zeroshot_run / "zeroshot.json").read_text())
    assert list(result["methods"]) == ["devise", "conse", "softmax", "random_vectors"]
    for metrics in result["methods"].values():
        assert {f"{s}_hit@{k}" for s in ("unseen", "all", "seen") for k in (1, 2, 5, 10)} <= set(metrics)
    assert result["chance"]["unseen_hit@1"] == 50.0 and result["chance"]["all_hit@1"] == 5.0
    assert result["classes"]["unseen"] == sorted(UNSEEN) and len(result["classes"]["seen"]) == 18
    assert result["label_words"]["blue_star"] == ["blue", "star"]
    # The softmax cannot name a class it never trained on.
    assert result["methods"]["softmax"]["all_hit@1"] == 0.0
    # DeViSE reaches unseen classes through their label vectors (seen here: 100 vs chance 50).
    assert result["methods"]["devise"]["unseen_hit@1"] > result["chance"]["unseen_hit@1"]
    for name in ("config.yaml", "metrics.json", "model.keras", "model.json", "data_report.json", "history.json"):
        assert (zeroshot_run / name).is_file(), name


@pytest.mark.slow
def test_classify_with_a_label_trained_and_a_caption_trained_run(zeroshot_run, tiny_run, capsys):
    photos = sorted((tiny_run.parent / "shapes" / "dataset" / "blue_star").iterdir())[:2]
    labels = "blue star,red cross,yellow circle,green square"
    for run in (zeroshot_run, tiny_run):
        assert classify_main(["--run", str(run), *map(str, photos), "--labels", labels, "-k", "4", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert [r["image"] for r in out["results"]] == [str(p) for p in photos]
        for result in out["results"]:
            assert sorted(h["label"] for h in result["labels"]) == sorted(labels.split(","))
            assert result["labels"][0]["label"] == "blue star", (run.name, result)

    # A label with no known word is a usage error (exit 2) naming it; a partly unknown one is reported.
    assert classify_main(["--run", str(zeroshot_run), str(photos[0]), "--labels", "qqzzx,dog"]) == 2
    assert "qqzzx" in capsys.readouterr().err
    assert classify_main(["--run", str(zeroshot_run), str(photos[0]), "--labels", "qqzzx dog,cat"]) == 0
    captured = capsys.readouterr()
    assert "qqzzx" in captured.err and "dog" in captured.out
    # A photo that cannot be read is skipped and reported (exit 1); the others are still classified.
    assert classify_main(["--run", str(zeroshot_run), str(photos[0]), "/nonexistent.jpg", "--labels", "cat,dog"]) == 1
    captured = capsys.readouterr()
    assert "/nonexistent.jpg" in captured.err and str(photos[0]) in captured.out
    assert classify_main(["--run", str(zeroshot_run), "/nonexistent.jpg", "--labels", "cat,dog"]) == 1
    assert "/nonexistent.jpg" in capsys.readouterr().err


@pytest.mark.slow
def test_devise_eval_explains_that_a_zeroshot_run_has_no_caption_split(zeroshot_run, capsys):
    from devise.cli.eval import main as eval_main

    assert eval_main(["--run", str(zeroshot_run), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "zeroshot.json" in err and len(err.splitlines()) == 1


def test_a_class_without_a_word_vector_stops_the_run_before_any_feature(tmp_path, repo_root, capsys):
    from PIL import Image

    for name in ("dog", "qqzzx_wwvvx"):
        for i in range(3):
            (tmp_path / "classes" / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (i * 50, 0, 0)).save(tmp_path / "classes" / name / f"{i}.png")
    args = [
        "--config",
        str(repo_root / "configs" / "zeroshot.yaml"),
        "--run-dir",
        str(tmp_path / "run"),
        f"data.root={tmp_path / 'classes'}",
        f"image_encoder.cache_dir={tmp_path / 'cache'}",
    ]
    assert train_main(args) == 1
    err = capsys.readouterr().err
    assert "qqzzx_wwvvx" in err and "labels" in err
    assert not (tmp_path / "cache").exists()  # stopped before extracting anything

"""``devise-extract``: a folder or a config's dataset into the feature cache the Trainer reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from devise.cli.extract import main
from devise.config import load_config
from devise.datasets.report import DataReport
from devise.encoders import FeatureCache, default_cache_path, feature_extractor_from_config
from devise.training.trainer import Trainer


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A user's own small .keras model (16x16 in, 4-d features): fast, and a real backbone of the CLI."""
    images = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(keras.layers.Rescaling(1 / 255)(images))
    model = keras.Model(images, keras.layers.GlobalAveragePooling2D(name="features")(x))
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return str(path)


def _photos(folder, n: int, bad: int | None = None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for k in range(n):
        path = folder / f"photo{k}.png"
        if k == bad:
            path.write_bytes(b"broken")
        else:
            Image.fromarray(rng.integers(0, 256, (20 + k, 24, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _backbone(model: str) -> list[str]:
    return ["image_encoder.backbone=keras_model", f"image_encoder.weights={model}", "image_encoder.batch_size=2"]


def test_a_folder_into_a_cache_then_nothing_more_to_do(tmp_path, tiny_model, capsys):
    photos = _photos(tmp_path / "photos", 5, bad=3)
    out = tmp_path / "features.h5"
    args = ["--images", str(tmp_path / "photos"), "--out", str(out), "--json", *_backbone(tiny_model)]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["images"], summary["extracted"], summary["cached"], summary["skipped"]) == (5, 4, 0, 1)
    assert summary["failures"][0]["path"] == photos[3] and "cannot decode" in summary["failures"][0]["reason"]
    assert summary["images_per_second"] > 0 and summary["cache"] == str(out)

    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["extracted"], again["cached"], again["skipped"]) == (0, 4, 1)
    extractor = feature_extractor_from_config(load_config(None, _backbone(tiny_model)).image_encoder)
    cached = FeatureCache(out, extractor.fingerprint()).read()
    assert sorted(cached) == ["photo0.png", "photo1.png", "photo2.png", "photo4.png"]


def test_progress_and_the_summary_line(tmp_path, tiny_model, capsys):
    _photos(tmp_path / "photos", 3)
    out = tmp_path / "f.h5"
    assert main(["--images", str(tmp_path / "photos"), "--out", str(out), *_backbone(tiny_model)]) == 0
    captured = capsys.readouterr()
    assert f"{out}: 3 images: 3 extracted (" in captured.out and "images/s" in captured.out
    assert "3/3" in captured.err and "/s" in captured.err  # the bar: count, rate, then ETA or time


def test_a_config_fills_the_cache_the_trainer_reads(tmp_path, tiny_model, capsys):
    photos = _photos(tmp_path / "photos", 4)
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text(
        "".join(json.dumps({"image": p, "caption": f"photo number {k}"}) + "\n" for k, p in enumerate(photos))
    )
    overrides = [
        "data.dataset=manifest",
        f"data.annotations={manifest}",
        f"image_encoder.cache_dir={tmp_path / 'cache'}",
        *_backbone(tiny_model),
    ]
    assert main(["--json", "--config", _yaml(tmp_path), *overrides]) == 0
    summary = json.loads(capsys.readouterr().out)
    config = load_config(_yaml(tmp_path), overrides)
    extractor = feature_extractor_from_config(config.image_encoder)
    assert summary["cache"] == str(default_cache_path(tmp_path / "cache", extractor))
    assert summary["extracted"] == 4

    # The Trainer finds every image in that cache: nothing to compute.
    trainer = Trainer(config, verbose=True)
    report = DataReport()
    features = trainer.image_features(trainer.load_records(report), report)
    assert len(features) == 4
    assert "(0 computed, 4 from cache" in capsys.readouterr().err


def _yaml(tmp_path) -> str:
    path = tmp_path / "extract.yaml"
    path.write_text("name: extract-test\n")
    return str(path)


def test_bad_input_is_one_line_and_a_failing_exit_code(tmp_path, tiny_model, capsys):
    assert main(["--images", str(tmp_path / "nowhere"), *_backbone(tiny_model)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "devise-extract: error:" in err and "nowhere" in err

    _photos(tmp_path / "photos", 1)
    (tmp_path / "a-folder.h5").mkdir()
    assert main(["--images", str(tmp_path / "photos"), "--out", str(tmp_path / "a-folder.h5"), *_backbone(tiny_model)])
    assert "is a folder" in capsys.readouterr().err

    assert main(["--images", str(tmp_path / "photos"), "image_encoder.backbone=resnet9"]) == 2
    assert "image_encoder.backbone" in capsys.readouterr().err


def test_compact_a_cache_without_tensorflow(tmp_path, tiny_model, capsys):
    photos = _photos(tmp_path / "photos", 4)
    out = tmp_path / "features.h5"
    args = ["--images", str(tmp_path / "photos"), "--out", str(out), "--quiet", *_backbone(tiny_model)]
    assert main(args) == 0
    Image.new("RGB", (24, 20), "red").save(photos[1])  # changed: extracted again, its old row stale
    os.remove(photos[3])
    assert main(args) == 0
    capsys.readouterr()
    assert main(["--compact", str(out), "--drop-missing", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["rows_before"], summary["kept"], summary["stale"], summary["missing"]) == (5, 3, 1, 1)
    assert summary["cache"] == str(out)
    assert main(["--compact", str(out)]) == 0
    assert f"{out}: 3 rows: kept 3, dropped 0 stale and 0 of missing files" in capsys.readouterr().out
    # Misuse is refused by the parser (exit 2), a non-cache in one line (exit 1).
    for bad in (["--compact", str(out), "image_encoder.batch_size=4"], ["--images", "x", "--drop-missing"]):
        with pytest.raises(SystemExit) as info:
            main(bad)
        assert info.value.code == 2
    (tmp_path / "not-a-cache.h5").write_bytes(b"hello")
    assert main(["--compact", str(tmp_path / "not-a-cache.h5")]) == 1
    assert "not a readable HDF5 feature cache" in capsys.readouterr().err
    # The compaction itself reads HDF5 and numpy only (a subprocess: this one has TensorFlow already).
    script = (
        "import sys; from devise.cli.extract import main\n"
        f"code = main(['--compact', {str(out)!r}, '--quiet']); print(code, 'tensorflow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[-2:] == ["0", "False"], done.stderr


COMMANDS = ("extract", "index", "beam_extract", "train", "eval", "search", "serve", "classify", "export", "dedup")


def test_batch_extraction_commands_turn_onednn_on_unless_the_user_chose(monkeypatch):
    """TF_ENABLE_ONEDNN_OPTS is set before TensorFlow loads, only by the batch commands, never over the user's."""
    import importlib

    from devise.cli.common import console_entry

    seen = []
    monkeypatch.setattr(sys, "argv", ["prog"])
    for user_value, onednn, expected in ((None, True, "1"), ("0", True, "0"), (None, False, None)):
        if user_value is None:
            monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
        else:
            monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", user_value)
        entry = console_entry(lambda argv: seen.append(os.environ.get("TF_ENABLE_ONEDNN_OPTS")) or 0, onednn=onednn)
        with pytest.raises(SystemExit):
            entry()
        assert seen[-1] == expected
    commands = {name: importlib.import_module(f"devise.cli.{name}").console_main.onednn for name in COMMANDS}
    assert commands == {name: name in ("extract", "index", "beam_extract") for name in COMMANDS}

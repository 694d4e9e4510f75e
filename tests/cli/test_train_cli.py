import json
import os
import subprocess
import sys

import pytest

from devise.cli.train import main


@pytest.fixture
def tiny_demo_args(tiny_overrides):
    return lambda base: ["--config", "configs/demo.yaml", *tiny_overrides(base)]


@pytest.mark.slow
def test_train_end_to_end_on_tiny_demo(tiny_demo_args, tmp_path, repo_root, monkeypatch, capsys):
    import devise

    monkeypatch.chdir(repo_root)
    assert main(tiny_demo_args(tmp_path) + ["--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "text->image" in out and "image->text" in out and "(ch" in out

    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "metrics.json",
        "model.keras",
        "model.json",
        "data_report.json",
        "text_stats.json",
        "history.json",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images"] == 20 and metrics["captions"] == 100 and metrics["split"] == "test"
    assert metrics["chance"]["text_to_image"]["R@10"] == 50.0

    # The saved config is the resolved one and reloads to the same values.
    config = devise.load_config(run / "config.yaml")
    assert config.trainer.epochs == 8 and config.model.joint_dim == 64

    # The reloaded model reproduces the run's own test metrics exactly.
    model = devise.DeViSEModel.load(run)
    records = devise.datasets.read_pascal_sentences(tmp_path / "shapes")
    splits = devise.datasets.split_by_category(records, {"train": 6, "val": 1, "test": 1}, seed=0)
    extractor = devise.training.make_feature_extractor(config)
    cache = devise.encoders.FeatureCache(
        devise.encoders.default_cache_path(tmp_path / "cache", extractor), extractor.fingerprint()
    )
    features = cache.read()
    again = devise.evaluate_retrieval(model, splits["test"], features)
    for direction in ("text_to_image", "image_to_text"):
        for key in ("R@1", "R@5", "R@10", "medr", "meanr"):
            assert again[direction][key] == pytest.approx(metrics[direction][key])

    # A second run reuses the dataset and the feature cache.
    assert main(tiny_demo_args(tmp_path) + ["trainer.epochs=1"]) == 0
    err = capsys.readouterr().err
    assert "160 images (0 computed, 160 from cache" in err
    # Where it ran, said in every run's log (CI has no GPU).
    assert "devices: CPU (TensorFlow sees no GPU); 1 replica (_DefaultDistributionStrategy)" in err


def test_check_validates_without_training(tiny_demo_args, tmp_path, repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    assert main(tiny_demo_args(tmp_path) + ["--check"]) == 0
    assert "config valid" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("allow_download", ["true", "false"])
def test_check_reports_a_missing_vgg16_weights_file(
    allow_download, tiny_demo_args, tmp_path, repo_root, monkeypatch, capsys
):
    """A local weights file is never downloaded, and cached ImageNet weights do not stand in for it."""
    from devise.encoders.vgg16 import VGG16_WEIGHTS_FILE

    cached = tmp_path / "keras_home" / "models" / VGG16_WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not empty")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.chdir(repo_root)
    missing = tmp_path / "my_vgg16.h5"
    args = tiny_demo_args(tmp_path) + [
        "image_encoder.backbone=vgg16",
        f"image_encoder.weights={missing}",
        f"image_encoder.allow_download={allow_download}",
        "--check",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "1 required resource(s) missing" in err and f"{missing} does not exist" in err


def test_quiet_run_prints_nothing_on_stdout(tiny_demo_args, tmp_path, repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    assert main(tiny_demo_args(tmp_path) + ["trainer.epochs=1", "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["trainer.epoch=3"], "trainer.epoch: unknown key; did you mean 'trainer.epochs'?"),
        (["trainer.epochs=three"], "trainer.epochs: expected int"),
        (["trainer.epochs"], "expected key.sub=value"),
        (["model..joint_dim=3"], "not a dotted key path"),
        (["image_encoder.backbone=resnet"], "image_encoder.backbone: 'resnet' is not one of"),
    ],
)
def test_bad_config_exits_2_with_one_line(extra, fragment, repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    assert main(["--config", "configs/demo.yaml", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and err.startswith("devise-train: error: ")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def _run_pascal(tmp_path, repo_root, *overrides):
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras_home")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "devise.cli.train",
            "--config",
            "configs/pascal.yaml",
            f"data.root={tmp_path}/pascal",
            f"word_vectors.path={tmp_path}/glove/glove.6B.zip",
            *overrides,
        ],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _problems(stderr):
    assert "Traceback" not in stderr
    assert "3 required resource(s) missing" in stderr
    problems = [line for line in stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 3
    return problems


def test_pascal_without_data_lists_each_missing_resource(tmp_path, repo_root):
    """The real console entry point in a fresh process, downloads off: non-zero, no traceback."""
    proc = _run_pascal(
        tmp_path, repo_root, "data.download=false", "word_vectors.download=false", "image_encoder.allow_download=false"
    )
    assert proc.returncode == 1
    pascal, glove, vgg = _problems(proc.stderr)
    assert f"{tmp_path}/pascal" in pascal and "pascal-sentences" in pascal
    assert f"{tmp_path}/glove/glove.6B.zip" in glove and "nlp.stanford.edu" in glove
    assert str(tmp_path / "keras_home" / "models") in vgg and "vgg16_weights_tf_dim_ordering_tf_kernels.h5" in vgg


def test_pascal_with_downloads_that_fail_reports_why_and_how(tmp_path, repo_root):
    """Downloads on (the shipped default) but unreachable, as on a machine without internet.

    The dataset and GloVe URLs point at a closed port on 127.0.0.1 so the test never touches
    the network; VGG16's download goes to its real URL only if this machine has internet, so
    it stays off here.
    """
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    proc = _run_pascal(
        tmp_path,
        repo_root,
        f"data.url=http://127.0.0.1:{port}/pascal-sentences/",
        f"word_vectors.url=http://127.0.0.1:{port}/glove.6B.zip",
        "image_encoder.allow_download=false",
    )
    assert proc.returncode == 1
    pascal, glove, vgg = _problems(proc.stderr)
    assert "download from" in pascal and "failed" in pascal and f"{tmp_path}/pascal" in pascal
    assert "download failed" in glove and f"{tmp_path}/glove/glove.6B.zip" in glove
    assert not (tmp_path / "glove" / "glove.6B.zip").exists()


def test_a_start_that_fails_leaves_no_empty_run_folder(tiny_demo_args, tmp_path, repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    missing = tmp_path / "my_vgg16.h5"
    args = tiny_demo_args(tmp_path) + ["image_encoder.backbone=vgg16", f"image_encoder.weights={missing}"]
    assert main(args) == 1
    assert f"{missing} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_check_lists_vgg16_weights_a_run_would_download_and_a_failed_download_gives_usable_advice(
    tiny_demo_args, tmp_path, repo_root, monkeypatch, capsys
):
    """No internet here: the failed download is a stand-in (fetch_vgg16_weights raising, as it does offline)."""
    from devise.download import DownloadError
    from devise.encoders import vgg16

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    monkeypatch.chdir(repo_root)
    args = tiny_demo_args(tmp_path) + [
        "image_encoder.backbone=vgg16",
        "image_encoder.weights=imagenet",
        "image_encoder.allow_download=true",
    ]
    assert main([*args, "--check"]) == 1
    err = capsys.readouterr().err
    assert "VGG16 ImageNet weights: not in the Keras cache yet" in err and "devise-train downloads them" in err

    def offline():
        print("Downloading data from https://storage.googleapis.com/...")  # as Keras' get_file does, on stdout
        raise DownloadError(vgg16.VGG16_WEIGHTS_URL, "no route to host")

    monkeypatch.setattr(vgg16, "fetch_vgg16_weights", offline)
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "download failed" in captured.err and "set image_encoder.allow_download=true" not in captured.err
    assert "Downloading data from" not in captured.out  # stdout stays for results

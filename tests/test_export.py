"""devise-export: the SavedModel, loaded where devise cannot be imported, embeds text and image files as devise does."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from devise.cli.export import main
from devise.export import EXPORT_INFO, IMAGE_SIGNATURE, OUTPUT, TEXT_SIGNATURE

TEXTS = [
    "two red circles",
    "A T-shirt, the dog's bone; don't!",
    "a zxqvb word the table lacks",
    "",
    "\uff21\uff22\uff23 CAF\u00c9 na\u0131ve \u039f\u0394\u039f\u03a3",
    "\U0001f642 " + "word " * 100,
]
# The served image path decodes and fits images pixel for pixel as load_image
# does (tests/datasets/test_image_ops.py), so the vectors differ only by
# floating-point order in the backbone: measured 4e-7 at most.
IMAGE_ATOL = 1e-5
TEXT_ATOL = 1e-5

# Runs in a fresh interpreter. The venv has devise installed in editable mode
# (a .pth file puts src/ on sys.path), so neither -I nor a clean PYTHONPATH
# hides it. A None entry in sys.modules does: every "import devise" (and
# importlib.util.find_spec("devise")) then fails as if devise were not
# installed, while TensorFlow imports normally. Keras is hidden the same way,
# to show that the SavedModel needs TensorFlow alone (as TensorFlow Serving).
CHILD = textwrap.dedent(
    """
    import sys
    for name in ("devise", "keras"):
        sys.modules[name] = None
    try:
        import devise
    except ImportError:
        pass
    else:
        raise SystemExit("devise is importable")
    import json, os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    model_dir, texts, images, out = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    served = tf.saved_model.load(model_dir)
    text = served.signatures["encode_text"](texts=tf.constant(texts, tf.string))["embedding"]
    data = [open(path, "rb").read() for path in images]
    image = served.signatures["encode_image"](images=tf.constant(data, tf.string))["embedding"]
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("devise", "keras") and sys.modules[name])
    np.savez(out, text=text.numpy(), image=image.numpy(), signatures=sorted(served.signatures), loaded=loaded)
    """
)


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> pathlib.Path:
    """The tiny run exported by the CLI over an older export (--overwrite)."""
    out = tmp_path_factory.mktemp("export") / "models" / "devise" / "1"
    out.mkdir(parents=True)
    (out / "stale.txt").write_text("an older export")
    assert main(["--run", str(tiny_run), "--out", str(out), "--overwrite"]) == 0
    return out


def image_files(tiny_run: pathlib.Path) -> list[pathlib.Path]:
    from devise.runs import read_run_config

    root = pathlib.Path(read_run_config(tiny_run).data.root)
    return sorted(root.rglob("*.jpg"))[::10]


@pytest.mark.slow
def test_the_savedmodel_gives_the_trained_models_vectors_without_devise(tiny_run, exported, tmp_path):
    from devise.encoders.registry import feature_extractor_from_config
    from devise.model import DeViSEModel
    from devise.runs import read_run_config

    images = image_files(tiny_run)
    assert len(images) >= 10
    out = tmp_path / "served.npz"
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            CHILD,
            str(exported),
            json.dumps(TEXTS),
            json.dumps(list(map(str, images))),
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = np.load(out)
    assert set(served["signatures"]) == {TEXT_SIGNATURE, IMAGE_SIGNATURE, "serving_default"}
    assert served["loaded"].size == 0

    model = DeViSEModel.load(tiny_run)
    np.testing.assert_allclose(served["text"], model.embed_texts(TEXTS), rtol=0, atol=TEXT_ATOL)
    # devise's own image path: load_image, the backbone, the projection (as SearchEngine.embed_files).
    extractor = feature_extractor_from_config(read_run_config(tiny_run).image_encoder)
    features = extractor.extract_files(images, progress=False)
    assert features.indices == list(range(len(images)))
    expected = model.embed_image_features(features.features)
    np.testing.assert_allclose(served["image"], expected, rtol=0, atol=IMAGE_ATOL)
    assert np.min(np.sum(served["image"] * expected, axis=1)) > 0.99999
    np.testing.assert_allclose(np.linalg.norm(served["image"], axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_the_export_replaced_the_old_one_and_records_what_it_is(tiny_run, exported):
    from devise.model import DeViSEModel

    assert not (exported / "stale.txt").exists()
    assert (exported / "saved_model.pb").is_file()
    assert not [p for p in exported.parent.iterdir() if p.name != exported.name]  # no temporary folder left
    info = json.loads((exported / EXPORT_INFO).read_text("utf-8"))
    assert info["model_fingerprint"] == DeViSEModel.load(tiny_run).fingerprint()
    assert info["signatures"][TEXT_SIGNATURE]["output"] == OUTPUT
    assert info["image_size"] == [224, 224] and info["resize"] == "crop"


def test_refuses_an_unfinished_run(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "config.yaml", run / "config.yaml")
    assert main(["--run", str(run), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did not finish" in err
    assert not (tmp_path / "out").exists()


def test_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["--run", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert "not a devise run directory" in capsys.readouterr().err


def test_refuses_an_existing_export_without_overwrite(tiny_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "saved_model.pb").write_text("someone's model")
    assert main(["--run", str(tiny_run), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert (out / "saved_model.pb").read_text() == "someone's model"
    (tmp_path / "file").write_text("")
    assert main(["--run", str(tiny_run), "--out", str(tmp_path / "file")]) == 1
    assert "not a folder" in capsys.readouterr().err


def test_a_failed_write_leaves_the_old_export_and_no_temporary_folder(tiny_run, tmp_path, monkeypatch, capsys):
    import devise.export

    out = tmp_path / "models" / "1"
    out.mkdir(parents=True)
    (out / "saved_model.pb").write_text("the old model")

    class FailingArchive:
        def write_out(self, path, verbose=True):
            pathlib.Path(path).mkdir()
            (pathlib.Path(path) / "saved_model.pb").write_text("half")
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(devise.export, "build_export_archive", lambda *args, **kwargs: FailingArchive())
    assert main(["--run", str(tiny_run), "--out", str(out), "--overwrite"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert (out / "saved_model.pb").read_text() == "the old model"
    assert [p.name for p in out.parent.iterdir()] == ["1"]


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--run", "somewhere"])
    assert exc.value.code == 2

"""Text search without TensorFlow: devise-search in a fresh process imports neither tensorflow nor keras,
and ranks exactly as the Keras text path does (same ids and order, scores to 1e-5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from PIL import Image

from devise.config import load_config, save_config
from devise.model import DeViSEModel, build_devise_model
from devise.search.engine import SearchEngine
from devise.search.index import update_index
from devise.training.run_directory import mark_run_complete

WORDS = ["a", "red", "blue", "green", "circle", "square", "star", "two", "big", "small", "people", "sunset", "dog"]
QUERIES = [
    ["a red circle"],
    ["two big blue squares", "--not", "a green star", "--not-weight", "0.5"],
    ["a dog zxqv", "--under", "b", "--min-score", "-0.5", "-k", "7"],
    ["small star", "--text-weight", "2", "--not", "people"],
]


def _make_run(base, repo_root, kind: str, *, edit_config=None):
    """A finished run directory holding a random-weight model (no training: only the files search reads)."""
    rng = np.random.default_rng(3)
    keras_model = build_devise_model(
        words=WORDS,
        embedding_matrix=rng.standard_normal((len(WORDS) + 2, 8)).astype(np.float32),
        image_dim=16,
        joint_dim=6,
        text_encoder=kind,
        units=5,
        max_caption_length=10,
    )
    keras_model.set_weights([(rng.standard_normal(w.shape) * 0.7).astype(w.dtype) for w in keras_model.get_weights()])
    run = base / f"run-{kind}"
    DeViSEModel(keras_model).save(run)
    if edit_config is not None:  # rewrite config.json inside model.keras
        path = run / "model.keras"
        members = {}
        with zipfile.ZipFile(path) as z:
            members = {name: z.read(name) for name in z.namelist()}
        members["config.json"] = json.dumps(edit_config(json.loads(members["config.json"]))).encode()
        with zipfile.ZipFile(path, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
    save_config(load_config(repo_root / "configs" / "demo.yaml"), run / "config.yaml")
    mark_run_complete(run, ["config.yaml", "model.keras", "model.json"])
    return run


def _make_index(base, run, fingerprint: str):
    """40 small PNG files in two folders, indexed with random unit vectors as their embeddings."""
    root = base / f"photos-{run.name}"
    for i in range(40):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 6, 0, 0)).save(folder / f"{i:02d}.png")
    rng = np.random.default_rng(4)

    def embed(paths):
        vectors = rng.standard_normal((len(paths), 6)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), list(range(len(paths))), []

    out = base / f"{run.name}.h5"
    update_index(out, root, model_fingerprint=fingerprint, run_dir=str(run), embed=embed, progress=False)
    return out


@pytest.fixture(scope="module")
def lstm_search(tmp_path_factory, repo_root):
    base = tmp_path_factory.mktemp("numpy_search")
    run = _make_run(base, repo_root, "lstm")
    return run, _make_index(base, run, DeViSEModel.load(run).fingerprint())


def _cli_args(index, query_args):
    return ["--index", str(index), *query_args, "--json"]


@pytest.mark.slow  # a fresh Python process (about 3 s idle, much more on a loaded machine)
def test_devise_search_in_a_fresh_process_never_imports_tensorflow(lstm_search):
    run, index = lstm_search
    script = textwrap.dedent(
        """
        import json, sys
        from devise.cli.search import main
        answers = []
        for argv in json.loads(sys.argv[1]):
            import contextlib, io
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert main(argv) == 0
            answers.append(json.loads(out.getvalue()))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        print(json.dumps({"answers": answers, "loaded": loaded}))
        """
    )
    argvs = [_cli_args(index, q) for q in QUERIES]
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["loaded"] == [], f"a text query imported {result['loaded'][:5]}"

    keras_engine = SearchEngine.load(run, index, text_backend="keras")
    assert keras_engine.text_backend == "keras"
    for argv, answer in zip(QUERIES, result["answers"]):
        # The same query through the Keras text path, in this process.
        from devise.cli.search import build_parser

        args = build_parser().parse_args(_cli_args(index, argv))
        expected = keras_engine.search(
            args.query,
            k=args.k,
            not_=args.not_,
            under=args.under,
            min_score=args.min_score,
            text_weight=args.text_weight,
            not_weight=args.not_weight,
        )
        got = answer["results"]
        assert got, argv
        assert [h["id"] for h in got] == [h.id for h in expected], argv
        np.testing.assert_allclose([h["score"] for h in got], [h.score for h in expected], atol=1e-5, rtol=0)
    assert {h["id"].split("/")[0] for h in result["answers"][2]["results"]} == {"b"}  # --under applied


def test_engine_embeds_text_in_numpy_and_loads_keras_only_for_images(lstm_search):
    run, index = lstm_search
    engine = SearchEngine.load(run, index)
    assert engine.text_backend == "numpy"
    assert engine._model is None and engine._extractor is None  # nothing of Keras loaded yet
    hits = engine.search("a red circle", k=5)
    keras_hits = SearchEngine.load(run, index, text_backend="keras").search("a red circle", k=5)
    assert [h.id for h in hits] == [h.id for h in keras_hits]
    assert engine.unknown_words("a zxqv dog") == ["zxqv"]
    # A photo that is in the index is read from it: still no Keras model.
    first = engine.index.paths[0]
    assert engine.search(like=[first], k=1)[0].path == first
    assert engine._model is None
    # The full model, when wanted, is the same model (its fingerprint is checked on loading).
    assert engine.model.fingerprint() == engine.fingerprint


def test_a_model_the_numpy_path_does_not_reproduce_falls_back_to_keras(tmp_path, repo_root):
    def mixed_precision_text(config):
        config["config"]["text_encoder"]["config"]["dtype"] = "mixed_float16"
        return config

    run = _make_run(tmp_path, repo_root, "gru", edit_config=mixed_precision_text)
    index = _make_index(tmp_path, run, DeViSEModel.load(run).fingerprint())
    engine = SearchEngine.load(run, index)
    assert engine.text_backend == "keras"
    assert engine.search("a red circle", k=3)
    from devise.encoders.text_numpy import UnsupportedTextEncoderError

    with pytest.raises(UnsupportedTextEncoderError, match="mixed_float16"):
        SearchEngine.load(run, index, text_backend="numpy")


def test_a_run_trained_by_the_trainer_is_read_by_the_numpy_path(tiny_run):
    """devise-train saves a compiled model, optimizer state included: the numpy path reads past it."""
    from devise.numpy_model import NumpyTextModel

    keras_model = DeViSEModel.load(tiny_run)
    numpy_model = NumpyTextModel.load(tiny_run)
    queries = ["a red circle", "two blue stars", "zxqv"]
    np.testing.assert_allclose(numpy_model.embed_texts(queries), keras_model.embed_texts(queries), atol=1e-5, rtol=0)
    assert numpy_model.fingerprint() == keras_model.fingerprint()
    assert SearchEngine.load(tiny_run).text_backend == "numpy"

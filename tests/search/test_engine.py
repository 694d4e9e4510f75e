"""SearchEngine with stand-ins for the model and the image backbone (no training needed)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from devise.cli import search as search_cli
from devise.errors import DeviseError
from devise.search.engine import SearchEngine
from devise.search.index import ImageIndex, IndexMismatchError, update_index

DIM = 4


class StubModel:
    """The parts of DeViSEModel the engine uses; counts the captions it embeds."""

    image_fingerprint = ""

    def __init__(self, fingerprint: str = "model-a"):
        self._fingerprint = fingerprint
        self.embedded_texts: list[str] = []

    def fingerprint(self) -> str:
        return self._fingerprint

    def embed_texts(self, texts):
        self.embedded_texts += list(texts)
        rng = np.random.default_rng(len(texts))
        vectors = rng.standard_normal((len(texts), DIM)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def embed_image_features(self, features):
        return np.asarray(features, np.float32)

    def check_query(self, text):
        return []


class StubExtractor:
    def fingerprint(self) -> str:
        return ""

    def extract_files(self, paths, progress=False):
        features = np.tile(np.eye(DIM, dtype=np.float32)[:1], (len(paths), 1))
        return types.SimpleNamespace(features=features, indices=list(range(len(paths))), failures=[])


def _index(tmp_path, fingerprint: str, run_dir: str = "") -> str:
    root = tmp_path / "photos"
    root.mkdir(exist_ok=True)
    (root / "a.png").write_bytes(b"not decoded by the stand-in")
    path = tmp_path / f"{fingerprint}.h5"

    def embed(paths):
        return np.eye(DIM, dtype=np.float32)[: len(paths)], list(range(len(paths))), []

    update_index(path, root, model_fingerprint=fingerprint, run_dir=run_dir, embed=embed, progress=False)
    return str(path)


def test_use_index_refuses_an_opened_index_of_another_model(tmp_path):
    engine = SearchEngine(StubModel("model-a"), StubExtractor())
    other = ImageIndex.open(_index(tmp_path, "model-b"))
    with pytest.raises(IndexMismatchError, match="cannot be mixed"):
        engine.use_index(other)
    assert engine.index is None
    mine = ImageIndex.open(_index(tmp_path, "model-a"))
    engine.use_index(mine)
    assert engine.index is mine  # used as is, not read again
    assert [h.id for h in engine.search("anything", k=3)] == ["a.png"]


def test_annotate_embeds_the_same_candidates_once(tmp_path):
    model = StubModel()
    engine = SearchEngine(model, StubExtractor())
    captions = ["a red circle", "a blue square", "a red circle", "a green star"]
    first = engine.annotate(tmp_path / "x.png", captions, k=2)
    again = engine.annotate(tmp_path / "y.png", captions, k=2)
    assert [h.to_dict() for h in first] == [h.to_dict() for h in again]
    assert model.embedded_texts == ["a red circle", "a blue square", "a green star"]
    engine.annotate(tmp_path / "x.png", ["a yellow cross"], k=1)
    assert model.embedded_texts[-1] == "a yellow cross"


def test_index_without_a_run_asks_for_one(tmp_path, capsys, monkeypatch):
    path = _index(tmp_path, "model-a", run_dir="")
    # A config.yaml in the current folder must not be taken for the run.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("{}\n")
    with pytest.raises(DeviseError, match="does not record the run"):
        SearchEngine.load(None, path)
    assert search_cli.main(["--index", path, "a query"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("devise-search: error:") and "--run" in err and len(err.splitlines()) == 1


def test_unreadable_captions_file_is_one_line_before_the_model_loads(tmp_path, capsys):
    argv = ["--run", str(tmp_path / "no-run"), "--image", "x.jpg", "--captions", str(tmp_path)]
    assert search_cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("devise-search: error:") and "captions file" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--index", "x.h5", "q", "--approximate", "--nprobe", "0"],
        ["--index", "x.h5", "q", "--approximate", "--nprobe", "-1"],
        ["--index", "x.h5", "q", "--rebuild-approximate"],
    ],
)
def test_bad_approximate_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        search_cli.main(argv)
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err

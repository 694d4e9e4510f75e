"""SearchEngine with stand-ins for the model and the image backbone (no training needed)."""

from __future__ import annotations

import os
import pathlib
import types

import numpy as np
import pytest

from devise.cli import search as search_cli
from devise.errors import DeviseError, QueryError
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


# -- combined queries, photos as queries, filters (issue 11) --------------------------------------


class WordModel(StubModel):
    """A stand-in whose text embedding depends on the text only (a seeded random unit vector)."""

    def embed_texts(self, texts):
        self.embedded_texts += list(texts)
        rows = [np.random.default_rng(sum(map(ord, t)) + 7 * len(t)).standard_normal(DIM) for t in texts]
        vectors = np.asarray(rows, np.float32).reshape(len(texts), DIM)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class CountingExtractor(StubExtractor):
    """Embeds a file as the unit vector its first bytes name; counts the files it decodes."""

    def __init__(self):
        self.decoded: list[str] = []

    def extract_files(self, paths, progress=False):
        self.decoded += list(paths)
        features = np.asarray([_vector_of(pathlib.Path(p).read_bytes()) for p in paths], np.float32).reshape(-1, DIM)
        return types.SimpleNamespace(features=features, indices=list(range(len(paths))), failures=[])


def _vector_of(data: bytes) -> np.ndarray:
    v = np.random.default_rng(int.from_bytes(data[:4].ljust(4, b"\0"), "little")).standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _photo_index(tmp_path, n: int = 24):
    """An index of ``n`` files in a few folders with various modification times; each file's bytes give its vector."""
    root = tmp_path / "photos"
    for i in range(n):
        path = root / ["", "beach/", "beach/2024/", "city/"][i % 4] / f"p{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(i.to_bytes(4, "little") + b"png")
        os.utime(path, ns=(1_700_000_000_000_000_000 + i * 86_400 * 10**9,) * 2)
    extractor = CountingExtractor()
    out = tmp_path / "index.h5"

    def embed(paths):
        result = extractor.extract_files(paths)
        return result.features, result.indices, []

    update_index(out, root, model_fingerprint="model-a", run_dir="", embed=embed, progress=False)
    extractor.decoded.clear()
    engine = SearchEngine(WordModel(), extractor, ImageIndex.open(out))
    return engine, extractor, root


def _unit(v):
    return v / np.linalg.norm(v)


def test_combined_query_is_the_documented_weighted_sum(tmp_path):
    engine, extractor, _ = _photo_index(tmp_path)
    stored = engine.index.embeddings(range(len(engine.index)))
    t, n = engine.model.embed_texts(["at sunset", "people"])
    got = engine.query_vector("at sunset", like_rows=[3, 5], not_=["people"], not_weight=0.5, text_weight=2.0)
    np.testing.assert_allclose(got, _unit(2.0 * t + stored[3] + stored[5] - 0.5 * n), atol=1e-6)
    hits = engine.search("at sunset", k=5, like_rows=[3, 5], not_=["people"], not_weight=0.5, text_weight=2.0)
    order = np.lexsort((np.arange(len(stored)), -(stored @ got)))[:5]
    assert [h.id for h in hits] == [engine.index.ids[r] for r in order]
    with pytest.raises(QueryError, match="cancel"):
        engine.query_vector("people", not_=["people"])
    with pytest.raises(QueryError, match="needs text or at least one photo"):
        engine.search(None, not_=["people"])
    assert extractor.decoded == []


def test_like_an_indexed_photo_reads_its_row_and_finds_it_first(tmp_path):
    engine, extractor, root = _photo_index(tmp_path)
    for row, path in enumerate(engine.index.paths):
        hits = engine.search(like=[path], k=3)
        assert hits[0].id == engine.index.ids[row] and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert extractor.decoded == []  # every photo was in the index: none decoded again
    # A photo outside the index (or changed since) goes through the backbone.
    outside = tmp_path / "new.png"
    outside.write_bytes((5).to_bytes(4, "little") + b"png")
    assert engine.search(like=[outside], k=1)[0].id == engine.index.ids[engine.index.row_of("beach/p05.png")]
    changed = root / "p00.png"
    os.utime(changed, ns=(1, 1))
    engine.search(like=[changed], k=1)
    assert extractor.decoded == [str(outside), str(changed)]
    with pytest.raises(QueryError, match="no such photo"):
        engine.search(like=[tmp_path / "missing.png"])
    with pytest.raises(QueryError, match="row"):
        engine.search(like_rows=[len(engine.index)])


@pytest.mark.parametrize("seed", range(4))
def test_filters_and_min_score_match_a_brute_force_reference(tmp_path, seed):
    engine, _, _ = _photo_index(tmp_path)
    rng = np.random.default_rng(seed)
    stored = engine.index.embeddings(range(len(engine.index)))
    query = _unit(rng.standard_normal(DIM)).astype(np.float32)
    ids, times = engine.index.ids, engine.index.mtime_ns
    low, high = sorted(times[rng.choice(len(ids), 2, replace=False)])
    since = np.datetime_as_string(np.datetime64(int(low), "ns"), unit="s") + "+00:00"
    until = np.datetime_as_string(np.datetime64(int(high), "ns"), unit="s") + "+00:00"
    for under, min_score in [(("beach",), None), (("city", "beach/2024"), 0.0), ((), 0.3), ((), None)]:
        engine.query_vector = lambda *a, **kw: query  # the filters are under test here, not the embedding
        hits = engine.search("x", k=4, under=under, since=since, until=until, min_score=min_score)
        keep = [
            row
            for row in range(len(ids))
            if (not under or any(ids[row].startswith(u + "/") for u in under)) and low <= times[row] <= high
        ]
        ranked = sorted(keep, key=lambda row: (-float(stored[row] @ query), row))[:4]
        if min_score is not None:
            ranked = [row for row in ranked if float(stored[row] @ query) >= min_score]
            assert all(h.score >= min_score for h in hits)
        assert [h.id for h in hits] == [ids[row] for row in ranked]


@pytest.mark.parametrize(
    "argv",
    [
        ["--index", "x.h5", "--not", "people"],  # nothing positive to search for
        ["--index", "x.h5", "q", "--since", "yesterday"],
        ["--index", "x.h5", "q", "--until", "2024-02-30"],
        ["--index", "x.h5", "q", "--min-score", "1.5"],
        ["--index", "x.h5", "q", "--not-weight", "-1"],
        ["--index", "x.h5", "q", "--text-weight", "nan"],
        ["--index", "x.h5", "--like", "no-such-photo.jpg"],
        ["--index", "x.h5", "q", "--under", "a", "--approximate"],
        ["--run", "r", "--image", "x.jpg", "--min-score", "0.2"],
    ],
)
def test_bad_combined_query_and_filter_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        search_cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err

"""Photos as queries ("more like this") on a trained tiny run, from Python and the command line."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

import devise
from devise.cli import index as index_cli
from devise.cli import search as search_cli
from devise.search.engine import SearchEngine


@pytest.fixture(scope="module")
def small_index(tiny_run, tmp_path_factory):
    """An index of 40 of the tiny run's dataset images, in two folders."""
    config = devise.load_config(tiny_run / "config.yaml")
    images = sorted(pathlib.Path(f"{config.data.root}/dataset").rglob("*.jpg"))[:40]
    folder = tmp_path_factory.mktemp("like_photos")
    for i, image in enumerate(images):
        target = folder / ("even" if i % 2 == 0 else "odd") / image.name
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(image, target)
    out = folder.parent / "like.h5"
    assert index_cli.main(["--run", str(tiny_run), "--images", str(folder), "--out", str(out), "--quiet"]) == 0
    return tiny_run, out, folder


def test_like_each_indexed_photo_returns_it_first_without_decoding_it(small_index, monkeypatch):
    run, out, _ = small_index
    engine = SearchEngine.load(run, out)
    assert len(engine.index) == 40

    def no_decoding(*args, **kwargs):
        raise AssertionError("an indexed photo was decoded again")

    monkeypatch.setattr(engine.extractor, "extract_files", no_decoding)
    for row, path in enumerate(engine.index.paths):
        hits = engine.search(like=[path], k=3)
        assert hits[0].id == engine.index.ids[row], (path, [h.to_dict() for h in hits])
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        # Restricted to the other folder, the photo itself cannot come back.
        other = "odd" if engine.index.ids[row].startswith("even/") else "even"
        assert all(h.id.startswith(other + "/") for h in engine.search(like=[path], k=3, under=[other]))


def test_like_a_copy_outside_the_index_is_decoded_and_finds_the_original(small_index, tmp_path):
    run, out, _ = small_index
    engine = SearchEngine.load(run, out)
    original = engine.index.paths[7]
    copy = tmp_path / "copy.jpg"
    shutil.copyfile(original, copy)
    hits = engine.search(like=[copy], k=1)
    assert hits[0].id == engine.index.ids[7] and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_cli_like_returns_the_photo_first(small_index, capsys):
    run, out, _ = small_index
    engine = SearchEngine.load(run, out)
    for row in (0, 13, 39):
        capsys.readouterr()
        argv = ["--index", str(out), "--like", engine.index.paths[row], "--json", "-k", "3"]
        assert search_cli.main(argv) == 0
        body = json.loads(capsys.readouterr().out)
        assert body["results"][0]["id"] == engine.index.ids[row]
    # Text and a photo and a negative term, with a threshold: never a score below it.
    argv = [
        "--index",
        str(out),
        "--like",
        engine.index.paths[0],
        "a red circle",
        "--not",
        "a blue square",
        "--min-score",
        "0.3",
        "--json",
        "-k",
        "40",
    ]
    assert search_cli.main(argv) == 0
    body = json.loads(capsys.readouterr().out)
    assert all(r["score"] >= 0.3 for r in body["results"])


def test_cli_says_so_when_every_image_is_filtered_out(small_index, capsys):
    run, out, _ = small_index
    capsys.readouterr()
    assert search_cli.main(["--index", str(out), "a red circle", "--min-score", "1.0"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no results" in captured.err

"""Train (the demo config) -> index images -> search by a test caption, from the shell and from Python."""

import json
import pathlib
import shutil

import h5py
import pytest

import devise
from devise.cli import index as index_cli
from devise.cli import search as search_cli
from devise.search.engine import SearchEngine


@pytest.fixture(scope="module")
def indexed(demo_run, tmp_path_factory):
    """The demo run, and an index of its 100 test images copied into a photo folder of their own.

    The test images were never trained on, like a user's own photos.
    """
    config = devise.load_config(demo_run / "config.yaml")
    folder = tmp_path_factory.mktemp("photos")
    for record in devise.datasets.unique_images(_test_records(config)):
        target = folder / record.category / pathlib.Path(record.image_path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(record.image_path, target)
    out = folder.parent / "photos.h5"
    assert index_cli.main(["--run", str(demo_run), "--images", str(folder), "--out", str(out), "--quiet"]) == 0
    return demo_run, out, config, folder


def _test_records(config):
    records = devise.datasets.read_pascal_sentences(config.data.root)
    s = config.data.split
    return devise.datasets.split_by_category(records, {"train": s.train, "val": s.val, "test": s.test}, seed=s.seed)[
        "test"
    ]


@pytest.mark.slow
def test_cli_search_finds_each_test_image_by_its_caption(indexed, capsys):
    run, out, config, folder = indexed
    capsys.readouterr()
    engine = SearchEngine.load(run, out)
    test_images = devise.datasets.unique_images(_test_records(config))
    assert len(engine.index) == len(test_images) == 100
    misses = []
    for i, record in enumerate(test_images):
        hits = engine.search(record.caption, k=10)
        ids = [h.id for h in hits]
        if f"{record.image_id}.jpg" not in ids:
            misses.append(record.caption)
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
        if i % 5 == 0:  # the command line gives the same ranking (each call loads the model: a sample)
            assert search_cli.main(["--index", str(out), "--json", "-k", "10", record.caption]) == 0
            assert [r["id"] for r in json.loads(capsys.readouterr().out)["results"]] == ids
    # The run's own text->image R@10 on these images is ~99%; allow a few misses, not chance (10%).
    assert len(misses) <= 5, f"test images not in the top 10 for their caption: {misses}"


@pytest.mark.slow
def test_cli_search_reports_unknown_words_and_refuses_queries_without_known_words(indexed, capsys):
    run, out, config, folder = indexed
    capsys.readouterr()
    assert search_cli.main(["--index", str(out), "--json", "-k", "3", "two qqzzx stars"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["unknown_words"] == ["qqzzx"] and len(body["results"]) == 3
    assert search_cli.main(["--index", str(out), "-k", "3", "two qqzzx stars"]) == 0
    assert "qqzzx" in capsys.readouterr().err
    for query in ("qqzzx", "   ", "?!"):
        assert search_cli.main(["--index", str(out), query]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("devise-search: error:") and len(err.splitlines()) == 1


@pytest.mark.slow
def test_approximate_search_agrees_with_exact_on_a_small_index(indexed, capsys):
    pytest.importorskip("faiss")
    run, out, config, folder = indexed
    query = "two red circles on a white background"
    assert search_cli.main(["--index", str(out), "--json", "-k", "5", query]) == 0
    exact = [r["id"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert search_cli.main(["--index", str(out), "--json", "-k", "5", "--approximate", "--nprobe", "64", query]) == 0
    approx = [r["id"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert approx == exact  # every cluster probed on a 100-image index: same answer
    assert (out.parent / (out.name + ".faiss")).is_file()


@pytest.mark.slow
def test_damaged_approximate_index_is_reported_and_rebuilt_on_request(indexed, capsys):
    pytest.importorskip("faiss")
    run, out, config, folder = indexed
    query = "a green square"
    assert search_cli.main(["--index", str(out), "--json", "-k", "5", query]) == 0
    exact = [r["id"] for r in json.loads(capsys.readouterr().out)["results"]]
    faiss_file = out.parent / (out.name + ".faiss")
    assert search_cli.main(["--index", str(out), "--approximate", query]) == 0
    capsys.readouterr()
    faiss_file.write_bytes(b"damaged")
    assert search_cli.main(["--index", str(out), "--approximate", query]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--rebuild-approximate" in err
    argv = ["--index", str(out), "--json", "-k", "5", "--approximate", "--nprobe", "64", "--rebuild-approximate"]
    assert search_cli.main([*argv, query]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)["results"]] == exact


@pytest.mark.slow
def test_a_damaged_index_is_refused_by_search_and_rebuilt_by_devise_index(indexed, tmp_path, capsys):
    run, out, config, folder = indexed
    query = "a green square"
    assert search_cli.main(["--index", str(out), "--json", "-k", "5", query]) == 0
    intact = json.loads(capsys.readouterr().out)["results"]
    damaged = tmp_path / "photos.h5"
    data = bytearray(out.read_bytes())
    with h5py.File(out, "r") as f:
        start = f["embeddings"].id.get_chunk_info(0).byte_offset
    data[start + 1003] ^= 0x40  # one exponent bit of one embedding component (float32, little-endian)
    damaged.write_bytes(data)
    assert search_cli.main(["--index", str(damaged), "--json", "-k", "5", query]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "damaged" in err and "rebuild" in err and "Traceback" not in err
    assert index_cli.main(["--run", str(run), "--images", str(folder), "--out", str(damaged), "--quiet"]) == 0
    assert "rebuilding it" in capsys.readouterr().err
    assert search_cli.main(["--index", str(damaged), "--json", "-k", "5", query]) == 0
    rebuilt = json.loads(capsys.readouterr().out)["results"]
    assert [r["id"] for r in rebuilt] == [r["id"] for r in intact]


@pytest.mark.slow
def test_reindex_is_incremental_and_index_of_another_model_is_refused(indexed, tmp_path, capsys):
    run, out, config, folder = indexed
    images = str(folder)
    assert index_cli.main(["--run", str(run), "--images", images, "--out", str(out), "--quiet"]) == 0
    assert "0 added" in capsys.readouterr().out

    other = tmp_path / "other_run"
    shutil.copytree(run, other)
    model = devise.DeViSEModel.load(other)
    kernel = model.image_projector.dense.kernel
    kernel.assign(kernel.numpy() * 1.01)
    model.save(other)
    before = out.read_bytes()
    assert search_cli.main(["--index", str(out), "--run", str(other), "a red circle"]) == 1
    err = capsys.readouterr().err
    assert "built by model" in err and "cannot be mixed" in err
    assert "Traceback" not in err
    assert index_cli.main(["--run", str(other), "--images", images, "--out", str(out), "--quiet"]) == 1
    assert out.read_bytes() == before


@pytest.mark.slow
def test_annotate_ranks_captions_for_a_photo(indexed, tmp_path, capsys):
    run, out, config, folder = indexed
    record = devise.datasets.unique_images(_test_records(config))[0]
    colour, shape = record.category.split("_")
    candidates = tmp_path / "captions.txt"
    candidates.write_text(
        "\n".join(
            f"a {c} {s}"
            for c in ("red", "green", "blue", "yellow")
            for s in ("circle", "square", "triangle", "star", "cross")
        )
        + "\n"
    )
    assert (
        search_cli.main(
            ["--run", str(run), "--image", record.image_path, "--captions", str(candidates), "-k", "20", "--json"]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)["results"]
    assert len(results) == 20
    top = [r["caption"] for r in results[:10]]
    assert any(colour in c for c in top), top


def test_search_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        search_cli.main(["a query"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        search_cli.main(["--index", "x.h5", "q", "-k", "0"])
    assert exc.value.code == 2


def test_search_missing_index_is_one_line(tmp_path, capsys):
    assert search_cli.main(["--index", str(tmp_path / "nope.h5"), "query"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("devise-search: error:") and len(err.splitlines()) == 1

import json
import shutil

import keras
import pytest

from devise.cli.eval import main


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A writable copy of the session's tiny demo run."""
    return shutil.copytree(tiny_run, tmp_path / "run")


def _split_records(run, split):
    import devise

    config = devise.load_config(run / "config.yaml")
    records = devise.datasets.read_pascal_sentences(config.data.root)
    s = config.data.split
    return devise.datasets.split_by_category(records, {"train": s.train, "val": s.val, "test": s.test}, seed=s.seed)[
        split
    ]


def test_eval_writes_reports_and_reproduces_the_run_metrics(run_copy, capsys):
    from devise.training.evaluation import caption_key

    assert main(["--run", str(run_copy), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "text->image" in out and "image->text" in out and "(ch" in out
    assert "Per category" in out and "t2i R@1" in out

    report = json.loads((run_copy / "eval-test.json").read_text())
    md = (run_copy / "eval-test.md").read_text()
    assert not [p for p in run_copy.iterdir() if ".tmp-" in p.name]
    assert report["split"] == "test"
    for direction in ("text_to_image", "image_to_text"):
        assert {"R@1", "R@5", "R@10", "medr", "meanr"} <= set(report[direction])
        assert {"R@1", "R@5", "R@10", "medr", "meanr"} <= set(report["chance"][direction])
    per = report["per_category"]
    assert len(per) == 20 and list(per) == sorted(per)
    for m in per.values():
        assert m["images"] == 1 and m["captions"] == 5
        assert m["text_to_image"]["queries"] == 5 and m["image_to_text"]["queries"] == 1
    assert sum(m["captions"] for m in per.values()) == report["captions"] == 100

    # The premise: no caption (after normalisation) is shared by two test images,
    # so the identical-caption rule changes nothing and the run's own numbers return.
    owners = {}
    for r in _split_records(run_copy, "test"):
        owners.setdefault(caption_key(r.caption), set()).add(r.image_id)
    assert all(len(images) == 1 for images in owners.values())
    trained = json.loads((run_copy / "metrics.json").read_text())
    assert trained["split"] == "test"
    assert (report["images"], report["captions"]) == (trained["images"], trained["captions"])
    for direction in ("text_to_image", "image_to_text"):
        for key in ("R@1", "R@5", "R@10", "medr", "meanr"):
            assert report[direction][key] == pytest.approx(trained[direction][key]), (direction, key)

    assert md.startswith("# Retrieval evaluation: test split")
    assert str(run_copy) in md and "## Overall" in md and "## Per category" in md
    section = md.split("## Per category")[1]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    categories = [line.split("|")[1].strip() for line in table[1:]]  # after the header row
    assert categories == sorted(per)


def test_val_split_and_json_output(run_copy, capsys):
    assert main(["--run", str(run_copy), "--split", "val", "--json", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["split"] == "val" and printed["images"] == 20
    assert len(printed["per_category"]) == 20
    assert printed == json.loads((run_copy / "eval-val.json").read_text())
    assert (run_copy / "eval-val.md").is_file()
    assert not (run_copy / "eval-test.json").exists()


def test_missing_run_directory_is_one_line(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert main(["--run", str(missing), "--quiet"]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("devise-eval: error: ") and str(missing) in err and "does not exist" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert captured.out == ""


def test_directory_that_is_not_a_run_names_what_is_missing(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert main(["--run", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "not a devise run directory" in err and "model.keras" in err and "config.yaml" not in err.split("missing")[1]
    assert len(err.splitlines()) == 1


def test_bad_split_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--run", str(tmp_path), "--split", "dev"])
    assert exc.value.code == 2
    assert "invalid choice: 'dev'" in capsys.readouterr().err


def test_model_with_another_image_width_is_refused(run_copy, capsys):
    import devise
    from devise.model import build_devise_model

    old = devise.DeViSEModel.load(run_copy)
    encoder = old.text_encoder
    narrow = build_devise_model(
        words=old.words,
        embedding_matrix=keras.ops.convert_to_numpy(encoder.word_vectors),
        image_dim=7,
        joint_dim=old.joint_dim,
        units=32,
        max_caption_length=old.max_caption_length,
        image_fingerprint=old.image_fingerprint,
    )
    devise.DeViSEModel(narrow).save(run_copy)
    assert main(["--run", str(run_copy), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "7-d image features" in err and len(err.splitlines()) == 1
    assert not (run_copy / "eval-test.json").exists()

"""devise-beam-extract on Beam's direct runner: the same features as the extractor, and readers that trust only verified shards.

One pipeline run (16 of the tiny demo's images plus a corrupt one, with the
tiny run's model, so embeddings too) is shared by the module's tests.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys

import numpy as np
import pytest

from devise.cli import beam_extract as beam_cli
from devise.cli import index as index_cli
from devise.encoders.feature_shards import (
    MANIFEST_FILE,
    FeatureShards,
    ShardRows,
    embed_from_shards,
    write_manifest,
    write_shard,
)
from devise.errors import DataFormatError, DeviseError, OptionalDependencyError

apache_beam = pytest.importorskip("apache_beam")  # the test extra installs it; CI fails on a skip
from apache_beam.io.filesystem import FileMetadata  # noqa: E402
from apache_beam.io.localfilesystem import LocalFileSystem  # noqa: E402

# Features of the same image in batches of different sizes differ in the last bits of float32
# (measured: 1.4e-6 at a value of 2.5, one image alone vs in a batch of 32), and Beam batches
# differently from a plain loop.
TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}
IMAGES = 16


@pytest.fixture(scope="module")
def extracted(tiny_run, tmp_path_factory):
    """16 of the tiny demo's images copied into a folder with a corrupt one, for devise-beam-extract with the run."""
    base = tmp_path_factory.mktemp("beam")
    images = base / "images"
    images.mkdir()
    for path in sorted((tiny_run.parent / "shapes" / "dataset").glob("*/*.jpg"))[:IMAGES]:
        shutil.copyfile(path, images / path.name)
    (images / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = base / "features"
    argv = ["--images", str(images), "--out", str(out), "--run", str(tiny_run), "--shards", "4"]
    argv += ["--", "--runner", "DirectRunner"]
    return {"base": base, "images": images, "out": out, "argv": argv, "run": tiny_run}


@pytest.fixture(scope="module")
def pipeline_output(extracted):
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = beam_cli.main(extracted["argv"])
    assert code == 0
    return stdout.getvalue()


@pytest.fixture(scope="module")
def reference(extracted):
    """The features and embeddings of the good images, computed the usual way (FeatureExtractor.extract_files)."""
    from devise.encoders.registry import feature_extractor_from_config
    from devise.model import DeViSEModel
    from devise.runs import read_run_config
    from devise.search.scan import scan_images

    paths = [f.path for f in scan_images(extracted["images"]) if not f.path.endswith("broken.jpg")]
    extractor = feature_extractor_from_config(read_run_config(extracted["run"]).image_encoder)
    result = extractor.extract_files(paths, progress=False)
    assert result.indices == list(range(len(paths))) and not result.failures
    embeddings = DeViSEModel.load(extracted["run"]).embed_image_features(result.features)
    return {"paths": paths, "features": result.features, "embeddings": embeddings, "extractor": extractor}


def test_beam_features_equal_the_extractors(pipeline_output, extracted, reference):
    assert "16 of 17 images extracted into 4 shards (1 skipped)" in pipeline_output
    shards = FeatureShards.open(extracted["out"], extractor_fingerprint=reference["extractor"].fingerprint())
    assert sorted(shards.paths) == sorted(reference["paths"])
    assert len(shards.manifest["shards"]) == 4 and shards.manifest["rows"] == IMAGES
    found = shards.lookup(reference["paths"])
    assert found.positions == list(range(IMAGES)) and found.missing == []
    np.testing.assert_allclose(found.vectors, reference["features"], **TOLERANCE)
    embeddings = shards.lookup(reference["paths"], "embeddings").vectors
    np.testing.assert_allclose(embeddings, reference["embeddings"], **TOLERANCE)


def test_beam_output_equals_devise_extracts(pipeline_output, extracted, reference, tmp_path, capsys):
    """The issue's criterion: on the same demo images, the same ids and features as devise-extract's cache."""
    from devise.cli import extract as extract_cli
    from devise.encoders import FeatureCache

    cache_path = tmp_path / "cache.h5"
    assert extract_cli.main(["--images", str(extracted["images"]), "--out", str(cache_path), "--quiet"]) == 0
    assert "16 extracted" in capsys.readouterr().out
    cached = FeatureCache(cache_path, reference["extractor"].fingerprint()).read()  # id (relative path) -> features
    shards = FeatureShards.open(extracted["out"], extractor_fingerprint=reference["extractor"].fingerprint())
    ids = sorted(cached)
    assert ids == sorted(os.path.relpath(p, extracted["images"]) for p in shards.paths)
    found = shards.lookup([os.path.join(extracted["images"], i) for i in ids])
    assert found.positions == list(range(IMAGES))
    np.testing.assert_allclose(found.vectors, np.stack([cached[i] for i in ids]), **TOLERANCE)


def test_corrupt_image_is_skipped_and_reported(pipeline_output, extracted):
    shards = FeatureShards.open(extracted["out"])
    [(path, reason)] = shards.failures
    assert path.endswith("broken.jpg") and "cannot decode" in reason
    assert shards.match([path]) == [None]


def test_a_changed_image_is_not_served_but_a_copied_one_is(pipeline_output, extracted, reference, tmp_path):
    shards = FeatureShards.open(extracted["out"])
    copied = tmp_path / "copy.jpg"
    shutil.copyfile(reference["paths"][3], copied)  # other path and mtime, same bytes
    changed = tmp_path / "changed.jpg"
    changed.write_bytes(pathlib.Path(reference["paths"][4]).read_bytes() + b"\0")
    assert shards.match([str(copied), str(changed), str(tmp_path / "absent.jpg")]) == [
        shards.paths.index(reference["paths"][3]),
        None,
        None,
    ]


def test_a_file_name_that_is_not_utf8_is_written_and_served(tmp_path):
    """``os.listdir`` gives b'caf\\xe9.jpg' (Latin-1) as 'caf\\udce9.jpg': writing it raised UnicodeEncodeError."""
    folder = tmp_path / "latin1"
    folder.mkdir()
    path = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    with open(path, "wb") as f:
        f.write(b"an image's bytes")
    (name,) = os.listdir(folder)
    assert name == "caf\udce9.jpg"
    key = os.path.join(str(folder), name)
    st = os.stat(key)
    rows = ShardRows([key], [st.st_size], [st.st_mtime_ns], np.zeros((1, 32), np.uint8), np.ones((1, 3), np.float32))
    info = write_shard(folder / "features-00000-of-00001.h5", rows, extractor_fingerprint="x")
    write_manifest(folder, [info], extractor_fingerprint="x", feature_dim=3)
    shards = FeatureShards.open(folder)
    assert shards.paths == [key] and shards.match([key]) == [0]


def _copy_output(extracted, tmp_path) -> pathlib.Path:
    copy = tmp_path / "features"
    shutil.copytree(extracted["out"], copy)
    return copy


def test_a_damaged_shard_is_refused(pipeline_output, extracted, tmp_path, capsys):
    copy = _copy_output(extracted, tmp_path)
    shard = sorted(copy.glob("features-*.h5"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match=f"{shard.name}: the shard's SHA-256 differs"):
        FeatureShards.open(copy)
    # devise-index says so in one line, before indexing anything.
    out = tmp_path / "index.h5"
    argv = ["--run", str(extracted["run"]), "--images", str(extracted["images"]), "--out", str(out)]
    assert index_cli.main([*argv, "--features", str(copy), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("devise-index: error:") and "SHA-256 differs" in err and "\n" not in err
    assert not out.exists()
    shard.unlink()
    with pytest.raises(DataFormatError, match=f"shard {shard.name} is missing"):
        FeatureShards.open(copy)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda m: m.update(rows=m["rows"] + 1), "do not add up"),
        (lambda m: m["shards"][0].update(rows=m["shards"][0]["rows"] - 1), "do not add up"),
        (lambda m: m["shards"][0].update(file="../elsewhere.h5"), "bad shard entry"),
        (lambda m: m["shards"].reverse() or m["shards"][0].update(sha256=m["shards"][1]["sha256"]), "SHA-256"),
        (lambda m: m.update(format_version=99), "version 99"),
        (lambda m: m.pop("extractor_fingerprint"), "extractor_fingerprint"),
    ],
    ids=["total", "shard-rows", "path", "digest", "version", "key"],
)
def test_a_damaged_manifest_is_refused(pipeline_output, extracted, tmp_path, damage, message):
    copy = _copy_output(extracted, tmp_path)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    damage(manifest)
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(DataFormatError, match=message):
        FeatureShards.open(copy)


def test_a_manifest_that_is_not_json_or_absent_is_refused(pipeline_output, extracted, tmp_path):
    copy = _copy_output(extracted, tmp_path)
    (copy / MANIFEST_FILE).write_text('{"format": "devise-feature-shards", ')
    with pytest.raises(DataFormatError, match="not a devise feature manifest"):
        FeatureShards.open(copy / MANIFEST_FILE)
    (copy / MANIFEST_FILE).unlink()
    with pytest.raises(DataFormatError, match="did the pipeline finish"):
        FeatureShards.open(copy)


def test_another_extractors_shards_are_refused(pipeline_output, extracted):
    with pytest.raises(DeviseError, match="extracted by 'efficientnet-lite0"):
        FeatureShards.open(extracted["out"], extractor_fingerprint="vgg16|imagenet|224x224|4096")


def test_devise_index_from_shards_equals_index_from_files(pipeline_output, extracted, tmp_path, capsys):
    from devise.search.index import ImageIndex

    images = str(extracted["images"])
    run = str(extracted["run"])
    assert index_cli.main(["--run", run, "--images", images, "--out", str(tmp_path / "files.h5"), "--quiet"]) == 0
    capsys.readouterr()
    argv = ["--run", run, "--images", images, "--out", str(tmp_path / "shards.h5"), "--quiet"]
    assert index_cli.main([*argv, "--features", str(extracted["out"] / MANIFEST_FILE)]) == 0
    out = capsys.readouterr()
    # broken.jpg, which the extraction could not decode either, is tried again (it may have been fixed).
    assert "16 images' embeddings read from its shards; 1 not in them went to the extractor" in out.out
    assert "16 images indexed" in out.out and "1 could not be read" in out.out
    from_files, from_shards = ImageIndex.open(tmp_path / "files.h5"), ImageIndex.open(tmp_path / "shards.h5")
    assert from_shards.ids == from_files.ids and len(from_files) == IMAGES
    assert from_shards.model_fingerprint == from_files.model_fingerprint
    rows = range(len(from_files))
    np.testing.assert_allclose(from_shards.embeddings(rows), from_files.embeddings(rows), **TOLERANCE)


def test_engine_update_index_from_shards_builds_no_backbone_when_they_hold_every_file(
    pipeline_output, extracted, tmp_path, monkeypatch
):
    """The shards are checked against the fingerprint the model records: the CNN is built only for missing files."""
    import devise.encoders.registry
    from devise.search.engine import SearchEngine

    def no_backbone(config):
        raise AssertionError("the backbone was built although the shards hold every file")

    monkeypatch.setattr(devise.encoders.registry, "feature_extractor_from_config", no_backbone)
    images = tmp_path / "images"
    shutil.copytree(extracted["images"], images, ignore=shutil.ignore_patterns("broken.jpg"))
    engine = SearchEngine.load(extracted["run"])
    report = engine.update_index(tmp_path / "i.h5", images, progress=False, features=extracted["out"])
    assert (report.added, report.failures) == (IMAGES, [])
    assert report.shards.endswith(
        f"{IMAGES} images' embeddings read from its shards; 0 not in them went to the extractor"
    )
    shards = FeatureShards.open(extracted["out"])
    shards.manifest["extractor_fingerprint"] = "vgg16|imagenet|224x224|4096"
    with pytest.raises(DeviseError, match="extracted by 'vgg16"):
        engine.update_index(tmp_path / "i.h5", images, progress=False, features=shards)


def test_features_only_shards_are_projected_and_missing_files_extracted(
    pipeline_output, extracted, reference, tmp_path
):
    """Shards without embeddings (no --run) serve through the model's projection; files they lack are extracted."""
    from devise.model import DeViSEModel

    full = FeatureShards.open(extracted["out"])
    keep = full.paths[:10]
    rows = full.match(keep)
    folder = tmp_path / "features-only"
    folder.mkdir()
    stats = full._row_stats()[rows]  # the rows copied exactly as they were written
    info = write_shard(
        folder / "features-00000.h5",
        ShardRows(keep, stats[:, 0], stats[:, 1], full._sha[rows], full.read(rows)),
        extractor_fingerprint=full.extractor_fingerprint,
    )
    write_manifest(folder, [info], extractor_fingerprint=full.extractor_fingerprint, feature_dim=1280)
    shards = FeatureShards.open(folder)
    model = DeViSEModel.load(extracted["run"])
    extracted_paths: list[str] = []

    def fallback(paths):
        extracted_paths.extend(paths)
        result = reference["extractor"].extract_files(paths, progress=False)
        return model.embed_image_features(result.features), result.indices, result.failures

    counts: dict[str, int] = {}
    embed = embed_from_shards(
        shards,
        model_fingerprint=model.fingerprint(),
        project=model.embed_image_features,
        fallback=fallback,
        counts=counts,
    )
    vectors, positions, failures = embed(reference["paths"])
    assert counts == {"from_shards": 10, "not_in_shards": 6} and not failures
    assert sorted(extracted_paths) == sorted(set(reference["paths"]) - set(keep))
    order = np.argsort(positions)
    np.testing.assert_allclose(vectors[order], reference["embeddings"], **TOLERANCE)


@pytest.mark.slow
def test_trainer_reads_features_from_the_shards(
    pipeline_output, extracted, tiny_overrides, repo_root, tmp_path, capsys
):
    """The tiny demo again: the 16 images the shards hold (copies: matched by content) come from them, the rest from a copy of its cache."""
    from devise.training import Trainer, load_config

    shutil.copytree(extracted["run"].parent / "cache", tmp_path / "cache")
    overrides = tiny_overrides(tmp_path) + [
        f"data.root={extracted['run'].parent / 'shapes'}",  # only read: the dataset is complete
        f"image_encoder.features={extracted['out'] / MANIFEST_FILE}",
        "trainer.epochs=1",
    ]
    config = load_config(repo_root / "configs" / "demo.yaml", overrides)
    Trainer(config, run_dir=str(tmp_path / "run"), verbose=True).run()
    err = capsys.readouterr().err
    assert f"image features: {IMAGES} images from {extracted['out'] / MANIFEST_FILE}" in err
    assert f"image features: {160 - IMAGES} images (0 computed" in err


def test_a_missing_manifest_is_reported_before_training(repo_root, tmp_path):
    from devise.training import load_config
    from devise.training.resources import find_missing_resources

    config = load_config(repo_root / "configs" / "demo.yaml", [f"image_encoder.features={tmp_path / 'absent.json'}"])
    assert any(p.startswith("image_encoder.features:") and "absent.json" in p for p in find_missing_resources(config))


def test_listing_images(tmp_path):
    from devise.pipelines.beam_extract import list_images

    (tmp_path / "a").mkdir()
    for name in ("a/1.jpg", "a/2.PNG", "a/notes.txt", "3.jpg"):
        (tmp_path / name).write_bytes(b"x")
    assert list_images(str(tmp_path)) == [str(tmp_path / "3.jpg"), str(tmp_path / "a/1.jpg"), str(tmp_path / "a/2.PNG")]
    assert list_images(str(tmp_path / "a" / "*.jpg")) == [str(tmp_path / "a/1.jpg")]
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / '3.jpg'}\n\n gs://bucket/x.jpg \n")
    assert list_images(file_list=str(listing)) == [str(tmp_path / "3.jpg"), "gs://bucket/x.jpg"]
    with pytest.raises(DeviseError, match="no images found"):
        list_images(str(tmp_path / "*.webp"))


def test_cli_errors_are_one_line(tmp_path, capsys, tiny_run):
    assert beam_cli.main(["--images", str(tmp_path / "absent"), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.startswith("devise-beam-extract: error:")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    unfinished = tmp_path / "run"
    shutil.copytree(tiny_run, unfinished)
    (unfinished / "run_complete.json").unlink()
    argv = ["--images", str(tmp_path / "img"), "--out", str(tmp_path / "out"), "--run", str(unfinished)]
    assert beam_cli.main(argv) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # Beam may log a warning when first imported
    assert last.startswith("devise-beam-extract: error:") and "did not finish" in last
    assert beam_cli.main([*argv[:4], "--shards", "0"]) == 1
    assert "--shards must be at least 1" in capsys.readouterr().err


def test_local_paths_are_refused_on_a_runner_whose_workers_run_elsewhere(tmp_path, capsys):
    """Shards written to a local --out on Dataflow would land on the workers' disks: refused before any work."""
    dataflow = ["--", "--runner", "DataflowRunner", "--project", "p", "--region", "r"]
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    (tmp_path / "list.txt").write_text("gs://bucket/photos/a.jpg\n")
    for images, out, what in (
        (["--list", str(tmp_path / "list.txt")], str(tmp_path / "out"), "--out"),
        (["--images", str(tmp_path / "img")], "gs://bucket/features", "image"),
    ):
        assert beam_cli.main([*images, "--out", out, *dataflow]) == 1, what
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith(f"devise-beam-extract: error: {what} ") and "DataflowRunner's workers cannot" in last
    assert not (tmp_path / "out").exists()
    from devise.pipelines.beam_extract import run_extraction

    with pytest.raises(DeviseError, match="--run .* is a local path"):
        run_extraction(["gs://b/a.jpg"], "gs://b/f", run_dir=str(tmp_path), pipeline_args=["--runner", "FlinkRunner"])


def test_without_apache_beam_the_error_says_how_to_install(monkeypatch):
    """The one mock here: hiding an installed package is the only way to see the message CI never meets."""
    monkeypatch.setitem(sys.modules, "apache_beam", None)
    monkeypatch.delitem(sys.modules, "devise.pipelines.beam_extract", raising=False)
    with pytest.raises(OptionalDependencyError, match=r"pip install 'devise\[beam\]'"):
        import devise.pipelines.beam_extract  # noqa: F401


class _BucketFileSystem(LocalFileSystem):
    """``devisetest://`` URLs served from a local folder, through Beam's FileSystems.

    The stand-in for ``gs://`` (no object store can be reached from the tests):
    the pipeline reads it only through Beam's file system interface, so the
    code that copies images and the run down and uploads shards runs as on GCS.
    """

    root = ""
    PREFIX = "devisetest://"

    @classmethod
    def scheme(cls):
        return "devisetest"

    def _local(self, url):
        # LocalFileSystem's own methods call these again with the local path.
        return os.path.join(self.root, url[len(self.PREFIX) :]) if url.startswith(self.PREFIX) else url

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/"), *paths])

    def exists(self, path):
        return os.path.exists(self._local(path))

    def _list(self, dir_or_prefix):
        for meta in super()._list(self._local(dir_or_prefix)):
            url = self.PREFIX + os.path.relpath(meta.path, self.root)
            yield FileMetadata(url, meta.size_in_bytes, meta.last_updated_in_seconds)

    def create(self, path, *args, **kwargs):
        return super().create(self._local(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)

    def last_updated(self, path):
        return super().last_updated(self._local(path))

    def delete(self, paths):
        return super().delete([self._local(p) for p in paths])


def test_images_run_and_output_behind_urls(pipeline_output, extracted, reference, tmp_path, monkeypatch):
    """Images, run and output as URLs (as on Dataflow with gs://): the rows match the local copies by content."""
    monkeypatch.setattr(_BucketFileSystem, "root", str(tmp_path / "bucket"))
    (tmp_path / "bucket" / "photos").mkdir(parents=True)
    for path in reference["paths"][:3]:
        shutil.copyfile(path, tmp_path / "bucket" / "photos" / os.path.basename(path))
    (tmp_path / "bucket" / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    shutil.copytree(extracted["run"], tmp_path / "bucket" / "run")
    # A previous extraction into the same --out with more shards: its manifest and every old shard must go.
    shutil.copytree(extracted["out"], tmp_path / "bucket" / "features")
    stale = tmp_path / "bucket" / "features" / "features-00007.h5"
    shutil.copyfile(tmp_path / "bucket" / "features" / MANIFEST_FILE, stale)
    argv = ["--images", "devisetest://photos/*.jpg", "--out", "devisetest://features", "--run", "devisetest://run"]
    assert beam_cli.main([*argv, "--shards", "2", "--quiet"]) == 0
    shards = FeatureShards.open(tmp_path / "bucket" / "features")
    written = {s["file"] for s in shards.manifest["shards"]}
    assert {p.name for p in (tmp_path / "bucket" / "features").iterdir()} == {MANIFEST_FILE, *written}
    assert written <= {"features-00000.h5", "features-00001.h5"}
    assert sorted(shards.paths) == sorted(f"devisetest://photos/{os.path.basename(p)}" for p in reference["paths"][:3])
    assert [p for p, _ in shards.failures] == ["devisetest://photos/broken.jpg"]
    assert shards.model_fingerprint and shards.manifest["run_dir"] == "devisetest://run"
    found = shards.lookup(reference["paths"][:4])  # the local originals: same bytes, other paths
    assert found.positions == [0, 1, 2] and found.missing == [3]
    np.testing.assert_allclose(found.vectors, reference["features"][:3], **TOLERANCE)

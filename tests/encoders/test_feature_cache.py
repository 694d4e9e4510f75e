"""FeatureCache: compute once, resume after a crash, refuse foreign caches."""

from __future__ import annotations

import glob
import os
import pathlib

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

from devise.encoders.feature_cache import FeatureCache, default_cache_path
from devise.encoders.feature_extractor import FeatureExtractor
from devise.errors import DeviseError


class MeanColour(FeatureExtractor):
    """Per-channel means of an 8x8 image (a GlobalAveragePooling2D model); counts calls."""

    name = "mean-colour"
    input_size = (8, 8)

    def __init__(self, *, weights_id: str = "none", batch_size: int = 2):
        super().__init__(batch_size=batch_size)
        self._weights_id = weights_id
        self.extract_calls = 0
        self.images_seen = 0

    @property
    def output_dim(self) -> int:
        return 3

    @property
    def weights_id(self) -> str:
        return self._weights_id

    def build_model(self):
        images = keras.Input((*self.input_size, 3))
        return keras.Model(images, keras.layers.GlobalAveragePooling2D()(images))

    def extract(self, images):
        self.extract_calls += 1
        self.images_seen += len(images)
        return super().extract(images)


class InterruptedMeanColour(MeanColour):
    """Raises KeyboardInterrupt on its ``interrupt_on``-th call of ``extract``."""

    def __init__(self, interrupt_on: int, **kwargs):
        super().__init__(**kwargs)
        self.interrupt_on = interrupt_on

    def extract(self, images):
        if self.extract_calls + 1 == self.interrupt_on:
            self.extract_calls += 1
            raise KeyboardInterrupt
        return super().extract(images)


def _colour(k: int) -> tuple[int, int, int]:
    return (10 * k % 256, (37 * k + 5) % 256, (101 * k + 50) % 256)


def _write_images(directory, n: int, start: int = 0):
    """PNG files of solid colours: their mean colour is exactly known."""
    ids, paths = [], []
    for k in range(start, start + n):
        path = directory / f"img{k:03d}.png"
        Image.new("RGB", (12 + k % 3, 8 + k % 5), _colour(k)).save(path)
        ids.append(f"img{k:03d}")
        paths.append(str(path))
    return ids, paths


def _expected(ids):
    return np.array([_colour(int(i[3:])) for i in ids], np.float32)


def _cache(tmp_path, extractor):
    return FeatureCache(default_cache_path(tmp_path / "cache", extractor), extractor.fingerprint())


def _tmp_files(tmp_path):
    return glob.glob(str(tmp_path / "cache" / "*.tmp-*"))


def test_second_run_computes_nothing_and_returns_the_same_features(tmp_path):
    ids, paths = _write_images(tmp_path, 5)
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)

    first = cache.get_or_compute(extractor, ids, paths, progress=False)
    assert first.computed == 5 and first.failures == []
    assert first.ids == ids
    assert first.features.dtype == np.float32 and first.features.shape == (5, 3)
    np.testing.assert_allclose(first.features, _expected(ids), atol=1e-3)
    assert os.path.isfile(cache.path)

    calls = extractor.extract_calls
    second = cache.get_or_compute(extractor, ids, paths, progress=False)
    assert second.computed == 0
    assert extractor.extract_calls == calls
    assert second.ids == ids
    np.testing.assert_array_equal(second.features, first.features)
    assert set(second.as_dict()) == set(ids)


def test_fresh_cache_object_reads_the_file(tmp_path):
    ids, paths = _write_images(tmp_path, 3)
    extractor = MeanColour()
    first = _cache(tmp_path, extractor).get_or_compute(extractor, ids, paths, progress=False)
    other = MeanColour()
    again = _cache(tmp_path, other).get_or_compute(other, ids[::-1], paths[::-1], progress=False)
    assert again.computed == 0 and other.extract_calls == 0
    assert again.ids == ids[::-1]  # request order, not cache order
    np.testing.assert_array_equal(again.features, first.features[::-1])


def test_new_ids_are_the_only_ones_computed(tmp_path):
    ids, paths = _write_images(tmp_path, 4)
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)
    cache.get_or_compute(extractor, ids[:3], paths[:3], progress=False)
    assert extractor.images_seen == 3

    table = cache.get_or_compute(extractor, ids, paths, progress=False)
    assert table.computed == 1
    assert extractor.images_seen == 4
    assert table.ids == ids
    np.testing.assert_allclose(table.features, _expected(ids), atol=1e-3)
    assert set(cache.read()) == set(ids)


def test_bad_image_is_skipped_reported_not_cached_and_retried_once_fixed(tmp_path):
    ids, paths = _write_images(tmp_path, 3)
    with open(paths[1], "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n this is not a png")
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)

    table = cache.get_or_compute(extractor, ids, paths, progress=False)
    assert table.ids == [ids[0], ids[2]]
    np.testing.assert_allclose(table.features, _expected([ids[0], ids[2]]), atol=1e-3)
    assert [p for p, _ in table.failures] == [paths[1]]
    assert paths[1] in table.failures[0][1]
    assert ids[1] not in cache.read()

    # Still broken: tried again, still reported.
    again = cache.get_or_compute(extractor, ids, paths, progress=False)
    assert again.computed == 1 and len(again.failures) == 1

    Image.new("RGB", (9, 9), _colour(1)).save(paths[1])
    fixed = cache.get_or_compute(extractor, ids, paths, progress=False)
    assert fixed.computed == 1 and fixed.failures == []
    assert fixed.ids == ids
    np.testing.assert_allclose(fixed.features, _expected(ids), atol=1e-3)


def test_cache_from_another_fingerprint_is_refused(tmp_path):
    ids, paths = _write_images(tmp_path, 2)
    imagenet = MeanColour(weights_id="imagenet")
    path = tmp_path / "shared.h5"
    FeatureCache(path, imagenet.fingerprint()).get_or_compute(imagenet, ids, paths, progress=False)

    random = MeanColour(weights_id="none")
    with pytest.raises(DeviseError, match="shared.h5") as info:
        FeatureCache(path, random.fingerprint()).get_or_compute(random, ids, paths, progress=False)
    assert imagenet.fingerprint() in str(info.value)
    assert random.extract_calls == 0
    # The other extractor's cache is left alone.
    assert FeatureCache(path, imagenet.fingerprint()).read().keys() == set(ids)


def test_extractor_must_match_the_cache_fingerprint(tmp_path):
    ids, paths = _write_images(tmp_path, 1)
    cache = FeatureCache(tmp_path / "c.h5", MeanColour(weights_id="a").fingerprint())
    with pytest.raises(ValueError):
        cache.get_or_compute(MeanColour(weights_id="b"), ids, paths, progress=False)
    with pytest.raises(ValueError):
        cache.get_or_compute(MeanColour(weights_id="a"), ids, paths * 2, progress=False)


def test_garbage_at_the_cache_path_is_refused_not_overwritten(tmp_path):
    ids, paths = _write_images(tmp_path, 3)
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)
    os.makedirs(os.path.dirname(cache.path))
    garbage = os.urandom(64) + b"definitely not HDF5" * 10
    with open(cache.path, "wb") as f:
        f.write(garbage)
    with pytest.raises(DeviseError, match="not an HDF5 feature cache; refusing to overwrite it") as info:
        cache.get_or_compute(extractor, ids, paths, progress=False)
    assert cache.path in str(info.value) and "\n" not in str(info.value)
    assert pathlib.Path(cache.path).read_bytes() == garbage


def test_cache_missing_datasets_is_recomputed(tmp_path, capsys):
    ids, paths = _write_images(tmp_path, 2)
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)
    os.makedirs(os.path.dirname(cache.path))
    with h5py.File(cache.path, "w") as f:  # right fingerprint, no datasets
        f.attrs["fingerprint"] = extractor.fingerprint()
    assert cache.get_or_compute(extractor, ids, paths, progress=False).computed == 2
    assert "warning" in capsys.readouterr().err


def test_interrupted_run_keeps_checkpoints_and_resumes(tmp_path):
    ids, paths = _write_images(tmp_path, 10)
    # batch_size 2, checkpoint every 4 images: chunk 1 = calls 1-2, chunk 2 =
    # calls 3-4, chunk 3 = call 5 (interrupted, after 2 checkpoints).
    interrupted = InterruptedMeanColour(interrupt_on=5, batch_size=2)
    cache = _cache(tmp_path, interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_compute(interrupted, ids, paths, progress=False, checkpoint_every=4)

    assert _tmp_files(tmp_path) == []
    saved = FeatureCache(cache.path, interrupted.fingerprint()).read()
    assert sorted(saved) == ids[:8]
    np.testing.assert_allclose(np.stack([saved[i] for i in ids[:8]]), _expected(ids[:8]), atol=1e-3)

    resumed = MeanColour(batch_size=2)
    table = cache.get_or_compute(resumed, ids, paths, progress=False, checkpoint_every=4)
    assert table.computed == 2
    assert resumed.images_seen == 2
    assert table.ids == ids
    np.testing.assert_allclose(table.features, _expected(ids), atol=1e-3)
    assert _tmp_files(tmp_path) == []


def test_interruption_before_first_checkpoint_leaves_no_file(tmp_path):
    ids, paths = _write_images(tmp_path, 4)
    interrupted = InterruptedMeanColour(interrupt_on=1, batch_size=2)
    cache = _cache(tmp_path, interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_compute(interrupted, ids, paths, progress=False, checkpoint_every=2)
    assert not os.path.exists(cache.path)
    assert _tmp_files(tmp_path) == []


def test_progress_counts_across_checkpoints(tmp_path):
    ids, paths = _write_images(tmp_path, 7)
    extractor = MeanColour(batch_size=2)
    cache = _cache(tmp_path, extractor)
    cache.get_or_compute(extractor, ids[:2], paths[:2], progress=False)
    seen = []
    cache.get_or_compute(extractor, ids, paths, progress=lambda d, t: seen.append((d, t)), checkpoint_every=2)
    # Only the 5 missing images count, and the count never goes back.
    assert all(t == 5 for _, t in seen)
    assert seen[-1] == (5, 5)
    done = [d for d, _ in seen]
    assert done == sorted(done)


def test_empty_request(tmp_path):
    extractor = MeanColour()
    table = _cache(tmp_path, extractor).get_or_compute(extractor, [], [], progress=False)
    assert table.ids == [] and table.features.shape == (0, 3) and table.computed == 0


def test_default_cache_path_depends_on_the_fingerprint(tmp_path):
    a = default_cache_path(tmp_path, MeanColour(weights_id="imagenet"))
    b = default_cache_path(tmp_path, MeanColour(weights_id="none"))
    assert a != b
    assert a == default_cache_path(tmp_path, MeanColour(weights_id="imagenet"))
    for path in (a, b):
        assert os.path.dirname(path) == str(tmp_path)
        assert os.path.basename(path).startswith("mean-colour-") and path.endswith(".h5")


# -- stale features (issue 8 item 10): rows are keyed by the image file ---------


def _age(paths, seconds: int = 3600) -> None:
    """Date files back, as if the dataset had been generated an hour ago."""
    for path in paths:
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


def test_regenerated_images_are_re_extracted_exactly_where_the_content_changed(tmp_path):
    ids, paths = _write_images(tmp_path, 6)
    _age(paths)
    extractor = MeanColour(batch_size=1)
    cache = _cache(tmp_path, extractor)
    assert cache.get_or_compute(extractor, ids, paths, progress=False).computed == 6

    # The dataset is generated again into the same folder: same names, every
    # file rewritten (new mtime), two of them with other pixels.
    changed = {1: (200, 10, 30), 4: (5, 250, 5)}
    for k, path in enumerate(paths):
        Image.new("RGB", (12 + k % 3, 8 + k % 5), changed.get(k, _colour(k))).save(path)
    seen = extractor.images_seen
    table = cache.get_or_compute(extractor, ids, paths, progress=False)
    # Only the files whose content changed are extracted again; a file
    # rewritten with the same bytes (or only touched) keeps its features,
    # because a changed size or mtime is confirmed by the content hash.
    assert table.computed == 2
    assert extractor.images_seen - seen == 2
    expected = _expected(ids)
    for k, colour in changed.items():
        expected[k] = colour
    np.testing.assert_allclose(table.features, expected, atol=1e-3)

    # Nothing changed since: nothing is hashed or extracted again.
    again = MeanColour(batch_size=1)
    assert cache.get_or_compute(again, ids, paths, progress=False).computed == 0
    assert again.extract_calls == 0


def test_touched_file_keeps_its_features_and_its_new_stamp_is_recorded(tmp_path):
    ids, paths = _write_images(tmp_path, 2)
    _age(paths)
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)
    cache.get_or_compute(extractor, ids, paths, progress=False)
    os.utime(paths[0])  # touch: new mtime, same bytes
    assert cache.get_or_compute(extractor, ids, paths, progress=False).computed == 0
    with cache.open() as store:
        stamps = {row.path: row.mtime_ns for row in store.rows()}  # the last row of a file wins
    assert stamps[os.path.abspath(paths[0])] == os.stat(paths[0]).st_mtime_ns


def test_same_ids_in_another_folder_are_not_taken_for_the_same_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ids, paths_a = _write_images(tmp_path / "a", 4)
    ids_b, paths_b = _write_images(tmp_path / "b", 4, start=10)  # other pixels...
    for old, new in zip(paths_b, paths_a):  # ...under the same names
        os.replace(old, os.path.join(tmp_path / "b", os.path.basename(new)))
    paths_b = [os.path.join(tmp_path / "b", os.path.basename(p)) for p in paths_a]
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)
    cache.get_or_compute(extractor, ids, paths_a, progress=False)

    table = cache.get_or_compute(extractor, ids, paths_b, progress=False)
    assert table.computed == 4
    np.testing.assert_allclose(table.features, _expected(ids_b), atol=1e-3)
    # A copy of folder a (other paths, same bytes) is found by content.
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in paths_a:
        (copy / os.path.basename(path)).write_bytes(pathlib.Path(path).read_bytes())
    paths_copy = [str(copy / os.path.basename(p)) for p in paths_a]
    seen = extractor.images_seen
    table = cache.get_or_compute(extractor, ids, paths_copy, progress=False)
    assert table.computed == 0 and extractor.images_seen == seen
    np.testing.assert_allclose(table.features, _expected(ids), atol=1e-3)


def test_old_format_cache_is_recomputed_and_says_so(tmp_path, capsys):
    ids, paths = _write_images(tmp_path, 3)
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)
    os.makedirs(os.path.dirname(cache.path))
    with h5py.File(cache.path, "w") as f:  # format 1: rows keyed by image id only
        f.attrs["fingerprint"] = extractor.fingerprint()
        f.attrs["format_version"] = 1
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("features", data=np.full((3, 3), 7.0, np.float32))  # stale
    table = cache.get_or_compute(extractor, ids, paths, progress=False)
    assert table.computed == 3
    np.testing.assert_allclose(table.features, _expected(ids), atol=1e-3)
    err = capsys.readouterr().err
    assert cache.path in err and "format" in err and "recomput" in err
    assert cache.get_or_compute(extractor, ids, paths, progress=False).computed == 0


def test_flipped_bytes_in_the_features_are_detected_and_recomputed(tmp_path, capsys):
    ids, paths = _write_images(tmp_path, 4)
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)
    good = cache.get_or_compute(extractor, ids, paths, progress=False).features
    raw = bytearray(pathlib.Path(cache.path).read_bytes())
    start = bytes(raw).find(np.ascontiguousarray(good, np.float32).tobytes())
    assert start > 0
    raw[start + 21] ^= 0x40  # one bit of one feature
    pathlib.Path(cache.path).write_bytes(bytes(raw))

    table = cache.get_or_compute(extractor, ids, paths, progress=False)
    assert table.computed == 4
    np.testing.assert_array_equal(table.features, good)
    err = capsys.readouterr().err
    assert "warning" in err and cache.path in err and "recomput" in err


def test_truncated_cache_is_recomputed_with_a_warning(tmp_path, capsys):
    ids, paths = _write_images(tmp_path, 4)
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)
    cache.get_or_compute(extractor, ids, paths, progress=False)
    size = os.path.getsize(cache.path)
    os.truncate(cache.path, size * 2 // 3)
    table = cache.get_or_compute(extractor, ids, paths, progress=False)
    assert table.computed == 4
    np.testing.assert_allclose(table.features, _expected(ids), atol=1e-3)
    err = capsys.readouterr().err
    assert "warning" in err and cache.path in err


def test_format_2_cache_is_recomputed_and_says_so(tmp_path, capsys):
    ids, paths = _write_images(tmp_path, 2)
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)
    os.makedirs(os.path.dirname(cache.path))
    with h5py.File(cache.path, "w") as f:  # format 2: one fixed-size dataset per column, rewritten whole
        f.attrs["fingerprint"] = extractor.fingerprint()
        f.attrs["format_version"] = 2
        f.create_dataset("features", data=np.full((2, 3), 7.0, np.float32))
    assert cache.get_or_compute(extractor, ids, paths, progress=False).computed == 2
    err = capsys.readouterr().err
    assert "format 2" in err and "recomput" in err
    assert cache.get_or_compute(extractor, ids, paths, progress=False).computed == 0


def test_appends_past_the_datasets_are_not_trusted(tmp_path, capsys):
    ids, paths = _write_images(tmp_path, 3)
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)
    cache.get_or_compute(extractor, ids, paths, progress=False)
    with h5py.File(cache.path, "r+") as f:
        f.attrs["appends"] = 5  # more committed appends than records
    table = cache.get_or_compute(extractor, ids, paths, progress=False)
    assert table.computed == 3
    np.testing.assert_allclose(table.features, _expected(ids), atol=1e-3)
    assert "not intact" in capsys.readouterr().err


class RewritingMeanColour(MeanColour):
    """Rewrites ``path`` with another colour after the cache has planned, just before the files are read."""

    def __init__(self, path, colour, **kwargs):
        super().__init__(**kwargs)
        self.rewrite = (path, colour)

    def iter_features(self, paths, **kwargs):
        path, colour = self.rewrite
        Image.new("RGB", (12, 8), colour).save(path)
        yield from super().iter_features(paths, **kwargs)


def test_a_file_rewritten_between_plan_and_decode_is_recorded_as_what_was_decoded(tmp_path):
    ids, paths = _write_images(tmp_path, 1)
    original = pathlib.Path(paths[0]).read_bytes()
    extractor = RewritingMeanColour(paths[0], (200, 100, 0))
    cache = _cache(tmp_path, extractor)
    first = cache.get_or_compute(extractor, ids, paths, progress=False)
    np.testing.assert_allclose(first.features, [[200, 100, 0]], atol=1e-3)  # what was decoded
    copy = tmp_path / "copy.png"
    copy.write_bytes(original)  # the old bytes: must not be served the rewritten file's features
    again = cache.get_or_compute(MeanColour(), ["copy"], [str(copy)], progress=False)
    np.testing.assert_allclose(again.features, _expected(ids), atol=1e-3)


def test_a_consumer_that_stops_early_leaves_no_decode_threads(tmp_path):
    import threading

    def stop(done, total):
        raise KeyboardInterrupt  # the consumer, not the generator, raises: the generator must still be closed

    ids, paths = _write_images(tmp_path, 6)
    extractor = MeanColour(batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        _cache(tmp_path, extractor).get_or_compute(extractor, ids, paths, progress=stop, workers=3)
    assert not [t for t in threading.enumerate() if t.name.startswith("devise-decode")]


def test_a_cache_another_process_is_writing_is_refused_in_one_line(tmp_path):
    import fcntl

    ids, paths = _write_images(tmp_path, 2)
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)
    os.makedirs(os.path.dirname(cache.path), exist_ok=True)
    with open(cache.path + ".lock", "a") as other:  # another open file: flock conflicts as across processes
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DeviseError, match="another process is writing this cache") as info:
            cache.get_or_compute(extractor, ids, paths, progress=False)
        assert "\n" not in str(info.value) and not os.path.exists(cache.path)
    assert cache.get_or_compute(extractor, ids, paths, progress=False).computed == 2  # free again


def test_a_file_requested_under_two_ids_does_not_grow_the_cache_every_run(tmp_path):
    ids, paths = _write_images(tmp_path, 2)
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)
    counts = []
    for _ in range(4):
        table = cache.get_or_compute(extractor, [*ids, "alias"], [*paths, paths[0]], progress=False)
        np.testing.assert_allclose(table.features[2], table.features[0])
        with cache.open() as store:
            counts.append(len(store.rows()))
    assert counts[1:] == [counts[1]] * 3, counts


def test_re_stamped_rows_are_read_in_blocks_not_all_at_once(tmp_path, monkeypatch):
    from devise.encoders import feature_cache
    from devise.encoders.feature_store import FeatureStore

    ids, paths = _write_images(tmp_path, 7)
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)
    cache.update(extractor, ids, paths, progress=False)
    sizes = []
    read = FeatureStore.read_features
    monkeypatch.setattr(feature_cache, "_BLOCK_ROWS", 2)
    monkeypatch.setattr(FeatureStore, "read_features", lambda self, rows: sizes.append(len(rows)) or read(self, rows))
    renamed = [f"other-{i}" for i in ids]  # every file under a new id: every row re-stamped
    assert cache.update(extractor, renamed, paths, progress=False).rows == 7
    assert sizes and max(sizes) <= 2
    np.testing.assert_allclose(
        cache.get_or_compute(extractor, renamed, paths, progress=False).features, _expected(ids), atol=1e-3
    )


def test_compact_keeps_the_current_rows_and_drops_stale_and_missing_ones(tmp_path):
    ids, paths = _write_images(tmp_path, 6)
    _age(paths)
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)
    cache.get_or_compute(extractor, [*ids, "alias"], [*paths, paths[0]], progress=False)
    # Two files get other pixels (new rows; their old ones are stale), one is deleted.
    for k in (1, 4):
        Image.new("RGB", (12 + k % 3, 8 + k % 5), (k, 2 * k, 3 * k)).save(paths[k])
    os.remove(paths[5])
    before = cache.get_or_compute(extractor, [*ids[:5], "alias"], [*paths[:5], paths[0]], progress=False)
    with cache.open() as store:
        assert len(store.rows()) == 9  # 6 + the alias + 2 re-extracted

    kept = cache.compact()
    assert (kept.rows_before, kept.kept, kept.stale, kept.missing) == (9, 7, 2, 0)
    dropped = cache.compact(drop_missing=True)
    assert (dropped.rows_before, dropped.kept, dropped.stale, dropped.missing) == (7, 6, 0, 1)
    assert dropped.bytes_after <= dropped.bytes_before and not _tmp_files(tmp_path)
    assert cache.compact(drop_missing=True).kept == 6  # nothing left to do: the file is not rewritten

    # The compacted cache answers the same request with the same features, computing nothing.
    again = MeanColour()
    after = cache.get_or_compute(again, [*ids[:5], "alias"], [*paths[:5], paths[0]], progress=False)
    assert after.computed == 0 and again.extract_calls == 0
    np.testing.assert_array_equal(after.features, before.features)
    with cache.open() as store:
        assert sorted(row.image_id for row in store.rows()) == sorted([*ids[:5], "alias"])


def test_compact_refuses_a_damaged_cache_and_an_interrupted_one_leaves_the_old_file(tmp_path, monkeypatch):
    ids, paths = _write_images(tmp_path, 4)
    _age(paths)
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)
    cache.get_or_compute(extractor, ids, paths, progress=False, checkpoint_every=2)
    Image.new("RGB", (12, 8), (1, 2, 3)).save(paths[0])
    cache.get_or_compute(extractor, ids, paths, progress=False)
    original = pathlib.Path(cache.path).read_bytes()

    from devise.encoders.feature_store import FeatureStore

    def interrupted(self, infos, features):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(FeatureStore, "append", interrupted)
        with pytest.raises(KeyboardInterrupt):
            cache.compact()
    assert pathlib.Path(cache.path).read_bytes() == original and not _tmp_files(tmp_path)

    with h5py.File(cache.path, "r+") as f:  # flip bytes in the first append's features
        f["features"][0] = f["features"][0] + 1.0
    with pytest.raises(DeviseError, match="extract into it first") as info:
        cache.compact()
    assert "\n" not in str(info.value)
    assert pathlib.Path(cache.path).read_bytes() != original  # only our flip: compaction wrote nothing
    with pytest.raises(DeviseError, match="no feature cache to compact"):
        FeatureCache(tmp_path / "nothing.h5", extractor.fingerprint()).compact()


def test_a_fully_cached_request_is_answered_while_another_process_holds_the_write_lock(tmp_path):
    """devise-eval next to a notebook training on the same cache: readers do not refuse each other."""
    import fcntl

    ids, paths = _write_images(tmp_path, 3)
    extractor = MeanColour()
    cache = _cache(tmp_path, extractor)
    first = cache.get_or_compute(extractor, ids, paths, progress=False)
    with open(cache.path + ".lock", "a") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        again = cache.get_or_compute(extractor, ids[::-1], paths[::-1], progress=False)
        assert again.computed == 0
        np.testing.assert_array_equal(again.features, first.features[::-1])
        assert cache.update(extractor, ids, paths, progress=False).cached == 3
        # Something to write still needs the lock.
        new_ids, new_paths = _write_images(tmp_path, 1, start=3)
        with pytest.raises(DeviseError, match="another process is writing this cache"):
            cache.get_or_compute(extractor, ids + new_ids, paths + new_paths, progress=False)

"""Photo dates in the index: EXIF date when present, else modification time; date filters use them."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import pathlib
import time
import types

import h5py
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from devise.search import scan
from devise.search.engine import SearchEngine
from devise.search.index import ImageIndex, IndexDamagedError, update_index
from devise.search.photo_date import date_text, parse_exif_date, photo_date

DIM = 4


def save_photo(path: pathlib.Path, colour, *, original=None, offset=None, digitized=None, plain=None, mtime=None):
    """A real image file; EXIF tags only for the dates given; ``mtime`` as ``YYYY-MM-DD`` (UTC noon)."""
    exif = Image.Exif()
    if plain is not None:
        exif[306] = plain
    sub = exif.get_ifd(0x8769)
    for tag, value in ((36867, original), (36881, offset), (36868, digitized)):
        if value is not None:
            sub[tag] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path, exif=exif)
    if mtime is not None:
        set_mtime(path, mtime)


def set_mtime(path: pathlib.Path, day: str) -> None:
    ns = int(dt.datetime.fromisoformat(day + "T12:00:00+00:00").timestamp()) * 10**9
    os.utime(path, ns=(ns, ns))


def embed(paths):
    """A unit vector per file from its mean colour: the date code under test does not involve the model."""
    vectors = []
    for path in paths:
        with Image.open(path) as img:
            mean = np.asarray(img.convert("RGB"), np.float32).reshape(-1, 3).mean(axis=0) / 255.0
        vector = np.append(mean, 0.5)
        vectors.append(vector / np.linalg.norm(vector))
    return np.asarray(vectors, np.float32).reshape(-1, DIM), list(range(len(paths))), []


def build(index: pathlib.Path, root: pathlib.Path, **kwargs):
    return update_index(index, root, model_fingerprint="model-a", run_dir="", embed=embed, progress=False, **kwargs)


@pytest.fixture
def dated_photos(tmp_path, paris_time) -> pathlib.Path:
    """Five photos whose EXIF dates and modification times disagree (all modified in 2024 or 2018)."""
    root = tmp_path / "photos"
    save_photo(root / "exif.jpg", (200, 0, 0), original="2019:07:14 10:00:00", mtime="2024-03-01")
    # 23:30 in New York on the 14th is 05:30 on the 15th in Paris.
    save_photo(root / "offset.jpg", (0, 200, 0), original="2019:07:14 23:30:00", offset="-04:00", mtime="2024-03-02")
    save_photo(root / "garbage.jpg", (0, 0, 200), original="0000:00:00 00:00:00", plain="    :  :     :  :  ",
               mtime="2018-05-05")  # fmt: skip
    save_photo(root / "trips" / "plain-datetime.jpg", (200, 200, 0), plain="2015:03:03 12:00:00", mtime="2024-03-03")
    root.joinpath("trips", "no-exif.png").parent.mkdir(exist_ok=True)
    Image.new("RGB", (8, 6), (90, 90, 90)).save(root / "trips" / "no-exif.png")
    set_mtime(root / "trips" / "no-exif.png", "2020-01-01")
    return root


class StubModel:
    """The parts of DeViSEModel a photo-only query uses: none of its text side is called."""

    image_fingerprint = ""

    def fingerprint(self):
        return "model-a"


def test_exif_dates_are_parsed_and_garbage_is_refused(paris_time):
    assert parse_exif_date("2019:07:14 10:00:00") == dt.datetime(2019, 7, 14, 8, 0, tzinfo=dt.UTC)
    assert parse_exif_date(b"2019:07:14 10:00:00\x00", "+09:00") == dt.datetime(2019, 7, 14, 1, 0, tzinfo=dt.UTC)
    assert parse_exif_date("2019-07-14 10:00:00.25", "-03:30") == dt.datetime(2019, 7, 14, 13, 30, tzinfo=dt.UTC)
    # A malformed offset is ignored: the date is then local time.
    assert parse_exif_date("2019:07:14 10:00:00", "+9") == parse_exif_date("2019:07:14 10:00:00")
    assert parse_exif_date("2019:07:14 10:00:00", "+15:00") == parse_exif_date("2019:07:14 10:00:00")
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for garbage in (
        None,
        "",
        "0000:00:00 00:00:00",
        "    :  :     :  :  ",
        "2019:13:01 10:00:00",
        "2019:02:30 10:00:00",
        "2019:07:14 24:00:00",
        "1800:01:01 00:00:00",
        "2026:01:03 00:00:00",  # two days after "now"
        "14/07/2019 10:00",
        12345,
    ):
        assert parse_exif_date(garbage, now=now) is None, garbage
    assert parse_exif_date("2026:01:01 20:00:00", now=now) is not None  # later today: a clock a few hours off


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Asia/Tokyo"])
def test_a_date_at_the_end_of_the_calendar_is_garbage_in_any_time_zone(tmp_path, monkeypatch, zone):
    """Converting 9999-12-31 23:59:59 local time raised OverflowError (behind UTC) or ValueError (ahead of it)."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        assert parse_exif_date("9999:12:31 23:59:59") is None
        assert parse_exif_date("9999:12:31 23:59:59", now=dt.datetime(9998, 12, 31, tzinfo=dt.UTC)) is None
        path = tmp_path / "far.jpg"
        save_photo(path, (1, 2, 3), original="9999:12:31 23:59:59", mtime="2020-01-01")
        mtime_ns = os.stat(path).st_mtime_ns
        assert photo_date(str(path), mtime_ns) == (mtime_ns, "mtime")
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_png_date_comes_from_an_exif_chunk_before_the_pixels_which_are_never_decoded(
    tmp_path, monkeypatch, paris_time
):
    exif = Image.Exif()
    exif[306] = "2015:03:03 12:00:00"
    exif.get_ifd(0x8769)[36867] = "2019:07:14 10:00:00"
    Image.new("RGB", (8, 6)).save(tmp_path / "with.png", exif=exif)  # Pillow writes eXIf before IDAT
    Image.new("RGB", (8, 6)).save(tmp_path / "without.png")
    loads = []
    real_load = PngImagePlugin.PngImageFile.load
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda self: (loads.append(self), real_load(self))[1])
    taken = int(dt.datetime(2019, 7, 14, 8, 0, tzinfo=dt.UTC).timestamp()) * 10**9
    assert photo_date(str(tmp_path / "with.png"), 5) == (taken, "exif")
    assert photo_date(str(tmp_path / "without.png"), 5) == (5, "mtime")
    assert loads == []  # Pillow's getexif() would have decoded the PNG without eXIf to look after its pixels


def test_the_index_stores_each_photos_date_and_its_source(tmp_path, dated_photos):
    build(tmp_path / "i.h5", dated_photos)
    index = ImageIndex.open(tmp_path / "i.h5")
    dates = {image_id: index.photo_date(row) for row, image_id in enumerate(index.ids)}
    assert dates == {
        "exif.jpg": ("2019-07-14T10:00:00+02:00", "exif"),
        "offset.jpg": ("2019-07-15T05:30:00+02:00", "exif"),
        "garbage.jpg": ("2018-05-05T14:00:00+02:00", "mtime"),
        "trips/plain-datetime.jpg": ("2015-03-03T12:00:00+01:00", "exif"),
        "trips/no-exif.png": ("2020-01-01T13:00:00+01:00", "mtime"),
    }
    for row, image_id in enumerate(index.ids):
        if dates[image_id][1] == "mtime":
            assert index.date_ns[row] == index.mtime_ns[row] == os.stat(dated_photos / image_id).st_mtime_ns
    assert photo_date(str(dated_photos / "exif.jpg"), 0) == (index.date_ns[index.row_of("exif.jpg")], "exif")
    assert date_text(0) == "1970-01-01T01:00:00+01:00"


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        ("2019-07-14", "2019-07-14", ["exif.jpg"]),  # a local day: the New York evening is the next day here
        ("2019-07-15", "2019-07-15", ["offset.jpg"]),
        ("2019-07-14T10:00:00", "2019-07-15T05:30:00", ["exif.jpg", "offset.jpg"]),  # bounds inclusive
        ("2024-01-01", None, []),  # every modification time but one is in 2024: none counts
        (None, "2018-12-31", ["garbage.jpg", "trips/plain-datetime.jpg"]),
        ("2019-12-31T23:00:00+00:00", "2020-01-01", ["trips/no-exif.png"]),
    ],
)
def test_date_filters_use_the_exif_date_over_the_modification_time(tmp_path, dated_photos, since, until, expected):
    build(tmp_path / "i.h5", dated_photos)
    index = ImageIndex.open(tmp_path / "i.h5")
    engine = SearchEngine(StubModel(), types.SimpleNamespace(fingerprint=lambda: ""), index)
    hits = engine.search(None, k=10, like_rows=[0], since=since, until=until)
    assert sorted(hit.id for hit in hits) == expected
    # The ranking is the masked exact search: the same order as ranking the matching rows by hand.
    stored = index.embeddings(range(len(index)))
    matching = [index.row_of(image_id) for image_id in expected]
    ranked = sorted(matching, key=lambda row: (-float(stored[row] @ stored[0]), row))
    assert [hit.id for hit in hits] == [index.ids[row] for row in ranked]
    for hit in hits:
        assert (hit.date, hit.date_source) == index.photo_date(index.row_of(hit.id))


def test_updates_carry_unchanged_dates_and_reread_changed_files(tmp_path, dated_photos, monkeypatch):
    opened: list[str] = []
    real = scan.photo_date
    monkeypatch.setattr(scan, "photo_date", lambda path, mtime_ns: (opened.append(os.path.basename(path)), real(path, mtime_ns))[1])  # fmt: skip
    out = tmp_path / "i.h5"
    build(out, dated_photos, checkpoint_every=2)  # checkpoints carry the dates written so far
    assert sorted(opened) == ["exif.jpg", "garbage.jpg", "no-exif.png", "offset.jpg", "plain-datetime.jpg"]
    first = ImageIndex.open(out)
    before = {image_id: first.photo_date(row) for row, image_id in enumerate(first.ids)}
    opened.clear()
    assert build(out, dated_photos).unchanged == 5
    assert opened == []  # nothing changed: no file opened
    # One photo re-saved with another EXIF date (mtime moves on), one added.
    save_photo(dated_photos / "exif.jpg", (201, 0, 0), original="2021:02:03 04:05:06", mtime="2024-04-01")
    save_photo(dated_photos / "new.jpg", (0, 0, 0), original="2022:12:24 18:00:00")
    report = build(out, dated_photos)
    assert (report.updated, report.added, report.unchanged) == (1, 1, 4)
    assert sorted(opened) == ["exif.jpg", "new.jpg"]
    index = ImageIndex.open(out)
    after = {image_id: index.photo_date(row) for row, image_id in enumerate(index.ids)}
    assert after.pop("exif.jpg") == ("2021-02-03T04:05:06+01:00", "exif")
    assert after.pop("new.jpg") == ("2022-12-24T18:00:00+01:00", "exif")
    before.pop("exif.jpg")
    assert after == before


def make_format_2(path: pathlib.Path) -> None:
    """Turn an index into what devise wrote before photo dates: no date datasets, the version-2 digest."""
    with h5py.File(path, "r+") as f:
        del f["date_ns"], f["date_source"]
        f.attrs["format_version"] = 2
        keys = ("format", "format_version", "model_fingerprint", "run_dir", "image_root", "dim")
        attrs = {key: f.attrs[key] for key in keys}
        digest = hashlib.sha256(json.dumps({k: str(attrs[k]) for k in keys}, sort_keys=True).encode())
        for name in ("ids", "paths"):
            texts = list(f[name].asstr()[()])
            digest.update(str(len(texts)).encode())
            digest.update("\0".join(texts).encode())
        for name, dtype in (("mtime_ns", "<i8"), ("size", "<i8"), ("row_check", "<f4")):
            digest.update(np.ascontiguousarray(f[name][()], dtype).tobytes())
        f.attrs["metadata_sha256"] = digest.hexdigest()


def test_a_format_2_index_is_refused_with_advice_and_upgraded_by_an_update_without_embedding(
    tmp_path, dated_photos, capsys
):
    out = tmp_path / "i.h5"
    build(out, dated_photos)
    before = ImageIndex.open(out)
    dates = {image_id: before.photo_date(row) for row, image_id in enumerate(before.ids)}
    vectors = before.embeddings(range(len(before)))
    make_format_2(out)
    with pytest.raises(IndexDamagedError, match=r"must be rebuilt \(format version 2, from before indexes stored") as e:
        ImageIndex.open(out)
    assert "run devise-index again with the same --out" in str(e.value) and "\n" not in str(e.value)
    embedded: list[str] = []
    report = update_index(out, dated_photos, model_fingerprint="model-a", run_dir="", progress=False,
                          embed=lambda paths: (embedded.extend(paths), embed(paths))[1])  # fmt: skip
    assert (report.added, report.updated, report.unchanged, embedded) == (0, 0, 5, [])
    assert "format version 2" in capsys.readouterr().err
    index = ImageIndex.open(out)
    assert index.ids == before.ids and {i: index.photo_date(r) for r, i in enumerate(index.ids)} == dates
    np.testing.assert_array_equal(index.embeddings(range(len(index))), vectors)
    # A format-2 index whose checksum fails is still rebuilt from the images.
    make_format_2(out)
    with h5py.File(out, "r+") as f:
        f.attrs["run_dir"] = "elsewhere"
    assert build(out, dated_photos).added == 5


def test_devise_index_rebuilds_a_format_2_index_and_search_json_gives_dates(tiny_run, tmp_path, capsys, paris_time):
    """The console commands end to end with the tiny trained run: refused by search, rebuilt by devise-index."""
    from devise.cli import index as index_cli
    from devise.cli import search as search_cli

    root = tmp_path / "photos"
    save_photo(root / "a.jpg", (220, 20, 20), original="2019:07:14 10:00:00", mtime="2024-03-01")
    save_photo(root / "b.jpg", (20, 20, 220), mtime="2021-06-01")
    out = tmp_path / "photos.h5"
    argv = ["--run", str(tiny_run), "--images", str(root), "--out", str(out), "--quiet"]
    assert index_cli.main(argv) == 0
    make_format_2(out)
    capsys.readouterr()
    assert search_cli.main(["--index", str(out), "a red circle", "--json"]) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "format version 2" in err and "devise-index" in err
    assert index_cli.main(argv) == 0
    assert "rewriting it as version 3" in capsys.readouterr().err
    assert search_cli.main(["--index", str(out), "a red circle", "--json", "--since", "2019-07-14"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert {r["id"]: (r["date"], r["date_source"]) for r in results} == {
        "a.jpg": ("2019-07-14T10:00:00+02:00", "exif"),
        "b.jpg": ("2021-06-01T14:00:00+02:00", "mtime"),
    }
    assert search_cli.main(["--index", str(out), "a red circle", "--json", "--until", "2020-01-01"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)["results"]] == ["a.jpg"]


def test_an_undated_file_cannot_be_written_into_an_index(tmp_path):
    from devise.search.index import ImageFile, create_index_file, new_index_file

    with new_index_file(tmp_path / "i.h5") as f, pytest.raises(ValueError, match="date was not read"):
        create_index_file(f, [ImageFile("a.jpg", "/p/a.jpg", 0, 0)], model_fingerprint="m", run_dir="",
                          image_root="/p", dim=2)  # fmt: skip

"""The search API gives each result's photo date and its source, and filters on that date."""

from __future__ import annotations

import datetime as dt
import os
import types

import pytest
from PIL import Image


class PhotoOnlyModel:
    """The parts of DeViSEModel a "more like this" query uses (no text): only its fingerprint."""

    image_fingerprint = ""

    def fingerprint(self):
        return "test"


def test_api_results_give_the_photo_date_and_source_and_filter_on_it(tmp_path, index_folder, fetch, paris_time):
    pytest.importorskip("fastapi")
    from devise.search.engine import SearchEngine
    from devise.web import BackgroundServer, create_app

    root = tmp_path / "photos"
    root.mkdir()
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2019:07:14 10:00:00"
    Image.new("RGB", (8, 6), (200, 0, 0)).save(root / "taken.jpg", exif=exif)
    Image.new("RGB", (8, 6), (0, 0, 200)).save(root / "plain.png")
    modified = int(dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC).timestamp()) * 10**9
    for name in ("taken.jpg", "plain.png"):
        os.utime(root / name, ns=(modified, modified))
    index = index_folder(root)
    engine = SearchEngine(PhotoOnlyModel(), types.SimpleNamespace(fingerprint=lambda: ""), index)
    with BackgroundServer(create_app(engine, captions=["a thing"]), log_level="critical") as server:
        status, body = fetch.json(server, "/api/search?like_row=0&k=5")
        assert status == 200
        assert {r["id"]: (r["date"], r["date_source"]) for r in body["results"]} == {
            "taken.jpg": ("2019-07-14T10:00:00+02:00", "exif"),
            "plain.png": ("2024-03-01T13:00:00+01:00", "mtime"),
        }
        # Both files were modified in 2024; only the EXIF date puts one in 2019.
        status, body = fetch.json(server, "/api/search?like_row=0&k=5&since=2019-07-14&until=2019-07-14")
        assert status == 200 and [r["id"] for r in body["results"]] == ["taken.jpg"]
        status, body = fetch.json(server, "/api/search?like_row=0&k=5&since=2024-01-01")
        assert status == 200 and [r["id"] for r in body["results"]] == ["plain.png"]

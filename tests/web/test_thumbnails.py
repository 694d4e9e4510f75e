"""Thumbnails stay within bounded memory and work (issue 8 item 2): a pixel limit checked before
decoding, a disk cache, one computation per image, and 503 beyond the queue."""

import concurrent.futures
import io
import shutil
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image

from devise.web import thumbnails
from devise.web.thumbnails import (
    ImageDecodeError,
    ImageTooLargeError,
    SingleFlight,
    ThumbnailBusyError,
    ThumbnailStore,
    render_thumbnail,
)

HUGE = 12000  # 144 megapixels: 430 MB decoded as RGB, about 140 kB as a blank PNG

# Pillow warns on opening any image over 89 megapixels; here that is the point.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory, blank_png):
    """A blank 12000x12000 PNG, written once per module."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    blank_png(path, HUGE, HUGE)
    return path


def jpeg_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        return image.size


def test_a_huge_png_is_refused_without_decoding_it(huge_png):
    """Measured in a fresh process: the refusal costs no more memory than reading the header."""
    path = huge_png
    assert path.stat().st_size < 1_000_000
    code = (
        "import resource, sys, PIL.Image, PIL.PngImagePlugin\n"
        "from devise.web.thumbnails import render_thumbnail, ImageTooLargeError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    with open(sys.argv[1], 'rb') as f:\n"
        "        render_thumbnail(f, 256)\n"
        "    print('rendered')\n"
        "except ImageTooLargeError as exc:\n"
        "    print('refused:', exc)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    verdict, grown_mb = result.stdout.strip().splitlines()
    assert verdict.startswith("refused: 12000x12000 pixels (144.0 megapixels)"), verdict
    assert int(grown_mb) < 40, f"peak memory grew by {grown_mb} MB"


def test_the_limit_counts_the_pixels_actually_decoded(tmp_path):
    """A JPEG decodes at 1/8 scale for a small thumbnail, so it passes a limit its full size would not."""
    Image.new("L", (4000, 3000), 128).save(tmp_path / "big.jpg", quality=70)
    Image.new("L", (4000, 3000), 128).save(tmp_path / "big.png")
    with open(tmp_path / "big.jpg", "rb") as f:
        assert jpeg_size(render_thumbnail(f, 128, max_pixels=1_000_000)) == (128, 96)
    with open(tmp_path / "big.png", "rb") as f, pytest.raises(ImageTooLargeError, match="4000x3000"):
        render_thumbnail(f, 128, max_pixels=1_000_000)


def test_rendering_modes_orientation_and_bad_files(tmp_path):
    # Transparent pixels become white, not black.
    Image.new("RGBA", (64, 32), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    with open(tmp_path / "clear.png", "rb") as f, Image.open(io.BytesIO(render_thumbnail(f, 32))) as thumb:
        assert thumb.size == (32, 16) and min(thumb.getpixel((5, 5))) > 245
    # EXIF orientation 6 (rotate 90°): a 64x32 stored image is shown 16x32 at size 32.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (64, 32), (10, 120, 200)).save(tmp_path / "turned.jpg", exif=exif)
    with open(tmp_path / "turned.jpg", "rb") as f:
        assert jpeg_size(render_thumbnail(f, 32)) == (16, 32)
    # Palette with transparency, 16-bit grey.
    Image.new("P", (20, 20), 3).save(tmp_path / "palette.gif", transparency=3)
    Image.new("I;16", (20, 20), 4000).save(tmp_path / "deep.png")
    for name in ("palette.gif", "deep.png"):
        with open(tmp_path / name, "rb") as f:
            assert jpeg_size(render_thumbnail(f, 16)) == (16, 16)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with open(tmp_path / "bad.jpg", "rb") as f, pytest.raises(ImageDecodeError):
        render_thumbnail(f, 16)


def test_the_store_keeps_thumbnails_on_disk_keyed_by_the_file(tmp_path, monkeypatch):
    Image.new("RGB", (80, 60), (200, 30, 30)).save(tmp_path / "a.jpg")
    calls = []
    real = thumbnails.render_thumbnail
    monkeypatch.setattr(thumbnails, "render_thumbnail", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    store = ThumbnailStore(tmp_path / "thumbs", size=32)
    key = ("a.jpg", 1234, 5678)
    with open(tmp_path / "a.jpg", "rb") as f:
        first = store.get(key, f)
    with open(tmp_path / "a.jpg", "rb") as f:
        assert store.get(key, f) == first
    assert ThumbnailStore(tmp_path / "thumbs", size=32).get(key, None) == first  # survives a restart
    assert len(calls) == 1
    assert store.path_for(("a.jpg", 1234, 5679)) != store.path_for(key)  # a changed file gets a new one
    assert ThumbnailStore(tmp_path / "thumbs", size=64).path_for(key) != store.path_for(key)
    leftovers = [p.name for p in (tmp_path / "thumbs").rglob("*") if p.is_file() and not p.name.endswith(".jpg")]
    assert leftovers == []


def test_single_flight_runs_once_for_concurrent_callers():
    flight = SingleFlight()
    calls = []
    started = threading.Event()

    def work():
        calls.append(1)
        started.set()
        time.sleep(0.3)
        return "done"

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(flight.run, "key", work)]
        started.wait(5)
        futures += [pool.submit(flight.run, "key", work) for _ in range(7)]
        assert [f.result() for f in futures] == ["done"] * 8
    assert len(calls) == 1
    with pytest.raises(ZeroDivisionError):  # a failure reaches the caller, and the next call runs again
        flight.run("key", lambda: 1 / 0)
    assert flight.run("key", lambda: "again") == "again"


def test_the_store_refuses_beyond_workers_plus_queue(tmp_path, monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(thumbnails, "render_thumbnail", lambda *a, **kw: release.wait(10) and b"\xff\xd8\xff\xd9")
    store = ThumbnailStore(tmp_path / "thumbs", workers=1, queue=1)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        running = [pool.submit(store.get, (f"{i}.jpg", 1, 1), None) for i in range(2)]
        time.sleep(0.2)
        with pytest.raises(ThumbnailBusyError):
            store.get(("2.jpg", 1, 1), None)
        release.set()
        assert [f.result(10) for f in running] == [b"\xff\xd8\xff\xd9"] * 2
    assert store.get(("2.jpg", 1, 1), None) == b"\xff\xd8\xff\xd9"  # room again


# -- through the server ---------------------------------------------------------------------------


@pytest.fixture
def huge_index(photo_folder, index_folder, huge_png):
    """The photo folder plus a 12000x12000 PNG, indexed (with random vectors: indexing decodes nothing)."""
    shutil.copyfile(huge_png, photo_folder / "huge.png")
    return index_folder(photo_folder)


def test_server_refuses_a_huge_thumbnail_and_still_serves_the_file(huge_index, serve_index, fetch, photo_folder):
    server = serve_index(huge_index)
    row = huge_index.row_of("huge.png")
    status, body = fetch.json(server, f"/api/thumbnail/{row}")
    assert status == 422 and "12000x12000 pixels (144.0 megapixels)" in body["error"]
    assert "--max-image-pixels" in body["error"]
    status, body = fetch.json(server, f"/api/captions/{row}")
    assert status == 422 and "144.0 megapixels" in body["error"]
    status, _, data = fetch(server, f"/api/image/{row}")
    assert status == 200 and data == (photo_folder / "huge.png").read_bytes()
    status, _, data = fetch(server, f"/api/thumbnail/{huge_index.row_of('a.png')}")
    assert status == 200 and max(jpeg_size(data)) <= 256


def test_server_makes_each_thumbnail_once_for_concurrent_requests(
    huge_index, serve_index, fetch, monkeypatch, tmp_path
):
    calls = []
    real = thumbnails.render_thumbnail

    def slow_render(*args, **kwargs):
        calls.append(1)
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(thumbnails, "render_thumbnail", slow_render)
    server = serve_index(huge_index, thumbnail_dir=tmp_path / "thumbs", thumbnail_workers=1, thumbnail_queue=0)
    path = f"/api/thumbnail/{huge_index.row_of('b.jpg')}"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: fetch(server, path), range(8)))
    assert [a[0] for a in answers] == [200] * 8 and len({a[2] for a in answers}) == 1
    assert len(calls) == 1
    # Kept on disk: another request, or another server on the same folder, makes nothing.
    assert fetch(server, path)[0] == 200
    other = serve_index(huge_index, thumbnail_dir=tmp_path / "thumbs")
    assert fetch(other, path)[0] == 200 and len(calls) == 1


def test_server_answers_503_with_retry_after_when_saturated(huge_index, serve_index, fetch, monkeypatch):
    real = thumbnails.render_thumbnail
    slow = threading.Event()
    slow.set()

    def slow_render(*args, **kwargs):
        if slow.is_set():
            time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(thumbnails, "render_thumbnail", slow_render)
    server = serve_index(huge_index, thumbnail_workers=1, thumbnail_queue=1)
    rows = [huge_index.row_of(name) for name in ("a.png", "b.jpg", "c.gif", "d.webp", "e.png", "f.jpg")]
    barrier = threading.Barrier(len(rows))

    def ask(row):
        barrier.wait()
        return fetch(server, f"/api/thumbnail/{row}")

    with concurrent.futures.ThreadPoolExecutor(len(rows)) as pool:
        answers = list(pool.map(ask, rows))
    statuses = sorted(a[0] for a in answers)
    assert set(statuses) == {200, 503} and statuses.count(200) <= 2, statuses
    for status, headers, body in answers:
        if status == 503:
            assert headers["Retry-After"] == "1" and b"server busy" in body
    status, body = fetch.json(server, "/api/health")
    assert status == 200 and body["status"] == "ok"
    # Retried later, every one is served.
    slow.clear()
    assert all(fetch(server, f"/api/thumbnail/{row}")[0] == 200 for row in rows)


def test_an_unwritable_thumbnail_folder_falls_back_to_a_temporary_one(
    photo_folder, index_folder, serve_index, fetch, tmp_path
):
    (tmp_path / "a-file").write_text("not a folder")
    index = index_folder(photo_folder)
    server = serve_index(index, thumbnail_dir=tmp_path / "a-file" / "thumbs")
    status, _, data = fetch(server, f"/api/thumbnail/{index.row_of('b.jpg')}")
    assert status == 200 and jpeg_size(data)

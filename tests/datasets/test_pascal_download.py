"""Tests for the Pascal Sentences downloader against a real local HTTP server.

The server serves a page in the official page's structure plus small real
JPEGs, with scripted faults per image (404, truncated bodies, HTML instead
of an image, transient 500s, slow answers, stalls) and a log of every
request, so the tests see exactly what the client fetched.
"""

from __future__ import annotations

import collections
import html
import http.server
import io
import json
import pathlib
import random
import re
import threading
import time
import urllib.parse

import pytest
from PIL import Image

from devise.cli.download import main as download_main
from devise.datasets.images import load_image
from devise.datasets.pascal import read_pascal_sentences
from devise.datasets.pascal_download import download_pascal, parse_pascal_page

PAGE_PATH = "/pascal-sentences/"
CATEGORIES = ("aeroplane", "bird", "cat", "dog")
SENTENCES_PER_IMAGE = 5


# --------------------------------------------------------------------------
# Fixture server
# --------------------------------------------------------------------------


class FixtureServer:
    """A ThreadingHTTPServer on 127.0.0.1 with Range support and scripted faults.

    Faults (by URL path): ``"404"``, ``"500x2"`` (500 twice, then fine),
    ``"truncated"`` (full Content-Length, half the body, then the connection
    closes), ``"short"`` (a correct but short Content-Length: half the
    body), ``"slow"`` (sleeps before answering), ``"html"`` (an HTML page
    with status 200). With ``stall_after = n`` every image request after the
    first ``n`` sends half its bytes, waits ``stall_seconds`` and closes.
    """

    def __init__(self, start_server):
        self.files: dict[str, tuple[bytes, str]] = {}
        self.faults: dict[str, str] = {}
        self.log: list[tuple[str, str | None]] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.stall_after: int | None = None
        self.stall_seconds = 0.5
        self.image_requests = 0
        self.httpd = start_server(self._handle)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def requests_for(self, path: str) -> int:
        with self.lock:
            return sum(1 for p, _ in self.log if p == path)

    def reset_log(self) -> None:
        with self.lock:
            self.log.clear()

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        path = urllib.parse.urlsplit(handler.path).path
        range_header = handler.headers.get("Range")
        with self.lock:
            self.log.append((path, range_header))
            self.counts[path] += 1
            count = self.counts[path]
            is_image = path.endswith(".jpg")
            if is_image:
                self.image_requests += 1
            stall = is_image and self.stall_after is not None and self.image_requests > self.stall_after
        fault = self.faults.get(path)
        if path not in self.files or fault == "404":
            handler.send_error(404, "Not Found")
            return
        if fault == "500x2" and count <= 2:
            handler.send_error(500, "Internal Server Error")
            return
        body, content_type = self.files[path]
        if fault == "html":
            body, content_type = b"<html><body><h1>Service moved</h1></body></html>", "text/html"
        if fault == "slow":
            time.sleep(0.4)
        if fault == "truncated":
            self._headers(handler, 200, content_type, len(body))
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return
        if fault == "short":
            half = body[: len(body) // 2]
            self._headers(handler, 200, content_type, len(half))
            handler.wfile.write(half)
            return

        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match:
            start = int(match.group(1))
            if start >= len(body):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(body)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            self._headers(
                handler,
                206,
                content_type,
                len(body) - start,
                content_range=f"bytes {start}-{len(body) - 1}/{len(body)}",
            )
        else:
            self._headers(handler, 200, content_type, len(body))
        payload = body[start:]
        if self.stall_after is not None and not stall:
            time.sleep(0.1)  # lets every worker's first request reach the server
        if stall:
            handler.wfile.write(payload[: len(payload) // 2])
            handler.wfile.flush()
            time.sleep(self.stall_seconds)
            handler.close_connection = True
            return
        handler.wfile.write(payload)

    @staticmethod
    def _headers(handler, status, content_type, length, content_range=None):
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(length))
        handler.send_header("Accept-Ranges", "bytes")
        if content_range:
            handler.send_header("Content-Range", content_range)
        handler.end_headers()


@pytest.fixture
def server(http_server_factory):
    return FixtureServer(http_server_factory)


# --------------------------------------------------------------------------
# Fixture dataset
# --------------------------------------------------------------------------


def _jpeg(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (48, 36))
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(48 * 36)])
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _sentences(category: str, stem: str) -> list[str]:
    # Entities and non-ASCII characters must survive the round trip.
    return [
        f"A {category} & its friend in picture {stem}, caption {k}."
        if k == 0
        else f'Caption {k} of {stem}: the "{category}" is near a café.'
        if k == 1
        else f"Caption {k} of {stem} shows a {category}."
        for k in range(SENTENCES_PER_IMAGE)
    ]


def _page(items: list[tuple[str, str, list[str]]]) -> str:
    """HTML in the official structure, mixing old (upper case, unquoted, unclosed) and modern rows."""
    rows = []
    for index, (category, file_name, sentences) in enumerate(items):
        if index % 3 == 0:
            cells = "".join(f"<TR><TD> {html.escape(s)}\n" for s in sentences)
            rows.append(f"<TR><TD><IMG SRC={category}/{file_name}></TD><TD><TABLE>{cells}</TABLE></TD></TR>")
        else:
            cells = "".join(f"<tr><td>{html.escape(s).replace('é', '&eacute;')}</td></tr>\n" for s in sentences)
            rows.append(
                f'<tr>\n<td><img src="{category}/{file_name}" width="500"/></td>\n'
                f"<td><table>\n{cells}</table></td>\n</tr>"
            )
    return (
        '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01 Transitional//EN">\n'
        "<HTML><HEAD><TITLE>Pascal Sentences</TITLE></HEAD><BODY>\n"
        '<img src="logo.png"><H1>Collecting Image Annotations</H1>\n'
        "<table>\n" + "\n".join(rows) + "\n</table>\n</BODY></HTML>\n"
    )


def _publish(server: FixtureServer, n_images: int) -> dict[str, dict]:
    """Serve a page of ``n_images`` images; return {image path: info} keyed by URL path."""
    items = []
    info = {}
    for index in range(n_images):
        category = CATEGORIES[index % len(CATEGORIES)]
        stem = f"2008_{index:06d}"
        file_name = f"{stem}.jpg"
        sentences = _sentences(category, stem)
        items.append((category, file_name, sentences))
        path = f"{PAGE_PATH}{category}/{file_name}"
        data = _jpeg(index)
        server.files[path] = (data, "image/jpeg")
        info[path] = {"id": f"{category}/{stem}", "sentences": sentences, "bytes": data}
    server.files[PAGE_PATH] = (_page(items).encode("utf-8"), "text/html; charset=utf-8")
    return info


def _url_path(dest: pathlib.Path, file: pathlib.Path) -> str:
    """The server path an image file (or its .part) under ``dest/dataset`` came from."""
    return PAGE_PATH + file.relative_to(dest / "dataset").as_posix().removesuffix(".part")


def _records_by_image(root: pathlib.Path) -> dict[str, list[str]]:
    by_image: dict[str, list[str]] = collections.defaultdict(list)
    for record in read_pascal_sentences(root):
        by_image[record.image_id].append(record.caption)
    return dict(by_image)


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def test_parse_pascal_page_tolerates_old_html():
    page = """<HTML><BODY><IMG SRC=logo.gif><P>Header
    <TABLE BORDER=1>
    <TR><TD>ignored header cell</TD></TR>
    <TR><TD><IMG SRC=aeroplane/2008_000032.jpg ALT=plane><TD><TABLE>
      <TR><TD> One jet lands  at an airport &amp; another
           takes off.
      <TR><TD>Two airplanes&nbsp;parked&#46;
      <tr><td>A &quot;jet&quot; &eacute;<br>below</td></tr>
    </TABLE>
    <tr><td><img src='bird/2008_000054.JPG'></td><td><table><tr><td>A bird.</td></tr></table></td></tr>
    <tr><td><img src="/other/place/cat/2009_1.jpg"></td><td><table><tr><td>Absolute.</td></tr></table>
    <tr><td><img src="aeroplane/2008_000032.jpg"></td><td><table><tr><td>Duplicate.</td></tr></table>
    </TABLE></BODY></HTML>"""
    entries = parse_pascal_page(page, "http://example.org/pascal-sentences/index.html")
    assert [(e.category, e.file_name) for e in entries] == [
        ("aeroplane", "2008_000032.jpg"),
        ("bird", "2008_000054.JPG"),
        ("cat", "2009_1.jpg"),
    ]
    plane = entries[0]
    assert plane.image_url == "http://example.org/pascal-sentences/aeroplane/2008_000032.jpg"
    assert plane.image_id == "aeroplane/2008_000032"
    assert plane.sentences == (
        "One jet lands at an airport & another takes off.",
        "Two airplanes parked.",
        'A "jet" é below',
    )
    assert entries[1].sentences == ("A bird.",)
    assert entries[2].image_url == "http://example.org/other/place/cat/2009_1.jpg"


def test_download_writes_layout_reports_failures_and_resumes(server, tmp_path):
    info = _publish(server, 30)
    paths = sorted(info)
    faults = {
        paths[1]: "404",
        paths[6]: "404",
        paths[10]: "truncated",
        paths[14]: "short",
        paths[18]: "slow",
        paths[21]: "html",
        paths[25]: "500x2",
    }
    server.faults.update(faults)
    failing = {p for p, f in faults.items() if f in ("404", "truncated", "short", "html")}
    good = [p for p in paths if p not in failing]
    dest = tmp_path / "pascal"
    seen_progress = []

    report = download_pascal(
        dest,
        url=server.base + PAGE_PATH,
        workers=8,
        retries=2,
        timeout=5,
        backoff=0.02,
        progress=lambda done, total: seen_progress.append((done, total)),
    )

    assert not report.complete
    assert report.total == 30 and report.downloaded == 25 and report.skipped == 0
    assert seen_progress[-1] == (30, 30)
    reasons = {failure.image_id: failure.reason for failure in report.failures}
    assert set(reasons) == {info[p]["id"] for p in failing}
    assert {f.url for f in report.failures} == {server.base + p for p in failing}
    for path, fault in faults.items():
        if path in failing:
            reason = reasons[info[path]["id"]]
            expected = {
                "404": "HTTP 404",
                "truncated": "truncated",
                "short": "cannot decode",
                "html": "served as text/html",
            }[fault]
            assert expected in reason, (fault, reason)
    # 404 is final at once; the truncated and bad bodies were retried; 500 twice then success.
    assert server.requests_for(paths[1]) == 1
    assert server.requests_for(paths[10]) == 3
    assert server.requests_for(paths[21]) == 3
    assert server.requests_for(paths[25]) == 3

    # The standard layout: every good image with its five sentences, nothing else.
    by_image = _records_by_image(dest)
    assert set(by_image) == {info[p]["id"] for p in good}
    for path in good:
        assert by_image[info[path]["id"]] == info[path]["sentences"]
        category, file_name = path[len(PAGE_PATH) :].split("/")
        assert (dest / "dataset" / category / file_name).read_bytes() == info[path]["bytes"]
    for path in failing:
        category, file_name = path[len(PAGE_PATH) :].split("/")
        assert not (dest / "dataset" / category / file_name).exists()
    for image in (dest / "dataset").rglob("*.jpg"):
        load_image(image)
    sentence_text = (dest / "sentence" / "aeroplane" / "2008_000000.txt").read_text(encoding="utf-8")
    assert sentence_text.splitlines() == _sentences("aeroplane", "2008_000000")

    manifest = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["source_url"] == server.base + PAGE_PATH
    assert manifest["complete"] is False and manifest["downloaded_at"]
    statuses = {image["id"]: image for image in manifest["images"]}
    assert len(statuses) == 30
    for path in good:
        entry = statuses[info[path]["id"]]
        assert entry["status"] == "downloaded" and entry["size"] == len(info[path]["bytes"])
        assert len(entry["sha256"]) == 64
    assert all(statuses[info[p]["id"]]["status"] == "failed" for p in failing)

    # Second run, through the CLI: nothing already complete is fetched again,
    # the same images fail, and the exit code says so.
    server.reset_log()
    exit_code = download_main(
        [
            "pascal",
            "--dest",
            str(dest),
            "--url",
            server.base + PAGE_PATH,
            "--workers",
            "8",
            "--retries",
            "0",
            "--timeout",
            "5",
            "--quiet",
        ]
    )
    assert exit_code == 1
    fetched = {p for p, _ in server.log}
    assert fetched == {PAGE_PATH} | failing
    assert not list(dest.rglob("*.tmp"))
    manifest = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
    assert sum(image["status"] == "present" for image in manifest["images"]) == 25


def test_cli_prints_failures_and_exits_nonzero(server, tmp_path, capsys):
    info = _publish(server, 6)
    paths = sorted(info)
    server.faults[paths[2]] = "404"
    dest = tmp_path / "pascal"
    code = download_main(
        [
            "pascal",
            "--dest",
            str(dest),
            "--url",
            server.base + PAGE_PATH,
            "--retries",
            "0",
            "--quiet",
        ]
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "5 downloaded" in out and "1 failed" in out
    assert info[paths[2]]["id"] in out and "HTTP 404" in out and server.base + paths[2] in out

    # A page that cannot be fetched is one error line, no traceback.
    code = download_main(["pascal", "--dest", str(dest), "--url", server.base + "/nowhere/", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("devise-download: error: cannot download") and "HTTP 404" in err
    assert "Traceback" not in err
    # ... and a destination it had to create is not left behind, empty.
    fresh = tmp_path / "fresh" / "pascal"
    assert download_main(["pascal", "--dest", str(fresh), "--url", server.base + "/nowhere/", "--quiet"]) == 1
    assert not fresh.exists() and "HTTP 404" in capsys.readouterr().err


def test_destination_that_cannot_be_a_folder_is_one_error_line(server, tmp_path, capsys):
    _publish(server, 2)
    blocker = tmp_path / "pascal"
    blocker.write_text("a file where the folder should be")
    code = download_main(["pascal", "--dest", str(blocker), "--url", server.base + PAGE_PATH, "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("devise-download: error: cannot download") and f"cannot create the folder {blocker}" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_interrupted_run_resumes_without_corrupt_files(server, tmp_path):
    info = _publish(server, 12)
    # The first 5 image requests are served; every later one sends half its
    # bytes and stalls, so downloads are mid-flight when Ctrl-C arrives.
    server.stall_after = 5
    server.stall_seconds = 0.3
    dest = tmp_path / "pascal"

    def interrupt(done, total):
        if done >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_pascal(
            dest, url=server.base + PAGE_PATH, workers=8, retries=1, timeout=5, backoff=0.01, progress=interrupt
        )

    images = list((dest / "dataset").rglob("*.jpg"))
    parts = list((dest / "dataset").rglob("*.jpg.part"))
    assert len(images) == 5
    assert parts, "some downloads should have been cut off mid-flight"
    for image in images:
        load_image(image)  # every finished image decodes
    for part in parts:
        assert 0 < part.stat().st_size < len(info[_url_path(dest, part)]["bytes"])
    part_sizes = {part: part.stat().st_size for part in parts}
    assert json.loads((dest / "manifest.json").read_text(encoding="utf-8"))["interrupted"] is True

    # Rerun (through the CLI) with a healthy server: completes, resuming the
    # partial files with Range requests and skipping the finished ones.
    server.stall_after = None
    server.reset_log()
    exit_code = download_main(["pascal", "--dest", str(dest), "--url", server.base + PAGE_PATH, "--quiet"])
    assert exit_code == 0
    ranged = {path: header for path, header in server.log if header}
    part_urls = {_url_path(dest, part) for part in parts}
    assert set(ranged) == part_urls
    for part in parts:
        assert ranged[_url_path(dest, part)] == f"bytes={part_sizes[part]}-"
    requested = {path for path, _ in server.log}
    finished_urls = {_url_path(dest, image) for image in images}
    assert not requested & finished_urls

    assert not list(dest.rglob("*.part")) and not list(dest.rglob("*.tmp"))
    by_image = _records_by_image(dest)
    assert len(by_image) == 12
    for path, item in info.items():
        assert by_image[item["id"]] == item["sentences"]
        category, file_name = path[len(PAGE_PATH) :].split("/")
        assert (dest / "dataset" / category / file_name).read_bytes() == item["bytes"]
    manifest = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["complete"] is True and manifest["interrupted"] is False

"""Tests for the GloVe downloader and the resumable download helper.

A real HTTP server on 127.0.0.1 serves a small GloVe-shaped zip with Range
support and scripted faults, and logs every request's Range header.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import threading
import urllib.parse
import zipfile

import pytest

from devise.cli.download import main as download_main
from devise.download import DownloadError, download_file, fetch_bytes, is_complete
from devise.embeddings.glove import load_glove_text
from devise.embeddings.glove_download import GLOVE_VARIANTS, check_glove_zip, download_glove
from devise.errors import DataFormatError

ZIP_PATH = "/data/glove.6B.zip"


class ZipServer:
    """Serves ``files`` with Range support. Scripted faults:

    * ``close_early_once = n``: the next full response sends ``n`` bytes
      (with the full Content-Length) and closes the connection.
    * ``ignore_range``: answer every request with 200 and the whole file.
    * ``fail_first[path] = k``: the first ``k`` requests get HTTP 503.
    """

    def __init__(self, start_server):
        self.files: dict[str, bytes] = {}
        self.log: list[tuple[str, str | None, int]] = []  # (path, Range, status)
        self.sent = 0
        self.lock = threading.Lock()
        self.close_early_once: int | None = None
        self.ignore_range = False
        self.fail_first: dict[str, int] = {}
        self.httpd = start_server(self._handle)

    def url(self, path: str = ZIP_PATH) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def _record(self, path, range_header, status, sent=0):
        with self.lock:
            self.log.append((path, range_header, status))
            self.sent += sent

    def _handle(self, handler):
        path = urllib.parse.urlsplit(handler.path).path
        range_header = handler.headers.get("Range")
        if path not in self.files:
            self._record(path, range_header, 404)
            handler.send_error(404, "Not Found")
            return
        with self.lock:
            remaining_failures = self.fail_first.get(path, 0)
            if remaining_failures:
                self.fail_first[path] = remaining_failures - 1
        if remaining_failures:
            self._record(path, range_header, 503)
            handler.send_error(503, "Service Unavailable")
            return
        body = self.files[path]
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not self.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                self._record(path, range_header, 416)
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(body)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            status = 206
        else:
            start, status = 0, 200
        payload = body[start:]
        length = len(payload)
        with self.lock:
            cut, self.close_early_once = self.close_early_once, None
        if cut is not None:
            payload = payload[:cut]
            handler.close_connection = True
        # Logged before anything is sent, so the log is complete once the client returns.
        self._record(path, range_header, status, len(payload))
        handler.send_response(status)
        handler.send_header("Content-Type", "application/zip")
        handler.send_header("Content-Length", str(length))
        handler.send_header("Accept-Ranges", "none" if self.ignore_range else "bytes")
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        handler.end_headers()
        handler.wfile.write(payload)


@pytest.fixture
def server(http_server_factory):
    return ZipServer(http_server_factory)


def _glove_zip(dims=(50, 100, 200, 300), lines=100) -> bytes:
    rng = random.Random(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for dim in dims:
            rows = [f"word{i} " + " ".join(f"{rng.uniform(-1, 1):.5f}" for _ in range(dim)) for i in range(lines)]
            archive.writestr(f"glove.6B.{dim}d.txt", "\n".join(rows) + "\n")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def glove_zip() -> bytes:
    return _glove_zip()


def test_variants_describe_the_official_archives():
    six = GLOVE_VARIANTS["6B"]
    assert six.url == "https://nlp.stanford.edu/data/glove.6B.zip" and six.zip_name == "glove.6B.zip"
    assert six.dims == (50, 100, 200, 300) and six.member(300) == "glove.6B.300d.txt"
    assert GLOVE_VARIANTS["840B"].members() == ("glove.840B.300d.txt",)
    assert GLOVE_VARIANTS["42B"].members() == ("glove.42B.300d.txt",)
    assert GLOVE_VARIANTS["twitter.27B"].member(25) == "glove.twitter.27B.25d.txt"


def test_connection_closed_early_resumes_with_range(server, glove_zip, tmp_path):
    server.files[ZIP_PATH] = glove_zip
    cut = len(glove_zip) // 3
    server.close_early_once = cut

    path = download_glove(tmp_path, url=server.url(), progress=False, backoff=0.01)

    assert path == str(tmp_path / "glove.6B.zip")
    with open(path, "rb") as handle:
        assert handle.read() == glove_zip
    assert server.log == [(ZIP_PATH, None, 200), (ZIP_PATH, f"bytes={cut}-", 206)]
    assert server.sent == len(glove_zip)  # the resume fetched only the rest
    assert not (tmp_path / "glove.6B.zip.part").exists()
    check_glove_zip(path, GLOVE_VARIANTS["6B"].members())
    with zipfile.ZipFile(path) as archive:
        archive.extract("glove.6B.50d.txt", tmp_path)
    vectors = load_glove_text(tmp_path / "glove.6B.50d.txt").vectors
    assert len(vectors.words) == 100 and vectors.dim == 50


def test_interrupted_download_resumes_on_next_run(server, glove_zip, tmp_path):
    server.files[ZIP_PATH] = glove_zip

    def interrupt(done, total):
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_glove(tmp_path, url=server.url(), progress=interrupt)
    part = tmp_path / "glove.6B.zip.part"
    assert not (tmp_path / "glove.6B.zip").exists()
    kept = part.stat().st_size
    assert 0 < kept < len(glove_zip)

    server.log.clear()
    server.sent = 0
    path = download_glove(tmp_path, url=server.url(), progress=False)
    with open(path, "rb") as handle:
        assert handle.read() == glove_zip
    assert server.log == [(ZIP_PATH, f"bytes={kept}-", 206)]
    assert server.sent == len(glove_zip) - kept
    assert not part.exists()

    # A valid archive already in place is kept without any request.
    server.log.clear()
    assert download_glove(tmp_path, url=server.url(), progress=False) == path
    assert server.log == []


def test_server_ignoring_range_still_gives_a_correct_file(server, glove_zip, tmp_path):
    server.files[ZIP_PATH] = glove_zip
    server.ignore_range = True
    # A stale partial file (from some other version) that must not be kept.
    (tmp_path / "glove.6B.zip.part").write_bytes(b"\xff" * 5000)

    path = download_glove(tmp_path, url=server.url(), progress=False)

    with open(path, "rb") as handle:
        assert handle.read() == glove_zip
    assert server.log == [(ZIP_PATH, "bytes=5000-", 200)]
    assert not (tmp_path / "glove.6B.zip.part").exists()


def test_404_fails_at_once_naming_the_url(server, tmp_path):
    url = server.url("/data/missing.zip")
    with pytest.raises(DownloadError) as info:
        download_glove(tmp_path, url=url, progress=False)
    assert url in str(info.value) and "HTTP 404" in str(info.value)
    assert info.value.status == 404 and info.value.url == url
    assert len(server.log) == 1  # no retries for a 404
    assert list(tmp_path.iterdir()) == []


def test_invalid_archives_are_never_moved_into_place(server, tmp_path):
    server.files["/data/page.zip"] = b"<html><body>Please log in</body></html>"
    server.files["/data/partial.zip"] = _glove_zip(dims=(50, 100, 200))
    with pytest.raises(DownloadError, match="not a valid zip"):
        download_glove(tmp_path, url=server.url("/data/page.zip"), progress=False, retries=1, backoff=0.01)
    assert len(server.log) == 2
    with pytest.raises(DownloadError, match=r"glove\.6B\.300d\.txt"):
        download_glove(tmp_path, url=server.url("/data/partial.zip"), progress=False, retries=0)
    assert list(tmp_path.iterdir()) == []

    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(_glove_zip()[:-100])
    with pytest.raises(DataFormatError):
        check_glove_zip(truncated, ["glove.6B.50d.txt"])


def test_download_file_retries_5xx_and_checks_size_and_hash(server, glove_zip, tmp_path):
    server.files[ZIP_PATH] = glove_zip
    server.fail_first[ZIP_PATH] = 2
    digest = hashlib.sha256(glove_zip).hexdigest()
    progress = []
    result = download_file(
        server.url(),
        tmp_path / "a.zip",
        expected_size=len(glove_zip),
        sha256=digest,
        backoff=0.01,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert [status for _, _, status in server.log] == [503, 503, 200]
    assert result.attempts == 3 and result.size == len(glove_zip) and result.sha256 == digest
    assert progress[-1] == (len(glove_zip), len(glove_zip))
    assert is_complete(tmp_path / "a.zip", expected_size=len(glove_zip), sha256=digest)

    with pytest.raises(DownloadError, match="SHA-256"):
        download_file(server.url(), tmp_path / "b.zip", sha256="0" * 64, retries=1, backoff=0.01)
    with pytest.raises(DownloadError, match="expected 12"):
        download_file(server.url(), tmp_path / "c.zip", expected_size=12, retries=0)
    assert not (tmp_path / "b.zip").exists() and not (tmp_path / "c.zip").exists()
    assert not (tmp_path / "b.zip.part").exists()

    # A .part that is already whole (interrupted just before the rename):
    # the server answers 416 to the resume and the file is only verified.
    (tmp_path / "d.zip.part").write_bytes(glove_zip)
    server.log.clear()
    result = download_file(server.url(), tmp_path / "d.zip", sha256=digest)
    assert server.log == [(ZIP_PATH, f"bytes={len(glove_zip)}-", 416)]
    assert result.bytes_received == 0 and (tmp_path / "d.zip").read_bytes() == glove_zip


def test_cli_glove(server, glove_zip, tmp_path, capsys):
    server.files[ZIP_PATH] = glove_zip
    assert download_main(["glove", "--dest", str(tmp_path), "--url", server.url(), "--dim", "50", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "glove.6B.zip") in out and "glove.6B.50d.txt" in out

    assert download_main(["glove", "--dest", str(tmp_path), "--dim", "64", "--quiet"]) == 2
    assert "no 64-d vectors" in capsys.readouterr().err

    url = server.url("/data/missing.zip")
    assert download_main(["glove", "--dest", str(tmp_path / "x"), "--url", url, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and url in err and "Traceback" not in err


def test_file_urls_download_and_replace_a_stale_part(tmp_path):
    # file: responses carry no HTTP status and ignore Range: the whole file
    # is sent every time, like a 200 to a resume.
    source = tmp_path / "source.bin"
    source.write_bytes(b"0123456789" * 1000)
    dest = tmp_path / "out" / "copy.bin"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "copy.bin.part").write_bytes(b"stale")

    result = download_file(source.as_uri(), dest)

    assert dest.read_bytes() == source.read_bytes()
    assert result.size == 10000 and result.resumed_from == 0
    assert not (tmp_path / "out" / "copy.bin.part").exists()
    assert fetch_bytes(source.as_uri()) == source.read_bytes()


def test_fetch_bytes_gives_up_with_the_attempt_count(server):
    server.files["/page"] = b"x"
    server.fail_first["/page"] = 5
    with pytest.raises(DownloadError, match=r"HTTP 503 Service Unavailable \(gave up after 1 attempt\)$"):
        fetch_bytes(server.url("/page"), retries=0)
    with pytest.raises(DownloadError, match=r"\(gave up after 2 attempts\)$"):
        fetch_bytes(server.url("/page"), retries=1, backoff=0.01)


def test_destination_that_cannot_be_a_folder_is_a_clear_error(server, glove_zip, tmp_path, capsys):
    server.files[ZIP_PATH] = glove_zip
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")

    with pytest.raises(DownloadError, match=rf"cannot create the folder {blocker}"):
        download_glove(blocker, url=server.url(), progress=False)
    assert download_main(["glove", "--dest", str(blocker), "--url", server.url(), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(blocker) in err and "Traceback" not in err
    assert server.log == []  # nothing is fetched that could not be saved

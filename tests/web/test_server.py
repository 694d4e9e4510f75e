"""The search web app served by a real uvicorn on 127.0.0.1: API answers, refusals, concurrency."""

import concurrent.futures
import http.client
import io
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from devise.cli import serve as serve_cli
from devise.search.engine import SearchEngine
from devise.web import BackgroundServer, create_app

CANDIDATES = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle")]


@pytest.fixture(scope="module")
def server(tiny_run, tiny_index):
    engine = SearchEngine.load(tiny_run, tiny_index)
    app = create_app(engine, captions=CANDIDATES, max_query_chars=500, max_k=100, thumbnail_size=64)
    with BackgroundServer(app, host="127.0.0.1", port=0) as running:
        running.engine = engine
        running.index_path = tiny_index
        running.run_dir = tiny_run
        yield running


def get(server, path: str, timeout: float = 60.0):
    """(status, headers, body bytes) of a GET; 4xx/5xx answers are returned, not raised."""
    try:
        with urllib.request.urlopen(server.url + path, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def get_json(server, path: str):
    status, headers, body = get(server, path)
    assert headers.get_content_type() == "application/json", (path, status, body[:200])
    return status, json.loads(body)


def raw_get(server, raw_path: str):
    """A GET whose request line carries ``raw_path`` exactly as given (no client-side normalisation)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.putrequest("GET", raw_path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()
    finally:
        connection.close()


def search_path(query: str, k: int | str | None = None) -> str:
    params = {"q": query} if k is None else {"q": query, "k": k}
    return "/api/search?" + urllib.parse.urlencode(params)


def assert_still_serving(server):
    status, body = get_json(server, "/api/health")
    assert status == 200 and body["status"] == "ok"


@pytest.mark.slow
def test_search_returns_k_results_in_decreasing_score(server):
    status, body = get_json(server, search_path("two red circles", 7))
    assert status == 200
    assert body["query"] == "two red circles" and body["k"] == 7
    results = body["results"]
    assert [r["rank"] for r in results] == list(range(1, 8))
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    for r in results:
        assert set(r) >= {"rank", "id", "score", "thumbnail_url", "image_url"}
        assert r["image_url"] == f"/api/image/{r['row']}"
    # Same ranking as the Python API.
    assert [r["id"] for r in results] == [h.id for h in server.engine.search("two red circles", k=7)]
    assert body["unknown_words"] == []


@pytest.mark.slow
def test_search_reports_words_without_a_vector(server):
    status, body = get_json(server, search_path("two qqzzx circles", 3))
    assert status == 200 and body["unknown_words"] == ["qqzzx"] and len(body["results"]) == 3
    # A word absent from the demo captions but known to the word vectors counts.
    status, body = get_json(server, search_path("a dog", 3))
    assert status == 200 and body["unknown_words"] == []


@pytest.mark.slow
def test_more_like_this_combined_queries_and_filters_match_the_python_api(server):
    engine = server.engine
    for row in (0, 5, len(engine.index) - 1):
        status, body = get_json(server, f"/api/search?like_row={row}&k=4")
        assert status == 200 and body["query"] is None and body["like_rows"] == [row]
        assert body["results"][0]["row"] == row  # an image is most like itself
    folder = engine.index.ids[3].split("/")[0]
    params = [
        ("q", "a red circle"),
        ("like_row", "3"),
        ("not", "a blue square"),
        ("not_weight", "0.5"),
        ("under", folder),
        ("min_score", "0.1"),
        ("k", "10"),
    ]
    status, body = get_json(server, "/api/search?" + urllib.parse.urlencode(params))
    assert status == 200, body
    expected = engine.search(
        "a red circle", k=10, like_rows=[3], not_=["a blue square"], not_weight=0.5, under=[folder], min_score=0.1
    )
    assert body["results"] and [r["id"] for r in body["results"]] == [h.id for h in expected]
    assert all(r["score"] >= 0.1 and r["id"].startswith(folder + "/") for r in body["results"])
    status, body = get_json(server, "/api/search?q=red&since=2000-01-01&until=2000-01-02")
    assert status == 200 and body["results"] == []  # every image is newer: nothing matches, nothing padded


@pytest.mark.slow
@pytest.mark.parametrize(
    "path",
    [
        "/api/search?like_row=-1",
        "/api/search?like_row=100000",
        "/api/search?like_row=x",
        "/api/search?" + "&".join(["like_row=1"] * 9),  # too many terms
        "/api/search?q=red&not=",
        "/api/search?q=red&not=qqzzx",
        "/api/search?not=red",
        "/api/search?q=red&under=../etc",
        "/api/search?q=red&since=yesterday",
        "/api/search?q=red&until=" + "9" * 50,
        "/api/search?q=red&min_score=2",
        "/api/search?q=red&min_score=nan",
        "/api/search?q=red&not_weight=-1",
        "/api/search?q=red&not=red",  # the terms cancel out
    ],
)
def test_bad_combined_queries_and_filters_get_400_json(server, path):
    status, body = get_json(server, path)
    assert status == 400, (path, body)
    assert isinstance(body.get("error"), str) and body["error"]


@pytest.mark.slow
def test_image_thumbnail_and_captions_by_row(server):
    from PIL import Image

    index = server.engine.index
    row = len(index) - 1
    status, headers, body = get(server, f"/api/image/{row}")
    assert status == 200
    with open(index.paths[row], "rb") as f:
        assert body == f.read()
    assert headers.get_content_type().startswith("image/")

    status, headers, body = get(server, f"/api/thumbnail/{row}")
    assert status == 200 and headers.get_content_type() == "image/jpeg"
    with Image.open(io.BytesIO(body)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) <= 64

    status, answer = get_json(server, f"/api/captions/{row}?k=3")
    assert status == 200 and answer["id"] == index.ids[row]
    assert len(answer["captions"]) == 3
    assert all(c["caption"] in CANDIDATES for c in answer["captions"])
    scores = [c["score"] for c in answer["captions"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_page_and_its_files_come_from_the_server_only(server):
    status, headers, body = get(server, "/")
    assert status == 200 and headers.get_content_type() == "text/html"
    html = body.decode("utf-8")
    assert '<form id="search-form"' in html and 'max="100"' in html and 'maxlength="500"' in html
    assert "${" not in html  # every placeholder filled
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    status, headers, script = get(server, "/static/app.js")
    assert status == 200 and headers.get_content_type() == "text/javascript" and b"/api/search" in script
    status, headers, style = get(server, "/static/style.css")
    assert status == 200 and headers.get_content_type() == "text/css"
    for text in (body, script, style):
        assert b"http://" not in text and b"https://" not in text  # nothing from a CDN
    status, body = get_json(server, "/static/index.html")
    assert status == 404 and "no static file" in body["error"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "raw_path",
    [
        "/api/image/../../etc/passwd",
        "/api/image/..%2f..%2fetc%2fpasswd",
        "/api/image/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/image/%2e%2e",
        "/api/thumbnail/..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/image/%2Fetc%2Fpasswd",
        "/api/image/etc/passwd",
        "/static/../../etc/passwd",
    ],
)
def test_path_traversal_is_refused(server, raw_path):
    status, content_type, body = raw_get(server, raw_path)
    assert 400 <= status < 500, (raw_path, status)
    assert b"root:" not in body
    assert content_type.startswith("application/json") and "error" in json.loads(body)
    assert_still_serving(server)


@pytest.mark.slow
@pytest.mark.parametrize(
    "path, expected",
    [
        ("/api/image/100000", 404),
        ("/api/image/-1", 404),
        ("/api/thumbnail/-1", 404),
        ("/api/image/1e3", 404),
        ("/api/image/99999999999999999999999999", 404),
        ("/api/captions/100000", 404),
        ("/api/search?q=red&k=1000000", 400),
        ("/api/search?q=red&k=101", 400),
        ("/api/search?q=red&k=0", 400),
        ("/api/search?q=red&k=-3", 400),
        ("/api/search?q=red&k=ten", 400),
        ("/api/search?q=", 400),
        ("/api/search?q=%20%20%09", 400),
        ("/api/search?q=qqzzx%20xxqzq", 400),  # no word with a vector
        ("/api/search?q=%21%3F%2E", 400),  # punctuation only
        ("/api/search", 400),
        ("/api/search?" + urllib.parse.urlencode({"q": "red " * 2500}), 400),  # 10 kB
        ("/api/nothing-here", 404),
    ],
)
def test_bad_requests_get_4xx_json_and_server_keeps_serving(server, path, expected):
    status, body = get_json(server, path)
    assert status == expected, (path, body)
    assert isinstance(body.get("error"), str) and body["error"]
    assert_still_serving(server)


@pytest.mark.slow
def test_wrong_method_is_a_json_405(server):
    request = urllib.request.Request(server.url + "/api/search?q=red", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(request, timeout=30)
    assert exc.value.code == 405 and "error" in json.loads(exc.value.read())


@pytest.mark.slow
def test_fifty_concurrent_queries_are_all_answered(server):
    colours = ("red", "green", "blue", "yellow", "purple")
    shapes = ("circle", "square", "triangle", "star", "cross")
    queries = [f"{n} {c} {s}" for n in ("one", "two") for c in colours for s in shapes]  # 50 distinct
    assert len(set(queries)) == 50

    def ask(query):
        status, body = get_json(server, search_path(query, 5))
        return status, len(body.get("results", []))

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(ask, queries))
    assert answers == [(200, 5)] * 50
    assert_still_serving(server)


@pytest.mark.slow
def test_cli_prints_url_and_warns_on_a_network_host(server, monkeypatch, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    assert serve_cli.main(["--index", str(server.index_path), "--port", "8123"]) == 0
    captured = capsys.readouterr()
    assert "http://127.0.0.1:8123/" in captured.out and "warning" not in captured.err
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["port"] == 8123

    argv = ["--index", str(server.index_path), "--run", str(server.run_dir), "--host", "0.0.0.0", "--max-k", "5"]
    assert serve_cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "0.0.0.0" in captured.err
    assert calls[-1]["host"] == "0.0.0.0"


@pytest.mark.slow
def test_cli_passes_the_thumbnail_options(server, monkeypatch, tmp_path):
    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    argv = ["--index", str(server.index_path), "--thumbnail-dir", str(tmp_path / "t"), "--max-image-pixels", "1000"]
    assert serve_cli.main(argv) == 0
    store = apps[-1].state.thumbnails
    assert store.directory == str(tmp_path / "t") and store.max_pixels == 1000
    assert serve_cli.main(["--index", str(server.index_path)]) == 0
    assert apps[-1].state.thumbnails.directory == f"{server.index_path}.thumbs"
    with pytest.raises(SystemExit):
        serve_cli.main(["--index", str(server.index_path), "--max-image-pixels", "0"])


@pytest.mark.slow
def test_foreign_host_headers_are_refused(server, tiny_run, tiny_index):
    """DNS rebinding: a page on attacker.example that resolves to 127.0.0.1 must get nothing."""

    def status_for(port: int, host: str) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("GET", "/api/search?q=red", headers={"Host": host})
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    for host in ("attacker.example", f"attacker.example:{server.port}", "127.0.0.1.attacker.example"):
        assert status_for(server.port, host) == 400, host
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}"):
        assert status_for(server.port, host) == 200, host
    # A name the operator allows is served.
    app = create_app(server.engine, captions=CANDIDATES, allowed_hosts=["photos.lan"])
    with BackgroundServer(app, host="127.0.0.1", port=0) as other:
        assert status_for(other.port, "photos.lan") == 200
        assert status_for(other.port, "attacker.example") == 400


def test_cli_usage_and_missing_index(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        serve_cli.main([])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        serve_cli.main(["--index", "x.h5", "--port", "70000"])
    assert exc.value.code == 2
    capsys.readouterr()
    assert serve_cli.main(["--index", str(tmp_path / "nope.h5")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("devise-serve: error:") and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.4", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host, loopback):
    assert serve_cli.is_loopback(host) is loopback


def test_devise_imports_without_the_serve_extra():
    code = (
        "import sys\n"
        "sys.modules['fastapi'] = None\n"
        "sys.modules['uvicorn'] = None\n"
        "import devise, devise.web, devise.cli.serve\n"
        "from devise.errors import OptionalDependencyError\n"
        "try:\n"
        "    devise.web.create_app(object())\n"
        "except OptionalDependencyError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "devise-serve needs the 'fastapi' package" in result.stdout
    assert "devise[serve]" in result.stdout


class _FaultyEngine:
    """An engine whose search fails the way a bug or a broken disk would (not a DeviseError)."""

    run_dir = None

    def __init__(self, folder: str):
        self.index = type(
            "Index",
            (),
            {
                "path": f"{folder}/index.h5",
                "image_root": folder,
                "ids": ["a.png"],
                "sizes": [1],
                "mtime_ns": [0],
                "__len__": lambda self: 1,
                "row_of": lambda s, i: 0,
            },
        )()

    def search(self, query, k):
        raise RuntimeError("secret detail at /home/someone/.config/devise")


def test_a_server_fault_is_a_json_500_without_details(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    app = create_app(_FaultyEngine(str(tmp_path)), captions=["a red circle"])
    with BackgroundServer(app, host="127.0.0.1", port=0, log_level="critical") as running:
        status, body = get_json(running, search_path("red"))
        assert status == 500 and body == {"error": "internal server error"}
        assert_still_serving(running)

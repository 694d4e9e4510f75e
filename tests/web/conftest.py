import json
import pathlib
import struct
import types
import urllib.error
import urllib.request
import zlib

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny_index(tiny_run, tmp_path_factory) -> pathlib.Path:
    """A search index of the tiny run's own dataset images, built once per module."""
    import devise
    from devise.cli import index as index_cli

    config = devise.load_config(tiny_run / "config.yaml")
    out = tmp_path_factory.mktemp("web_index") / "shapes.h5"
    images = f"{config.data.root}/dataset"
    assert index_cli.main(["--run", str(tiny_run), "--images", images, "--out", str(out), "--quiet"]) == 0
    return out


def write_blank_png(path: pathlib.Path, width: int, height: int) -> None:
    """A grey 8-bit PNG of ``width x height``, compressed row by row: the test never holds its pixels."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * width  # filter type 0, then the row's grey values
    idat = bytearray()
    for _ in range(height):
        idat += compressor.compress(row)
    idat += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b""))


@pytest.fixture
def photo_folder(tmp_path) -> pathlib.Path:
    """Eight small images in ``photos/`` (two in ``photos/sub/``), in every indexed format."""
    from PIL import Image

    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]
    names = ["a.png", "b.jpg", "c.gif", "d.webp", "e.png", "f.jpg", "sub/g.png", "sub/h.jpg"]
    for i, name in enumerate(names):
        mode = "RGBA" if name.endswith(".png") else "RGB"
        Image.new(mode, (40 + i, 30), colours[i % len(colours)]).save(root / name)
    return root


class FakeEngine:
    """What the web app needs of a SearchEngine for files, thumbnails and captions: no model, no TensorFlow."""

    run_dir = None

    def __init__(self, index):
        self.index = index
        self.annotated: list[str] = []

    def annotate(self, path, captions, k):
        self.annotated.append(path)
        return [types.SimpleNamespace(rank=i + 1, caption=c, score=1.0 - i / 10) for i, c in enumerate(captions[:k])]


@pytest.fixture
def index_folder(tmp_path):
    """``index_folder(root) -> ImageIndex``: an index of ``root`` with random vectors (nothing decoded)."""
    from devise.search.index import ImageIndex, update_index

    rng = np.random.default_rng(0)

    def embed(paths):
        vectors = rng.normal(size=(len(paths), 8)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors, list(range(len(paths))), []

    def build(root: pathlib.Path) -> "ImageIndex":
        out = tmp_path / f"{root.name}.h5"
        update_index(out, root, model_fingerprint="test", run_dir="", embed=embed, progress=False)
        return ImageIndex.open(out)

    return build


@pytest.fixture
def serve_index():
    """``serve_index(index, **create_app_options)``: a server over a :class:`FakeEngine`, stopped at teardown."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from devise.web import BackgroundServer, create_app

    running = []

    def start(index, **options):
        engine = FakeEngine(index)
        options.setdefault("captions", ["a red thing", "a green thing", "a blue thing"])
        server = BackgroundServer(create_app(engine, **options), log_level="critical").start()
        server.engine = engine
        server.index = index
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


def http_get(url: str, timeout: float = 60.0):
    """(status, headers, body bytes) of a GET; 4xx/5xx answers are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@pytest.fixture
def fetch():
    """``fetch(server, path) -> (status, headers, body)``; ``fetch.json(server, path) -> (status, dict)``."""

    def get(server, path: str):
        return http_get(server.url + path)

    def get_json(server, path: str):
        status, headers, body = get(server, path)
        assert headers.get_content_type() == "application/json", (path, status, body[:200])
        return status, json.loads(body)

    get.json = get_json
    return get


@pytest.fixture(scope="session")
def blank_png():
    """The PNG writer :func:`write_blank_png`, for tests that need a huge image that is small on disk."""
    return write_blank_png

import contextlib
import http.server
import os
import pathlib
import threading
import time
from collections.abc import Callable

import pytest

# Keep TensorFlow's C++ logging out of test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


def tiny_demo_overrides(base: pathlib.Path) -> list[str]:
    """Overrides that shrink configs/demo.yaml to 20 categories x 8 images and 8 epochs."""
    return [
        f"data.root={base}/shapes",
        "data.shapes.images_per_category=8",
        "data.split={train: 6, val: 1, test: 1, seed: 0}",
        f"image_encoder.cache_dir={base}/cache",
        f"output_dir={base}/runs",
        "trainer.epochs=8",
        "trainer.batch_size=32",
        "trainer.learning_rate=0.002",
        "model.joint_dim=64",
        "model.lstm_units=64",
    ]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> pathlib.Path:
    """A trained run directory of the tiny demo (about 10 s, once per session).

    Tests must treat it as read-only; copy it first to change anything.
    """
    from devise.training import Trainer, load_config

    base = tmp_path_factory.mktemp("tiny_run")
    config = load_config(REPO_ROOT / "configs" / "demo.yaml", tiny_demo_overrides(base))
    result = Trainer(config, run_dir=str(base / "run"), verbose=False).run()
    return pathlib.Path(result.run_dir)


@pytest.fixture(scope="session")
def tiny_overrides():
    """The function :func:`tiny_demo_overrides`, for tests that build their own run."""
    return tiny_demo_overrides


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> pathlib.Path:
    """configs/demo.yaml as shipped (1000 images, 15 epochs; about a minute), once per session.

    Read-only for tests. Only the paths are redirected into a temporary folder.
    """
    from devise.training import Trainer, load_config

    base = tmp_path_factory.mktemp("demo_run")
    config = load_config(
        REPO_ROOT / "configs" / "demo.yaml",
        [f"data.root={base}/shapes", f"image_encoder.cache_dir={base}/cache", f"output_dir={base}/runs"],
    )
    result = Trainer(config, run_dir=str(base / "run"), verbose=False).run()
    return pathlib.Path(result.run_dir)


@pytest.fixture
def http_server_factory():
    """``start(handle)``: a ThreadingHTTPServer on 127.0.0.1 serving GETs with ``handle``.

    ``handle(handler)`` gets each request's ``BaseHTTPRequestHandler``; a
    client hanging up mid-response is ignored, as are request logs and
    handler errors. Returns the running server (its port is
    ``server_address[1]``); every server started is shut down at teardown.
    """
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(handle: Callable[[http.server.BaseHTTPRequestHandler], None]) -> http.server.ThreadingHTTPServer:
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    handle(self)

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False
        httpd.handle_error = lambda request, address: None
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
        return httpd

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def paris_time(monkeypatch):
    """Local time is Europe/Paris (UTC+2 in summer) for the test, whatever the machine's zone."""
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def locked_folder(tmp_path, monkeypatch):
    """A folder this user cannot write into (mode 0500).

    root writes into any folder whatever its mode, so when the tests run as
    root (as CI does) the permission check is made to fail instead: a mock
    of ``os.access`` for this folder only, the one place where the real
    thing cannot be set up.
    """
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        real_access = os.access

        def access(path, mode, *args, **kwargs):
            if os.path.abspath(os.fspath(path)) == str(locked) and mode & os.W_OK:
                return False
            return real_access(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    yield locked
    with contextlib.suppress(OSError):
        locked.chmod(0o700)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """In CI (``DEVISE_CI=1``) every extra and Chromium are installed: a skip there is a failure."""
    if os.environ.get("DEVISE_CI") != "1":
        return
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        terminalreporter.section("skips are failures in CI (DEVISE_CI=1)", sep="=", red=True)
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            terminalreporter.line(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("DEVISE_CI") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped") and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

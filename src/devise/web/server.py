"""Run an ASGI app with uvicorn in a background thread: for tests and notebooks.

Example:
```python
from devise.web import BackgroundServer, create_app

with BackgroundServer(create_app(engine)) as server:
    print(server.url)
```
"""

import socket
import threading
import time
from collections.abc import Callable
from typing import Self

from devise.errors import require
from devise.web.app import PURPOSE


class BackgroundServer:
    """Run an ASGI app with uvicorn in a background thread (tests, notebooks).

    ``port=0`` picks a free port; :attr:`url` says which.
    """

    def __init__(self, app: Callable, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        uvicorn = require("uvicorn", "serve", PURPOSE)
        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, lifespan="off", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, name="devise-web", daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> Self:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the web server stopped during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the web server did not start within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

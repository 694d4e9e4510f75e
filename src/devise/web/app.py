"""The image-search web app: one HTML page and a small JSON API over a :class:`SearchEngine`.

Routes (every error is JSON ``{"error": "..."}``: a 4xx status for a bad
request, 500 with no details for a fault of the server, whose traceback goes
to the server's log only):

* ``GET /`` -- the search page (self-contained: inline CSS and JavaScript, nothing from a CDN).
* ``GET /api/search?q=TEXT&k=N`` -- ``{query, k, unknown_words, results: [{rank, row, id, score,
  thumbnail_url, image_url, captions_url}]}``; ``unknown_words`` lists the query's words without a
  word vector (ignored); a query with no word that has one is refused with 400.
* ``GET /api/image/{row}`` -- the indexed image file at that row of the index.
* ``GET /api/thumbnail/{row}`` -- a JPEG thumbnail of it (made with Pillow, cached in memory).
* ``GET /api/captions/{row}?k=N`` -- the candidate captions that best describe that image.
* ``GET /api/health`` -- ``{status, images}``.

Images are addressed only by their integer row in the index; a path sent by a
client is never opened. The model is called under a lock (one query at a time),
so the app is safe to run with uvicorn's thread pool.

Example:
```python
from devise.search.engine import SearchEngine
from devise.web import BackgroundServer, create_app

app = create_app(SearchEngine.load("runs/demo", "photos.h5"))
with BackgroundServer(app) as server:
    print(server.url)
```
"""

import collections
import io
import mimetypes
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

from devise.errors import DeviseError, QueryError, require

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from devise.search.engine import SearchEngine

PURPOSE = "devise-serve"
_ROW_PATTERN = re.compile(r"[0-9]{1,12}")
_K_PATTERN = re.compile(r"[0-9]{1,12}")


class _LRU:
    """A thread-safe least-recently-used cache of at most ``maxsize`` entries."""

    def __init__(self, maxsize: int):
        self.maxsize = max(0, int(maxsize))
        self._items: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Hashable, value: Any) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def make_thumbnail(path: str, size: int) -> bytes:
    """A JPEG thumbnail (longest side at most ``size``) of an image file; transparency becomes white."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.draft("RGB", (size, size))  # cheap JPEG downscaling while decoding
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        else:
            image = image.convert("RGB")
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
    return out.getvalue()


#: Host names a server bound to this machine answers to by default.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def create_app(
    engine: "SearchEngine",
    *,
    captions: Sequence[str] | None = None,
    max_query_chars: int = 500,
    max_k: int = 100,
    default_k: int = 24,
    thumbnail_size: int = 256,
    thumbnail_cache_size: int = 1024,
    result_cache_size: int = 256,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
) -> "FastAPI":
    """The FastAPI app that serves ``engine``'s index.

    Args:
        engine: a search engine with an index loaded.
        captions: candidate captions for ``/api/captions``; by default the
            captions of the engine's training-run dataset, loaded on first use.
        max_query_chars: longer queries are refused (400).
        max_k: the largest ``k`` a client may ask for (larger is refused with 400).
        default_k: ``k`` when the request gives none.
        thumbnail_size: longest side of thumbnails, in pixels.
        thumbnail_cache_size: thumbnails kept in memory (least recently used go first).
        result_cache_size: search and caption answers kept in memory.
        allowed_hosts: the names a request's ``Host`` header may carry
            (Starlette's ``TrustedHostMiddleware``; others get 400), so a
            web page on another site cannot reach a local server by DNS
            rebinding; ``["*"]`` allows any.

    Returns:
        The app, to run with uvicorn or :class:`BackgroundServer`.
    """
    fastapi = require("fastapi", "serve", PURPOSE)
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if engine.index is None:
        raise DeviseError("the web app needs a search engine with an index loaded")
    if max_query_chars < 1 or max_k < 1 or thumbnail_size < 16:
        raise ValueError("max_query_chars and max_k must be >= 1 and thumbnail_size >= 16")
    default_k = max(1, min(default_k, max_k))

    index = engine.index
    n_images = len(index)
    model_lock = threading.Lock()  # Keras models and the index reader are not assumed thread-safe
    thumbnails = _LRU(thumbnail_cache_size)
    answers = _LRU(result_cache_size)
    candidates: list[list[str]] = [list(dict.fromkeys(captions))] if captions is not None else []
    candidates_lock = threading.Lock()

    app = fastapi.FastAPI(
        title="devise image search",
        docs_url=None,  # the interactive docs load scripts from a CDN
        redoc_url=None,
        openapi_url=None,
    )
    app.state.engine = engine
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    def fail(status: int, message: str):
        raise StarletteHTTPException(status_code=status, detail=message)

    def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and message == "Not Found":
            message = f"not found: no route {request.url.path!r}"
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        return error_response(400, "invalid request parameters")

    @app.exception_handler(Exception)
    async def _server_fault(request, exc: Exception):
        # Starlette re-raises after answering, so uvicorn logs the traceback;
        # the client learns nothing about the server's files or code.
        return error_response(500, "internal server error")

    @app.middleware("http")
    async def _security_headers(request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    def parse_k(raw: str | None, default: int, maximum: int) -> int:
        if raw is None or raw == "":
            return default
        if not _K_PATTERN.fullmatch(raw):
            fail(400, f"k must be a whole number between 1 and {maximum}")
        k = int(raw)
        if not 1 <= k <= maximum:
            fail(400, f"k must be between 1 and {maximum}, got {k}")
        return k

    def parse_row(raw: str) -> int:
        if not _ROW_PATTERN.fullmatch(raw) or int(raw) >= n_images:
            known = f"rows 0 to {n_images - 1}" if n_images else "the index is empty"
            fail(404, f"no image {raw[:40]!r} in the index ({known})")
        return int(raw)

    def image_path(row: int) -> str:
        path = index.paths[row]
        if not os.path.isfile(path):
            fail(404, f"image {row} is no longer on disk; re-run devise-index")
        return path

    def result_dict(rank: int, row: int, item_id: str, score: float) -> dict:
        return {
            "rank": rank,
            "row": row,
            "id": item_id,
            "score": round(float(score), 6),
            "thumbnail_url": f"/api/thumbnail/{row}",
            "image_url": f"/api/image/{row}",
            "captions_url": f"/api/captions/{row}",
        }

    @app.get("/", response_class=HTMLResponse)
    def page():
        html = (
            _PAGE.replace("__MAX_QUERY__", str(max_query_chars))
            .replace("__MAX_K__", str(max_k))
            .replace("__DEFAULT_K__", str(default_k))
            .replace("__IMAGES__", str(n_images))
        )
        return HTMLResponse(
            html,
            headers={
                "Content-Security-Policy": "default-src 'none'; img-src 'self'; connect-src 'self'; "
                "style-src 'unsafe-inline'; script-src 'unsafe-inline'; base-uri 'none'; form-action 'self'"
            },
        )

    @app.get("/api/health")
    def health():
        return {"status": "ok", "images": n_images}

    @app.get("/api/search")
    def search(request: fastapi.Request):
        query = request.query_params.get("q")
        if query is None:
            fail(400, "missing query: use /api/search?q=TEXT")
        if len(query) > max_query_chars:
            fail(400, f"query too long: {len(query)} characters (at most {max_query_chars})")
        query = " ".join(query.split())
        if not query:
            fail(400, "empty query")
        k = parse_k(request.query_params.get("k"), default_k, max_k)
        key = ("search", query, k)
        cached = answers.get(key)
        if cached is not None:
            return cached
        results = []
        try:
            with model_lock:
                unknown = engine.model.check_query(query)
        except QueryError as exc:  # no word of the query has a vector
            fail(400, str(exc))
        if n_images:
            try:
                with model_lock:
                    hits = engine.search(query, k=min(k, n_images))
            except DeviseError as exc:  # e.g. the index file was rebuilt under the server
                fail(409, str(exc))
            results = [result_dict(h.rank, index.row_of(h.id), h.id, h.score) for h in hits]
        answer = {"query": query, "k": k, "unknown_words": unknown, "results": results}
        answers.put(key, answer)
        return answer

    @app.get("/api/image/{row}")
    def image(row: str):
        path = image_path(parse_row(row))
        media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/thumbnail/{row}")
    def thumbnail(row: str):
        index_row = parse_row(row)
        data = thumbnails.get(index_row)
        if data is None:
            path = image_path(index_row)
            try:
                data = make_thumbnail(path, thumbnail_size)
            except Exception:  # noqa: BLE001 - any decoder failure: a bad file, not a server bug
                fail(422, f"image {index_row} cannot be decoded")
            thumbnails.put(index_row, data)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    def caption_candidates() -> list[str]:
        from devise.search.engine import run_captions

        with candidates_lock:
            if not candidates:
                if not engine.run_dir:
                    fail(404, "no candidate captions: the engine has no run directory")
                try:
                    loaded = list(dict.fromkeys(run_captions(engine.run_dir)))
                except DeviseError as exc:
                    fail(404, f"no candidate captions: {exc}")
                candidates.append(loaded)
            return candidates[0]

    @app.get("/api/captions/{row}")
    def image_captions(row: str, request: fastapi.Request):
        index_row = parse_row(row)
        k = parse_k(request.query_params.get("k"), min(5, max_k), max_k)
        key = ("captions", index_row, k)
        cached = answers.get(key)
        if cached is not None:
            return cached
        pool = caption_candidates()
        if not pool:
            fail(404, "no candidate captions")
        path = image_path(index_row)
        try:
            with model_lock:
                hits = engine.annotate(path, pool, k=min(k, len(pool)))
        except DeviseError as exc:
            fail(422, f"image {index_row}: {exc}")
        answer = {
            "row": index_row,
            "id": index.ids[index_row],
            "k": k,
            "captions": [{"rank": h.rank, "caption": h.caption, "score": round(h.score, 6)} for h in hits],
        }
        answers.put(key, answer)
        return answer

    return app


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

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
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

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>devise image search</title>
<style>
  :root { --fg: #1d232b; --muted: #5c6773; --line: #d9dee4; --accent: #2f6fdb; --bg: #f6f7f9; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
         color: var(--fg); background: var(--bg); }
  header { display: flex; flex-wrap: wrap; align-items: center; gap: 12px 24px; padding: 14px 24px;
           background: #fff; border-bottom: 1px solid var(--line); position: sticky; top: 0; z-index: 1; }
  header h1 { font-size: 20px; margin: 0; letter-spacing: .02em; }
  header h1 span { color: var(--muted); font-weight: 400; font-size: 14px; margin-left: 8px; }
  form { display: flex; gap: 8px; flex: 1; min-width: 280px; max-width: 760px; }
  input { font: inherit; padding: 8px 10px; border: 1px solid var(--line); border-radius: 6px; }
  #q { flex: 1; }
  #k { width: 72px; }
  button { font: inherit; padding: 8px 16px; border: 0; border-radius: 6px; background: var(--accent);
           color: #fff; cursor: pointer; }
  button:hover { filter: brightness(1.08); }
  #status { margin: 12px 24px 0; color: var(--muted); min-height: 1.45em; }
  #status.error { color: #b3261e; }
  main { display: grid; grid-template-columns: 1fr; gap: 20px; padding: 12px 24px 32px; }
  main.with-detail { grid-template-columns: minmax(0, 1fr) minmax(300px, 380px); }
  #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 14px;
             align-content: start; }
  .result { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px; overflow: hidden;
            cursor: pointer; transition: box-shadow .15s, transform .15s; }
  .result:hover, .result:focus { box-shadow: 0 4px 14px rgba(0,0,0,.12); transform: translateY(-1px);
                                 outline: none; }
  .result.selected { border-color: var(--accent); box-shadow: 0 0 0 2px var(--accent); }
  .result img { display: block; width: 100%; aspect-ratio: 1; object-fit: cover; background: #e9ecef; }
  .result figcaption { padding: 6px 9px; font-size: 13px; display: flex; justify-content: space-between;
                       gap: 8px; }
  .result .id { color: var(--muted); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .score { font-variant-numeric: tabular-nums; font-weight: 600; }
  #detail { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px;
            align-self: start; position: sticky; top: 84px; }
  #detail[hidden] { display: none; }
  #detail img { display: block; width: 100%; border-radius: 6px; background: #e9ecef; }
  #detail h2 { font-size: 15px; margin: 14px 0 6px; }
  #detail-id { margin: 8px 0 0; color: var(--muted); font-size: 13px; word-break: break-all; }
  #captions { margin: 0; padding-left: 22px; }
  #captions li { margin: 4px 0; }
  #captions .score { color: var(--muted); font-weight: 400; margin-left: 6px; font-size: 13px; }
  #close { float: right; background: none; color: var(--muted); padding: 0 4px; font-size: 20px; line-height: 1; }
  @media (max-width: 760px) { main.with-detail { grid-template-columns: 1fr; } #detail { position: static; } }
</style>
</head>
<body>
<header>
  <h1>devise<span>image search &middot; __IMAGES__ images</span></h1>
  <form id="search-form" role="search" autocomplete="off">
    <input id="q" name="q" type="search" placeholder="Describe a picture, e.g. two red circles"
           maxlength="__MAX_QUERY__" aria-label="Query" autofocus>
    <input id="k" name="k" type="number" min="1" max="__MAX_K__" value="__DEFAULT_K__" aria-label="Results">
    <button id="go" type="submit">Search</button>
  </form>
</header>
<p id="status" role="status" aria-live="polite"></p>
<main id="main">
  <section id="results" aria-label="Results"></section>
  <aside id="detail" hidden aria-label="Selected image">
    <button id="close" type="button" aria-label="Close">&times;</button>
    <img id="detail-img" alt="">
    <p id="detail-id"></p>
    <h2>Best captions</h2>
    <ol id="captions"></ol>
  </aside>
</main>
<script>
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const form = $("search-form"), q = $("q"), kInput = $("k"), status = $("status");
  const results = $("results"), detail = $("detail"), main = $("main"), captions = $("captions");
  let searchSeq = 0, detailSeq = 0;

  function say(text, isError) {
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    let body = {};
    try { body = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) throw new Error(body.error || ("HTTP " + response.status));
    return body;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function card(hit) {
    const figure = el("figure", "result");
    figure.tabIndex = 0;
    figure.dataset.row = hit.row;
    figure.title = hit.id;
    const img = el("img");
    img.src = hit.thumbnail_url;
    img.alt = hit.id;
    const caption = el("figcaption");
    caption.append(el("span", "id", "#" + hit.rank + " " + hit.id), el("span", "score", hit.score.toFixed(3)));
    figure.append(img, caption);
    figure.addEventListener("click", () => show(hit, figure));
    figure.addEventListener("keydown", (event) => { if (event.key === "Enter") show(hit, figure); });
    return figure;
  }

  async function search(text, k) {
    const seq = ++searchSeq;
    say("Searching\\u2026");
    try {
      const data = await getJSON("/api/search?q=" + encodeURIComponent(text) + "&k=" + encodeURIComponent(k));
      if (seq !== searchSeq) return;
      results.replaceChildren(...data.results.map(card));
      const unknown = (data.unknown_words || []).length
        ? " (no word vector for: " + data.unknown_words.join(", ") + "; ignored)" : "";
      say(data.results.length + " images for \\u201c" + data.query + "\\u201d" + unknown);
      history.replaceState(null, "", "?q=" + encodeURIComponent(text) + "&k=" + encodeURIComponent(k));
    } catch (error) {
      if (seq === searchSeq) { results.replaceChildren(); say(error.message, true); }
    }
  }

  async function show(hit, figure) {
    const seq = ++detailSeq;
    document.querySelectorAll(".result.selected").forEach((node) => node.classList.remove("selected"));
    figure.classList.add("selected");
    detail.hidden = false;
    main.classList.add("with-detail");
    $("detail-img").src = hit.image_url;
    $("detail-img").alt = hit.id;
    $("detail-id").textContent = hit.id + " \\u00b7 score " + hit.score.toFixed(3);
    captions.replaceChildren(el("li", "", "\\u2026"));
    try {
      const data = await getJSON(hit.captions_url + "?k=5");
      if (seq !== detailSeq) return;
      captions.replaceChildren(...data.captions.map((c) => {
        const item = el("li", "caption", c.caption);
        item.append(el("span", "score", c.score.toFixed(3)));
        return item;
      }));
    } catch (error) {
      if (seq === detailSeq) captions.replaceChildren(el("li", "error", error.message));
    }
  }

  function close() {
    detail.hidden = true;
    main.classList.remove("with-detail");
    document.querySelectorAll(".result.selected").forEach((node) => node.classList.remove("selected"));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = q.value.trim();
    if (!text) { say("Type what you are looking for.", true); return; }
    search(text, kInput.value || "__DEFAULT_K__");
  });
  $("close").addEventListener("click", close);
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") close(); });

  const params = new URLSearchParams(location.search);
  if (params.get("k")) kInput.value = params.get("k");
  if (params.get("q")) { q.value = params.get("q"); search(q.value.trim(), kInput.value); }
})();
</script>
</body>
</html>
"""

"""The image-search web app: a search page and a small JSON API over a :class:`SearchEngine`.

Routes (every error is JSON ``{"error": "..."}``: a 4xx status for a bad
request, 503 with ``Retry-After`` when the server is saturated, 500 with no
details for a fault of the server, whose traceback goes to its log only):

* ``GET /`` -- the search page; ``GET /static/{style.css,app.js}`` -- its style
  and script (package data in ``devise/web/static``; nothing from a CDN).
* ``GET /api/search?q=TEXT&k=N`` -- ``{query, k, unknown_words, results: [{rank, row, id, score, date,
  date_source, thumbnail_url, image_url, captions_url}]}``; ``date`` is the photo's date (ISO 8601, the server's
  local time) that ``since``/``until`` compare, ``date_source`` ``"exif"`` or ``"mtime"``; ``unknown_words`` lists the query's words without a
  word vector (ignored); a query with no word that has one is refused with 400. The same combined
  queries and filters as ``SearchEngine.search``: ``like_row=ROW`` (repeatable: "more like this" by
  result row; ``q`` may then be left out), ``not=TEXT`` (repeatable), ``text_weight``, ``like_weight``,
  ``not_weight``, ``under=FOLDER`` (repeatable), ``since``/``until`` (``YYYY-MM-DD`` or ISO date-time),
  ``min_score``; each repeatable parameter at most 8 times.
* ``GET /api/image/{row}`` -- the indexed image file at that row of the index.
* ``GET /api/thumbnail/{row}`` -- a JPEG thumbnail of it (see :mod:`devise.web.thumbnails`).
* ``GET /api/captions/{row}?k=N`` -- the candidate captions that best describe that image.
* ``GET /api/duplicates?threshold=T`` -- groups of near-identical images (see
  :mod:`devise.search.dedup`), largest first: ``{threshold, images, groups_found, skipped, groups:
  [{size, best_score, lowest_score, members: [{rank, row, id, score, nearest, thumbnail_url, image_url,
  captions_url}]}]}``; ``score`` is a member's pixel score with its nearest copy (row ``nearest``). At most
  ``max_duplicate_groups`` groups of at most 100 members are returned. The first request decodes every
  image once (seconds per thousand); every threshold after it is answered from memory.
* ``GET /api/health`` -- ``{status, images}``.

Images are addressed only by their integer row in the index; a path sent by a
client is never opened. Before a file is read it is checked to be the file
that was indexed (:func:`devise.web.files.open_indexed_file`): a changed file,
or one replaced by a symbolic link, gets 410. The model is called under a lock
(one query at a time), so the app is safe to run with uvicorn's thread pool.

Example:
```python
from devise.search.engine import SearchEngine
from devise.web import BackgroundServer, create_app

app = create_app(SearchEngine.load("runs/demo", "photos.h5"))
with BackgroundServer(app) as server:
    print(server.url)
```
"""

import functools
import importlib.resources
import logging
import mimetypes
import os
import string
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Annotated, BinaryIO, NoReturn

from devise.errors import DeviseError, QueryError, require
from devise.web.files import (
    IndexedFileError,
    IndexedFileMissingError,
    open_indexed_file,
)
from devise.web.thumbnails import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageDecodeError,
    ImageTooLargeError,
    ThumbnailBusyError,
    ThumbnailStore,
    image_dimensions,
)

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from devise.search.engine import SearchEngine

PURPOSE = "devise-serve"

#: Host names a server bound to this machine answers to by default.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

# The page's own files, served from memory; everything else under /static is 404.
_ASSETS = {"style.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
_PAGE_POLICY = (
    "default-src 'none'; img-src 'self'; connect-src 'self'; style-src 'self'; script-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_CHUNK_BYTES = 1 << 16
# Members of one near-duplicate group returned by /api/duplicates (its "size" counts them all).
_MAX_GROUP_MEMBERS = 100
_MAX_REPEATS = 8  # like_row, not, under: a query is a few terms, not a list of thousands
_RETRY_AFTER_S = "1"

log = logging.getLogger(__name__)


def read_static(name: str) -> str:
    """The text of a file of the page (``index.html``, ``style.css``, ``app.js``), from package data."""
    return importlib.resources.files("devise.web").joinpath("static", name).read_text("utf-8")


def create_app(
    engine: "SearchEngine",
    *,
    captions: Sequence[str] | None = None,
    max_query_chars: int = 500,
    max_k: int = 100,
    default_k: int = 24,
    thumbnail_size: int = 256,
    thumbnail_dir: str | os.PathLike | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    thumbnail_workers: int = 2,
    thumbnail_queue: int = 16,
    result_cache_size: int = 256,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
    max_duplicate_groups: int = 200,
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
        thumbnail_dir: where thumbnails are kept on disk (default: beside the
            index, ``INDEX.thumbs``; a temporary folder if that cannot be
            created).
        max_image_pixels: images that would decode to more pixels get no
            thumbnail and no captions (422); the full file is still served.
        thumbnail_workers: thumbnails made at the same time.
        thumbnail_queue: thumbnail requests that may wait for a worker; more
            get 503 with ``Retry-After``.
        result_cache_size: search and caption answers kept in memory.
        allowed_hosts: the names a request's ``Host`` header may carry
            (Starlette's ``TrustedHostMiddleware``; others get 400), so a
            web page on another site cannot reach a local server by DNS
            rebinding; ``["*"]`` allows any.
        max_duplicate_groups: the most groups ``/api/duplicates`` returns
            (the largest; ``groups_found`` says how many there are).

    Returns:
        The app, to run with uvicorn or :class:`~devise.web.server.BackgroundServer`.
    """
    fastapi = require("fastapi", "serve", PURPOSE)
    import pydantic
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import (
        HTMLResponse,
        JSONResponse,
        Response,
        StreamingResponse,
    )
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    if engine.index is None:
        raise DeviseError("the web app needs a search engine with an index loaded")
    if max_query_chars < 1 or max_k < 1 or thumbnail_size < 16 or max_image_pixels < 1:
        raise ValueError("max_query_chars, max_k and max_image_pixels must be >= 1 and thumbnail_size >= 16")
    default_k = max(1, min(default_k, max_k))
    if max_duplicate_groups < 1:
        raise ValueError(f"max_duplicate_groups must be >= 1, got {max_duplicate_groups}")
    default_caption_k = min(5, max_k)

    index = engine.index
    n_images = len(index)
    model_lock = threading.Lock()  # Keras models and the index reader are not assumed thread-safe
    candidates: list[list[str]] = [list(dict.fromkeys(captions))] if captions is not None else []
    candidates_lock = threading.Lock()
    page_html = string.Template(read_static("index.html")).substitute(
        images=n_images, max_query_chars=max_query_chars, max_k=max_k, default_k=default_k
    )
    assets = {name: (read_static(name).encode("utf-8"), media) for name, media in _ASSETS.items()}

    app = fastapi.FastAPI(
        title="devise image search",
        docs_url=None,  # the interactive docs load scripts from a CDN
        redoc_url=None,
        openapi_url=None,
    )
    app.state.engine = engine
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    store_options = {
        "size": thumbnail_size,
        "max_pixels": max_image_pixels,
        "workers": thumbnail_workers,
        "queue": thumbnail_queue,
    }
    directory = thumbnail_dir if thumbnail_dir is not None else f"{index.path}.thumbs"
    try:
        thumbnails = ThumbnailStore(directory, **store_options)
    except OSError as exc:
        app.state.thumbnail_tmp = tempfile.TemporaryDirectory(prefix="devise-thumbnails-")
        log.warning("cannot create %s (%s): thumbnails go to %s", directory, exc.strerror, app.state.thumbnail_tmp.name)
        thumbnails = ThumbnailStore(app.state.thumbnail_tmp.name, **store_options)
    app.state.thumbnails = thumbnails

    def fail(status: int, message: str, headers: dict | None = None) -> NoReturn:
        raise StarletteHTTPException(status_code=status, detail=message, headers=headers)

    def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def no_such_row(given: object) -> str:
        known = f"rows 0 to {n_images - 1}" if n_images else "the index is empty"
        return f"no image {str(given)[:40]!r} in the index ({known})"

    def invalid_request(errors: Sequence[dict]) -> tuple[int, str]:
        """Status and message for the first parameter FastAPI's declarations refused."""
        if not errors:
            return 400, "invalid request parameters"
        error = errors[0]
        where, name, given = error["loc"][0], str(error["loc"][-1]), error.get("input")
        if where == "path":  # a row that is not in the index names nothing: 404, as for an unknown route
            return 404, no_such_row(given)
        if name == "k":
            return 400, f"k must be a whole number between 1 and {max_k}, got {str(given)[:40]!r}"
        if name == "threshold":
            return 400, f"threshold must be a number in (0, 1], got {str(given)[:40]!r}"
        if len(error["loc"]) > 2:  # an item of a repeated parameter: name the parameter, not its position
            name = str(error["loc"][1])
        if name == "like_row":
            return 400, f"like_row must be a row of the index (0 to {n_images - 1}), got {str(given)[:40]!r}"
        if name == "q" and error["type"] == "missing":
            return 400, "missing query: use /api/search?q=TEXT"
        if name == "q" and error["type"] == "string_too_long":
            return 400, f"query too long: {len(given)} characters (at most {max_query_chars})"
        return 400, f"invalid parameter {name!r}: {error.get('msg', 'refused')}"

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and message == "Not Found":
            message = f"not found: no route {request.url.path!r}"
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        return error_response(*invalid_request(exc.errors()))

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

    Row = Annotated[int, fastapi.Path(ge=0, lt=n_images)]
    K = Annotated[int, fastapi.Query(ge=1, le=max_k)]

    def open_row(row: int) -> BinaryIO:
        try:
            return open_indexed_file(index, row)
        except IndexedFileMissingError as exc:
            fail(404, str(exc))
        except IndexedFileError as exc:  # changed, or replaced by a link: not the file that was indexed
            fail(410, str(exc))

    def refuse_image(row: int, exc: DeviseError, what: str) -> NoReturn:
        if isinstance(exc, ImageTooLargeError):
            fail(
                422,
                f"image {row} ({index.ids[row]}): {exc}, so it has no {what} (the file itself is at "
                f"/api/image/{row}; devise-serve --max-image-pixels raises the limit)",
            )
        fail(422, f"image {row} cannot be decoded")

    def result_dict(rank: int, row: int, item_id: str, score: float) -> dict:
        date, date_source = index.photo_date(row)
        return {
            "rank": rank,
            "row": row,
            "id": item_id,
            "score": round(float(score), 6),
            "date": date,
            "date_source": date_source,
            "thumbnail_url": f"/api/thumbnail/{row}",
            "image_url": f"/api/image/{row}",
            "captions_url": f"/api/captions/{row}",
        }

    @app.get("/")
    def page():
        return HTMLResponse(page_html, headers={"Content-Security-Policy": _PAGE_POLICY})

    @app.get("/static/{name}")
    def static(name: str):
        if name not in assets:
            fail(404, f"not found: no static file {name[:40]!r}")
        body, media_type = assets[name]
        return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @app.get("/api/health")
    def health():
        return {"status": "ok", "images": n_images}

    @functools.lru_cache(maxsize=result_cache_size)
    def search_answer(query: str | None, k: int, options: tuple = ()) -> dict:
        combined = dict(options)
        results = []
        unknown: list[str] = []
        for text in [query, *combined.get("not_", ())]:
            if text is None:
                continue
            try:
                with model_lock:
                    unknown += [w for w in engine.check_query(text) if w not in unknown]
            except QueryError as exc:  # no word of the query has a vector
                fail(400, f"not {text[:40]!r}: {exc}" if text != query else str(exc))
        if n_images:
            try:
                with model_lock:
                    hits = engine.search(query, k=min(k, n_images), **combined)
            except QueryError as exc:  # a bad filter, or terms that cancel out
                fail(400, str(exc))
            except DeviseError as exc:  # e.g. the index file was rebuilt under the server
                fail(409, str(exc))
            results = [result_dict(h.rank, index.row_of(h.id), h.id, h.score) for h in hits]
        extra = {"like_rows": list(combined["like_rows"])} if "like_rows" in combined else {}
        return {"query": query, "k": k, **extra, "unknown_words": unknown, "results": results}

    Repeated = functools.partial(fastapi.Query, max_length=_MAX_REPEATS)
    Text = Annotated[str, pydantic.StringConstraints(max_length=max_query_chars)]
    Weight = Annotated[float, fastapi.Query(ge=0, le=100, allow_inf_nan=False)]

    @app.get("/api/search")
    def search(
        q: Annotated[str | None, fastapi.Query(max_length=max_query_chars)] = None,
        k: K = default_k,
        like_row: Annotated[list[Annotated[int, pydantic.Field(ge=0, lt=max(n_images, 1))]], Repeated()] = (),
        not_: Annotated[list[Text], Repeated(alias="not")] = (),
        under: Annotated[list[Text], Repeated()] = (),
        since: Annotated[str | None, fastapi.Query(max_length=40)] = None,
        until: Annotated[str | None, fastapi.Query(max_length=40)] = None,
        min_score: Annotated[float | None, fastapi.Query(ge=-1, le=1, allow_inf_nan=False)] = None,
        text_weight: Weight = 1.0,
        like_weight: Weight = 1.0,
        not_weight: Weight = 1.0,
    ):
        query = " ".join(q.split()) if q is not None else None
        if query is not None and not query:
            fail(400, "empty query")
        if query is None and not like_row:
            fail(400, "missing query: use /api/search?q=TEXT, or like_row=ROW for images like a result")
        given = {
            "like_rows": tuple(like_row),
            "not_": tuple(" ".join(t.split()) for t in not_),
            "under": tuple(under),
            "since": since,
            "until": until,
            "min_score": min_score,
            "text_weight": text_weight,
            "like_weight": like_weight,
            "not_weight": not_weight,
        }
        if any(not t for t in given["not_"]):
            fail(400, "empty not term")
        # Only what differs from a plain text query goes into the cache key and the engine call.
        defaults = {"text_weight": 1.0, "like_weight": 1.0, "not_weight": 1.0}
        options = tuple(
            (key, value) for key, value in given.items() if value not in ((), None) and defaults.get(key) != value
        )
        return search_answer(query, k, options)

    @app.get("/api/image/{row}")
    def image(row: Row):
        file = open_row(row)
        size = os.fstat(file.fileno()).st_size
        media_type = mimetypes.guess_type(index.ids[row])[0] or "application/octet-stream"
        return StreamingResponse(
            _chunks(file),
            media_type=media_type,
            headers={"Content-Length": str(size), "Cache-Control": "private, max-age=3600"},
        )

    @app.get("/api/thumbnail/{row}")
    def thumbnail(row: Row):
        key = (index.ids[row], int(index.sizes[row]), int(index.mtime_ns[row]))
        with open_row(row) as file:  # checked on every request, cached thumbnail or not
            try:
                data = thumbnails.get(key, file)
            except ThumbnailBusyError as exc:
                fail(503, f"server busy: {exc}; retry shortly", headers={"Retry-After": _RETRY_AFTER_S})
            except (ImageTooLargeError, ImageDecodeError) as exc:
                refuse_image(row, exc, "thumbnail")
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

    @functools.lru_cache(maxsize=result_cache_size)
    def captions_answer(row: int, k: int) -> dict:
        pool = caption_candidates()
        if not pool:
            fail(404, "no candidate captions")
        # The engine decodes by path: checked just before (open_row), and a
        # file swapped in between is only captioned, never sent.
        path = os.path.join(index.image_root, *index.ids[row].split("/"))
        try:
            with model_lock:
                hits = engine.annotate(path, pool, k=min(k, len(pool)))
        except DeviseError as exc:
            fail(422, f"image {row}: {exc}")
        return {
            "row": row,
            "id": index.ids[row],
            "k": k,
            "captions": [{"rank": h.rank, "caption": h.caption, "score": round(h.score, 6)} for h in hits],
        }

    @app.get("/api/captions/{row}")
    def image_captions(row: Row, k: K = default_caption_k):
        with open_row(row) as file:
            try:
                width, height = image_dimensions(file)
                if width * height > max_image_pixels:
                    raise ImageTooLargeError.for_size(width, height, max_image_pixels)
            except (ImageTooLargeError, ImageDecodeError) as exc:
                refuse_image(row, exc, "captions")
        return captions_answer(row, k)

    # Near-duplicates: one finder, made on first use, keeps the candidate pairs' scores, so each
    # threshold after the first costs only the grouping. Its own lock: searches go on meanwhile.
    duplicate_finders: list = []
    duplicates_lock = threading.Lock()

    @functools.lru_cache(maxsize=16)
    def duplicates_answer(threshold: float) -> dict:
        from devise.search.dedup import DuplicateFinder

        with duplicates_lock:
            if not duplicate_finders:
                duplicate_finders.append(DuplicateFinder(index))
            finder = duplicate_finders[0]
            try:
                groups = finder.groups(threshold)
            except DeviseError as exc:  # e.g. the index file was rebuilt under the server
                fail(409, str(exc))
        return {
            "threshold": threshold,
            "images": n_images,
            "groups_found": len(groups),
            "skipped": len(finder.skipped),
            "groups": [
                {
                    "size": len(group),
                    "best_score": group.best_score,
                    "lowest_score": group.lowest_score,
                    "members": [
                        {**result_dict(rank, m.row, m.id, m.score), "nearest": m.nearest}
                        for rank, m in enumerate(group.members[:_MAX_GROUP_MEMBERS], 1)
                    ],
                }
                for group in groups[:max_duplicate_groups]
            ],
        }

    @app.get("/api/duplicates")
    def duplicates(threshold: Annotated[float | None, fastapi.Query(gt=0, le=1, allow_inf_nan=False)] = None):
        from devise.search.dedup import DEFAULT_THRESHOLD

        # Rounded, so that the cache holds one answer per distinct threshold a person would ask for.
        chosen = DEFAULT_THRESHOLD if threshold is None else max(0.001, round(threshold, 3))
        return duplicates_answer(chosen)

    return app


def _chunks(file: BinaryIO) -> Iterator[bytes]:
    with file:
        while chunk := file.read(_CHUNK_BYTES):
            yield chunk

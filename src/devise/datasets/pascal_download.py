"""Download Pascal Sentences from its official page into the standard layout.

The page at :data:`~devise.datasets.pascal.PASCAL_URL` is one big table: a
row per image, holding a cell with ``<img src="<category>/<file>.jpg">`` and
a cell with a nested table of five one-sentence cells. :func:`parse_pascal_page`
reads it (tolerating old-style HTML: uppercase, unquoted or unclosed tags)
and :func:`download_pascal` fetches every image in parallel into::

    <dest>/dataset/<category>/<file>.jpg
    <dest>/sentence/<category>/<stem>.txt     one sentence per line, UTF-8
    <dest>/manifest.json                      what was fetched, from where

Each image is decoded before it is accepted; a truncated or non-image
response is retried and then reported, never kept. A second run skips what
is already complete and resumes partial ``.part`` files.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import html.parser
import json
import os
import pathlib
import re
import threading
import urllib.parse
from collections.abc import Callable

from devise.atomicfile import write_bytes
from devise.datasets.images import load_image
from devise.datasets.pascal import (
    IMAGE_DIR,
    IMAGE_EXTENSIONS,
    PASCAL_URL,
    SENTENCE_DIR,
    SENTENCE_EXTENSION,
)
from devise.download import (
    DownloadError,
    download_file,
    fetch_bytes,
    file_sha256,
    is_complete,
    make_folder,
)
from devise.progress import ProgressBar

MANIFEST_NAME = "manifest.json"

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
# Tags that end a table cell's text even when </td> is missing.
_CELL_BREAKS = frozenset({"td", "th", "tr", "table", "tbody", "thead", "tfoot"})


@dataclasses.dataclass(frozen=True)
class PascalEntry:
    """One image listed on the Pascal Sentences page.

    Attributes:
        category: the category folder (``"aeroplane"``).
        file_name: the image file name (``"2008_000032.jpg"``).
        image_url: the absolute URL of the image.
        sentences: its captions, whitespace-normalised, entities decoded.
    """

    category: str
    file_name: str
    image_url: str
    sentences: tuple[str, ...]

    @property
    def stem(self) -> str:
        return pathlib.PurePosixPath(self.file_name).stem

    @property
    def image_id(self) -> str:
        return f"{self.category}/{self.stem}"


@dataclasses.dataclass(frozen=True)
class PascalFailure:
    """An image that could not be downloaded, and why."""

    image_id: str
    url: str
    reason: str

    def __str__(self) -> str:
        return f"{self.image_id} ({self.url}): {self.reason}"


@dataclasses.dataclass
class PascalDownloadReport:
    """What :func:`download_pascal` did.

    Attributes:
        dest: the dataset folder.
        source_url: the page the image list came from.
        total: images listed on the page.
        downloaded: images fetched by this run.
        skipped: images already complete from an earlier run.
        failures: the images that are still missing, with reasons.
        manifest_path: where the manifest was written.
    """

    dest: str
    source_url: str
    total: int
    downloaded: int
    skipped: int
    failures: list[PascalFailure]
    manifest_path: str

    @property
    def complete(self) -> bool:
        """True when every listed image and its sentences are in place."""
        return self.total > 0 and not self.failures

    def summary(self) -> str:
        """A few human-readable lines: counts, then one line per failure."""
        lines = [
            f"Pascal Sentences in {self.dest}: {self.total} images listed, "
            f"{self.downloaded} downloaded, {self.skipped} already present, "
            f"{len(self.failures)} failed"
        ]
        if self.failures:
            lines.append("Failed (rerun the same command to retry; finished files are kept):")
            lines += [f"  - {failure}" for failure in self.failures]
        else:
            lines.append("Complete.")
        return "\n".join(lines)


# --------------------------------------------------------------------------
# Page parsing
# --------------------------------------------------------------------------


class _PageParser(html.parser.HTMLParser):
    """Collects, in document order, image sources and the text of table cells."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.events: list[tuple[str, str]] = []  # ("img", src) or ("cell", text)
        self._cell: list[str] | None = None

    def _flush(self) -> None:
        if self._cell is not None:
            text = " ".join("".join(self._cell).split())
            if text:
                self.events.append(("cell", text))
            self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            src = dict(attrs).get("src")
            if src:
                self._flush()
                self.events.append(("img", src.strip()))
            return
        if tag == "br" and self._cell is not None:
            self._cell.append(" ")
            return
        if tag in _CELL_BREAKS:
            self._flush()
            if tag in ("td", "th"):
                self._cell = []

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag in _CELL_BREAKS:
            self._flush()

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def close(self):
        super().close()
        self._flush()


def parse_pascal_page(html: str, base_url: str = PASCAL_URL) -> list[PascalEntry]:
    """The images and sentences listed on a Pascal Sentences page.

    Every ``<img>`` whose source is ``<category>/<file>`` with an image
    extension starts an entry; the text of each table cell after it (up to
    the next such image) is one sentence. Tags may be upper case, unquoted
    or unclosed; entities are decoded and whitespace is collapsed. An image
    listed twice keeps its first entry.

    Args:
        html: the page source.
        base_url: the page's URL, against which image sources are resolved.

    Returns:
        The entries in page order.
    """
    parser = _PageParser()
    parser.feed(html)
    parser.close()

    entries: list[PascalEntry] = []
    seen: set[tuple[str, str]] = set()
    current: dict | None = None

    def finish() -> None:
        if current is not None:
            key = (current["category"], current["file_name"])
            if key not in seen:
                seen.add(key)
                entries.append(
                    PascalEntry(
                        current["category"],
                        current["file_name"],
                        current["image_url"],
                        tuple(current["sentences"]),
                    )
                )

    for kind, value in parser.events:
        if kind == "img":
            located = _locate_image(value, base_url)
            if located is None:
                continue  # a logo or icon, not a dataset image
            finish()
            category, file_name, image_url = located
            current = {
                "category": category,
                "file_name": file_name,
                "image_url": image_url,
                "sentences": [],
            }
        elif current is not None:
            current["sentences"].append(value)
    finish()
    return entries


def _locate_image(src: str, base_url: str) -> tuple[str, str, str] | None:
    """(category, file name, absolute URL) of an image source, or None if not a dataset image."""
    if "/" not in urllib.parse.urlsplit(src).path.strip("/"):
        return None  # no category folder: a logo or icon next to the page
    image_url = urllib.parse.urljoin(base_url, src)
    parts = urllib.parse.urlsplit(image_url).path.split("/")
    if len(parts) < 2:
        return None
    category, file_name = (urllib.parse.unquote(p) for p in parts[-2:])
    if not (_PLAIN_NAME.match(category) and _PLAIN_NAME.match(file_name)):
        return None
    if pathlib.PurePosixPath(file_name).suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    return category, file_name, image_url


# --------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------


class _Cancelled(BaseException):
    """Raised inside a worker's download when the run is being interrupted."""


def _validate_image(path: str) -> None:
    load_image(path)


def download_pascal(
    dest: str | os.PathLike,
    *,
    url: str = PASCAL_URL,
    workers: int = 8,
    retries: int = 3,
    timeout: float = 30,
    progress: bool | Callable[[int, int], None] = True,
    backoff: float = 0.5,
) -> PascalDownloadReport:
    """Download Pascal Sentences into ``dest`` in the standard layout.

    Fetches the page at ``url``, then every image it lists with ``workers``
    threads. Each image is decoded before it is accepted (a truncated or
    non-image response is deleted, retried and then reported); its sentence
    file is written (atomically) once the image is in place. Images that are
    already complete and sentence files already written are skipped, and a
    partial ``.part`` image resumes, so rerunning after a failure or Ctrl-C
    fetches only what is missing. ``dest/manifest.json`` records the source,
    date and, per image, the file, size, SHA-256 and status.

    Args:
        dest: the dataset folder (created if needed).
        url: the page listing the images and sentences.
        workers: parallel image downloads.
        retries: extra attempts per file after the first.
        timeout: seconds to wait for each connection and read.
        progress: ``True`` for a progress bar on stderr, ``False`` for none,
            or a callable ``progress(done_images, total_images)`` (called in
            the calling thread; whatever it raises stops the run).
        backoff: seconds before the first retry of a file; doubled after.

    Returns:
        A :class:`PascalDownloadReport`; ``report.complete`` is True only if
        every listed image is in place.

    Raises:
        DownloadError: ``dest`` cannot be created, or the page itself cannot
            be fetched or lists no images.
        KeyboardInterrupt: re-raised after in-flight downloads stopped; only
            ``.part`` files are left incomplete and the manifest is written.
    """
    dest_path = pathlib.Path(dest)
    created = not dest_path.exists()
    make_folder(dest_path, url)  # first: an impossible destination is refused before any download
    try:
        page = fetch_bytes(url, retries=retries, timeout=timeout, backoff=backoff)
        entries = parse_pascal_page(_decode_page(page), url)
        if not entries:
            raise DownloadError(url, 'the page lists no images (expected <img src="<category>/<file>.jpg"> rows)')
    except BaseException:
        if created:  # offline, or a wrong URL: leave no empty dataset folder behind
            with contextlib.suppress(OSError):
                dest_path.rmdir()
        raise

    if progress is True:
        bar = ProgressBar("Pascal images")
        report_progress: Callable[[int, int], None] | None = bar.update
    elif callable(progress):
        report_progress = progress
    else:
        report_progress = None

    cancel = threading.Event()
    results: dict[int, dict] = {}

    def fetch(index: int) -> dict:
        return _fetch_entry(entries[index], dest_path, retries, timeout, backoff, cancel)

    started = datetime.datetime.now(datetime.UTC)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers))
    interrupted = False
    try:
        futures = {pool.submit(fetch, i): i for i in range(len(entries))}
        if report_progress is not None:
            report_progress(0, len(entries))
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
            if report_progress is not None:
                report_progress(len(results), len(entries))
    except BaseException:
        interrupted = True
        cancel.set()
        raise
    finally:
        # Wait for the workers so that no thread still writes once we return;
        # a cancelled download stops at its next chunk and keeps its .part.
        pool.shutdown(wait=True, cancel_futures=True)
        manifest_path = _write_manifest(dest_path, url, started, entries, results, interrupted)

    failures = [
        PascalFailure(entries[i].image_id, entries[i].image_url, results[i]["error"])
        for i in range(len(entries))
        if results[i]["status"] == "failed"
    ]
    return PascalDownloadReport(
        dest=str(dest_path),
        source_url=url,
        total=len(entries),
        downloaded=sum(1 for r in results.values() if r["status"] == "downloaded"),
        skipped=sum(1 for r in results.values() if r["status"] == "present"),
        failures=failures,
        manifest_path=str(manifest_path),
    )


def _fetch_entry(
    entry: PascalEntry,
    dest: pathlib.Path,
    retries: int,
    timeout: float,
    backoff: float,
    cancel: threading.Event,
) -> dict:
    """Download one image (unless complete) and write its sentence file."""
    if cancel.is_set():
        raise _Cancelled()
    image_path = dest / IMAGE_DIR / entry.category / entry.file_name
    sentence_path = dest / SENTENCE_DIR / entry.category / f"{entry.stem}{SENTENCE_EXTENSION}"
    result: dict = {"status": None, "error": None, "size": None, "sha256": None}

    if not entry.sentences:
        result.update(status="failed", error="the page lists no sentences for this image")
        return result

    def check_cancel(done: int, total: int | None) -> None:
        if cancel.is_set():
            raise _Cancelled()

    if is_complete(image_path, validate=_validate_image):
        result["status"] = "present"
    else:
        try:
            download = download_file(
                entry.image_url,
                image_path,
                retries=retries,
                timeout=timeout,
                progress=check_cancel,
                validate=_validate_image,
                backoff=backoff,
            )
        except DownloadError as exc:
            result.update(status="failed", error=exc.reason)
            return result
        result.update(status="downloaded", size=download.size, sha256=download.sha256)

    try:
        _write_sentences(sentence_path, entry.sentences)
    except OSError as exc:
        result.update(status="failed", error=f"cannot write {sentence_path}: {exc}")
        return result
    if result["sha256"] is None:
        result.update(size=image_path.stat().st_size, sha256=file_sha256(image_path))
    return result


def _write_sentences(path: pathlib.Path, sentences: tuple[str, ...]) -> None:
    data = "".join(f"{sentence}\n" for sentence in sentences).encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return
    _write_atomic(path, data)


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data)


def _write_manifest(
    dest: pathlib.Path,
    url: str,
    started: datetime.datetime,
    entries: list[PascalEntry],
    results: dict[int, dict],
    interrupted: bool,
) -> pathlib.Path:
    images = []
    for index, entry in enumerate(entries):
        result = results.get(index, {"status": "pending", "error": "interrupted before it finished"})
        record = {
            "id": entry.image_id,
            "url": entry.image_url,
            "file": f"{IMAGE_DIR}/{entry.category}/{entry.file_name}",
            "sentences": f"{SENTENCE_DIR}/{entry.category}/{entry.stem}{SENTENCE_EXTENSION}",
            "size": result.get("size"),
            "sha256": result.get("sha256"),
            "status": result["status"],
        }
        if result.get("error"):
            record["error"] = result["error"]
        images.append(record)
    manifest = {
        "source_url": url,
        "downloaded_at": started.isoformat(timespec="seconds"),
        "complete": bool(entries) and all(r["status"] in ("downloaded", "present") for r in images),
        "interrupted": interrupted,
        "images": images,
    }
    path = dest / MANIFEST_NAME
    _write_atomic(path, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    return path


def _decode_page(page: bytes) -> str:
    try:
        return page.decode("utf-8")
    except UnicodeDecodeError:
        # Old pages are usually Windows-1252 / Latin-1.
        return page.decode("cp1252", errors="replace")


__all__ = [
    "MANIFEST_NAME",
    "PascalDownloadReport",
    "PascalEntry",
    "PascalFailure",
    "download_pascal",
    "parse_pascal_page",
]

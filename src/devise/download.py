"""Robust HTTP downloads shared by the dataset and embedding downloaders.

:func:`download_file` streams a URL to ``dest + ".part"`` and moves it into
place only once it is whole and checked, so ``dest`` either does not exist
or is a complete, verified file -- even after a crash or Ctrl-C. A partial
``.part`` file is resumed with an HTTP ``Range`` request on the next try (or
the next run); a server that ignores ``Range`` is handled by starting over.

Only the standard library is used (``urllib.request``).

Why not a kept HTTP library: urllib3's ``Retry`` (under ``requests``) gives
retries with exponential backoff on connection errors and chosen statuses,
which is about 40 of these lines (``_attempt``'s loop, ``_pause``,
``_gave_up``). It does not give what the rest is for: resuming a partial
body with ``Range`` across attempts *and across runs* (the ``.part`` file),
checking that a ``206`` answer's ``Content-Range`` starts where the file
ends, starting over when a server ignores ``Range`` or answers ``416``,
verifying size, SHA-256 and content (``validate``) before the rename, and
one-line errors naming the URL. ``requests`` is only a transitive
dependency of TensorFlow, not one of devise's declared ones, so depending on
it for the retry loop alone would add a dependency and keep all of the
above. The ``.part`` file is deliberately not a
:func:`devise.atomicfile.atomic_path` temporary: it must survive a crash so
the next run can resume it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from devise.errors import DataFormatError, DeviseError

PART_SUFFIX = ".part"
USER_AGENT = "devise-downloader/0.1 (+python urllib)"
CHUNK_SIZE = 1 << 16
MAX_BACKOFF = 30.0

# progress(done_bytes, total_bytes or None)
ProgressCallback = Callable[[int, "int | None"], None]

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


class DownloadError(DeviseError):
    """A download failed for good (after any retries).

    Attributes:
        url: what was being downloaded.
        reason: why it failed, in words (``"HTTP 404 Not Found"``, ...).
        status: the HTTP status that ended it, or ``None``.
    """

    def __init__(self, url: str, reason: str, *, status: int | None = None):
        self.url = url
        self.reason = reason
        self.status = status
        super().__init__(f"cannot download {url}: {reason}")


@dataclasses.dataclass(frozen=True)
class DownloadResult:
    """What :func:`download_file` produced.

    Attributes:
        url: the URL downloaded.
        path: the final file (``dest``).
        size: its size in bytes.
        sha256: its SHA-256, hex.
        resumed_from: bytes of an earlier ``.part`` file that were kept
            (0 when the download started from scratch).
        bytes_received: body bytes received over the network by this call,
            over all attempts.
        attempts: HTTP requests made.
    """

    url: str
    path: str
    size: int
    sha256: str
    resumed_from: int
    bytes_received: int
    attempts: int


class _Retry(Exception):
    """One attempt failed in a way another attempt may fix."""

    def __init__(self, reason: str, *, status: int | None = None, discard_part: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.discard_part = discard_part


class _Fatal(Exception):
    """One attempt failed in a way retrying cannot fix (404, 403, ...)."""

    def __init__(self, reason: str, *, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status


def part_path(dest: str | os.PathLike) -> str:
    """Where :func:`download_file` keeps the partial download of ``dest``."""
    return os.fspath(dest) + PART_SUFFIX


def is_complete(
    dest: str | os.PathLike,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    validate: Callable[[str], object] | None = None,
) -> bool:
    """Whether ``dest`` is a finished download that passes the given checks.

    ``dest`` must be a regular file; when given, its size must equal
    ``expected_size``, its SHA-256 ``sha256``, and ``validate(dest)`` must
    not raise :class:`~devise.errors.DataFormatError`.
    """
    path = os.fspath(dest)
    if not os.path.isfile(path):
        return False
    if expected_size is not None and os.path.getsize(path) != expected_size:
        return False
    if sha256 is not None and file_sha256(path) != sha256.lower():
        return False
    if validate is not None:
        try:
            validate(path)
        except DataFormatError:
            return False
    return True


def make_folder(folder: str | os.PathLike, url: str) -> None:
    """Create ``folder`` (and its parents) to download ``url`` into.

    Args:
        folder: the folder; nothing happens if it exists.
        url: what will be downloaded, named in the error.

    Raises:
        DownloadError: the folder cannot be created (a file is in the way,
            no permission, ...); says which folder and why.
    """
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise DownloadError(url, f"cannot create the folder {folder} ({exc.strerror or exc})") from None


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file, read in chunks."""
    return _hash_file(path).hexdigest()


def _hash_file(path: str | os.PathLike):
    """A SHA-256 object fed with the whole file, so more bytes can be added to it."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 30,
    progress: ProgressCallback | None = None,
    validate: Callable[[str], object] | None = None,
    backoff: float = 0.5,
) -> DownloadResult:
    """Download ``url`` to ``dest``, resuming and retrying; never leave a corrupt ``dest``.

    The body is streamed to ``dest + ".part"``. If that file already exists
    (an interrupted earlier run) the download resumes from its end with a
    ``Range`` request; a server that answers ``200`` instead of ``206``
    sends the whole file, which then replaces the partial one. When the body
    is complete its size is checked against ``Content-Length`` /
    ``Content-Range`` and ``expected_size``, its SHA-256 against ``sha256``,
    and ``validate(part_path)`` is called; only then is it moved onto
    ``dest`` with :func:`os.replace` (atomic). ``dest`` is replaced only by a
    verified file.

    Connection errors, timeouts, HTTP 5xx / 408 / 429 and truncated bodies
    are retried up to ``retries`` times, waiting ``backoff * 2**n`` seconds
    (a truncated ``.part`` is kept and resumed). A body that fails a check is
    deleted and downloaded again. Other HTTP errors (404, 403, ...) fail at
    once. On any exception (Ctrl-C included) only the ``.part`` file is left.

    Args:
        url: what to download (http, https or file).
        dest: the final path; parent folders are created.
        expected_size: the size the file must have, if known.
        sha256: the hex SHA-256 the file must have, if known.
        retries: extra attempts after the first.
        timeout: seconds to wait for the connection and for each read.
        progress: called as ``progress(done_bytes, total_bytes_or_None)``
            while the body streams (``done`` counts resumed bytes too).
            Whatever it raises aborts the download, keeping the ``.part``.
        validate: called with the path of the finished ``.part`` file;
            raise :class:`~devise.errors.DataFormatError` to reject it.
        backoff: seconds before the first retry; doubled for each next one.

    Returns:
        A :class:`DownloadResult`.

    Raises:
        DownloadError: the download failed for good; says why.
    """
    dest = os.fspath(dest)
    part = part_path(dest)
    make_folder(os.path.dirname(os.path.abspath(dest)), url)
    sha256 = sha256.lower() if sha256 else None

    stats = {"received": 0, "resumed_from": None, "content_type": None}
    last: _Retry | None = None
    for attempt in range(retries + 1):
        if attempt:
            _pause(attempt, backoff)
        try:
            digest, size = _attempt(url, part, expected_size, timeout, progress, stats)
            _verify(part, size, digest, expected_size, sha256, validate, stats["content_type"])
        except _Fatal as exc:
            raise DownloadError(url, exc.reason, status=exc.status) from None
        except _Retry as exc:
            last = exc
            if exc.discard_part:
                _remove(part)
            continue
        try:
            os.replace(part, dest)
        except OSError as exc:
            raise DownloadError(url, f"cannot move {part} to {dest}: {exc}") from None
        return DownloadResult(
            url=url,
            path=dest,
            size=size,
            sha256=digest,
            resumed_from=stats["resumed_from"] or 0,
            bytes_received=stats["received"],
            attempts=attempt + 1,
        )
    raise _gave_up(url, last, retries + 1)


def fetch_bytes(url: str, *, retries: int = 3, timeout: float = 30, backoff: float = 0.5) -> bytes:
    """GET a (small) resource into memory, with the retry rules of :func:`download_file`."""
    last: _Retry | None = None
    for attempt in range(retries + 1):
        if attempt:
            _pause(attempt, backoff)
        try:
            response = _open(url, {}, timeout)
            with response:
                total = _content_length(response)
                body = bytearray()
                while True:
                    chunk = _read_chunk(response)
                    if not chunk:
                        break
                    body += chunk
            if total is not None and len(body) != total:
                raise _Retry(f"truncated: got {len(body):,} of {total:,} bytes")
            return bytes(body)
        except _Fatal as exc:
            raise DownloadError(url, exc.reason, status=exc.status) from None
        except _Retry as exc:
            last = exc
    raise _gave_up(url, last, retries + 1)


def _pause(attempt: int, backoff: float) -> None:
    """Wait before retry number ``attempt`` (1 for the first retry)."""
    time.sleep(min(backoff * 2 ** (attempt - 1), MAX_BACKOFF))


def _gave_up(url: str, last: _Retry | None, attempts: int) -> DownloadError:
    assert last is not None
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    return DownloadError(url, f"{last.reason} (gave up after {tries})", status=last.status)


# --------------------------------------------------------------------------
# One attempt
# --------------------------------------------------------------------------


def _attempt(url, part, expected_size, timeout, progress, stats) -> tuple[str, int]:
    """Fetch what is missing of ``part``; return (sha256, size) of the whole body."""
    offset = os.path.getsize(part) if os.path.isfile(part) else 0
    if expected_size is not None and offset > expected_size:
        _remove(part)
        offset = 0
    if expected_size is not None and offset == expected_size and offset > 0:
        # Finished earlier but not moved into place (interrupted): just verify.
        if stats["resumed_from"] is None:
            stats["resumed_from"] = offset
        if progress is not None:
            progress(offset, expected_size)
        return file_sha256(part), offset

    if progress is not None:
        progress(offset, expected_size)
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = _open(url, headers, timeout)
    except _RangeNotSatisfiable as exc:
        if exc.total is not None and exc.total == offset:
            if stats["resumed_from"] is None:
                stats["resumed_from"] = offset
            if progress is not None:
                progress(offset, offset)
            return file_sha256(part), offset
        raise _Retry(f"server refused to resume at byte {offset:,} (HTTP 416)", status=416, discard_part=True) from None

    with response:
        # file: (and ftp:) responses have no HTTP status; they always send the
        # whole file, like a 200 to a Range request.
        status = response.status if response.status is not None else 200
        stats["content_type"] = response.headers.get("Content-Type")
        if offset and status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise _Retry(f"server resumed at byte {start} instead of {offset}", discard_part=True)
            if total is None:
                length = _content_length(response)
                total = offset + length if length is not None else None
            mode = "ab"
        elif status in (200, 203) or (status == 206 and not offset):
            # A 200 to a Range request: the server sends the whole file again.
            offset = 0
            total = _content_length(response)
            if status == 206:
                start, total = _parse_content_range(response.headers.get("Content-Range"))
                if start != 0:
                    raise _Retry(f"server sent a range from byte {start} unasked", discard_part=True)
            mode = "wb"
        else:
            raise _Fatal(f"unexpected HTTP {status} {response.reason}", status=status)

        if expected_size is not None and total is not None and total != expected_size:
            raise _Fatal(f"server reports {total:,} bytes, expected {expected_size:,}")

        digest = _hash_file(part) if mode == "ab" else hashlib.sha256()
        if stats["resumed_from"] is None:
            stats["resumed_from"] = offset
        done = offset
        try:
            handle = open(part, mode)  # noqa: SIM115 - closed by the with below; the open alone gets its own error
        except OSError as exc:
            raise _Fatal(f"cannot write {part}: {exc}") from None
        with handle:
            while True:
                chunk = _read_chunk(response)
                if not chunk:
                    break
                stats["received"] += len(chunk)
                try:
                    handle.write(chunk)
                except OSError as exc:
                    raise _Fatal(f"cannot write {part}: {exc}") from None
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)

    if total is not None and done < total:
        # Keep the .part: the next attempt resumes where this one stopped.
        raise _Retry(f"truncated: got {done:,} of {total:,} bytes (connection closed early)")
    if total is not None and done > total:
        raise _Retry(f"server sent {done:,} bytes, announced {total:,}", discard_part=True)
    return digest.hexdigest(), done


def _verify(part, size, digest, expected_size, sha256, validate, content_type=None) -> None:
    if expected_size is not None and size != expected_size:
        raise _Retry(f"size {size:,} bytes, expected {expected_size:,}", discard_part=True)
    if sha256 is not None and digest != sha256:
        raise _Retry(f"SHA-256 {digest} does not match the expected {sha256}", discard_part=True)
    if validate is not None:
        try:
            validate(part)
        except DataFormatError as exc:
            # Messages often name the temporary .part file; leave it out.
            reason = str(exc).replace(f" '{part}'", "").replace(f" {part!r}", "")
            if reason.startswith(part + ": "):
                reason = reason[len(part) + 2 :]
            served = f" (served as {content_type})" if content_type else ""
            raise _Retry(f"invalid content{served}: {reason}", discard_part=True) from None


class _RangeNotSatisfiable(Exception):
    def __init__(self, total: int | None):
        super().__init__("416")
        self.total = total


def _open(url: str, headers: dict[str, str], timeout: float):
    request = urllib.request.Request(
        url,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers},
    )
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        status = exc.code
        reason = f"HTTP {status} {exc.reason}".rstrip()
        content_range = (exc.headers.get("Content-Range", "") if exc.headers else "") or ""
        with contextlib.suppress(Exception):  # best effort
            exc.close()
        if status == 416 and "Range" in headers:
            match = _UNSATISFIED_RANGE.match(content_range)
            raise _RangeNotSatisfiable(int(match.group(1)) if match else None) from None
        if status >= 500 or status in (408, 425, 429):
            raise _Retry(reason, status=status) from None
        raise _Fatal(reason, status=status) from None
    except urllib.error.URLError as exc:
        raise _Retry(f"cannot connect: {exc.reason}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _Retry(_describe(exc)) from None
    except OSError as exc:
        raise _Retry(_describe(exc)) from None
    except ValueError as exc:  # unknown URL type and the like
        raise _Fatal(str(exc)) from None


def _read_chunk(response) -> bytes:
    try:
        # read1 returns what has arrived, so a stalled server still leaves
        # its bytes in the .part file for the next attempt to resume from.
        return response.read1(CHUNK_SIZE)
    except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as exc:
        raise _Retry(_describe(exc)) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return "truncated: connection closed early"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, OSError) else text


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None or response.headers.get("Transfer-Encoding"):
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


def _parse_content_range(value: str | None) -> tuple[int, int | None]:
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        raise _Retry(f"bad Content-Range header {value!r}", discard_part=False)
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)

"""On-disk cache of the word vectors a vocabulary needs.

Reading the 300-d GloVe vectors of a 10k-word vocabulary out of an 800 MB
text file takes tens of seconds; training runs with the same vocabulary
read the same rows again and again. :func:`load_word_vectors_cached` keeps
the rows of one (source file, vocabulary) pair in a small ``.npz`` file and
loads them from there next time.

The cache key is the absolute source path, the zip member, the file's size
and modification time (``mtime_ns``), the format, the expected ``dim`` and
the SHA-256 of the sorted vocabulary. Rewriting or touching the source, or
asking for another vocabulary, therefore misses the cache and reads the
source again. Entries are written through :func:`devise.atomicfile.atomic_path`
(a temporary file that replaces the final one in a single rename), so a
crash never leaves half an entry; an unreadable entry is reported with a
:class:`RuntimeWarning`, ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from devise.atomicfile import atomic_path
from devise.embeddings.glove import choose_zip_member, is_zip_source, load_glove_text, split_zip_member
from devise.embeddings.vector_file import LoadIssue, WordVectorsLoadResult
from devise.embeddings.word2vec import load_word2vec_binary, load_word2vec_text
from devise.embeddings.word_vectors import WordVectors
from devise.errors import DataFormatError

FORMATS = ("glove", "word2vec_text", "word2vec_binary")
CACHE_ENV = "DEVISE_CACHE_DIR"
_CACHE_VERSION = 1
# What reading a damaged or foreign .npz entry can raise.
_DAMAGED_ENTRY = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    zipfile.BadZipFile,
    zlib.error,
)


def default_cache_dir() -> Path:
    """Where entries go when no ``cache_dir`` is given.

    ``$DEVISE_CACHE_DIR/word_vectors`` when that variable is set (it names
    devise's cache root), else ``~/.cache/devise/word_vectors``.
    """
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "devise"
    return base / "word_vectors"


def vocabulary_digest(vocabulary: Iterable[str] | None) -> str:
    """SHA-256 of the sorted, de-duplicated vocabulary (``"all"`` for ``None``)."""
    if vocabulary is None:
        return "all"
    h = hashlib.sha256()
    for word in sorted(set(vocabulary)):
        data = word.encode("utf-8", "surrogatepass")
        # Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _resolve_source(path: str | os.PathLike, member: str | None, dim: int | None, fmt: str) -> tuple[Path, str | None]:
    if fmt == "glove":
        source, member = split_zip_member(path, member)
        if source.is_file() and is_zip_source(source, member):
            # The member actually read, so every spelling of it shares one entry.
            member = choose_zip_member(source, member, dim)
        return source, member
    if member is not None:
        raise DataFormatError(
            f"{path}: word2vec files are not read from zip archives (member={member!r}); "
            "unzip the file and pass it directly"
        )
    return Path(path), None


def _load(
    fmt: str,
    source: Path,
    member: str | None,
    vocabulary: list[str] | None,
    dim: int | None,
    strict: bool,
) -> WordVectorsLoadResult:
    # Looked up at call time, so tests can replace a loader on this module.
    if fmt == "glove":
        return load_glove_text(source, vocabulary=vocabulary, dim=dim, strict=strict, member=member)
    loader = load_word2vec_text if fmt == "word2vec_text" else load_word2vec_binary
    result = loader(source, vocabulary=vocabulary, strict=strict)
    if dim is not None and result.vectors.dim != dim:
        raise DataFormatError(f"{source}: the vectors have {result.vectors.dim} values, expected dim={dim}")
    return result


def _entry_name(source: Path, member: str | None, digest: str) -> str:
    stem = source.name + (f"--{member.rsplit('/', 1)[-1]}" if member else "")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80]
    return f"{stem}-{digest[:32]}.npz"


def _read_entry(file: Path, key: dict[str, Any]) -> tuple[list[str], np.ndarray, dict[str, Any]] | None:
    """The stored words, vectors and metadata; ``None`` if the entry is for another key.

    Raises whatever a damaged file raises.
    """
    with np.load(file, allow_pickle=False) as archive:
        meta = json.loads(archive["meta"].tobytes().decode("utf-8"))
        if meta.get("version") != _CACHE_VERSION or meta.get("key") != key:
            return None
        vectors = archive["vectors"]
    words = meta["words"]
    if (
        vectors.dtype != np.float32
        or vectors.ndim != 2
        or vectors.shape[0] != len(words)
        or not all(isinstance(w, str) for w in words)
    ):
        raise ValueError(f"inconsistent entry: {len(words)} words, vectors {vectors.dtype} {vectors.shape}")
    return words, vectors, meta


def _write_entry(file: Path, key: dict[str, Any], result: WordVectorsLoadResult) -> None:
    meta = {
        "version": _CACHE_VERSION,
        "key": key,
        "words": result.vectors.words,
        "issues": [[i.path, i.line, i.reason] for i in result.issues],
        "issue_count": result.issue_count,
        "lines_read": result.lines_read,
    }
    blob = np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)
    file.parent.mkdir(parents=True, exist_ok=True)
    # Not durable: an entry a power loss damages is warned about and rewritten.
    with atomic_path(file) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, vectors=result.vectors.vectors, meta=blob)


def _in_vocabulary_order(words: list[str], vectors: np.ndarray, vocabulary: list[str] | None) -> WordVectors:
    """The cached rows in the order of ``vocabulary`` (the key ignores order)."""
    if vocabulary is None:
        return WordVectors(words, vectors)
    row_of = {w: i for i, w in enumerate(words)}
    ordered = [w for w in dict.fromkeys(vocabulary) if w in row_of]
    if ordered == words:
        return WordVectors(words, vectors)
    rows = np.fromiter((row_of[w] for w in ordered), dtype=np.int64, count=len(ordered))
    return WordVectors(ordered, vectors[rows])


def load_word_vectors_cached(
    path: str | os.PathLike,
    *,
    vocabulary: Iterable[str] | None,
    member: str | None = None,
    dim: int | None = None,
    fmt: str = "glove",
    cache_dir: str | os.PathLike | None = None,
    strict: bool = False,
) -> WordVectorsLoadResult:
    """Word vectors of ``vocabulary`` from ``path``, through an on-disk cache.

    The first call reads the source like the loader of ``fmt`` does and
    stores the rows it kept (with the issues found); later calls with the
    same source file (same size and ``mtime_ns``), format, ``dim`` and set
    of words load that entry instead.

    Args:
        path: the word-vector file. For ``fmt="glove"`` also a ``.zip``
            archive or ``archive.zip::member.txt`` (see
            :func:`~devise.embeddings.glove.load_glove_text`).
        vocabulary: the words to keep (``None``: every word of the file,
            which makes a large entry). Rows come back in this order.
        member: the zip member (``fmt="glove"`` only).
        dim: the expected dimension (for GloVe also picks the zip member).
        fmt: ``"glove"``, ``"word2vec_text"`` or ``"word2vec_binary"``.
        cache_dir: where entries live; default :func:`default_cache_dir`
            (``$DEVISE_CACHE_DIR/word_vectors`` or
            ``~/.cache/devise/word_vectors``).
        strict: raise on the first problem of the source; a cached entry
            that recorded problems raises the first of them too.

    Returns:
        A :class:`WordVectorsLoadResult`, the same as the uncached loader's.

    Raises:
        ValueError: unknown ``fmt``.
        MissingResourcesError, DataFormatError: as the loader of ``fmt``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown word-vector format {fmt!r}; valid formats: {', '.join(map(repr, FORMATS))}")
    words = list(vocabulary) if vocabulary is not None else None
    source, member = _resolve_source(path, member, dim, fmt)
    try:
        stat = source.stat()
    except OSError:
        stat = None
    if stat is None or not source.is_file():
        return _load(fmt, source, member, words, dim, strict)  # raises the loader's error

    key: dict[str, Any] = {
        "source": str(source.resolve()),
        "member": member,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "format": fmt,
        "dim": dim,
        "vocabulary_sha256": vocabulary_digest(words),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    file = directory / _entry_name(source, member, digest)

    if file.exists():
        try:
            entry = _read_entry(file, key)
        except _DAMAGED_ENTRY as exc:  # the source is still there to read
            warnings.warn(
                f"ignoring unreadable word-vector cache entry {file} ({type(exc).__name__}: {exc}); "
                "reading the source again",
                RuntimeWarning,
                stacklevel=2,
            )
            entry = None
        if entry is not None:
            cached_words, vectors, meta = entry
            issues = [LoadIssue(str(p), int(n), str(r)) for p, n, r in meta["issues"]]
            if strict and meta["issue_count"]:
                raise DataFormatError(str(issues[0]) if issues else f"{source}: the source has problems")
            return WordVectorsLoadResult(
                _in_vocabulary_order(cached_words, vectors, words),
                issues,
                int(meta["issue_count"]),
                int(meta["lines_read"]),
            )

    result = _load(fmt, source, member, words, dim, strict)
    try:
        _write_entry(file, key, result)
    except OSError as exc:
        warnings.warn(
            f"could not write the word-vector cache entry {file} ({exc}); the vectors are "
            "loaded but will be read from the source again next time",
            RuntimeWarning,
            stacklevel=2,
        )
    return result

"""Word vectors in the word2vec formats (Mikolov's C tool, gensim's ``save_word2vec_format``).

* Text: a header line ``count dim``, then one ``word v1 .. vd`` line per word,
  read by :func:`load_word2vec_text`.
* Binary: a header line ``count dim\\n``, then for each word its UTF-8 bytes,
  a space, ``dim`` little-endian float32 values and usually a ``\\n``, read
  by :func:`load_word2vec_binary`.

Both stream the file (``.gz`` files are decompressed on the fly), keep only
the vocabulary asked for, and report problems the way
:func:`devise.embeddings.glove.load_glove_text` does (the shared reading of
:mod:`devise.embeddings.vector_file`): a :class:`LoadIssue` per skipped line
or record, or a :class:`DataFormatError` when ``strict``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from devise.embeddings.vector_file import (
    IssueLog,
    VectorCollector,
    WordVectorsLoadResult,
    damaged_data_errors,
    numbered_lines,
    open_binary,
    parse_text_lines,
)
from devise.errors import DataFormatError, MissingResourcesError

# A word longer than this (no space found) means the file is not what its
# header says; reading on would only swallow the rest of it.
_MAX_WORD_BYTES = 1 << 16


def _check_file(path: Path, what: str) -> None:
    if path.is_file():
        return
    if path.is_dir():
        problem = f"{what}: {path} is a directory, not a file"
    else:
        problem = f"{what}: looked for {path.resolve()} but it does not exist"
    raise MissingResourcesError([problem])


def _parse_header(shown: str, raw: bytes | str | None) -> tuple[int, int]:
    """``(count, dim)`` from a header line; a bad header is always fatal."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raw = None
    if raw is not None:
        fields = raw.removeprefix("\ufeff").split()
        if len(fields) == 2 and all(f.isdigit() for f in fields):
            count, dim = int(fields[0]), int(fields[1])
            if dim > 0:
                return count, dim
    shown_header = "an empty file" if raw == "" else repr(raw)[:80] if raw is not None else "non-UTF-8 bytes"
    raise DataFormatError(
        f"{shown}:1: expected a word2vec header 'count dim' (e.g. '400000 300'), found {shown_header}"
    )


def load_word2vec_text(
    path: str | os.PathLike,
    *,
    vocabulary: Iterable[str] | None = None,
    strict: bool = False,
    max_issues: int = 1000,
) -> WordVectorsLoadResult:
    """Read word vectors in word2vec's text format.

    The first line is ``count dim``; each further line is ``word v1 .. vd``
    (a trailing space, as gensim writes, is fine). Lines are checked exactly
    like GloVe lines (see :func:`~devise.embeddings.glove.load_glove_text`),
    with ``dim`` taken from the header; a line count that differs from the
    header's is reported against line 1.

    Args:
        path: the text file (or ``.gz``).
        vocabulary: if given, keep only these words, in vocabulary order.
        strict: raise on the first problem instead of skipping the line.
        max_issues: keep at most this many issues in the result.

    Returns:
        A :class:`WordVectorsLoadResult`; issue line numbers count the header as
        line 1, and ``lines_read`` includes it.

    Raises:
        MissingResourcesError: the file does not exist.
        DataFormatError: the header is not ``count dim``, ``strict`` and a
            line is malformed, or no line at all was valid.
    """
    path = Path(path)
    _check_file(path, "word2vec text file")
    shown = str(path)
    log = IssueLog(shown, strict, max_issues)
    collector = VectorCollector(vocabulary)
    with damaged_data_errors(shown), open_binary(path) as handle:
        numbered = numbered_lines(handle)
        first = next(numbered, None)
        if first is None:
            _parse_header(shown, "")
        header = first[1] if first[2] is None else None
        count, dim = _parse_header(shown, header)
        _, lines_read = parse_text_lines(numbered, log, collector, dim)
    lines_read = max(lines_read, 1)
    if lines_read - 1 != count:
        log.report(1, f"header says {count} vectors, found {lines_read - 1} line(s) after it")
    return collector.result(log, dim, lines_read)


class _Records:
    """Record-by-record reader of a word2vec binary file."""

    def __init__(self, handle, size: int | None):
        self.handle = handle
        self.size = size  # None: not seekable (gzip), skip by reading
        self.offset = 0
        self.word_start = 0  # byte offset of the last word read

    def read_word(self) -> bytes | None:
        """The next word's bytes (separator newlines dropped), or ``None`` at the end of the file."""
        handle = self.handle
        parts: list[bytes] = []
        length = 0
        while True:
            chunk = handle.peek(256)
            if not chunk:
                if length == 0 or not b"".join(parts).strip(b"\n"):
                    return None
                raise EOFError("the file ends inside a word")
            end = chunk.find(b" ")
            if end >= 0:
                parts.append(handle.read(end))
                handle.read(1)
                length += end + 1
                break
            parts.append(handle.read(len(chunk)))
            length += len(chunk)
            if length > _MAX_WORD_BYTES:
                raise ValueError(f"no space within {_MAX_WORD_BYTES} bytes")
        # The C tool and gensim end each record with "\n"; it belongs to no word.
        joined = b"".join(parts)
        word = joined.lstrip(b"\n")
        self.word_start = self.offset + len(joined) - len(word)
        self.offset += length
        return word

    def read_vector(self, nbytes: int) -> bytes:
        data = self.handle.read(nbytes)
        self.offset += len(data)
        return data

    def skip(self, nbytes: int) -> int:
        """Skip ``nbytes``; returns how many there were (fewer at the end of the file)."""
        if self.size is None:
            return len(self.read_vector(nbytes))
        available = max(0, min(nbytes, self.size - self.offset))
        self.handle.seek(available, os.SEEK_CUR)
        self.offset += available
        return available

    def rest_is_blank(self) -> bool:
        """Whether only newlines are left."""
        while True:
            chunk = self.handle.read(1 << 16)
            if not chunk:
                return True
            if chunk.strip(b"\n\r"):
                return False


def load_word2vec_binary(
    path: str | os.PathLike,
    *,
    vocabulary: Iterable[str] | None = None,
    strict: bool = False,
    max_issues: int = 1000,
) -> WordVectorsLoadResult:
    """Read word vectors in word2vec's binary format (e.g. GoogleNews-vectors-negative300.bin).

    The header line is ``count dim``; then come ``count`` records, each the
    word's UTF-8 bytes, a space, ``dim`` little-endian float32 values and
    an optional ``\\n``. Records are read one by one; the vectors of words
    outside ``vocabulary`` are skipped without being read into memory.

    A record whose word is not UTF-8 or empty, whose values are not all
    finite, or that repeats an earlier word is skipped and reported (the
    issue's ``line`` is the 1-based record number; its reason gives the byte
    offset). A file that ends early (a truncated record, or fewer records
    than the header says) or has data after the last record is reported too.

    Args:
        path: the binary file (or ``.gz``).
        vocabulary: if given, keep only these words, in vocabulary order.
        strict: raise on the first problem instead of skipping the record.
        max_issues: keep at most this many issues in the result.

    Returns:
        A :class:`WordVectorsLoadResult`; ``lines_read`` is the number of records read.

    Raises:
        MissingResourcesError: the file does not exist.
        DataFormatError: the header is not ``count dim``, ``strict`` and a
            record is malformed, or no record at all was valid.
    """
    path = Path(path)
    _check_file(path, "word2vec binary file")
    shown = str(path)
    log = IssueLog(shown, strict, max_issues)
    collector = VectorCollector(vocabulary)
    with damaged_data_errors(shown), open_binary(path) as handle:
        header = handle.readline(1024)
        count, dim = _parse_header(shown, header)
        seekable = path.suffix != ".gz"
        records = _Records(handle, os.fstat(handle.fileno()).st_size if seekable else None)
        records.offset = len(header)
        read = _read_records(records, count, dim, log, collector)
    return collector.result(log, dim, read, unit="record")


def _read_records(records: _Records, count: int, dim: int, log: IssueLog, collector: VectorCollector) -> int:
    """Read up to ``count`` records into ``collector``; returns how many were read."""
    nbytes = 4 * dim
    wanted = collector.wanted
    seen = collector.seen
    report = log.report
    for number in range(1, count + 1):
        start = records.offset
        try:
            raw = records.read_word()
        except (EOFError, ValueError) as exc:
            report(number, f"truncated or unreadable record at byte {start}: {exc}")
            return number
        if raw is None:
            report(number, f"header says {count} vectors, the file ends after {number - 1}")
            return number - 1
        start = records.word_start
        word: str | None
        try:
            word = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = raw[exc.start : exc.start + 1].hex()
            word = None
            problem = f"word is not valid UTF-8 (byte 0x{bad} at column {exc.start + 1}; record at byte {start})"
        else:
            problem = "empty word" if not word.strip(" ") else None

        keep = word is not None and problem is None and (wanted is None or word in wanted)
        if keep:
            data = records.read_vector(nbytes)
            got = len(data)
        else:
            got = records.skip(nbytes)
        if got < nbytes:
            report(
                number,
                f"truncated record at byte {start}: expected {nbytes} bytes of vector, found {got}",
            )
            return number
        if problem is not None:
            report(number, problem)
            continue
        collector.good += 1
        if not keep:
            continue
        if word in seen:
            report(
                number,
                f"duplicate word {word!r} (keeping the first occurrence, record {seen[word][1]})",
            )
            continue
        vector = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.isfinite(vector).all():
            report(number, f"non-finite value (nan or inf) (record at byte {start})")
            continue
        collector.add(word, vector, number)
    if not records.rest_is_blank():
        report(count + 1, f"data after the {count} records the header announces (byte {records.offset})")
    return count

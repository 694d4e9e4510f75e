"""Reading word-vector files: what every format shares.

The loaders of :mod:`~devise.embeddings.glove` and
:mod:`~devise.embeddings.word2vec` stream a file once and keep only the words
asked for. They share the pieces here: how a skipped line is reported
(:class:`LoadIssue`, collected by an :class:`IssueLog` or raised when
strict), what a load returns (:class:`WordVectorsLoadResult`), how kept
vectors are gathered into one array (:class:`VectorCollector`) and how
``word v1 .. vd`` text lines are checked and parsed (:func:`parse_text_lines`,
used by GloVe and word2vec text alike).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

from devise.embeddings.word_vectors import WordVectors
from devise.errors import DataFormatError


@dataclasses.dataclass(frozen=True)
class LoadIssue:
    """One problem found in a word-vector file; the line was skipped.

    Args:
        path: the file (``archive.zip::member.txt`` for a zip member).
        line: 1-based line number (for word2vec binary files: the 1-based
            record number, the header not counted).
        reason: what is wrong, e.g. ``"expected 50 values, found 49"``.
    """

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclasses.dataclass(eq=False)
class WordVectorsLoadResult:
    """What a word-vector loader read (GloVe, word2vec text or binary, the cache).

    Args:
        vectors: the word vectors that loaded.
        issues: the skipped lines, at most ``max_issues`` of them.
        issue_count: how many lines were skipped in all (may exceed
            ``len(issues)`` when the list was capped).
        lines_read: number of lines in the file (records for word2vec
            binary files).
    """

    vectors: WordVectors
    issues: list[LoadIssue]
    issue_count: int
    lines_read: int

    def summary(self) -> str:
        """One line for logs: how much loaded and how much was skipped."""
        v = self.vectors
        text = f"{len(v)} word vectors of dim {v.dim} from {self.lines_read} lines"
        if self.issue_count:
            text += f"; {self.issue_count} line(s) skipped, first: {self.issues[0]}"
        return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _bad_field(field: str) -> str:
    if field == "":
        return "empty field (two spaces in a row?)"
    return f"non-numeric value {field!r}"


def _numeric_tail(fields: list[str]) -> int:
    """How many trailing fields are numbers (the first field is always the word)."""
    n = 0
    for field in reversed(fields[1:]):
        if not _is_number(field):
            break
        n += 1
    return n


def open_binary(path: Path) -> IO[bytes]:
    """Open ``path`` for reading bytes; a ``.gz`` file is decompressed on the fly."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


# Errors that a damaged .gz file or zip member raises while it is read.
_DAMAGED_DATA = (EOFError, zlib.error, zipfile.BadZipFile, gzip.BadGzipFile)


@contextlib.contextmanager
def damaged_data_errors(shown: str) -> Iterator[None]:
    """Turn what a damaged ``.gz`` file or zip member raises in the block into a DataFormatError.

    Args:
        shown: the file as messages name it (``archive.zip::member.txt``).
    """
    try:
        yield
    except _DAMAGED_DATA as exc:
        raise DataFormatError(f"{shown}: damaged or truncated compressed data ({exc})") from exc


def numbered_lines(handle: Iterable[bytes]) -> Iterator[tuple[int, str | None, str | None]]:
    """Yield ``(line number, text, decode error)`` for each line of a binary file.

    ``text`` is the decoded line without its trailing whitespace (and without
    a byte-order mark on line 1), or ``None`` when the line is not UTF-8;
    ``decode error`` then says where.
    """
    # Decoding per line (not via a text wrapper) turns one bad byte into one
    # reported line instead of an exception that aborts the whole load.
    for number, raw in enumerate(handle, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = raw[exc.start : exc.start + 1].hex()
            yield number, None, f"not valid UTF-8 (byte 0x{bad} at column {exc.start + 1})"
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        # Only trailing whitespace goes: words may start with odd characters.
        yield number, text.rstrip(" \t\r\n"), None


class _RowBuffer:
    """Growable float32 (rows, dim) storage that avoids a list of per-line arrays."""

    def __init__(self, dim: int, capacity: int):
        self.data = np.empty((max(capacity, 1), dim), dtype=np.float32)
        self.size = 0

    def append(self, vector: np.ndarray) -> int:
        if self.size == self.data.shape[0]:
            grown = np.empty((self.data.shape[0] * 2, self.data.shape[1]), dtype=np.float32)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size] = vector
        self.size += 1
        return self.size - 1

    def finish(self) -> np.ndarray:
        if self.size == self.data.shape[0]:
            return self.data
        return self.data[: self.size].copy()


class IssueLog:
    """Collects the :class:`LoadIssue` of one load (or raises them, when strict).

    Args:
        shown: the file as issues name it.
        strict: raise a DataFormatError on the first issue instead.
        max_issues: keep at most this many (all are counted).
    """

    def __init__(self, shown: str, strict: bool, max_issues: int):
        self.shown = shown
        self.strict = strict
        self.max_issues = max_issues
        self.issues: list[LoadIssue] = []
        self.count = 0

    def report(self, line: int, reason: str) -> None:
        """Record that ``line`` (or record) was skipped because of ``reason``."""
        issue = LoadIssue(self.shown, line, reason)
        if self.strict:
            raise DataFormatError(str(issue))
        self.count += 1
        if len(self.issues) < self.max_issues:
            self.issues.append(issue)


class VectorCollector:
    """The vectors a loader kept so far, and how many records were well formed.

    Args:
        vocabulary: the words to keep, or ``None`` to keep every word.

    Attributes:
        wanted: vocabulary word -> first position (``None``: keep every
            word); a loader skips the vectors of other words.
        seen: kept word -> ``(row, line or record it came from)``, to
            report duplicates.
        good: how many records were well formed, kept or not; the loader
            counts them.
    """

    def __init__(self, vocabulary: Iterable[str] | None):
        self.wanted: dict[str, int] | None = None
        if vocabulary is not None:
            self.wanted = {}
            for word in vocabulary:
                self.wanted.setdefault(word, len(self.wanted))
        self.seen: dict[str, tuple[int, int]] = {}
        self.buffer: _RowBuffer | None = None
        self.good = 0  # structurally valid records, kept or not

    def add(self, word: str, vector: np.ndarray, where: int) -> None:
        """Keep ``vector`` for ``word``, read at line (or record) ``where``."""
        if self.buffer is None:
            capacity = len(self.wanted) if self.wanted is not None else 65536
            self.buffer = _RowBuffer(vector.shape[0], capacity)
        self.seen[word] = (self.buffer.append(vector), where)

    def result(self, log: IssueLog, dim: int | None, lines_read: int, unit: str = "line") -> WordVectorsLoadResult:
        """What the load gives: the kept vectors (in vocabulary order if one was given) and the issues.

        Raises:
            DataFormatError: not one record of the file was well formed.
        """
        if self.good == 0 or dim is None or (self.buffer is None and self.wanted is None):
            detail = f" (first problem: {log.issues[0]})" if log.issues else ""
            raise DataFormatError(f"{log.shown}: no valid word vectors found in {lines_read} {unit}(s){detail}")
        # A valid file that simply shares no word with the vocabulary gives an
        # empty table; the OOV report of build_embedding_matrix will say so.
        data = self.buffer.finish() if self.buffer is not None else np.empty((0, dim), np.float32)
        seen = self.seen
        if self.wanted is not None:
            # Vocabulary order, so callers get the same layout from every loader.
            words = sorted(seen, key=self.wanted.__getitem__)
            order = np.fromiter((seen[w][0] for w in words), dtype=np.int64, count=len(words))
            data = data[order]
        else:
            words = list(seen)  # dicts keep insertion order, i.e. file order
        return WordVectorsLoadResult(WordVectors(words, data), log.issues, log.count, lines_read)


def parse_text_lines(
    numbered: Iterable[tuple[int, str | None, str | None]],
    log: IssueLog,
    collector: VectorCollector,
    dim: int | None,
) -> tuple[int | None, int]:
    """Parse ``word v1 .. vd`` lines into ``collector``; returns ``(dim, last line number)``.

    The last ``dim`` fields are the numbers and everything before them is
    the word, so words with spaces (GloVe 840B) load. A line that is blank,
    not UTF-8, has a non-numeric or non-finite value, has the wrong number of
    values, or repeats a kept word (the first occurrence wins) is reported
    to ``log`` and skipped.

    Args:
        numbered: ``(line number, text, decode error)`` as
            :func:`numbered_lines` yields them.
        log: where skipped lines go.
        collector: where kept vectors go; lines of words outside its
            vocabulary are only checked for their number of fields.
        dim: the expected number of values, or ``None`` to infer it from
            the first line whose fields after the word are all numbers.
    """
    report = log.report
    wanted = collector.wanted
    seen = collector.seen
    lines_read = 0
    for number, text, decode_error in numbered:
        lines_read = number
        if decode_error is not None:
            report(number, decode_error)
            continue
        if not text:
            report(number, "blank line")
            continue
        if wanted is not None and dim is not None and text.count(" ") == dim:
            # Fast path for the common line of a word outside the vocabulary:
            # the same checks as below (dim values, non-empty word), no split.
            word = text[: text.index(" ")]
            if word and word not in wanted:
                collector.good += 1
                continue
        fields = text.split(" ")

        if dim is None:
            tail = _numeric_tail(fields)
            if tail == 0 or tail != len(fields) - 1:
                if len(fields) == 1:
                    report(number, "no values after the word")
                else:
                    culprit = _bad_field(fields[len(fields) - 1 - tail])
                    report(number, f"{culprit} (cannot infer the dimension from this line)")
                continue
            dim = tail

        if len(fields) - 1 == dim:
            word = fields[0]
            values = fields[1:]
        else:
            # Either the word has spaces (840B) or the value count is wrong;
            # the trailing run of numbers tells which. A word ending in a
            # number ("route 66") looks like a line with too many values;
            # reporting it is the safer reading, as silently storing
            # "cat 0.1" would lose "cat".
            tail = _numeric_tail(fields)
            if tail > dim:
                report(number, f"expected {dim} values, found {tail}")
                continue
            if tail == dim:
                word = " ".join(fields[: len(fields) - dim])
                values = fields[len(fields) - dim :]
            elif len(fields) - 1 < dim:
                report(number, f"expected {dim} values, found {len(fields) - 1}")
                continue
            else:
                report(number, _bad_field(fields[len(fields) - 1 - tail]))
                continue

        # Only spaces count as empty: 840B has words like "\xa0".
        if not word.strip(" "):
            report(number, "empty word")
            continue
        collector.good += 1
        if wanted is not None and word not in wanted:
            continue
        if word in seen:
            report(
                number,
                f"duplicate word {word!r} (keeping the first occurrence, line {seen[word][1]})",
            )
            continue
        try:
            vector = np.array(values, dtype=np.float32)
        except ValueError:
            bad = next(v for v in values if not _is_number(v))
            report(number, _bad_field(bad))
            continue
        if not np.isfinite(vector).all():
            report(number, "non-finite value (nan or inf)")
            continue
        collector.add(word, vector, number)
    return dim, lines_read

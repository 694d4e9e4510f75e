"""GloVe word vectors in Stanford's text format, also read straight from the zip.

:func:`load_glove_text` reads ``glove.6B.300d.txt`` and friends (from
https://nlp.stanford.edu/projects/glove/) one line at a time, so that
multi-gigabyte files never sit in memory whole; ``.gz`` files are
decompressed on the fly, and a member of the downloaded ``glove.6B.zip`` is
read without unpacking it (``glove.6B.zip`` with ``dim=300``, or
``glove.6B.zip::glove.6B.300d.txt``; see :func:`split_zip_member` and
:func:`choose_zip_member`). Lines are checked and reported as every
word-vector format does (:mod:`devise.embeddings.vector_file`).

The offline 50-d vectors live in :mod:`devise.embeddings.offline_glove`,
embedding matrices in :mod:`devise.embeddings.embedding_matrix`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

# WordVectors and load_offline_glove_50d stay importable from here, as before
# the split (devise.training and devise.zeroshot import them so).
from devise.embeddings.offline_glove import load_offline_glove_50d
from devise.embeddings.vector_file import (
    IssueLog,
    VectorCollector,
    WordVectorsLoadResult,
    damaged_data_errors,
    numbered_lines,
    open_binary,
    parse_text_lines,
)
from devise.embeddings.word_vectors import WordVectors
from devise.errors import DataFormatError, MissingResourcesError

GLOVE_URL = "https://nlp.stanford.edu/projects/glove/"

#: Deprecated alias of :class:`~devise.embeddings.vector_file.WordVectorsLoadResult`
#: (every format returns it, not only GloVe).
GloveLoadResult = WordVectorsLoadResult

_HOW_TO_GET_GLOVE = (
    f"download GloVe from {GLOVE_URL} (e.g. glove.6B.zip, which holds "
    "glove.6B.{50,100,200,300}d.txt; pass the zip itself, e.g. "
    "glove.6B.zip::glove.6B.300d.txt, or one unzipped .txt file), or use the "
    "offline 50-d vectors instead: pip install 'devise[demo]'"
)


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


# --------------------------------------------------------------------------
# Zip archives (glove.6B.zip and friends, read without unpacking)
# --------------------------------------------------------------------------

MEMBER_SEPARATOR = "::"


def split_zip_member(path: str | os.PathLike, member: str | None = None) -> tuple[Path, str | None]:
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
                f"{path} names member {inner!r} but member={member!r} was also given; give the member one way only"
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
        raise MissingResourcesError([f"zip member: {archive} has no member {member!r}; it holds: {listing}"])
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
                [(f"zip member: {archive} has no *.{dim}d.txt member for dim={dim}; it holds: {', '.join(texts)}")]
            )
        texts = matching
    raise DataFormatError(
        f"{archive} holds several .txt files: {', '.join(texts)}; pick one with "
        f"member=..., dim=... or the spelling '{archive}{MEMBER_SEPARATOR}{texts[-1]}'"
    )


def choose_zip_member(path: str | os.PathLike, member: str | None = None, dim: int | None = None) -> str:
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
def _open_source(path: Path, member: str | None, dim: int | None) -> Iterator[tuple[IO[bytes], str]]:
    """Open a word-vector file for binary line reading; yields ``(handle, shown name)``."""
    if not is_zip_source(path, member):
        with open_binary(path) as handle:
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
) -> WordVectorsLoadResult:
    """Read word vectors in Stanford's GloVe text format.

    Each line is ``word v1 v2 ... vd``, single-space separated, UTF-8. The
    last ``dim`` fields are the numbers and everything before them is the
    word, so the words with spaces of the 840B files load correctly. The
    file is streamed; ``.gz`` files are decompressed on the fly, and a
    member of a ``.zip`` archive (e.g. Stanford's ``glove.6B.zip``) is read
    straight from the archive, without unpacking it.

    A line that is blank, not UTF-8, has a non-numeric or non-finite value,
    has the wrong number of values, or repeats an earlier word (the first
    occurrence wins) is skipped and reported as a
    :class:`~devise.embeddings.vector_file.LoadIssue`. For a zip member, the
    issue's path is ``archive.zip::member.txt`` and its line number counts
    lines of the member.

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
        A :class:`~devise.embeddings.vector_file.WordVectorsLoadResult`
        with the vectors and the issues.

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
    collector = VectorCollector(vocabulary)

    with _open_source(path, member, dim) as (handle, shown):
        log = IssueLog(shown, strict, max_issues)
        with damaged_data_errors(shown):
            dim, lines_read = parse_text_lines(numbered_lines(handle), log, collector, dim)
    return collector.result(log, dim, lines_read)


__all__ = [
    "GLOVE_URL",
    "MEMBER_SEPARATOR",
    "GloveLoadResult",
    "WordVectors",
    "choose_zip_member",
    "is_zip_source",
    "load_glove_text",
    "load_offline_glove_50d",
    "split_zip_member",
]

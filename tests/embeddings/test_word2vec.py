"""Tests of devise.embeddings.word2vec: word2vec text and binary formats."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from devise.embeddings import vector_cache
from devise.embeddings.glove import load_glove_text
from devise.embeddings.vector_cache import load_word_vectors_cached
from devise.embeddings.word2vec import load_word2vec_binary, load_word2vec_text
from devise.errors import DataFormatError, MissingResourcesError

DIM = 5
WORDS = ["the", "cat", "café", "</s>", "naïve", "dog"]


def vec(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


def fmt(vector: np.ndarray) -> str:
    return " ".join(np.format_float_positional(x, unique=True) for x in vector)


ENTRIES = [(w, vec(i)) for i, w in enumerate(WORDS)]


def text_bytes(entries, count: int | None = None, dim: int = DIM) -> bytes:
    header = f"{len(entries) if count is None else count} {dim}\n"
    # gensim writes a trailing space after the last value.
    return (header + "".join(f"{w} {fmt(v)} \n" for w, v in entries)).encode("utf-8")


def record(word: bytes | str, vector: np.ndarray, newline: bool = True) -> bytes:
    raw = word.encode("utf-8") if isinstance(word, str) else word
    return raw + b" " + np.asarray(vector, dtype="<f4").tobytes() + (b"\n" if newline else b"")


def binary_bytes(entries, count: int | None = None, newline: bool = True, dim: int = DIM) -> bytes:
    header = f"{len(entries) if count is None else count} {dim}\n".encode()
    return header + b"".join(record(w, v, newline) for w, v in entries)


@pytest.fixture
def glove(tmp_path: Path):
    path = tmp_path / "glove.txt"
    path.write_text("".join(f"{w} {fmt(v)}\n" for w, v in ENTRIES), encoding="utf-8")
    return path


def assert_same(result, reference) -> None:
    assert result.vectors.words == reference.vectors.words
    np.testing.assert_array_equal(result.vectors.vectors, reference.vectors.vectors)
    assert result.vectors.vectors.dtype == np.float32


@pytest.mark.parametrize("vocabulary", [None, ["dog", "café", "unknown", "the", "dog"]])
def test_text_matches_glove(tmp_path: Path, glove: Path, vocabulary) -> None:
    path = tmp_path / "vectors.txt"
    path.write_bytes(text_bytes(ENTRIES))
    result = load_word2vec_text(path, vocabulary=vocabulary)
    assert_same(result, load_glove_text(glove, vocabulary=vocabulary))
    assert result.issues == [] and result.lines_read == len(WORDS) + 1


@pytest.mark.parametrize("newline", [True, False])
@pytest.mark.parametrize("vocabulary", [None, ["dog", "café", "unknown", "the"]])
def test_binary_matches_glove(tmp_path: Path, glove: Path, newline: bool, vocabulary) -> None:
    path = tmp_path / "vectors.bin"
    path.write_bytes(binary_bytes(ENTRIES, newline=newline))
    result = load_word2vec_binary(path, vocabulary=vocabulary)
    assert_same(result, load_glove_text(glove, vocabulary=vocabulary))
    assert result.issues == [] and result.lines_read == len(WORDS)


def test_gzipped_files(tmp_path: Path, glove: Path) -> None:
    reference = load_glove_text(glove)
    for name, data, loader in (
        ("v.txt.gz", text_bytes(ENTRIES), load_word2vec_text),
        ("v.bin.gz", binary_bytes(ENTRIES), load_word2vec_binary),
    ):
        path = tmp_path / name
        path.write_bytes(gzip.compress(data))
        assert_same(loader(path), reference)
    # Skipping (not reading) vectors through gzip too.
    path = tmp_path / "v.bin.gz"
    assert load_word2vec_binary(path, vocabulary=["dog"]).vectors.words == ["dog"]


@pytest.mark.parametrize("vocabulary", [None, ["the", "cat"]])
def test_truncated_binary_is_reported(tmp_path: Path, vocabulary) -> None:
    data = binary_bytes(ENTRIES)
    path = tmp_path / "vectors.bin"
    path.write_bytes(data[:-7])  # the last record loses 6 of its 20 value bytes
    result = load_word2vec_binary(path, vocabulary=vocabulary)
    assert result.vectors.words == (WORDS[:-1] if vocabulary is None else ["the", "cat"])
    (issue,) = result.issues
    assert issue.line == len(WORDS) and str(issue).startswith(f"{path}:{len(WORDS)}: truncated record")
    assert "expected 20 bytes of vector, found 14" in issue.reason
    with pytest.raises(DataFormatError, match=rf"^{path}:{len(WORDS)}: truncated record"):
        load_word2vec_binary(path, strict=True)


def test_binary_header_mismatch_and_trailing_data(tmp_path: Path) -> None:
    short = tmp_path / "short.bin"
    short.write_bytes(binary_bytes(ENTRIES, count=len(WORDS) + 2))
    result = load_word2vec_binary(short)
    assert result.vectors.words == WORDS
    assert [i.reason for i in result.issues] == [
        f"header says {len(WORDS) + 2} vectors, the file ends after {len(WORDS)}"
    ]

    long = tmp_path / "long.bin"
    long.write_bytes(binary_bytes(ENTRIES, count=3))
    result = load_word2vec_binary(long)
    assert result.vectors.words == WORDS[:3]
    assert result.issues[0].line == 4 and "data after the 3 records" in result.issues[0].reason


def test_binary_bad_words_are_reported_with_the_record(tmp_path: Path) -> None:
    path = tmp_path / "vectors.bin"
    bad = np.array([1, np.nan, 0, 0, 0], dtype=np.float32)
    data = b"5 5\n" + record("the", vec(0)) + record(b"caf\xe9", vec(1)) + record("the", vec(2))
    data += record("nan", bad) + record("dog", vec(3))
    path.write_bytes(data)
    result = load_word2vec_binary(path)
    assert result.vectors.words == ["the", "dog"]
    np.testing.assert_array_equal(result.vectors.get("the"), vec(0))
    by_record = {i.line: i.reason for i in result.issues}
    assert sorted(by_record) == [2, 3, 4]
    assert by_record[2].startswith("word is not valid UTF-8 (byte 0xe9 at column 4")
    assert "record at byte 29" in by_record[2]  # 4 (header) + 25 (first record)
    assert "duplicate word 'the'" in by_record[3] and "record 1" in by_record[3]
    assert "non-finite" in by_record[4]
    with pytest.raises(DataFormatError, match=rf"{path}:2: word is not valid UTF-8"):
        load_word2vec_binary(path, strict=True)


def test_text_problems_have_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "vectors.txt"
    lines = [f"{w} {fmt(v)}" for w, v in ENTRIES[:3]]
    lines.insert(1, "short 0.1 0.2")  # line 3 (the header is line 1)
    path.write_text("5 5\n" + "\n".join(lines) + "\n", encoding="utf-8")
    result = load_word2vec_text(path)
    assert result.vectors.words == WORDS[:3]
    assert [str(i) for i in result.issues] == [
        f"{path}:3: expected 5 values, found 2",
        f"{path}:1: header says 5 vectors, found 4 line(s) after it",
    ]
    assert result.issue_count == 2


@pytest.mark.parametrize("header", [b"", b"hello world\n", b"300\n", b"10 0\n", b"\xff\xfe 3\n"])
def test_bad_header_is_fatal(tmp_path: Path, header: bytes) -> None:
    for loader in (load_word2vec_text, load_word2vec_binary):
        path = tmp_path / "vectors"
        path.write_bytes(header + b"the 0.1 0.2 0.3\n")
        with pytest.raises(DataFormatError, match=r":1: expected a word2vec header 'count dim'"):
            loader(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingResourcesError, match="does not exist"):
        load_word2vec_binary(tmp_path / "GoogleNews-vectors-negative300.bin")
    with pytest.raises(MissingResourcesError, match="does not exist"):
        load_word2vec_text(tmp_path / "vectors.txt")


@pytest.mark.parametrize("fmt_name", ["word2vec_text", "word2vec_binary"])
def test_word2vec_through_the_cache(
    tmp_path: Path, glove: Path, fmt_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "vectors"
    path.write_bytes(text_bytes(ENTRIES) if fmt_name == "word2vec_text" else binary_bytes(ENTRIES))
    vocab = ["dog", "café", "unknown"]
    cache = tmp_path / "cache"
    first = load_word_vectors_cached(path, vocabulary=vocab, fmt=fmt_name, cache_dir=cache)
    assert_same(first, load_glove_text(glove, vocabulary=vocab))

    def fail(*args, **kwargs):
        raise AssertionError("the source was read again")

    monkeypatch.setattr(vector_cache, f"load_{fmt_name}", fail)
    assert_same(load_word_vectors_cached(path, vocabulary=vocab, fmt=fmt_name, cache_dir=cache), first)
    with pytest.raises(DataFormatError, match="zip"):
        load_word_vectors_cached(path, vocabulary=vocab, fmt=fmt_name, member="x.txt", cache_dir=cache)
    monkeypatch.undo()
    with pytest.raises(DataFormatError, match="expected dim=7"):
        load_word_vectors_cached(path, vocabulary=vocab, fmt=fmt_name, dim=7, cache_dir=cache)

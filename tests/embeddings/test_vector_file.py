"""Tests of devise.embeddings.vector_file: the reading every word-vector format shares.

The formats' own tests (test_glove.py, test_word2vec.py) cover the checks
line by line; these call the shared pieces directly, as a new format would.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest

from devise.embeddings.vector_file import (
    IssueLog,
    LoadIssue,
    VectorCollector,
    damaged_data_errors,
    numbered_lines,
    parse_text_lines,
)
from devise.errors import DataFormatError


def parse(data: bytes, vocabulary=None, dim=None, strict=False):
    log = IssueLog("f.txt", strict, max_issues=10)
    collector = VectorCollector(vocabulary)
    dim, lines_read = parse_text_lines(numbered_lines(io.BytesIO(data)), log, collector, dim)
    return collector.result(log, dim, lines_read)


def test_text_lines_into_a_result_in_vocabulary_order() -> None:
    data = b"\xef\xbb\xbfa 1 2\nb 3 4\r\nbad 5\nc 5 6\n\xff 1 2\n"  # BOM, CRLF, a short line, not UTF-8
    result = parse(data, vocabulary=["c", "x", "a", "c"])
    assert result.vectors.words == ["c", "a"]
    np.testing.assert_array_equal(result.vectors.vectors, [[5, 6], [1, 2]])
    assert result.lines_read == 5 and result.issue_count == 2
    assert [str(i) for i in result.issues] == [
        "f.txt:3: expected 2 values, found 1",
        "f.txt:5: not valid UTF-8 (byte 0xff at column 1)",
    ]
    assert result.summary().startswith("2 word vectors of dim 2 from 5 lines; 2 line(s) skipped")


def test_every_word_in_file_order_and_duplicates_reported() -> None:
    result = parse(b"b 1\na 2\nb 3\n")
    assert result.vectors.words == ["b", "a"]
    assert result.issues == [LoadIssue("f.txt", 3, "duplicate word 'b' (keeping the first occurrence, line 1)")]


def test_strict_log_raises_and_no_valid_line_is_an_error() -> None:
    with pytest.raises(DataFormatError, match=r"^f\.txt:2: blank line$"):
        parse(b"a 1\n\n", strict=True)
    with pytest.raises(DataFormatError, match="no valid word vectors found in 2 line"):
        parse(b"a x\nb\n")


def test_damaged_data_errors_name_the_file() -> None:
    with pytest.raises(DataFormatError, match=r"^a\.zip::b\.txt: damaged or truncated compressed data"):
        with damaged_data_errors("a.zip::b.txt"):
            raise zlib.error("invalid stored block lengths")
    with pytest.raises(KeyError):  # anything else passes through
        with damaged_data_errors("a.zip::b.txt"):
            raise KeyError("x")

"""Tests of devise.embeddings.glove: Stanford's text format (zip members: test_glove_zip_and_cache.py)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from devise.embeddings.glove import load_glove_text
from devise.embeddings.vector_file import LoadIssue, WordVectorsLoadResult
from devise.errors import DataFormatError, MissingResourcesError

DIM = 4


def vec(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


def fmt(vector: np.ndarray) -> str:
    # Shortest text that reads back to the same float32, as in a real file.
    return " ".join(np.format_float_positional(x, unique=True) for x in vector)


def write_glove(path: Path, entries: list[tuple[str, np.ndarray]] | list[str]) -> Path:
    """Write Stanford-format lines; a str entry is written verbatim."""
    lines = [e if isinstance(e, str) else f"{e[0]} {fmt(e[1])}" for e in entries]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


WORDS = ["the", "cat", "dog", "sat", "on", "mat"]


@pytest.fixture
def glove_file(tmp_path: Path) -> Path:
    return write_glove(tmp_path / "glove.txt", [(w, vec(i)) for i, w in enumerate(WORDS)])


# --------------------------------------------------------------------------
# Stanford text format
# --------------------------------------------------------------------------


def test_load_all_words_infers_dim(glove_file: Path) -> None:
    result = load_glove_text(glove_file)
    assert isinstance(result, WordVectorsLoadResult)
    wv = result.vectors
    assert wv.words == WORDS
    assert wv.dim == DIM and len(wv) == len(WORDS)
    assert wv.vectors.dtype == np.float32 and wv.vectors.shape == (len(WORDS), DIM)
    for i, w in enumerate(WORDS):
        np.testing.assert_array_equal(wv.get(w), vec(i))
    assert "cat" in wv and "bird" not in wv
    assert wv.get("bird") is None
    assert result.issues == [] and result.issue_count == 0
    assert result.lines_read == len(WORDS)


def test_vocabulary_keeps_only_its_words_in_vocabulary_order(glove_file: Path) -> None:
    result = load_glove_text(glove_file, vocabulary=["mat", "bird", "cat", "mat"])
    wv = result.vectors
    assert wv.words == ["mat", "cat"]
    np.testing.assert_array_equal(wv.vectors[0], vec(WORDS.index("mat")))
    np.testing.assert_array_equal(wv.vectors[1], vec(WORDS.index("cat")))


def test_vocabulary_with_no_known_word_gives_empty_table(glove_file: Path) -> None:
    wv = load_glove_text(glove_file, vocabulary=["bird"]).vectors
    assert len(wv) == 0 and wv.dim == DIM


def test_explicit_dim_mismatch_reports_every_line(glove_file: Path) -> None:
    with pytest.raises(DataFormatError, match="no valid word vectors"):
        load_glove_text(glove_file, dim=3)


def test_malformed_and_wrong_dimension_lines_are_reported(tmp_path: Path) -> None:
    path = write_glove(
        tmp_path / "glove.txt",
        [
            ("the", vec(0)),
            ("cat", vec(1)),
            "dog 0.1 0.2 oops 0.4",  # line 3: non-numeric value
            ("sat", vec(3)),
            "on 0.1 0.2 0.3",  # line 5: too few values
            "mat 0.1 0.2 0.3 0.4 0.5",  # line 6: too many values
            "",  # line 7: blank
            " 0.1 0.2 0.3 0.4",  # line 8: empty word
            "nan 0.1 nan 0.3 0.4",  # line 9: the word "nan" with a NaN value
            ("rug", vec(9)),
        ],
    )
    result = load_glove_text(path)
    assert result.vectors.words == ["the", "cat", "sat", "rug"]
    np.testing.assert_array_equal(result.vectors.get("rug"), vec(9))
    by_line = {i.line: i for i in result.issues}
    assert sorted(by_line) == [3, 5, 6, 7, 8, 9]
    assert "non-numeric value 'oops'" in by_line[3].reason
    assert by_line[5].reason == "expected 4 values, found 3"
    assert str(by_line[5]) == f"{path}:5: expected 4 values, found 3"
    assert by_line[6].reason == "expected 4 values, found 5"
    assert by_line[7].reason == "blank line"
    assert by_line[8].reason == "empty word"
    assert "non-finite" in by_line[9].reason
    assert all(isinstance(i, LoadIssue) and i.path == str(path) for i in result.issues)
    assert result.issue_count == 6
    assert "4 word vectors" in result.summary()


def test_wrong_dimension_line_with_50_values(tmp_path: Path) -> None:
    good = [(f"w{i}", vec(i, 50)) for i in range(16)]
    path = write_glove(tmp_path / "glove.txt", [*good, f"short {fmt(vec(99, 49))}"])
    result = load_glove_text(path)
    assert len(result.vectors) == 16 and result.vectors.dim == 50
    assert [str(i) for i in result.issues] == [f"{path}:17: expected 50 values, found 49"]


def test_strict_raises_with_file_and_line(tmp_path: Path) -> None:
    path = write_glove(tmp_path / "glove.txt", [("the", vec(0)), "cat 0.1 0.2 0.3"])
    with pytest.raises(DataFormatError) as info:
        load_glove_text(path, strict=True)
    assert str(info.value) == f"{path}:2: expected 4 values, found 3"


def test_dim_inferred_from_first_well_formed_line(tmp_path: Path) -> None:
    path = write_glove(tmp_path / "glove.txt", ["broken x y", ("the", vec(0)), ("cat", vec(1))])
    result = load_glove_text(path)
    assert result.vectors.dim == DIM
    assert result.vectors.words == ["the", "cat"]
    assert [i.line for i in result.issues] == [1]


def test_words_with_spaces_parse_from_the_right(tmp_path: Path) -> None:
    path = write_glove(
        tmp_path / "glove.840B.txt",
        [(",", vec(0)), (". . .", vec(1)), ("at name@domain.com", vec(2)), ("\xa0", vec(3))],
    )
    wv = load_glove_text(path).vectors
    assert wv.words == [",", ". . .", "at name@domain.com", "\xa0"]
    np.testing.assert_array_equal(wv.get(". . ."), vec(1))
    np.testing.assert_array_equal(wv.get("at name@domain.com"), vec(2))


def test_non_utf8_line_is_reported_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "glove.txt"
    lines = [
        f"the {fmt(vec(0))}".encode(),
        b"caf\xe9 " + fmt(vec(1)).encode(),  # Latin-1, not UTF-8
        f"café {fmt(vec(2))}".encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = load_glove_text(path)
    assert result.vectors.words == ["the", "café"]
    assert len(result.issues) == 1
    assert result.issues[0].line == 2 and "UTF-8" in result.issues[0].reason


def test_duplicate_word_keeps_first(tmp_path: Path) -> None:
    path = write_glove(tmp_path / "glove.txt", [("the", vec(0)), ("cat", vec(1)), ("the", vec(2))])
    result = load_glove_text(path)
    assert result.vectors.words == ["the", "cat"]
    np.testing.assert_array_equal(result.vectors.get("the"), vec(0))
    assert result.issues[0].line == 3 and "duplicate" in result.issues[0].reason


def test_crlf_bom_and_gzip(tmp_path: Path) -> None:
    text = "\ufeff" + "\r\n".join(f"{w} {fmt(vec(i))}" for i, w in enumerate(WORDS)) + "\r\n"
    path = tmp_path / "glove.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
        f.write(text)
    result = load_glove_text(path)
    assert result.vectors.words == WORDS and result.issues == []


def test_missing_file_says_where_and_how(tmp_path: Path) -> None:
    missing = tmp_path / "glove.6B.300d.txt"
    with pytest.raises(MissingResourcesError) as info:
        load_glove_text(missing)
    message = str(info.value)
    assert str(missing) in message
    assert "https://nlp.stanford.edu/projects/glove/" in message
    assert "glove.6B.zip" in message and "devise[demo]" in message


def test_empty_file_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "glove.txt"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataFormatError):
        load_glove_text(path)


def test_issue_list_is_capped_but_counted(tmp_path: Path) -> None:
    path = write_glove(tmp_path / "glove.txt", [("the", vec(0))] + ["bad 1"] * 50)
    result = load_glove_text(path, max_issues=5)
    assert len(result.issues) == 5 and result.issue_count == 50


def test_glove_load_result_is_a_deprecated_alias() -> None:
    from devise.embeddings import GloveLoadResult, glove

    assert GloveLoadResult is glove.GloveLoadResult is WordVectorsLoadResult
    # Names other packages import from devise.embeddings.glove stay there.
    assert glove.WordVectors is not None and glove.load_offline_glove_50d is not None

"""Filtered search equals a brute-force filter-then-rank reference; folder and date filters; min_score."""

from __future__ import annotations

import datetime as dt
import os
import time

import numpy as np
import pytest

from devise.errors import QueryError
from devise.search.exact import exact_search
from devise.search.filters import SearchFilter, normalise_folder, parse_date
from devise.search.index import ImageIndex, update_index


def _reference(matrix: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray):
    """Filter first, then rank every matching row by a loop: score descending, lower row first."""
    out_scores, out_rows = [], []
    for q in queries:
        scored = [(float(np.dot(q, matrix[row])), row) for row in range(len(matrix)) if mask[row]]
        scored.sort(key=lambda pair: (-pair[0], pair[1]))
        out_scores.append([s for s, _ in scored[:k]])
        out_rows.append([r for _, r in scored[:k]])
    return np.array(out_scores, np.float32).reshape(len(queries), -1), np.array(out_rows, np.int64).reshape(
        len(queries), -1
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("density", [0.0, 0.003, 0.05, 0.5, 0.97, 1.0])
def test_masked_search_equals_filter_then_rank(seed, density):
    rng = np.random.default_rng(seed)
    n, dim, k = 700, 8, 10
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    matrix[rng.integers(0, n, 40)] = matrix[0]  # ties across blocks
    queries = rng.standard_normal((3, dim)).astype(np.float32)
    mask = rng.random(n) < density
    for block_rows in (64, 1000):
        for q in (queries, queries[:1]):
            scores, rows = exact_search(matrix, q, k, mask=mask, block_rows=block_rows)
            want_scores, want_rows = _reference(matrix, q, k, mask)
            assert rows.shape == (len(q), min(k, int(mask.sum())))
            np.testing.assert_array_equal(rows, want_rows)
            np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
            assert mask[rows].all()


def test_mask_is_checked():
    matrix = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="mask"):
        exact_search(matrix, matrix[0], 2, mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="mask"):
        exact_search(matrix, matrix[0], 2, mask=np.ones(4, np.int8))


def test_masked_search_over_an_index_file_still_verifies_rows(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((30, 6)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for i in range(30):
        (root / f"{i:02d}.png").write_bytes(b"x")

    def embed(paths):
        return vectors[[int(os.path.basename(p)[:2]) for p in paths]], list(range(len(paths))), []

    update_index(tmp_path / "i.h5", root, model_fingerprint="m", run_dir="", embed=embed, progress=False)
    index = ImageIndex.open(tmp_path / "i.h5")
    matrix = vectors[[int(i[:2]) for i in index.ids]]
    mask = rng.random(30) < 0.3
    _, rows = exact_search(index, vectors[:2], 5, mask=mask, block_rows=7)
    np.testing.assert_array_equal(rows, _reference(matrix, vectors[:2], 5, mask)[1])
    index.row_check[3] += 1.0  # a damaged row is found even where the mask leaves it out
    mask[3] = False
    with pytest.raises(Exception, match="differ"):
        exact_search(index, vectors[:2], 5, mask=mask, block_rows=7)


def test_folder_filter_is_a_prefix_of_whole_folders(tmp_path):
    ids = ["a.jpg", "sub/b.jpg", "sub/deep/c.jpg", "subway/d.jpg", "other/e.jpg"]
    times = np.zeros(len(ids), np.int64)
    root = str(tmp_path)
    mask = SearchFilter(under=("sub",)).mask(ids, times, root)
    assert list(mask) == [False, True, True, False, False]
    mask = SearchFilter(under=("./sub/deep/", "other")).mask(ids, times, root)
    assert list(mask) == [False, False, True, False, True]
    absolute = SearchFilter(under=(str(tmp_path / "sub"),)).mask(ids, times, root)
    assert absolute.tolist() == [False, True, True, False, False]
    assert normalise_folder(str(tmp_path / "sub"), root) == "sub"
    assert normalise_folder("sub\\deep", root) == "sub/deep"
    assert SearchFilter(under=(".",)).mask(ids, times, root).all()
    for bad in ("../x", "sub/../../x", str(tmp_path.parent / "elsewhere")):
        with pytest.raises(QueryError):
            normalise_folder(bad, root)


def test_date_filter_days_are_inclusive_local_days():
    local = dt.datetime(2024, 1, 31, 23, 59, 59).astimezone()
    next_day = dt.datetime(2024, 2, 1, 0, 0, 0).astimezone()
    before = dt.datetime(2024, 1, 30, 23, 59, 59).astimezone()
    times = np.array([int(t.timestamp()) * 10**9 for t in (before, local, next_day)], np.int64)
    ids = ["a", "b", "c"]
    assert SearchFilter(since="2024-01-31", until="2024-01-31").mask(ids, times, "/").tolist() == [False, True, False]
    assert SearchFilter(since="2024-02-01").mask(ids, times, "/").tolist() == [False, False, True]
    assert SearchFilter(until="2024-01-31T23:59:59").mask(ids, times, "/").tolist() == [True, True, False]
    assert SearchFilter(until=dt.date(2024, 1, 30)).mask(ids, times, "/").tolist() == [True, False, False]
    assert parse_date("2024-01-31T00:00:00+00:00") == 1706659200 * 10**9
    for bad in ("yesterday", "2024-13-01", "31/01/2024"):
        with pytest.raises(QueryError, match="not a date"):
            parse_date(bad)
    with pytest.raises(QueryError, match="after"):
        SearchFilter(since="2024-02-02", until="2024-02-01").mask(ids, times, "/")


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Asia/Tokyo"])
def test_a_date_at_an_end_of_the_calendar_is_a_query_error_not_a_traceback(monkeypatch, zone):
    """``--until 9999-12-31`` overflowed (the next day) and ``--since 0001-01-01`` failed converting local time."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        for text, end in (("9999-12-31", True), ("9999-12-31T23:59:59", False), ("0001-01-01", False)):
            with pytest.raises(QueryError, match="date out of range"):
                parse_date(text, end=end)
        assert parse_date("9998-12-31", end=True) > parse_date("2024-01-01")
    finally:
        monkeypatch.undo()
        time.tzset()

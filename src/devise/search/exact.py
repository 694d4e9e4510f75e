"""Exact top-k inner-product search, streamed over blocks of rows.

Written here rather than taken from FAISS (an optional extra, see
:mod:`devise.search.approximate`): exact search must work with the core
dependencies alone, stream an index larger than memory from disk, and break
ties by row so results are repeatable; numpy's matrix product does the
arithmetic, and this module only keeps the running top-k cheap.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from devise.search.index_file import ImageIndex, check_vector

_NO_ROW = np.iinfo(np.int64).max  # ranks after every real row at equal score


class _TopK:
    """Running top-k of each query's scores over blocks of consecutive rows.

    Blocks arrive in row order, so a later row never beats an earlier one at
    an equal score: once ``k`` rows are held, a block only matters where a
    score is strictly above the query's current k-th best. Most blocks are
    rejected by one max-reduction per query, and only the few candidates
    above the bar are gathered and merged.
    """

    def __init__(self, queries: int, k: int):
        self.k = k
        self.scores = np.full((queries, k), -np.inf, np.float32)
        self.rows = np.full((queries, k), _NO_ROW, np.int64)
        self.seen = 0

    def push(self, scores: np.ndarray, start: int) -> None:
        """Merge a block of scores ``(Q, m)`` of rows ``start .. start+m-1``."""
        k = self.k
        queries, m = scores.shape
        if queries == 1:
            self._push_one(scores[0], start)
            return
        full = self.seen >= k
        self.seen += m
        which = np.arange(queries)
        if full:
            # fmax ignores NaN, so one NaN score cannot hide a block.
            active = np.fmax.reduce(scores, axis=1) > self.scores[:, -1]
            if not active.any():
                return
            which = np.flatnonzero(active)
            block = scores[which] if len(which) < queries else scores
            qi, col = _nonzero(block > self.scores[which, -1][:, None])
        elif m > 2 * k and np.isfinite(bar := _group_bar(scores, k)).all():
            # Scores below the bar cannot make this block's top k; the ties
            # at it are all kept, so the lower rows of a tie are never lost.
            block = scores
            qi, col = _nonzero(block >= bar[:, None])
        else:
            # Every score is a candidate (a small block, or too few finite
            # scores for a bar); NaN ranks last.
            block = np.where(np.isnan(scores), np.float32(-np.inf), scores)
            qi, col = np.divmod(np.arange(queries * m), m)
        cand_scores, cand_rows = self._pad(len(which), qi, block[qi, col], col + start)
        self._merge(which, *self._prune(which, cand_scores, cand_rows))

    def _push_one(self, scores: np.ndarray, start: int) -> None:
        """:meth:`push` for a single query, on 1-D arrays: no padding, fewer calls.

        A single query over a small index is where per-call overheads show.
        """
        k = self.k
        full = self.seen >= k
        self.seen += len(scores)
        if full:
            bar = self.scores[0, -1]
            if not np.fmax.reduce(scores) > bar:
                return
            cols = np.flatnonzero(scores > bar)
            cand = scores[cols]
        elif len(scores) > 2 * k and np.isfinite(bar := _group_bar(scores[None], k)[0]):
            cols = np.flatnonzero(scores >= bar)
            cand = scores[cols]
        else:
            cols = np.arange(len(scores))
            cand = np.where(np.isnan(scores), np.float32(-np.inf), scores)
        if len(cand) > 2 * k:
            kth = np.partition(cand, len(cand) - k)[len(cand) - k]
            keep = cand >= kth
            cols, cand = cols[keep], cand[keep]
        merged_scores = np.concatenate([self.scores[0], cand])
        merged_rows = np.concatenate([self.rows[0], cols + start])
        order = np.lexsort((merged_rows, -merged_scores))[:k]
        self.scores[0] = merged_scores[order]
        self.rows[0] = merged_rows[order]

    def _prune(
        self, which: np.ndarray, cand_scores: np.ndarray, cand_rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cut padded candidates down to each query's k best and the ties at its k-th.

        Only needed when there are many (a small or adversarial block); the
        sort in :meth:`_merge` then stays small.
        """
        width = cand_scores.shape[1]
        if width <= 2 * self.k:
            return cand_scores, cand_rows
        kth = np.partition(cand_scores, width - self.k, axis=1)[:, width - self.k]
        qi, col = _nonzero(cand_scores >= kth[:, None])
        return self._pad(len(which), qi, cand_scores[qi, col], cand_rows[qi, col])

    @staticmethod
    def _pad(queries: int, qi: np.ndarray, scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lay candidates ``(query, score, row)``, grouped by query, out as one padded row per query."""
        counts = np.bincount(qi, minlength=queries)
        width = int(counts.max()) if len(qi) else 0
        pos = np.arange(len(qi)) - (np.cumsum(counts) - counts)[qi]
        padded_scores = np.full((queries, width), -np.inf, np.float32)
        padded_rows = np.full((queries, width), _NO_ROW, np.int64)
        padded_scores[qi, pos] = scores
        padded_rows[qi, pos] = rows
        return padded_scores, padded_rows

    def _merge(self, which: np.ndarray, cand_scores: np.ndarray, cand_rows: np.ndarray) -> None:
        scores = np.concatenate([self.scores[which], cand_scores], axis=1)
        rows = np.concatenate([self.rows[which], cand_rows], axis=1)
        # Score descending, then row ascending (lexsort's last key is the primary one).
        order = np.lexsort((rows, -scores), axis=1)[:, : self.k]
        self.scores[which] = np.take_along_axis(scores, order, axis=1)
        self.rows[which] = np.take_along_axis(rows, order, axis=1)


def _nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a C-contiguous 2-D mask, about ten times faster.

    numpy's 2-D nonzero takes a slow multi-index path; the flat one is a
    vectorised scan, and the few hits are split into (row, column) here.
    """
    return np.divmod(np.flatnonzero(mask), mask.shape[1])


def _group_bar(scores: np.ndarray, k: int) -> np.ndarray:
    """A lower bound on each query's k-th best score in a block, in one pass.

    The block is cut into ``8k`` groups of columns; the k-th largest of the
    group maxima is reached by at least k scores (one per group), so the
    k-th best score is at least as high. Only the few scores at or above it
    need sorting, where a partition of the whole block would cost a multiple
    of the matrix product for a single query. -inf where fewer than k
    groups have a finite maximum.
    """
    queries, m = scores.shape
    groups = min(m, 8 * k)
    size = m // groups
    maxima = np.fmax.reduce(scores[:, : groups * size].reshape(queries, groups, size), axis=2)
    # np.partition sorts NaN (an all-NaN group) above everything: make it lowest.
    maxima[np.isnan(maxima)] = -np.inf
    return np.partition(maxima, groups - k, axis=1)[:, groups - k]


def _compute_rows(queries: int) -> int:
    """Rows per matrix product: a ``(Q, rows)`` float32 score block of at most 8 MiB.

    It stays in the last-level cache between the product that writes it and
    the reductions that read it, and few, large products keep the per-call
    costs (Python, and waking BLAS threads, which a busy machine makes
    expensive) small next to the arithmetic.
    """
    return int(max(4096, min(65536, (8 << 20) // (4 * queries))))


def exact_search(
    source: ImageIndex | np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    block_rows: int = 65536,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner-product search (cosine for unit vectors).

    Scores are computed block by block (``queries @ block.T``) and merged
    into a running top-k, so an :class:`ImageIndex` is streamed from disk and
    never loaded whole: the memory held is ``O(Q * (k + block_rows))``.

    Args:
        source: an opened index, or an array ``(N, D)`` of embeddings.
        queries: ``(Q, D)``, or ``(D,)`` for one query.
        k: how many results per query.
        block_rows: rows read from ``source`` per step (an upper bound; the
            products are taken over smaller, cache-sized blocks).
        mask: optional ``bool`` array ``(N,)``: only rows where it is true
            are candidates. The filter runs inside the top-k, so the answer
            is the true top ``k`` of the matching rows (``min(k, matching)``
            of them), never a top ``k`` cut short by a later filter.

    Returns:
        ``(scores, rows)``, each ``(Q, min(k, N))`` (``min(k, matching)``
        with a ``mask``): ``float32`` scores sorted
        descending (ties broken by the lower row; NaN ranks last) and the
        ``int64`` rows they belong to.

    Raises:
        ValueError: ``k < 1``, or the shapes do not match.
        IndexDamagedError: ``source`` is an index whose data is damaged.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    q = np.asarray(queries, np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2:
        raise ValueError(f"queries must be (Q, D) or (D,), got shape {q.shape}")
    q = np.ascontiguousarray(q)
    if isinstance(source, ImageIndex):
        n, dim = len(source), source.dim
        blocks: Iterator[tuple[int, np.ndarray]] = source.blocks(block_rows, reuse=True, verify=False)
    else:
        matrix = np.asarray(source)
        if matrix.ndim != 2:
            raise ValueError(f"source must be an ImageIndex or an (N, D) array, got shape {matrix.shape}")
        n, dim = matrix.shape
        # Row slices of a C-contiguous array are views: no block is copied.
        blocks = ((start, matrix[start : start + block_rows]) for start in range(0, n, block_rows))
    matching = None
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (n,):
            raise ValueError(f"mask must be a bool array of shape ({n},), got {mask.dtype} {mask.shape}")
        if not mask.all():
            # The top-k runs over the matching rows numbered 0 .. m-1 (in row
            # order, so ties still go to the lower row) and maps back at the end.
            matching = np.flatnonzero(mask)
    top_k = min(k, n if matching is None else len(matching))
    if top_k == 0 or q.shape[0] == 0:
        return np.zeros((q.shape[0], top_k), np.float32), np.zeros((q.shape[0], top_k), np.int64)
    if q.shape[1] != dim:
        raise ValueError(f"queries have dimension {q.shape[1]}, the embeddings {dim}")

    best = _TopK(q.shape[0], top_k)
    queries = q.shape[0]
    if isinstance(source, ImageIndex):
        # The index's check vector rides along as one more query: its scores
        # are the rows' check values, verified block by block for free.
        q = np.ascontiguousarray(np.vstack([q, check_vector(dim)[None, :]]))
    step = _compute_rows(q.shape[0])
    scratch = np.empty((q.shape[0], min(step, block_rows, n)), np.float32)
    for start, block in blocks:
        for offset in range(0, len(block), step):
            part = block[offset : offset + step]
            if part.dtype != np.float32:
                part = part.astype(np.float32)
            rows = len(part)
            # Into a reused buffer: a fresh (Q, rows) array per block would be
            # page-faulted in every time.
            out = scratch if rows == scratch.shape[1] else np.empty((q.shape[0], rows), np.float32)
            np.matmul(q, part.T, out=out)
            if queries < q.shape[0]:
                source.verify_rows(slice(start + offset, start + offset + rows), out[queries])
            if matching is None:
                best.push(out[:queries], start + offset)
                continue
            first = start + offset
            lo, hi = np.searchsorted(matching, [first, first + rows])
            if hi > lo:
                best.push(np.ascontiguousarray(out[:queries, matching[lo:hi] - first]), int(lo))
    if isinstance(source, ImageIndex):
        source.check_scores(best.scores, q[:queries])
    if matching is not None:
        return best.scores, matching[best.rows]
    return best.scores, best.rows

"""Near-duplicate images in an index: candidates from the embeddings, confirmed by pixels.

A near-duplicate is the same picture re-encoded, resized or slightly
cropped. :class:`DuplicateFinder` finds them in two steps:

1. **Candidates**, from the index alone: each image's ``k`` nearest other
   images in the joint space (default 10), by an exact blocked self-join
   (:func:`nearest_pairs`): the upper triangle of the scores, one tile at a
   time, each tile updating the running ``k`` best of its rows and of its
   columns; ``O(tile^2 + N k)`` numbers, never an ``N x N`` matrix.
2. **Confirmation**, from the files: each candidate pair is scored on
   pixel fingerprints (:mod:`devise.search.image_fingerprint`), aligned
   over small border crops; pairs at or above the threshold (default
   :data:`DEFAULT_THRESHOLD`) are linked, and linked images form a group
   (connected components: :func:`connected_rows`).

Why not a threshold on the joint-space score alone, as a search engine
would: measured on three sets, each with re-encoded (JPEG quality 60),
resized (0.5x, 0.8x) and border-cropped (2%, 5%) copies planted beside the
originals, no threshold separates copies from distinct images, in the joint
space or on the raw EfficientNet-Lite0 features it is projected from. The
model is made to call two photos of a green circle alike, and does:

============================  ==========================  ==================  =========================
set (originals / copies)      space                       lowest copy score   highest distinct pair
============================  ==========================  ==================  =========================
83 photos / 415 (skimage      joint (demo model)          0.79 (JPEG 60)      0.95 (two gravel tiles)
data and tiles of them)       CNN features                0.81                0.95
                              pixel fingerprint           0.98                0.86 (a stereo pair)
1000 shapes / 250 (demo       joint                       0.61 (JPEG 60)      0.93 (two blue crosses)
data, 128 px)                 CNN features                0.82                0.98
                              pixel fingerprint           0.993               0.989 (two tiny circles)
500 emoji / 200 (136 px       joint (emoji model)         0.51 (half size)    0.99 (two clock faces)
renders)                      CNN features                0.78                0.99
                              pixel fingerprint           0.991               0.994 (frowning/smiling)
============================  ==========================  ==================  =========================

On the photos, the joint space at its best threshold (0.95, one false
pair) found 76% of the copies. The embeddings still rank well: every
copy's original was among its 8 nearest originals in the joint space (its
4 nearest on the photos), so they propose candidates, and the pixels
decide. The whole of it (10 neighbours, threshold 0.95) returned the 83
planted groups of the photos exactly and no other group; on the shapes the
50 planted groups and 3 pairs of distinct images; on the emoji every
planted copy, but 5 of the groups chained with 4 other faces into one
(single linkage), and 10 groups of distinct emoji (flags, faces).
The pixel step decodes every image once (JPEGs at a reduced scale: 46 ms
for a 12-megapixel photo, against 630 ms in full), on ``workers`` threads.

Why 0.95: on the photos every copy scored at least 0.98 and no two distinct
images above 0.86, so 0.95 keeps a margin on both sides. The synthetic
sets are harder than photos: some of their distinct images differ by a few
pixels (two small green circles a few pixels apart, a frowning and a
smiling emoji). At 0.95 the shapes gave 3 such pairs and the emoji 60;
``--threshold 0.99`` removed them all but one emoji pair and still found
every planted copy of both.

Limits: a crop of more than ~6% from a border, or from one side only, is
not aligned and scores lower (by construction; not measured); rotated or mirrored copies are not found; a
copy whose joint-space rank exceeds ``neighbours`` is missed (raise it).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from devise.errors import DeviseError
from devise.progress import ProgressBar
from devise.search.image_fingerprint import (
    BORDER_CROPS,
    FINGERPRINT_SIZE,
    fingerprint_scores,
    image_fingerprint,
)
from devise.search.index_file import ImageIndex

#: Pixel score at or above which two images are near-duplicates.
DEFAULT_THRESHOLD = 0.95
#: Candidates per image: its nearest other images in the joint space.
DEFAULT_NEIGHBOURS = 10
#: Rows per side of one tile of the self-join: 4096 x 4096 float32 scores are
#: 64 MiB; larger tiles mean fewer merges of each row's running best.
TILE_ROWS = 4096
#: Bytes of rows the self-join holds at once (512-d float32: 262,144 rows); a
#: larger index is joined panel by panel, reading the rows after each again.
MEMORY_BYTES = 512 << 20
#: Pairs scored per step of the confirmation (their fingerprints as float32: ~45 MB).
_PAIR_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class DuplicateMember:
    """One image of a group.

    Attributes:
        row: its row in the index.
        id: path relative to the indexed folder.
        path: absolute path.
        score: its pixel score with its nearest other member of the group.
        nearest: the row of that member.
    """

    row: int
    id: str
    path: str
    score: float
    nearest: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DuplicateGroup:
    """Images linked by scores at or above the threshold, directly or through other members.

    Attributes:
        members: the images, in index (path) order.
        best_score: the highest score between two members.
        lowest_score: the lowest of the members' scores with their nearest member.
    """

    members: tuple[DuplicateMember, ...]
    best_score: float
    lowest_score: float

    def __len__(self) -> int:
        return len(self.members)

    def to_dict(self) -> dict:
        return {
            "size": len(self.members),
            "best_score": self.best_score,
            "lowest_score": self.lowest_score,
            "members": [m.to_dict() for m in self.members],
        }


def nearest_pairs(
    source: ImageIndex | np.ndarray,
    k: int = DEFAULT_NEIGHBOURS,
    *,
    tile_rows: int = TILE_ROWS,
    memory_bytes: int = MEMORY_BYTES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows by inner product, as pairs: an exact blocked self-join.

    Only the upper triangle of the scores is computed, one
    ``tile_rows x tile_rows`` tile at a time; each tile updates the running
    ``k`` best of its rows and, transposed, of its columns, so every score
    is computed once and no ``N x N`` matrix is held: the memory is
    ``O(tile_rows^2 + N k)`` besides the rows themselves. Up to
    ``memory_bytes`` of rows are held at once (an index is read once, every
    row checked, when it fits); a larger source is joined panel by panel,
    reading the rows after each panel again.

    Args:
        source: an opened index, or an array ``(N, D)``.
        k: neighbours per row (fewer when there are fewer other rows).
        tile_rows: rows per side of a tile of scores.
        memory_bytes: the most bytes of rows held at once.

    Returns:
        ``(first, second, scores)``: ``int64`` rows with ``first < second``,
        each pair once, sorted by ``(first, second)``, and their ``float32``
        scores. A pair is kept when either row is among the other's ``k``
        nearest (ties broken by the lower row).

    Raises:
        IndexDamagedError: ``source`` is an index whose data is damaged.
    """
    if k < 1 or tile_rows < 1:
        raise ValueError(f"k and tile_rows must be >= 1, got {k} and {tile_rows}")
    if isinstance(source, ImageIndex):
        n, dim = len(source), source.dim

        def read(start: int, stop: int) -> np.ndarray:
            return source.embeddings(np.arange(start, stop))

    else:
        matrix = np.asarray(source)
        if matrix.ndim != 2:
            raise ValueError(f"source must be an ImageIndex or an (N, D) array, got shape {matrix.shape}")
        n, dim = matrix.shape

        def read(start: int, stop: int) -> np.ndarray:
            return np.ascontiguousarray(matrix[start:stop], np.float32)

    k = min(k, n - 1)
    if k < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    panel_rows = max(tile_rows, memory_bytes // max(1, 4 * dim))
    best = _RunningNearest(n, k)
    side = min(tile_rows, n)  # a small source needs no full-size tile
    below_diagonal = np.tril(np.ones((side, side), bool))
    scratch = np.empty((side, side), np.float32)
    for panel_start in range(0, n, panel_rows):
        panel = read(panel_start, min(panel_start + panel_rows, n))
        panel_stop = panel_start + len(panel)
        for col_start in range(panel_start, n, tile_rows):
            col_stop = min(col_start + tile_rows, n)
            cols = (
                panel[col_start - panel_start : col_stop - panel_start]
                if col_stop <= panel_stop
                else read(col_start, col_stop)
            )
            for row_start in range(panel_start, min(panel_stop, col_stop), tile_rows):
                rows = panel[row_start - panel_start : row_start - panel_start + tile_rows]
                scores = scratch[: len(rows), : len(cols)]
                np.matmul(rows, cols.T, out=scores)
                if row_start == col_start:  # a tile on the diagonal: its upper triangle only
                    scores[below_diagonal[: len(rows), : len(cols)]] = -np.inf
                best.push(scores, row_start, col_start)
    mine = np.broadcast_to(np.arange(n)[:, None], best.rows.shape)
    first = np.minimum(mine, best.rows).ravel()
    second = np.maximum(mine, best.rows).ravel()
    keys, where = np.unique(first * n + second, return_index=True)
    return keys // n, keys % n, best.scores.ravel()[where]


_NO_ROW = np.iinfo(np.int64).max  # ranks after every real row at an equal score


class _RunningNearest:
    """Each row's ``k`` best ``(score, row)`` so far, sorted by score then row, fed tiles in any order."""

    def __init__(self, n: int, k: int):
        self.k = k
        self.scores = np.full((n, k), -np.inf, np.float32)
        self.rows = np.full((n, k), _NO_ROW, np.int64)

    def push(self, scores: np.ndarray, row_start: int, col_start: int) -> None:
        """Merge ``scores[i, j]``, the score of row ``row_start + i`` with row ``col_start + j``, into both rows' best.

        Row ``row_start + i`` gets row ``col_start + j`` as a candidate, and
        the other way round: a tile of the upper triangle serves both ends
        of each pair, without a transposed copy.
        """
        self._merge(scores, row_start, col_start, axis=1)
        self._merge(scores, col_start, row_start, axis=0)

    def _merge(self, scores: np.ndarray, start: int, other_start: int, *, axis: int) -> None:
        """Merge the scores of rows ``start + r`` (along ``axis`` of the tile) with rows ``other_start + c``.

        Only scores at or above a row's bar can enter its ``k`` best: its
        current k-th best or, while it holds fewer, a lower bound on the
        tile's own k-th best for that row. Ties at the bar are all kept and
        sorted by row.
        """
        k = self.k
        count, width = (scores.shape[0], scores.shape[1]) if axis == 1 else (scores.shape[1], scores.shape[0])
        bar = self.scores[start : start + count, -1].copy()
        short = np.flatnonzero(np.isneginf(bar))
        if width > k and len(short):
            part = scores if len(short) == count else (scores[short] if axis == 1 else scores[:, short])
            bar[short] = _kth_lower_bound(part, k, axis)
        mask = scores >= (bar[:, None] if axis == 1 else bar[None, :])
        i, j = np.divmod(np.flatnonzero(mask), scores.shape[1])
        values = scores[i, j]
        qi, col = (i, j) if axis == 1 else (j, i)
        real = np.isfinite(values)  # the masked lower triangle and NaN never enter
        qi, col, values = qi[real], col[real], values[real]
        if len(qi) == 0:
            return
        affected, group = np.unique(qi, return_inverse=True)
        rows = affected + start
        all_group = np.concatenate([np.repeat(np.arange(len(affected)), k), group])
        all_scores = np.concatenate([self.scores[rows].ravel(), values])
        all_rows = np.concatenate([self.rows[rows].ravel(), col + other_start])
        order = np.lexsort((all_rows, -all_scores, all_group))
        all_group, all_scores, all_rows = all_group[order], all_scores[order], all_rows[order]
        rank = np.arange(len(order)) - np.searchsorted(all_group, np.arange(len(affected)))[all_group]
        keep = rank < k
        self.scores[rows[all_group[keep]], rank[keep]] = all_scores[keep]
        self.rows[rows[all_group[keep]], rank[keep]] = all_rows[keep]


def _kth_lower_bound(scores: np.ndarray, k: int, axis: int) -> np.ndarray:
    """A lower bound on the k-th largest score of each line of a tile along ``axis``, in one pass.

    The line is cut into ``8k`` groups; the k-th largest of the group maxima
    is reached by k scores (one per group), so the k-th best is at least as
    high. A partition of the whole tile would cost more than its matrix
    product, and ten times more along axis 0.
    """
    width = scores.shape[axis]
    groups = min(width, 8 * k)
    size = width // groups
    if axis == 1:
        maxima = scores[:, : groups * size].reshape(scores.shape[0], groups, size).max(axis=2)
        return np.partition(maxima, groups - k, axis=1)[:, groups - k]
    maxima = scores[: groups * size].reshape(groups, size, scores.shape[1]).max(axis=1)
    return np.partition(maxima, groups - k, axis=0)[groups - k]


def connected_rows(n: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The connected component of every row, with the pairs as edges.

    Vectorised union-find: each round hooks the larger of an edge's two
    roots under the smaller, then compresses paths by pointer jumping, until
    no edge joins two roots.

    Returns:
        ``int64`` labels ``(n,)``: each row's smallest connected row.
    """
    parent = np.arange(n, dtype=np.int64)
    first = np.asarray(first, np.int64)
    second = np.asarray(second, np.int64)
    while True:
        a, b = parent[first], parent[second]
        joined = a != b
        if not joined.any():
            return parent
        low, high = np.minimum(a[joined], b[joined]), np.maximum(a[joined], b[joined])
        np.minimum.at(parent, high, low)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def group_pairs(
    first: np.ndarray, second: np.ndarray, scores: np.ndarray, ids: Sequence[str], paths: Sequence[str]
) -> list[DuplicateGroup]:
    """The groups the linked pairs make, largest first, then by best score.

    Args:
        first, second, scores: the linked pairs (rows) and their scores.
        ids, paths: the id and path of every row.

    Returns:
        The groups, sorted by size (descending), best score (descending)
        and first row; members in row order, each with its nearest member.
    """
    first = np.asarray(first, np.int64)
    second = np.asarray(second, np.int64)
    if len(first) == 0:
        return []
    labels = connected_rows(len(ids), first, second)
    # Each row's best pair, from either end.
    ends = np.concatenate([first, second])
    others = np.concatenate([second, first])
    both = np.concatenate([scores, scores]).astype(np.float32)
    order = np.lexsort((others, -both, ends))  # by row; best score, then lower partner, first
    ends, others, both = ends[order], others[order], both[order]
    head = np.ones(len(ends), bool)
    head[1:] = ends[1:] != ends[:-1]
    member_rows, nearest, member_scores = ends[head], others[head], both[head]
    group_of = labels[member_rows]
    groups = []
    for label in np.unique(group_of):
        inside = group_of == label
        rows, near, best = member_rows[inside], nearest[inside], member_scores[inside]
        members = tuple(
            DuplicateMember(int(r), ids[r], paths[r], round(float(s), 6), int(m)) for r, m, s in zip(rows, near, best)
        )
        groups.append(DuplicateGroup(members, round(float(best.max()), 6), round(float(best.min()), 6)))
    groups.sort(key=lambda g: (-len(g), -g.best_score, g.members[0].row))
    return groups


class DuplicateFinder:
    """Near-duplicate groups of an index, at any threshold (see the module's notes).

    The work is done once, on the first call of :meth:`groups`: the
    candidate pairs, the images' fingerprints and the pairs' pixel scores;
    each call then only links the pairs at its threshold.

    Args:
        index: an opened image index.
        neighbours: candidates per image (its nearest others in the joint space).
        workers: threads decoding images (default: the CPU count, at most 8).
        progress: show a progress bar on stderr while fingerprinting.

    Attributes:
        skipped: ``(id, reason)`` of each candidate image left out: missing,
            changed since it was indexed, or not decodable.

    Example:
    ```python
    from devise.search.dedup import DuplicateFinder
    from devise.search.index import ImageIndex

    finder = DuplicateFinder(ImageIndex.open("photos.h5"))
    for group in finder.groups(0.95):
        print(group.best_score, [m.id for m in group.members])
    ```
    """

    def __init__(
        self,
        index: ImageIndex,
        *,
        neighbours: int = DEFAULT_NEIGHBOURS,
        workers: int | None = None,
        progress: bool = False,
    ):
        if neighbours < 1:
            raise ValueError(f"neighbours must be >= 1, got {neighbours}")
        self.index = index
        self.neighbours = neighbours
        self.workers = workers if workers is not None else min(8, os.cpu_count() or 1)
        self.progress = progress
        self.skipped: list[tuple[str, str]] = []
        self._pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def groups(self, threshold: float = DEFAULT_THRESHOLD) -> list[DuplicateGroup]:
        """The groups of images whose pixel scores reach ``threshold``, largest first.

        Raises:
            ValueError: ``threshold`` is not in ``(0, 1]``.
            IndexDamagedError: the index is damaged.
        """
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        first, second, scores = self.scored_pairs()
        linked = scores >= np.float32(threshold)
        return group_pairs(first[linked], second[linked], scores[linked], self.index.ids, self.index.paths)

    def scored_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The candidate pairs ``(first, second)`` whose images could be read, and their pixel scores."""
        if self._pairs is None:
            first, second, _ = nearest_pairs(self.index, self.neighbours)
            rows = np.unique(np.concatenate([first, second]))
            fingerprints, readable = self._fingerprints(rows)
            ok = np.zeros(len(self.index), bool)
            ok[rows[readable]] = True
            keep = ok[first] & ok[second]
            first, second = first[keep], second[keep]
            slot_a, slot_b = np.searchsorted(rows, first), np.searchsorted(rows, second)
            scores = np.empty(len(first), np.float32)
            for start in range(0, len(first), _PAIR_BATCH):
                batch = slice(start, start + _PAIR_BATCH)
                scores[batch] = fingerprint_scores(fingerprints[slot_a[batch]], fingerprints[slot_b[batch]])
            self._pairs = (first, second, scores)
        return self._pairs

    def _fingerprints(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fingerprints of the images at ``rows`` (one per row, zeros where unreadable), and which were read."""
        index = self.index
        bar = ProgressBar("fingerprinting images") if self.progress and len(rows) else None

        def one(row: int) -> np.ndarray:
            path = index.paths[row]
            try:
                st = os.stat(path)
            except OSError:
                raise DeviseError(f"{path}: missing") from None
            if (st.st_size, st.st_mtime_ns) != (int(index.sizes[row]), int(index.mtime_ns[row])):
                raise DeviseError(f"{path}: changed since it was indexed; re-run devise-index")
            return image_fingerprint(path)

        fingerprints = np.zeros((len(rows), len(BORDER_CROPS), 3 * FINGERPRINT_SIZE**2), np.uint8)
        readable = np.zeros(len(rows), bool)
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            for slot, (fingerprint, error) in enumerate(pool.map(_outcome(one), rows.tolist())):
                if error is None:
                    fingerprints[slot] = fingerprint
                    readable[slot] = True
                else:
                    self.skipped.append((index.ids[rows[slot]], error))
                if bar is not None:
                    bar.update(slot + 1, len(rows))
        return fingerprints, readable


def _outcome(fn):
    """``fn`` returning ``(result, None)``, or ``(None, message)`` for a :class:`DeviseError`."""

    def call(arg):
        try:
            return fn(arg), None
        except DeviseError as exc:
            return None, str(exc)

    return call


def find_duplicates(
    index: ImageIndex,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    neighbours: int = DEFAULT_NEIGHBOURS,
    progress: bool = False,
) -> list[DuplicateGroup]:
    """Groups of near-identical images in an index, largest first: ``DuplicateFinder(...).groups(threshold)``."""
    return DuplicateFinder(index, neighbours=neighbours, progress=progress).groups(threshold)

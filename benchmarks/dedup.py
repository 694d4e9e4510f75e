"""Near-duplicate candidates: devise's blocked k-NN self-join against the naive all-pairs numpy product.

Usage::

    python benchmarks/dedup.py [--sizes 10000 100000] [--dim 512] [--k 10] [--no-index]

For each size, seeded random unit vectors (float32) with 1% of the rows
replaced by near-copies of other rows (the row plus a little noise,
renormalised: cosine ~0.99) are self-joined for each row's ``k`` nearest
others, in the same run:

* devise: :func:`devise.search.dedup.nearest_pairs` on the in-memory array,
  and (unless ``--no-index``) on an HDF5 index file of the same rows, read
  once through the page cache with every row checked;
* naive: ``X @ X.T`` in full, the diagonal masked, ``np.argpartition`` per
  row. It needs ``N^2`` float32 scores: 400 MB at 10k, 40 GB at 100k. Where
  that exceeds ``--naive-limit-gb`` (default: a quarter of the machine's
  memory) it is not run, and its time is extrapolated from the largest
  size that ran as ``N^2`` (the product dominates), and printed as such.

Peak memory is what ``tracemalloc`` saw allocated (numpy reports its
arrays to it) during each call. Both sides must find every planted pair,
and where both ran they must return the same pairs.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import tracemalloc

import numpy as np

from devise.search.dedup import nearest_pairs
from devise.search.index import ImageFile, ImageIndex, create_index_file, new_index_file


def planted_vectors(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows with 1% near-copies; returns the matrix and the planted ``(copy, original)`` pairs."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((n, dim), dtype=np.float32)
    copies = rng.choice(n, size=max(1, n // 100), replace=False)
    originals = rng.choice(np.setdiff1d(np.arange(n), copies), size=len(copies), replace=False)
    matrix[copies] = matrix[originals] + 0.1 * rng.standard_normal((len(copies), dim), dtype=np.float32)
    for start in range(0, n, 65536):
        block = matrix[start : start + 65536]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return matrix, np.stack([copies, originals], axis=1)


def naive_pairs(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest others from the full ``N x N`` product, as sorted unique pairs."""
    scores = matrix @ matrix.T
    np.fill_diagonal(scores, -np.inf)
    nearest = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    del scores
    rows = np.broadcast_to(np.arange(len(matrix))[:, None], nearest.shape)
    first, second = np.minimum(rows, nearest).ravel(), np.maximum(rows, nearest).ravel()
    keys = np.unique(first * len(matrix) + second)
    return keys // len(matrix), keys % len(matrix)


def measured(fn, *args, **kwargs):
    """``(result, seconds, peak MiB)`` of one call."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def all_found(first: np.ndarray, second: np.ndarray, planted: np.ndarray, n: int) -> bool:
    keys = set((first * n + second).tolist())
    low, high = planted.min(axis=1), planted.max(axis=1)
    return all(int(a) * n + int(b) in keys for a, b in zip(low, high))


def write_index(path: str, matrix: np.ndarray) -> ImageIndex:
    files = [ImageFile(f"{i:07d}.jpg", f"/bench/{i:07d}.jpg", 0, 0, 0, "mtime") for i in range(len(matrix))]
    with new_index_file(path) as f:
        writer = create_index_file(
            f, files, model_fingerprint="bench", run_dir="", image_root="/bench", dim=matrix.shape[1]
        )
        for start in range(0, len(matrix), 65536):
            writer.write(matrix[start : start + 65536])
        writer.finish()
    return ImageIndex.open(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--no-index", action="store_true", help="skip the HDF5 index file")
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    parser.add_argument("--naive-limit-gb", type=float, default=memory_gb / 4)
    args = parser.parse_args()

    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, {memory_gb:.0f} GB, numpy {np.__version__}, "
        f"dim {args.dim}, k {args.k}"
    )
    print(f"{'rows':>8} {'method':<34} {'time':>10} {'peak MiB':>10}  planted pairs")
    naive_rate = None  # seconds per N^2 of the largest naive run
    for n in args.sizes:
        matrix, planted = planted_vectors(n, args.dim)
        (first, second, _), ours_s, ours_mib = measured(nearest_pairs, matrix, args.k)
        print(
            f"{n:>8} {'devise nearest_pairs (array)':<34} {ours_s:>9.2f}s {ours_mib:>10.0f}  "
            f"{'all found' if all_found(first, second, planted, n) else 'MISSED SOME'}"
        )
        if not args.no_index:
            with tempfile.TemporaryDirectory() as tmp:
                index = write_index(os.path.join(tmp, "bench.h5"), matrix)
                (ifirst, isecond, _), index_s, index_mib = measured(nearest_pairs, index, args.k)
                same = np.array_equal(ifirst, first) and np.array_equal(isecond, second)
                print(
                    f"{n:>8} {'devise nearest_pairs (index file)':<34} {index_s:>9.2f}s {index_mib:>10.0f}  "
                    f"{'same pairs' if same else 'DIFFERENT PAIRS'}"
                )
        naive_bytes = 4 * n * n
        if naive_bytes / 1e9 <= args.naive_limit_gb:
            (nfirst, nsecond), naive_s, naive_mib = measured(naive_pairs, matrix, args.k)
            same = np.array_equal(nfirst, first) and np.array_equal(nsecond, second)
            naive_rate = naive_s / n**2
            print(
                f"{n:>8} {'naive X @ X.T + argpartition':<34} {naive_s:>9.2f}s {naive_mib:>10.0f}  "
                f"{'same pairs as devise' if same else 'DIFFERENT PAIRS'}"
            )
            print(f"{n:>8} {'naive / devise':<34} {naive_s / ours_s:>9.2f}x {naive_mib / ours_mib:>9.1f}x")
        else:
            estimate = f"~{naive_rate * n**2:.0f}s" if naive_rate else "?"
            print(
                f"{n:>8} {'naive X @ X.T + argpartition':<34} {'not run':>10} {naive_bytes / 2**20:>10.0f}  "
                f"needs {naive_bytes / 1e9:.1f} GB for the scores (limit {args.naive_limit_gb:.1f} GB); "
                f"{estimate} extrapolated as N^2 from the largest run"
            )
        del matrix


if __name__ == "__main__":
    main()

"""Exact top-k search: devise's blocked ``exact_search`` against plain numpy.

Usage::

    python benchmarks/search.py [--sizes 10000 100000 1000000] [--dim 512] [--queries 200] [--no-ann]

For each size, random unit vectors (float32, seeded) are searched with
single queries and with batches of queries, by ``exact_search`` on the
in-memory array and by the plain numpy baseline (one matrix product over
all rows, ``np.argpartition`` of the negated scores, then a sort of the k),
timed alternately in the same run so both see the same machine load. It
then compares the rate at which single-query search scans the matrix with
the machine's memory copy rate, and times streaming the largest size from
an HDF5 index file (read through the page cache, as a freshly written or
recently searched index is). With the ``ann`` extra installed it also
measures the FAISS index's recall@10 against exact search and its speed-up
at the largest size, on the uniform data and on clustered data.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np

from devise.search.index import ImageFile, ImageIndex, create_index_file, exact_search, new_index_file


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``(n, dim)`` float32 unit vectors, normalised in place (no float64 copy)."""
    matrix = rng.standard_normal((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):
        block = matrix[start : start + 65536]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return matrix


def numpy_baseline(matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The obvious numpy top-k: all scores, argpartition, sort the k."""
    scores = queries @ matrix.T
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1)
    return np.take_along_axis(part_scores, order, axis=1), np.take_along_axis(part, order, axis=1)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def percentiles(times: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    values = np.array(times) * 1e3
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def compare(matrix: np.ndarray, query_sets: list[np.ndarray], k: int) -> tuple[list[float], list[float]]:
    """Times of ours and of the baseline over the same queries, alternating which goes first."""
    ours, theirs = [], []
    for i, queries in enumerate(query_sets):
        if i % 2:
            theirs.append(timed(numpy_baseline, matrix, queries, k))
            ours.append(timed(exact_search, matrix, queries, k))
        else:
            ours.append(timed(exact_search, matrix, queries, k))
            theirs.append(timed(numpy_baseline, matrix, queries, k))
    return ours, theirs


def copy_rate(nbytes: int, repeats: int = 5) -> float:
    """Memory copy rate in GB/s, counting bytes read plus bytes written (STREAM's convention)."""
    n = max(nbytes // 4, 1)
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in before timing
    best = min(timed(np.copyto, dst, src) for _ in range(repeats))
    return 2 * src.nbytes / best / 1e9


def write_index(path: str, matrix: np.ndarray) -> None:
    """An index file of ``matrix`` written by devise's own writer (ids and file stats are made up)."""
    n, dim = matrix.shape
    files = [ImageFile(f"{i:08d}.jpg", f"/benchmark/{i:08d}.jpg", 0, 0, 0, "mtime") for i in range(n)]
    with new_index_file(path) as f:
        writer = create_index_file(
            f, files, model_fingerprint="benchmark", run_dir="", image_root="/benchmark", dim=dim
        )
        for start in range(0, n, 65536):
            writer.write(matrix[start : start + 65536])
        writer.finish()


def approximate_rows(matrix: np.ndarray, rng: np.random.Generator, args) -> list[tuple]:
    """Recall@k and speed-up of the FAISS extra against exact_search, on uniform and clustered data."""
    import importlib.util

    # devise.search.approximate itself imports faiss only when used.
    if importlib.util.find_spec("faiss") is None:
        return []
    from devise.search.approximate import ApproximateIndex, recall_against_exact

    n, dim = matrix.shape
    centres = unit_vectors(rng, 1000, dim)
    clustered = centres[rng.integers(0, 1000, size=n)] + 0.08 * rng.standard_normal((n, dim), dtype=np.float32)
    clustered /= np.linalg.norm(clustered, axis=1, keepdims=True)
    out = []
    for name, data in (("uniform", matrix), ("clustered", clustered)):
        if name == "uniform":
            queries = unit_vectors(rng, args.ann_queries, dim)
        else:
            queries = data[rng.integers(0, n, size=args.ann_queries)] + 0.05 * rng.standard_normal(
                (args.ann_queries, dim), dtype=np.float32
            )
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        exact_rows = np.concatenate([exact_search(data, q[None], args.k)[1] for q in queries])
        exact_ms = 1e3 * float(np.median([timed(exact_search, data, q[None], args.k) for q in queries[:50]]))
        ann = ApproximateIndex.build(data, nlist=args.ann_nlist, train_size=40 * args.ann_nlist)
        for nprobe in (8, 32, 128):
            ann.nprobe = nprobe
            rows = np.concatenate([ann.search(q[None], args.k)[1] for q in queries])
            ann_ms = 1e3 * float(np.median([timed(ann.search, q[None], args.k) for q in queries]))
            out.append((n, name, nprobe, recall_against_exact(rows, exact_rows), ann_ms, exact_ms))
        print(f"  approximate {name} done", file=sys.stderr, flush=True)
    return out


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200, help="single queries timed per size")
    parser.add_argument("--batch", type=int, default=32, help="queries per batch")
    parser.add_argument("--batches", type=int, default=10, help="batches timed per size")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--stream-queries",
        type=int,
        default=5,
        help="single queries and batches streamed from HDF5",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ann", action="store_true", help="skip the approximate (FAISS) part")
    parser.add_argument("--ann-nlist", type=int, default=1024, help="FAISS clusters (default 1024)")
    parser.add_argument("--ann-queries", type=int, default=200, help="queries for the recall measurement")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    print(
        f"exact top-{args.k}, {args.dim}-d float32 unit vectors; python {platform.python_version()}, "
        f"numpy {np.__version__}, {os.cpu_count()} CPUs"
    )
    rows = []
    scans = []
    matrix = None
    for n in args.sizes:
        matrix = None  # free the previous size first
        matrix = unit_vectors(rng, n, args.dim)
        singles = [unit_vectors(rng, 1, args.dim) for _ in range(args.queries)]
        batches = [unit_vectors(rng, args.batch, args.dim) for _ in range(args.batches)]
        # Correctness check and warm-up: same rows as the baseline.
        ours_rows = exact_search(matrix, batches[0], args.k)[1]
        if not np.array_equal(ours_rows, numpy_baseline(matrix, batches[0], args.k)[1]):
            print(
                f"warning: {label(n)}: results differ from the baseline (near-ties?)",
                file=sys.stderr,
            )
        numpy_baseline(matrix, singles[0], args.k)
        for name, sets in (("1 query", singles), (f"batch of {args.batch}", batches)):
            ours, theirs = compare(matrix, sets, args.k)
            rows.append((label(n), name, *percentiles(ours), *percentiles(theirs)))
            if name == "1 query":
                scans.append(
                    (
                        label(n),
                        matrix.nbytes,
                        percentiles(ours)[0],
                        percentiles(theirs)[0],
                    )
                )
        print(f"  {label(n)} done", file=sys.stderr, flush=True)

    copy_gbs = copy_rate(min(matrix.nbytes, 1 << 30))
    ann_rows = approximate_rows(matrix, rng, args) if not args.no_ann else []

    stream_rows = []
    with tempfile.TemporaryDirectory(prefix="devise-bench-") as tmp:
        path = os.path.join(tmp, "index.h5")
        write_index(path, matrix)
        n = len(matrix)
        matrix = None  # streaming must not lean on the in-memory copy
        index = ImageIndex.open(path)
        exact_search(index, unit_vectors(rng, 1, args.dim), args.k)  # warm the page cache
        for name, q in (("1 query", 1), (f"batch of {args.batch}", args.batch)):
            times = [
                timed(exact_search, index, unit_vectors(rng, q, args.dim), args.k) for _ in range(args.stream_queries)
            ]
            stream_rows.append((label(n) + " HDF5", name, *percentiles(times)))

    print()
    header = f"{'rows':>9} {'queries':>12} | {'ours p50':>9} {'ours p99':>9} | {'numpy p50':>9} {'numpy p99':>9} | {'numpy/ours':>10}"
    print(header)
    print("-" * len(header))
    for size, name, o50, o99, t50, t99 in rows:
        print(f"{size:>9} {name:>12} | {o50:>7.2f}ms {o99:>7.2f}ms | {t50:>7.2f}ms {t99:>7.2f}ms | {t50 / o50:>9.2f}x")
    for size, name, o50, o99 in stream_rows:
        print(f"{size:>9} {name:>12} | {o50:>7.2f}ms {o99:>7.2f}ms | {'-':>9} {'-':>9} | {'-':>10}")

    print()
    print(
        f"memory copy rate (np.copyto of {min(scans[-1][1], 1 << 30) / 2**30:.2f} GiB, bytes read + written): {copy_gbs:.1f} GB/s"
    )
    print(f"{'rows':>9} | {'matrix':>9} | {'ours scan':>11} {'of copy':>8} | {'numpy scan':>11} {'of copy':>8}")
    for size, nbytes, ours_ms, numpy_ms in scans:
        ours_gbs = nbytes / (ours_ms / 1e3) / 1e9
        numpy_gbs = nbytes / (numpy_ms / 1e3) / 1e9
        print(
            f"{size:>9} | {nbytes / 1e9:>7.3f}GB | {ours_gbs:>7.1f}GB/s {ours_gbs / copy_gbs:>7.0%} "
            f"| {numpy_gbs:>7.1f}GB/s {numpy_gbs / copy_gbs:>7.0%}"
        )
    print("(scan = bytes of the matrix / p50 time of one single-query search)")
    if ann_rows:
        print()
        print(
            f"approximate (FAISS IVF-Flat, nlist {args.ann_nlist}) at {label(ann_rows[0][0])}, "
            f"top-{args.k} recall against exact search, p50 latency per single query:"
        )
        print(f"{'data':>10} {'nprobe':>7} | {'recall@10':>9} | {'ann p50':>9} | {'exact p50':>9} | {'speed-up':>8}")
        for _n, data, nprobe, recall, ann_ms, exact_ms in ann_rows:
            print(
                f"{data:>10} {nprobe:>7} | {recall:>9.3f} | {ann_ms:>7.2f}ms | {exact_ms:>7.2f}ms | "
                f"{exact_ms / ann_ms:>7.1f}x"
            )
        print(
            "(uniform = random unit vectors, no cluster structure: the worst case for IVF; "
            "clustered = the same count drawn around 1000 centres, closer to real embeddings)"
        )
    elif not args.no_ann:
        print("\napproximate search skipped: pip install 'devise[ann]' (faiss-cpu)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

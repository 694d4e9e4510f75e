"""Benchmark: first (zip-reading) versus cached load of GloVe vectors for a vocabulary.

Builds a GloVe-style text file of seeded random vectors (default 100k words,
300-d, about 270 MB of text) inside a zip archive in a temporary folder, then
times two calls of :func:`devise.embeddings.vector_cache.load_word_vectors_cached`
for a 10k-word vocabulary: the first reads the zip member and writes the cache
entry, the second loads that entry. Target: the cached load at least 10x faster.

    python benchmarks/glove_cache.py [--words 100000] [--dim 300] [--vocabulary 10000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # importing devise imports TensorFlow

import numpy as np


def build_fixture(directory: Path, words: int, dim: int, seed: int) -> tuple[Path, str, list[str]]:
    """Write ``glove.bench.zip`` holding ``glove.bench.{dim}d.txt``; returns (zip, member, words)."""
    rng = np.random.default_rng(seed)
    names = [f"word{i}" for i in range(words)]
    member = f"glove.bench.{dim}d.txt"
    archive = directory / "glove.bench.zip"
    row_format = " ".join(["%.5f"] * dim)
    with (
        zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf,
        zf.open(member, "w", force_zip64=True) as out,
    ):
        for start in range(0, words, 5000):
            chunk = rng.normal(0.0, 0.4, size=(min(5000, words - start), dim)).astype(np.float32)
            lines = [f"{names[start + i]} {row_format % tuple(row)}\n" for i, row in enumerate(chunk.tolist())]
            out.write("".join(lines).encode("utf-8"))
    return archive, member, names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=100_000, help="words in the GloVe file")
    parser.add_argument("--dim", type=int, default=300, help="vector dimension")
    parser.add_argument("--vocabulary", type=int, default=10_000, help="words asked for")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from devise.embeddings.vector_cache import load_word_vectors_cached

    print(f"machine: {platform.platform()}; {platform.machine()} {platform.processor() or ''}".rstrip())
    print(f"cpus: {os.cpu_count()}; python {platform.python_version()}; numpy {np.__version__}")
    with tempfile.TemporaryDirectory(prefix="glove_cache_bench_") as tmp:
        tmp_path = Path(tmp)
        start = time.perf_counter()
        archive, member, names = build_fixture(tmp_path, args.words, args.dim, args.seed)
        text_mb = archive.stat().st_size / 1e6
        print(
            f"fixture: {args.words} words x {args.dim}-d in {archive.name}::{member} "
            f"({text_mb:.0f} MB zipped), built in {time.perf_counter() - start:.1f}s"
        )
        rng = np.random.default_rng(args.seed + 1)
        picked = rng.choice(len(names), size=min(args.vocabulary, len(names)), replace=False)
        vocabulary = [names[i] for i in picked] + ["notinthefile"]
        cache = tmp_path / "cache"

        timings = []
        results = []
        for _ in range(2):
            start = time.perf_counter()
            result = load_word_vectors_cached(archive, vocabulary=vocabulary, dim=args.dim, cache_dir=cache)
            timings.append(time.perf_counter() - start)
            results.append(result)
        first, cached = timings
        same = results[0].vectors.words == results[1].vectors.words and np.array_equal(
            results[0].vectors.vectors, results[1].vectors.vectors
        )
        entry = next(cache.glob("*.npz"))
        print(f"vocabulary: {len(vocabulary)} words, {len(results[0].vectors)} found")
        print(f"first load (reads the zip, writes the cache): {first:.3f}s")
        print(f"cached load: {cached:.4f}s (entry {entry.stat().st_size / 1e6:.1f} MB)")
        print(f"speed-up: {first / cached:.0f}x (target >= 10x); identical results: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

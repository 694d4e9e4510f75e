"""Approximate nearest-neighbour search with FAISS (optional extra ``ann``).

Exact search scans every vector; at millions of images an inverted-file
index (IVF) scans only the ``nprobe`` closest of ``nlist`` clusters. The
price is recall: :func:`recall_against_exact` measures it, and
``benchmarks/search.py`` reports it next to the speed-up.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np

from devise.atomicfile import atomic_path
from devise.errors import DataFormatError, require
from devise.search.index import ImageIndex, IndexMismatchError


def _faiss():
    return require("faiss", "ann", "Approximate search")


class ApproximateIndex:
    """A FAISS IVF-Flat index (inner product, i.e. cosine on unit vectors) over an image index.

    Args:
        faiss_index: the trained, filled FAISS index.
        model_fingerprint: fingerprint of the model whose embeddings it holds.
        size: number of vectors (must equal the image index's length).
        nprobe: clusters scanned per query (more = better recall, slower), at least 1.
        rows_digest: :func:`rows_digest` of the image index it was built from
            (empty when built from an array).

    Example:
    ```python
    ann = ApproximateIndex.build(ImageIndex.open("photos.h5"))
    ann.save("photos.h5.faiss")
    scores, rows = ann.search(query_vectors, k=10)
    ```
    """

    def __init__(self, faiss_index, model_fingerprint: str, size: int, nprobe: int = 16, rows_digest: str = ""):
        self.faiss_index = faiss_index
        self.model_fingerprint = model_fingerprint
        self.size = size
        self.nprobe = nprobe
        self.rows_digest = rows_digest

    @property
    def nprobe(self) -> int:
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        # FAISS would take 0 and fail at the first search, and a negative
        # value with an OverflowError from its bindings.
        if int(value) < 1:
            raise ValueError(f"nprobe must be >= 1, got {value}")
        self._nprobe = int(value)
        self.faiss_index.nprobe = self._nprobe

    @classmethod
    def build(
        cls,
        source: ImageIndex | np.ndarray,
        *,
        model_fingerprint: str | None = None,
        nlist: int | None = None,
        nprobe: int = 16,
        train_size: int = 100_000,
        block_rows: int = 65536,
        seed: int = 0,
    ) -> ApproximateIndex:
        """Cluster a sample of the vectors, then add them all block by block.

        ``nlist`` defaults to about ``4 * sqrt(N)`` clusters.
        """
        faiss = _faiss()
        digest = ""
        if isinstance(source, ImageIndex):
            n, dim = len(source), source.dim
            model_fingerprint = source.model_fingerprint if model_fingerprint is None else model_fingerprint
            digest = rows_digest(source)
            blocks = source.iter_blocks(block_rows)
        else:
            source = np.ascontiguousarray(source, dtype=np.float32)
            n, dim = source.shape
            blocks = ((s, source[s : s + block_rows]) for s in range(0, n, block_rows))
        if n == 0:
            raise DataFormatError("cannot build an approximate index of zero vectors")
        nlist = nlist or max(1, min(n // 39, int(4 * math.sqrt(n))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample_rows = np.sort(rng.choice(n, size=min(n, max(train_size, nlist * 39)), replace=False))
        sample = source.embeddings(sample_rows) if isinstance(source, ImageIndex) else source[sample_rows]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        for _, block in blocks:
            index.add(np.ascontiguousarray(block, dtype=np.float32))
        return cls(index, model_fingerprint or "", n, nprobe, digest)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` of the approximately best ``k`` per query, best first.

        Rows FAISS could not fill (fewer than ``k`` vectors in the probed
        clusters) are ``-1`` with score ``-inf``.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, rows = self.faiss_index.search(queries, min(k, self.size))
        scores = np.where(rows < 0, -np.inf, scores)
        return scores, rows

    def save(self, path: str | os.PathLike) -> None:
        """Write ``path`` (FAISS) and ``path.json`` (fingerprint, size, rows digest), each atomically."""
        faiss = _faiss()
        path = os.fspath(path)
        meta = {
            "model_fingerprint": self.model_fingerprint,
            "size": self.size,
            "nprobe": self.nprobe,
            "rows_digest": self.rows_digest,
        }
        # Metadata goes last: old metadata only matches the image index if the
        # old FAISS file was built from its current rows too, so a crash
        # between the two renames never pairs a FAISS file with other rows.
        with atomic_path(path) as tmp:
            faiss.write_index(self.faiss_index, tmp)
        with atomic_path(path + ".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f)

    @classmethod
    def load(cls, path: str | os.PathLike, *, image_index: ImageIndex) -> ApproximateIndex:
        """Load an index saved by :meth:`save`; refused unless it matches ``image_index``."""
        faiss = _faiss()
        path = os.fspath(path)
        try:
            with open(path + ".json", encoding="utf-8") as f:
                meta = json.load(f)
            faiss_index = faiss.read_index(path)
            if not isinstance(meta, dict):
                raise ValueError(f"{path}.json is not a JSON object")
        except (OSError, ValueError, RuntimeError) as exc:
            raise DataFormatError(
                f"{path}: cannot read approximate index ({exc}); "
                "rebuild it (devise-search --approximate --rebuild-approximate)"
            ) from None
        if meta.get("model_fingerprint") != image_index.model_fingerprint:
            raise IndexMismatchError(
                f"{path}: approximate index was built by another model than {image_index.path}; "
                "rebuild it (devise-search --approximate --rebuild-approximate)"
            )
        if meta.get("size") != len(image_index):
            raise IndexMismatchError(
                f"{path}: approximate index holds {meta.get('size')} vectors but {image_index.path} "
                f"holds {len(image_index)}; rebuild it after re-indexing"
            )
        if meta.get("rows_digest") != rows_digest(image_index):
            raise IndexMismatchError(
                f"{path}: approximate index was built from other rows than {image_index.path} holds now "
                "(images were replaced or changed since); rebuild it after re-indexing"
            )
        return cls(faiss_index, meta["model_fingerprint"], meta["size"], meta.get("nprobe", 16), meta["rows_digest"])


def rows_digest(image_index: ImageIndex) -> str:
    """A hash of what each row of an image index holds: its id and the file stats it was embedded at.

    A FAISS index answers with row numbers, so it is only valid for the rows
    it was built from. Re-indexing can keep the row count (a photo replaced,
    or edited in place) while the rows change; the digest still differs.

    Args:
        image_index: the opened index.

    Returns:
        A sha256 hex digest.

    Example:
    ```python
    rows_digest(ImageIndex.open("photos.h5"))  # '3f5a...'
    ```
    """
    digest = hashlib.sha256()
    # NUL cannot occur in a file name, so the joined ids are unambiguous.
    digest.update("\0".join(image_index.ids).encode("utf-8"))
    digest.update(np.ascontiguousarray(image_index.mtime_ns, np.int64).tobytes())
    digest.update(np.ascontiguousarray(image_index.sizes, np.int64).tobytes())
    return digest.hexdigest()


def recall_against_exact(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k."""
    approx_rows = np.atleast_2d(approx_rows)
    exact_rows = np.atleast_2d(exact_rows)
    hits = [len(set(a[a >= 0].tolist()) & set(e.tolist())) / len(e) for a, e in zip(approx_rows, exact_rows)]
    return float(np.mean(hits))

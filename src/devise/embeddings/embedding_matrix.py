"""Initial embedding-layer weights for a vocabulary, with an explicit policy for unknown words.

:func:`build_embedding_matrix` copies the vector of each vocabulary word
that the word vectors know and gives the others a row by the OOV policy
(``random``, ``zero`` or ``unk``); its :class:`OOVReport` says how many
there were. :func:`~devise.embeddings.word_table.build_word_table` uses it
for the table a model carries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from devise.embeddings.word_vectors import WordVectors

OOV_POLICIES = ("random", "zero", "unk")


@dataclasses.dataclass
class OOVReport:
    """How much of a vocabulary the word vectors do not cover.

    Reserved entries (padding, unknown) are not counted.

    Args:
        vocabulary_size: number of (non-reserved) vocabulary words.
        oov_count: how many of them have no vector.
        oov_rate: ``oov_count / vocabulary_size`` (0 for an empty vocabulary).
        oov_token_rate: share of corpus tokens that are OOV words, when
            counts were given, else ``None``.
        oov_sample: some OOV words, most frequent first when counts were
            given, alphabetical otherwise.
        policy: the OOV policy used for their rows.
    """

    vocabulary_size: int
    oov_count: int
    oov_rate: float
    oov_token_rate: float | None
    oov_sample: list[str]
    policy: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of the report."""
        return dataclasses.asdict(self)


def build_embedding_matrix(
    vocabulary: Sequence[str],
    vectors: WordVectors,
    *,
    oov: str = "random",
    reserved: int = 2,
    seed: int = 0,
    counts: Mapping[str, int] | None = None,
    sample_size: int = 20,
) -> tuple[np.ndarray, OOVReport]:
    """Initial embedding-layer weights for a vocabulary.

    Row ``i`` is the vector of ``vocabulary[i]``. The first ``reserved``
    entries are special and never looked up: row 0 (``<pad>``) is zeros,
    row 1 (``<unk>``) and any further reserved rows are random (zeros under
    ``oov="zero"``).

    Args:
        vocabulary: the model's words, reserved tokens first.
        vectors: the word vectors to copy from.
        oov: what rows words without a vector get: ``"random"`` (normal,
            mean 0, with the standard deviation of the known vectors,
            seeded), ``"zero"``, or ``"unk"`` (all share the ``<unk>`` row;
            needs ``reserved >= 2``).
        reserved: how many leading entries are special tokens.
        seed: seed of the random rows.
        counts: optional word -> corpus frequency, for the OOV token rate
            and to list the most frequent OOV words first.
        sample_size: how many OOV words the report lists.

    Returns:
        ``(matrix, report)``: float32 ``(len(vocabulary), vectors.dim)``
        matrix and the :class:`OOVReport`.

    Raises:
        ValueError: unknown ``oov`` policy, or a bad ``reserved``.
    """
    if oov not in OOV_POLICIES:
        raise ValueError(f"unknown OOV policy {oov!r}; valid policies: {', '.join(map(repr, OOV_POLICIES))}")
    if not 0 <= reserved <= len(vocabulary):
        raise ValueError(f"reserved must be between 0 and {len(vocabulary)}, got {reserved}")
    if oov == "unk" and reserved < 2:
        raise ValueError("oov='unk' needs the <unk> row at index 1, i.e. reserved >= 2")

    dim = vectors.dim
    matrix = np.zeros((len(vocabulary), dim), dtype=np.float32)
    index = vectors.index
    known_rows: list[int] = []
    known_src: list[int] = []
    oov_rows: list[int] = []
    for i in range(reserved, len(vocabulary)):
        src = index.get(vocabulary[i])
        if src is None:
            oov_rows.append(i)
        else:
            known_rows.append(i)
            known_src.append(src)
    if known_rows:
        matrix[known_rows] = vectors.vectors[np.asarray(known_src, dtype=np.int64)]

    # Random rows match the spread of real vectors so they are neither
    # dominated by nor dominating them in dot products.
    if known_rows:
        std = float(matrix[known_rows].std())
    elif len(vectors):
        std = float(vectors.vectors.std())
    else:
        std = 1.0
    rng = np.random.default_rng(seed)
    special = list(range(1, reserved))  # <unk> and friends; row 0 stays padding
    if oov != "zero" and special:
        matrix[special] = rng.normal(0.0, std, size=(len(special), dim))
    if oov_rows:
        if oov == "random":
            matrix[oov_rows] = rng.normal(0.0, std, size=(len(oov_rows), dim))
        elif oov == "unk":
            matrix[oov_rows] = matrix[1]

    oov_words = [vocabulary[i] for i in oov_rows]
    n_words = len(vocabulary) - reserved
    token_rate: float | None = None
    if counts is not None:
        total = sum(counts.get(w, 0) for w in vocabulary[reserved:])
        missed = sum(counts.get(w, 0) for w in oov_words)
        token_rate = missed / total if total else 0.0
        sample = sorted(set(oov_words), key=lambda w: (-counts.get(w, 0), w))
    else:
        sample = sorted(set(oov_words))
    report = OOVReport(
        vocabulary_size=n_words,
        oov_count=len(oov_words),
        oov_rate=len(oov_words) / n_words if n_words else 0.0,
        oov_token_rate=token_rate,
        oov_sample=sample[:sample_size],
        policy=oov,
    )
    return matrix, report

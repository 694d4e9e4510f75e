"""The word table a model carries: every word its vectors know, plus the training words they lack.

DeViSE's point is that pretrained word vectors carry meaning to words never
seen with an image. The table is therefore built from the word-vector
source itself (all of it, or its ``max_words`` most frequent words: GloVe
and word2vec files list words by decreasing frequency), not from the
training captions; training-caption words outside that range are added
with their vectors, and those the source lacks get a row by the OOV policy.
With frozen vectors nothing here depends on test data: the source is
pretrained knowledge, and only training captions add words.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from devise.embeddings.embedding_matrix import build_embedding_matrix
from devise.embeddings.word_vectors import WordVectors

#: Rows before the first word: padding (all zeros) and the unknown word.
RESERVED_ROWS = 2
#: The unknown word's token; a source word spelled so (some GloVe releases have one) is left out.
UNKNOWN_WORD = "<unk>"


@dataclasses.dataclass(eq=False)
class WordTable:
    """Words and the initial rows of a model's word-vector table.

    Attributes:
        words: the words, in row order after the reserved rows.
        matrix: ``float32 (RESERVED_ROWS + len(words), dim)``; row 0 is
            padding (zeros), row 1 the unknown word.
        report: what the table holds (see :func:`build_word_table`).
    """

    words: list[str]
    matrix: np.ndarray
    report: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])


def build_word_table(
    source: WordVectors,
    *,
    caption_counts: Mapping[str, int] | None = None,
    max_words: int | None = None,
    oov: str = "random",
    seed: int = 0,
) -> WordTable:
    """The table of a model: the source's words, then training words outside it.

    Args:
        source: the pretrained word vectors, most frequent first.
        caption_counts: token counts of the training captions (their words
            join the table even when beyond ``max_words`` or missing from
            the source).
        max_words: keep only the source's first ``max_words`` words
            (``None``: all of them).
        oov: the row of a training word the source lacks: ``"random"``,
            ``"zero"`` or ``"unk"`` (see
            :func:`~devise.embeddings.embedding_matrix.build_embedding_matrix`).
        seed: seed of random rows.

    Returns:
        The :class:`WordTable`; its ``report`` gives ``source_words`` (taken
        from the source), ``caption_words_added`` (training words beyond
        ``max_words`` that have a vector), ``caption_words_without_vector``
        and the caption OOV figures.

    Example:
    ```python
    vectors = devise.embeddings.load_offline_glove_50d()
    table = build_word_table(vectors, caption_counts={"crimson": 3}, max_words=100_000)
    ```
    """
    if max_words is not None and max_words < 0:
        raise ValueError(f"max_words must be >= 0 or None, got {max_words}")
    counts = dict(caption_counts or {})
    kept = source.words if max_words is None else source.words[:max_words]
    words = [w for w in dict.fromkeys(kept) if w and w != UNKNOWN_WORD]
    taken = set(words)
    # Caption words in descending count order, ties alphabetical: deterministic.
    extra = sorted((w for w in counts if w not in taken and w and w != UNKNOWN_WORD), key=lambda w: (-counts[w], w))
    with_vector = [w for w in extra if w in source]
    without_vector = [w for w in extra if w not in source]
    words += with_vector + without_vector
    matrix, oov_report = build_embedding_matrix(
        ["<pad>", "<unk>", *words], source, oov=oov, reserved=RESERVED_ROWS, seed=seed, counts=counts or None
    )
    report = {
        "table_words": len(words),
        "source_words": len(taken),  # distinct: a source may repeat a word
        "caption_words_added": len(with_vector),
        "caption_words_without_vector": len(without_vector),
        "caption_oov_token_rate": oov_report.oov_token_rate,
        "caption_oov_sample": oov_report.oov_sample,
        "oov_policy": oov,
        "dim": source.dim,
    }
    return WordTable(words, matrix, report)

"""A table of word vectors: one row per word, lookup by word, nearest neighbours.

Every loader of :mod:`devise.embeddings` (GloVe, word2vec, the offline 50-d
package, the cache) returns its words as a :class:`WordVectors`.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(eq=False)
class WordVectors:
    """A table of word vectors: row ``i`` of ``vectors`` belongs to ``words[i]``.

    Args:
        words: the words, one per row.
        vectors: float32 array of shape ``(len(words), dim)``.
    """

    words: list[str]
    vectors: np.ndarray
    _index: dict[str, int] | None = dataclasses.field(default=None, init=False, repr=False)
    _norms: np.ndarray | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.words = list(self.words)
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D (words, dim), got shape {self.vectors.shape}")
        if self.vectors.shape[0] != len(self.words):
            raise ValueError(f"{len(self.words)} words but {self.vectors.shape[0]} vector rows")

    @property
    def dim(self) -> int:
        """Number of components of each vector."""
        return int(self.vectors.shape[1])

    @property
    def index(self) -> dict[str, int]:
        """Word -> row mapping, built on first use (a duplicate keeps its first row)."""
        if self._index is None:
            index: dict[str, int] = {}
            for row, word in enumerate(self.words):
                index.setdefault(word, row)
            self._index = index
        return self._index

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __len__(self) -> int:
        return len(self.words)

    def get(self, word: str) -> np.ndarray | None:
        """The vector of ``word``, or ``None`` if it is not in the table.

        Args:
            word: the word to look up (exact match; GloVe 6B is lowercase).

        Returns:
            A read-only view of the word's row, or ``None``.
        """
        row = self.index.get(word)
        if row is None:
            return None
        view = self.vectors[row]
        view.flags.writeable = False
        return view

    def nearest(self, word: str | np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` words closest to ``word`` by cosine similarity.

        Args:
            word: a word of the table (itself excluded from the answer), or a
                query vector of length ``dim`` (e.g. a projected image).
            k: how many neighbours to return.

        Returns:
            ``(word, cosine)`` pairs, most similar first.

        Raises:
            KeyError: ``word`` is a string that is not in the table.
        """
        exclude = -1
        if isinstance(word, str):
            if word not in self.index:
                raise KeyError(f"{word!r} is not in the word vectors")
            exclude = self.index[word]
            query = self.vectors[exclude]
        else:
            query = np.asarray(word, dtype=np.float32).reshape(-1)
            if query.shape[0] != self.dim:
                raise ValueError(f"query has {query.shape[0]} values, expected {self.dim}")
        if k <= 0 or len(self) == 0:
            return []
        if self._norms is None:
            self._norms = np.linalg.norm(self.vectors, axis=1)
        qnorm = float(np.linalg.norm(query))
        # Zero vectors (e.g. padding rows) get similarity 0 instead of NaN.
        denom = np.maximum(self._norms * qnorm, np.finfo(np.float32).tiny)
        sims = (self.vectors @ query) / denom
        if exclude >= 0:
            sims[exclude] = -np.inf
        k = min(k, len(self) - (1 if exclude >= 0 else 0))
        if k <= 0:
            return []
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(self.words[i], float(sims[i])) for i in top]

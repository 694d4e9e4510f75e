"""Label vectors: a class name becomes a point in the word-vector space.

DeViSE and ConSE never see an unseen class's images; all they know about it
is where its name lies among the word vectors. This module turns class
names (or the words a label file gives for them) into those points.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

from devise.embeddings.glove import WordVectors
from devise.errors import DeviseError

# Separators between the words of a class name ("polar_bear", "sea-lion").
_WORD_SEPARATORS = re.compile(r"[\s_\-]+")


class MissingLabelVectorsError(DeviseError):
    """Some class names have no word vector at all.

    Args:
        names: the class names without a vector, in class order.
    """

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)
        shown = ", ".join(repr(name) for name in self.names[:20])
        more = f" and {len(self.names) - 20} more" if len(self.names) > 20 else ""
        super().__init__(
            f"{len(self.names)} class name(s) have no word vector: {shown}{more}; give their words in a "
            "label file ('folder_name<TAB>label words' lines, e.g. 'n02084071<TAB>dog'), or leave those "
            "classes out (allow missing label vectors)"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class LabelVectors:
    """The word-vector point of each class, as :func:`label_vectors` builds them.

    Args:
        names: the class names, one per row.
        vectors: float32 array ``(len(names), dim)``; every row has unit L2
            norm, except the all-zero rows of classes in ``missing``.
        words: per class, the words whose vectors were averaged (one entry
            when the whole name had a vector; empty for a missing class).
        skipped_words: per class, the words of its name (or label words)
            that had no vector and were left out of the mean.
        missing: the names with no vector at all, in class order.
    """

    names: tuple[str, ...]
    vectors: np.ndarray
    words: tuple[tuple[str, ...], ...]
    skipped_words: tuple[tuple[str, ...], ...]
    missing: tuple[str, ...]

    @property
    def dim(self) -> int:
        """Number of components of each vector."""
        return int(self.vectors.shape[1])

    def raise_if_missing(self) -> None:
        """Stop when some class has no vector.

        Raises:
            MissingLabelVectorsError: naming every class without a vector and
                saying how to fix it.
        """
        if self.missing:
            raise MissingLabelVectorsError(self.missing)

    def select(self, names: Sequence[str]) -> LabelVectors:
        """The label vectors of ``names`` only, in that order.

        Args:
            names: class names, each one of :attr:`names`.

        Returns:
            A new :class:`LabelVectors` (e.g. without the missing classes:
            ``lv.select([n for n in lv.names if n not in lv.missing])``).

        Raises:
            KeyError: a name is not one of :attr:`names`.
        """
        row_of = {name: row for row, name in enumerate(self.names)}
        unknown = [name for name in names if name not in row_of]
        if unknown:
            raise KeyError(f"no label vector for {unknown[0]!r}; known classes: {', '.join(self.names)}")
        rows = [row_of[name] for name in names]
        wanted = set(names)
        return LabelVectors(
            names=tuple(names),
            vectors=self.vectors[rows],
            words=tuple(self.words[row] for row in rows),
            skipped_words=tuple(self.skipped_words[row] for row in rows),
            missing=tuple(name for name in self.missing if name in wanted),
        )


def label_vectors(
    names: Sequence[str],
    word_vectors: WordVectors,
    *,
    label_words: Mapping[str, str | Sequence[str]] | None = None,
) -> LabelVectors:
    """Turn class names into unit-norm label vectors.

    Each class's text is its entry in ``label_words`` if there is one
    (the label file's words replace the name), else the name itself. The
    text is looked up whole, first as written, then lowercased (GloVe 6B is
    all lowercase); if neither is in ``word_vectors``, it is split on
    whitespace, ``_`` and ``-`` and the vectors of its words (each looked up
    as written, then lowercased) are averaged, leaving out words without a
    vector. The vector is then scaled to unit L2 norm. A class none of whose
    words has a vector (or whose vector is all zeros) gets an all-zero row
    and is listed in ``missing``; this function does not stop on it: call
    :meth:`LabelVectors.raise_if_missing` to stop, or
    :meth:`LabelVectors.select` to leave those classes out.

    Args:
        names: the class names (e.g. folder names), one per class.
        word_vectors: the word vectors, e.g. from
            :func:`~devise.embeddings.load_offline_glove_50d`.
        label_words: optional ``{class name: words}``, the words as one
            string (``"polar bear"``) or a list of words, e.g. from
            :func:`~devise.datasets.read_label_file`.

    Returns:
        The :class:`LabelVectors`: ``vectors`` is ``(len(names), dim)``
        float32 with unit-norm rows (zero rows for missing classes).

    Raises:
        ValueError: ``names`` has a duplicate.

    Example:
    ```python
    vectors = devise.embeddings.load_offline_glove_50d()
    labels = devise.zeroshot.label_vectors(["dog", "polar_bear", "n01"], vectors, label_words={"n01": "cat"})
    labels.words          # (("dog",), ("polar", "bear"), ("cat",))
    labels.raise_if_missing()
    ```

    Reference:
        Frome et al., "DeViSE: A Deep Visual-Semantic Embedding Model",
        NIPS 2013 (unit-norm label vectors t).
    """
    names = list(names)
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise ValueError(f"class names must be unique, {duplicate!r} appears twice")
    label_words = dict(label_words or {})
    rows = np.zeros((len(names), word_vectors.dim), dtype=np.float32)
    used: list[tuple[str, ...]] = []
    skipped: list[tuple[str, ...]] = []
    missing: list[str] = []
    for row, name in enumerate(names):
        text = label_words.get(name, name)
        words, unknown, vector = _vector_of(text, word_vectors)
        norm = float(np.linalg.norm(vector)) if vector is not None else 0.0
        if vector is None or not np.isfinite(norm) or norm <= 1e-12:
            missing.append(name)
            used.append(())
            skipped.append(tuple(unknown) if vector is None else tuple(words))
            continue
        rows[row] = vector / norm
        used.append(tuple(words))
        skipped.append(tuple(unknown))
    return LabelVectors(
        names=tuple(names),
        vectors=rows,
        words=tuple(used),
        skipped_words=tuple(skipped),
        missing=tuple(missing),
    )


def random_label_vectors(num_classes: int, dim: int, *, seed: int = 0) -> np.ndarray:
    """Random unit vectors, one per class: the control DeViSE is compared with.

    Trained against these instead of word vectors, DeViSE can still learn
    the training classes, but an unseen class's vector says nothing about
    its images, so zero-shot accuracy falls to chance: what DeViSE gains
    over this control is what the word vectors carry.

    Args:
        num_classes: number of rows.
        dim: number of components (use the word vectors' dimension).
        seed: seed of the generator.

    Returns:
        float32 array ``(num_classes, dim)`` with unit-norm rows, drawn
        uniformly from the sphere.
    """
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((num_classes, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def _vector_of(text: str | Sequence[str], word_vectors: WordVectors):
    """``(words used, words without a vector, mean vector or None)``.

    Each item (the whole text, or each entry of a list) is looked up whole
    first; only an item without a vector is split into its words.
    """
    items = [text] if isinstance(text, str) else list(text)
    used: list[str] = []
    unknown: list[str] = []
    found: list[np.ndarray] = []

    def look_up(word: str) -> bool:
        for candidate in dict.fromkeys((word, word.lower())):
            vector = word_vectors.get(candidate)
            if vector is not None:
                used.append(candidate)
                found.append(np.asarray(vector, dtype=np.float64))
                return True
        return False

    for item in items:
        item = item.strip()
        if not item or look_up(item):
            continue
        for part in _WORD_SEPARATORS.split(item):
            if part and not look_up(part):
                unknown.append(part)
    if not found:
        return used, unknown, None
    return used, unknown, np.mean(found, axis=0)

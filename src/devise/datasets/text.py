"""Caption tokenisation and the word vocabulary."""

from __future__ import annotations

import collections
import json
import os
import re
import unicodedata
from collections.abc import Container, Iterable, Sequence

import numpy as np

from devise.errors import DataFormatError

PAD = "<pad>"
UNK = "<unk>"

# Letters/digits runs, keeping inner apostrophes ("don't"); "_" is not a word char here.
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
# The same runs joined by inner hyphens too ("t-shirt", "dog's"): a compound
# is kept whole when the word vectors know it, else split into its parts.
_COMPOUND = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")


def normalize_text(text: str, *, lowercase: bool = True) -> str:
    """NFKC-normalise ``text``, straighten curly apostrophes and (optionally) lowercase it."""
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'")
    return text.lower() if lowercase else text


def tokenize(text: str, known: Container[str] | None = None, *, lowercase: bool = True) -> list[str]:
    """Split a caption into word tokens, following the word vectors' conventions.

    Unicode is NFKC-normalised (so full-width letters and ligatures become
    plain ones), curly apostrophes become straight, text is lowercased
    (GloVe 6B's convention; ``lowercase=False`` for cased vectors such as
    word2vec GoogleNews), and punctuation is dropped.

    Without ``known``, hyphenated compounds split into their parts and inner
    apostrophes stay (``"don't"``). With ``known`` (the words that have
    vectors), a compound such as ``"t-shirt"`` or ``"dog's"`` is kept whole
    when known, otherwise it falls back to its parts, each kept as the
    vectors spell it: ``"dog's"`` becomes ``"dog"``, ``"'s"`` and ``"don't"``
    becomes ``"do"``, ``"n't"`` (GloVe's Penn-Treebank split) when those
    pieces are known.

    Args:
        text: the caption or query.
        known: the words that have vectors, or ``None``.
        lowercase: lowercase the text first.

    Returns:
        The tokens, in order.
    """
    text = normalize_text(text, lowercase=lowercase)
    if known is None:
        return _TOKEN.findall(text)
    tokens: list[str] = []
    for token in _COMPOUND.findall(text):
        if token in known:
            tokens.append(token)
        else:
            for part in token.split("-"):
                tokens.extend(_split_apostrophe(part, known))
    return tokens


def _split_apostrophe(token: str, known: Container[str]) -> list[str]:
    if "'" not in token or token in known:
        return [token]
    if token.endswith("n't") and token[:-3] in known and "n't" in known:
        return [token[:-3], "n't"]  # don't -> do n't
    head, _, tail = token.partition("'")
    if "'" not in tail and "'" + tail in known:
        return [head, "'" + tail]  # dog's -> dog 's
    return [part for part in token.split("'") if part]


class Vocabulary:
    """Word <-> id mapping built from training captions only.

    Id 0 is padding (``<pad>``) and id 1 the unknown word (``<unk>``); the
    others follow in order of decreasing count (ties alphabetical), so the
    vocabulary is deterministic.

    Args:
        words: every word, ids in list order; must start with ``<pad>``,
            ``<unk>``.
        counts: training counts of the words (optional, kept for reports).
    """

    def __init__(self, words: Sequence[str], counts: dict[str, int] | None = None):
        words = list(words)
        if words[:2] != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r}, {UNK!r}; got {words[:2]}")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary words must be unique")
        self.words = words
        self.counts = dict(counts or {})
        self._ids = {w: i for i, w in enumerate(words)}

    @classmethod
    def build(
        cls,
        captions: Iterable[str],
        *,
        min_count: int = 1,
        max_size: int | None = None,
    ) -> "Vocabulary":
        """Count tokens in ``captions`` and keep those seen ``min_count`` times."""
        counts = collections.Counter(tok for caption in captions for tok in tokenize(caption))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            kept = kept[: max(0, max_size - 2)]
        return cls([PAD, UNK, *kept], dict(counts))

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self._ids

    def id(self, word: str) -> int:
        return self._ids.get(word, 1)

    def encode(self, texts: Sequence[str], max_length: int) -> np.ndarray:
        """Token ids ``(len(texts), max_length)``, ``int32``, zero-padded at the end.

        Longer captions are truncated; a caption with no token becomes a
        single ``<unk>`` so it still has a (weak) embedding.
        """
        out = np.zeros((len(texts), max_length), np.int32)
        for row, text in enumerate(texts):
            ids = [self.id(tok) for tok in tokenize(text)][:max_length] or [1]
            out[row, : len(ids)] = ids
        return out

    def oov_stats(self, captions: Iterable[str]) -> dict:
        """Token and type out-of-vocabulary rates of ``captions``."""
        tokens = [tok for caption in captions for tok in tokenize(caption)]
        unknown = collections.Counter(t for t in tokens if t not in self._ids)
        return {
            "tokens": len(tokens),
            "oov_tokens": sum(unknown.values()),
            "oov_token_rate": sum(unknown.values()) / len(tokens) if tokens else 0.0,
            "oov_types": len(unknown),
            "most_common_oov": unknown.most_common(20),
        }

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"words": self.words, "counts": self.counts}, f, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            return cls(data["words"], data.get("counts"))
        except FileNotFoundError:
            raise DataFormatError(f"{path}: vocabulary file not found") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise DataFormatError(f"{path}: not a devise vocabulary file ({exc})") from None

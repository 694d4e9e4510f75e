"""Caption tokenisation and the word vocabulary."""

from __future__ import annotations

import collections
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

from devise.errors import DataFormatError

PAD = "<pad>"
UNK = "<unk>"

# Letters/digits runs, keeping inner apostrophes ("don't"); "_" is not a word char here.
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def tokenize(text: str) -> list[str]:
    """Split a caption into lowercase word tokens.

    Unicode is NFKC-normalised (so full-width letters and ligatures become
    plain ones), curly apostrophes become straight, text is lowercased, and
    punctuation is dropped.
    """
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").lower()
    return _TOKEN.findall(text)


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

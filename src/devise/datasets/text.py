"""Caption tokenisation, following the word vectors' conventions."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Container

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

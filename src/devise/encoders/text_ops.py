"""Caption tokenisation as TensorFlow string ops, for a model served without Python.

:class:`CaptionTokenizer` gives, for a batch of raw strings, the tokens that
:func:`devise.datasets.text.tokenize` gives with the model's word table as
``known``, computed by ``tf.strings`` and ``tf.lookup`` ops only, so a
SavedModel that embeds raw text runs in TensorFlow Serving or in a Python
without devise. Keras has no string ops, hence raw ``tf`` here.

The Python tokenizer's steps and their graph form:

1. NFKC normalisation. Core TensorFlow has no Unicode normaliser, so NFKC
   is rebuilt from Python's own ``unicodedata`` tables, written into the
   graph as lookup tables: compatibility decomposition (the 16,967
   characters NFKD changes), canonical ordering of combining marks (their
   classes), and canonical composition (the 941 primary composites and
   the Hangul syllables), a pass at a time until nothing composes, each
   starter with its first unblocked mark as NFC does.
2. The curly apostrophe U+2019 becomes ``'``; then lowercasing: Python's
   one-character mappings from a table (so the serving TensorFlow's ICU
   version does not matter), then ``tf.strings.lower`` (ICU) for the
   rest: ``"İ"`` to two characters and the final sigma, as ``str.lower``.
3. ``[^\\W_]+(?:['-][^\\W_]+)*`` found in the text: Python's ``[^\\W_]``
   (letters and digits) is RE2's ``[\\pL\\pN]``; every other character
   becomes a space, and an apostrophe or hyphen that is not between two
   word characters does too; the rest splits on spaces.
4. The known-compound fallback: a compound the table lacks splits at its
   hyphens, and each part is kept, split as ``do n't`` or ``dog 's`` when
   those pieces are known, or split at its apostrophes.

Example:
```python
tokenizer = CaptionTokenizer(["t-shirt", "dog", "'s"], max_length=8)
tokenizer.tokenize(tf.constant(["A T-shirt", "the dog's"]))   # [[a, t-shirt], [the, dog, 's]]
tokenizer.token_matrix(tf.constant(["A T-shirt"]))            # (1, 8) strings, "" padded
```
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence

import tensorflow as tf

from devise.embeddings.word_table import UNKNOWN_WORD

#: What :class:`CaptionTokenizer` does not reproduce, for documentation and tests.
NOT_MATCHED = (
    "NUL becomes a space before lowercasing (ICU's lowercasing stops at a NUL): a separator either way",
    "invalid UTF-8 bytes, which Python strings never hold, become U+FFFD (a separator)",
    (
        "characters unassigned in the exporting Python's Unicode version: RE2 may class newer ones as "
        "letters or digits where Python's re does not"
    ),
)

# Python's [^\W_]: letters and digits (str.isalnum). RE2's \w is ASCII only.
_WORD = r"\pL\pN"
_HANGUL_S, _HANGUL_L, _HANGUL_V, _HANGUL_T = 0xAC00, 0x1100, 0x1161, 0x11A7
_HANGUL_L_COUNT, _HANGUL_V_COUNT, _HANGUL_T_COUNT = 19, 21, 28


@functools.cache
def nfkd_character_table() -> tuple[list[str], list[str]]:
    """``(characters, their NFKD forms)`` for every character NFKD changes (this Python's Unicode version)."""
    keys, values = [], []
    for char in _all_characters():
        decomposed = unicodedata.normalize("NFKD", char)
        if decomposed != char:
            keys.append(char)
            values.append(decomposed)
    return keys, values


@functools.cache
def combining_class_table() -> tuple[list[str], list[int]]:
    """``(characters, canonical combining class)`` for every character whose class is not 0."""
    pairs = [(char, unicodedata.combining(char)) for char in _all_characters()]
    return [char for char, ccc in pairs if ccc], [ccc for _char, ccc in pairs if ccc]


@functools.cache
def composition_table() -> tuple[list[str], list[str]]:
    """``(starter + character, primary composite)``: every canonical composition NFC makes."""
    keys, values = [], []
    for char in _all_characters():
        decomposition = unicodedata.decomposition(char)
        if not decomposition or decomposition.startswith("<"):
            continue
        parts = "".join(chr(int(part, 16)) for part in decomposition.split())
        # Composition exclusions and singletons never compose back.
        if len(parts) == 2 and unicodedata.normalize("NFC", parts) == char:
            keys.append(parts)
            values.append(char)
    # Hangul syllables are composed algorithmically (unicodedata lists no decomposition).
    for lead in range(_HANGUL_L_COUNT):
        for vowel in range(_HANGUL_V_COUNT):
            syllable = _HANGUL_S + (lead * _HANGUL_V_COUNT + vowel) * _HANGUL_T_COUNT
            keys.append(chr(_HANGUL_L + lead) + chr(_HANGUL_V + vowel))
            values.append(chr(syllable))
            for trail in range(1, _HANGUL_T_COUNT):
                keys.append(chr(syllable) + chr(_HANGUL_T + trail))
                values.append(chr(syllable + trail))
    return keys, values


@functools.cache
def lowercase_character_table() -> tuple[list[str], list[str]]:
    """``(character, str.lower of it)`` where that is one other character, except the context-dependent sigma.

    Applied before ``tf.strings.lower``, it makes the simple mappings
    Python's, whatever Unicode version the serving TensorFlow's ICU has;
    ICU then does the rest (``"İ"`` to two characters, final sigma).
    """
    keys, values = [], []
    for char in _all_characters():
        lower = char.lower()
        if lower != char and len(lower) == 1 and char != "\u03a3":
            keys.append(char)
            values.append(lower)
    return keys, values


def _all_characters():
    return (chr(code) for code in range(0x110000) if not 0xD800 <= code <= 0xDFFF)


def _string_table(keys: Sequence[str], values: Sequence[str]) -> tf.lookup.StaticHashTable:
    initializer = tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(keys), tf.string), tf.constant(list(values), tf.string)
    )
    return tf.lookup.StaticHashTable(initializer, default_value="")


def _previous(values: tf.Tensor, fill) -> tf.Tensor:
    """``values`` shifted one place right, ``fill`` first."""
    return tf.concat([tf.fill([1], tf.constant(fill, values.dtype)), values], 0)[: tf.size(values)]


class CaptionTokenizer(tf.Module):
    """Raw strings -> the tokens :func:`devise.datasets.text.tokenize` gives, in TensorFlow ops.

    Args:
        vocabulary: the words the model knows (its word table), for the
            known-compound fallback.
        lowercase: lowercase the text first (the text encoder's setting).
        max_length: tokens kept per caption by :meth:`token_matrix`.
        name: the module's name.
    """

    def __init__(self, vocabulary: Sequence[str], *, lowercase: bool = True, max_length: int = 32, name=None):
        super().__init__(name=name)
        words = [str(w) for w in vocabulary]
        self.lowercase = lowercase
        self.max_length = max_length
        self._known = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(words, tf.string), tf.ones([len(words)], tf.int32)),
            default_value=0,
        )
        self._nfkd = _string_table(*nfkd_character_table())
        ccc_keys, ccc_values = combining_class_table()
        self._ccc = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(ccc_keys, tf.string), tf.constant(ccc_values, tf.int32)),
            default_value=0,
        )
        self._composition = _string_table(*composition_table())
        self._lower = _string_table(*lowercase_character_table()) if lowercase else None

    def is_known(self, tokens: tf.Tensor) -> tf.Tensor:
        """Whether each token is a word of the vocabulary."""
        return self._known.lookup(tokens) > 0

    def normalize(self, texts: tf.Tensor) -> tf.Tensor:
        """NFKC, straight apostrophes and (optionally) lowercase, as :func:`devise.datasets.text.normalize_text`."""
        texts = tf.convert_to_tensor(texts, tf.string)
        # NFKC = compatibility decomposition, canonical order, canonical composition.
        chars = tf.strings.unicode_split(texts, "UTF-8", errors="replace")
        mapped = self._nfkd.lookup(chars.flat_values)
        chars = chars.with_flat_values(tf.where(tf.equal(mapped, ""), chars.flat_values, mapped))
        chars = tf.strings.unicode_split(tf.strings.reduce_join(chars, axis=-1), "UTF-8", errors="replace")
        values, rowids = self._canonical_order(chars.flat_values, chars.value_rowids())
        values, rowids = self._compose(values, rowids)
        if self.lowercase:
            lowered = self._lower.lookup(values)
            values = tf.where(tf.equal(lowered, ""), values, lowered)
        texts = tf.strings.reduce_join(tf.RaggedTensor.from_value_rowids(values, rowids, chars.nrows()), axis=-1)
        texts = tf.strings.regex_replace(texts, "\u2019", "'")
        if self.lowercase:
            # ICU's lower() stops at a NUL; NUL is a separator anyway.
            texts = tf.strings.lower(tf.strings.regex_replace(texts, "\\x00", " "), encoding="utf-8")
        return texts

    def _groups(self, values: tf.Tensor, rowids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Each character's combining class, whether it starts a group, and its group.

        A group is a character of class 0 (or a row's first character) and
        the combining marks after it.
        """
        ccc = self._ccc.lookup(values)
        starts = tf.equal(ccc, 0) | tf.not_equal(rowids, _previous(rowids, -1))
        return ccc, starts, tf.cumsum(tf.cast(starts, tf.int64)) - 1

    def _canonical_order(self, values: tf.Tensor, rowids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Marks after each starter sorted by combining class, stably (Unicode's canonical ordering)."""
        ccc, _starts, group = self._groups(values, rowids)
        order = tf.argsort(group * 256 + tf.cast(ccc, tf.int64), stable=True)
        return tf.gather(values, order), tf.gather(rowids, order)

    def _compose(self, values: tf.Tensor, rowids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Unicode's canonical composition, a pass at a time until nothing composes.

        In a pass, a starter composes with the first character of its group
        that is not blocked (each mark before it has a lower class), and a
        starter alone in its group with the starter right after it. A
        starter's compositions come before the next starter's own (NFC works
        left to right); no character both begins and ends a pair, so the
        pairs of one pass never overlap.
        """

        def step(values, rowids, _changed):
            n = tf.size(values, out_type=tf.int64)
            position = tf.range(n)
            ccc, starts, group = self._groups(values, rowids)
            first = tf.math.unsorted_segment_min(position, group, n)
            starter = tf.gather(first, group)
            real_starter = tf.equal(tf.gather(ccc, starter), 0)
            # A mark with its group's starter.
            mark = tf.logical_not(starts) & real_starter & (tf.equal(position - 1, starter) | (_previous(ccc, 0) < ccc))
            mark_composite = self._composition.lookup(tf.gather(values, starter) + values)
            mark &= tf.not_equal(mark_composite, "")
            # A starter with the single-character group before it.
            previous_alone = _previous(starts, False) & tf.equal(_previous(ccc, 1), 0)
            same_row = tf.equal(rowids, _previous(rowids, -1))
            pair_composite = self._composition.lookup(_previous(values, "") + values)
            pair = starts & tf.equal(ccc, 0) & same_row & previous_alone & tf.not_equal(pair_composite, "")
            # A starter consumed by the one before composes with its marks in the next pass.
            mark &= tf.logical_not(tf.gather(pair, starter))
            chosen = tf.math.unsorted_segment_min(tf.where(mark, position, n), group, n)
            mark &= tf.equal(position, tf.gather(chosen, group))
            # Write each composite where its starter is and drop what it absorbed.
            into_starter = tf.scatter_nd(
                tf.expand_dims(tf.boolean_mask(starter, mark), 1), tf.boolean_mask(mark_composite, mark), [n]
            )
            into_previous = tf.scatter_nd(
                tf.expand_dims(tf.boolean_mask(position - 1, pair), 1), tf.boolean_mask(pair_composite, pair), [n]
            )
            values = tf.where(tf.not_equal(into_starter, ""), into_starter, values)
            values = tf.where(tf.not_equal(into_previous, ""), into_previous, values)
            keep = tf.logical_not(mark | pair)
            return tf.boolean_mask(values, keep), tf.boolean_mask(rowids, keep), tf.reduce_any(mark | pair)

        values, rowids, _ = tf.while_loop(
            lambda values, rowids, changed: changed,
            step,
            (values, rowids, tf.constant(True)),
            shape_invariants=(tf.TensorShape([None]), tf.TensorShape([None]), tf.TensorShape([])),
        )
        return values, rowids

    def tokenize(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """Tokens ``(B, None)`` of a batch of strings ``(B,)``."""
        texts = self.normalize(texts)
        texts = tf.strings.regex_replace(texts, f"[^{_WORD}'-]+", " ")
        # An apostrophe or hyphen joins two word characters or separates.
        texts = tf.strings.regex_replace(texts, "['-]{2,}", " ")
        texts = tf.strings.regex_replace(texts, "(^| )['-]", " ")
        texts = tf.strings.regex_replace(texts, "['-]( |$)", " ")
        compounds = tf.strings.split(texts)
        flat = compounds.flat_values

        parts = tf.strings.split(flat, "-")
        part = parts.flat_values
        length = tf.strings.length(part)
        stem = tf.strings.substr(part, tf.zeros_like(length), tf.maximum(length - 3, 0))
        head = tf.strings.regex_replace(part, "'.*", "")
        tail = tf.strings.regex_replace(part, "^[^']*'", "")
        negation = tf.strings.regex_full_match(part, ".*n't") & self.is_known(stem) & self.is_known(tf.constant("n't"))
        clitic = tf.logical_not(tf.strings.regex_full_match(tail, ".*'.*")) & self.is_known("'" + tail)
        kept = tf.logical_not(tf.strings.regex_full_match(part, ".*'.*")) | self.is_known(part)
        pieces = tf.where(
            kept,
            part,
            tf.where(
                negation,
                stem + " n't",
                tf.where(clitic, head + " '" + tail, tf.strings.regex_replace(part, "'", " ")),
            ),
        )
        split = tf.strings.reduce_join(parts.with_flat_values(pieces), axis=-1, separator=" ")
        rewritten = tf.where(self.is_known(flat), flat, split)
        return tf.strings.split(tf.strings.reduce_join(compounds.with_flat_values(rewritten), axis=-1, separator=" "))

    def token_matrix(self, texts: tf.Tensor) -> tf.Tensor:
        """``(B, max_length)`` tokens padded with ``""``, as :meth:`devise.encoders.TextEncoder.encode_texts`.

        A text with no token becomes the unknown token.
        """
        tokens = self.tokenize(texts)
        matrix = tokens.to_tensor(default_value="", shape=[None, self.max_length])
        empty = tf.equal(tokens.row_lengths(), 0)
        first = tf.equal(tf.range(self.max_length), 0)
        return tf.where(empty[:, None] & first[None, :], UNKNOWN_WORD, matrix)

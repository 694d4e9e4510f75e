"""The TensorFlow-ops tokenizer against the Python one it reproduces (:func:`devise.datasets.text.tokenize`)."""

from __future__ import annotations

import json
import pathlib
import random
import unicodedata

import pytest
import tensorflow as tf

from devise.datasets.text import normalize_text, tokenize
from devise.encoders.text_ops import (
    CaptionTokenizer,
    combining_class_table,
    composition_table,
)

EMOJI_CAPTIONS = pathlib.Path("/work/data/emoji/captions.jsonl")
KNOWN = {"t-shirt", "dog", "'s", "do", "n't", "o'clock", "Paris"}

EDGE_CASES = [
    "",
    "   ",
    "  ...!?  ",
    "A Red Circle",
    "a T-shirt, the dog's bone; don't!",
    "x-ray t-shirts",
    "e-mail's",
    "at 5 o'clock",
    "don\u2019t stop",  # curly apostrophe
    "'quoted' words",
    '"double" (brackets) [square] {curly} <angle>',
    "a--b a-'b 'a' -x- x' -'- ''",
    "rock'n'roll y'all'd've ma'am",
    "snake_case and CamelCase",
    "tab\tnew\nline\rcarriage\u00a0nbsp\u2003em-space",
    "3 dogs and \uff14\uff12 cats, 1,000.5 m\u00b2",  # full-width digits, superscript
    "\uff21\uff22\uff23 \uff44\uff45\uff46",  # full-width letters
    "\ufb01sh \ufb02ower \u2126hm",  # ligatures, ohm sign
    "MiXeD CaSe \u00c9COLE na\u00efve cafe\u0301",  # composed and decomposed accents
    "\u039f\u0394\u039f\u03a3 \u03a3\u039f\u03a6\u0399\u0391",  # final sigma
    "\u0130stanbul \u0131\u015f\u0131k stra\u00dfe",  # dotted I, dotless i, sharp s
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \uff76\uff9e\uff7c\uff9e",  # CJK, half-width katakana
    "\u1112\u1161\u11ab\u1100\u1173\u11af \u3131\u314f",  # Hangul jamo
    "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd \u0928\u092e\u0938\u094d\u0924\u0947",  # RTL, Devanagari
    "ti\u1ebfng vi\u1ec7t e\u0302\u0323 e\u0323\u0302",  # Vietnamese, marks in both orders
    "\U0001f642 smile \U0001f44d\U0001f3fd \u2764\ufe0f family: \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "a\x00b c\x01d",  # control characters
    "word " * 400,  # very long
    "x" * 5000,
]


@pytest.fixture(scope="module")
def glove_words() -> list[str]:
    from devise.embeddings import load_offline_glove_50d

    return list(load_offline_glove_50d().words)


@pytest.fixture(scope="module")
def glove_tokenizer(glove_words) -> CaptionTokenizer:
    return CaptionTokenizer(glove_words, max_length=24)


_TRACED: dict[CaptionTokenizer, tf.types.experimental.GenericFunction] = {}


def tf_tokens(tokenizer: CaptionTokenizer, texts: list[str]) -> list[list[str]]:
    # Traced once per tokenizer: eager while-loops are slow, and the SavedModel runs the graph anyway.
    if tokenizer not in _TRACED:
        _TRACED[tokenizer] = tf.function(tokenizer.tokenize, input_signature=[tf.TensorSpec([None], tf.string)])
    rows = _TRACED[tokenizer](tf.constant(texts, tf.string)).to_list()
    return [[t.decode("utf-8") for t in row] for row in rows]


@pytest.fixture(scope="module")
def shapes_captions(tmp_path_factory) -> list[str]:
    """The captions of a small shapes demo dataset (20 categories x 4 images x 5 captions)."""
    from devise.datasets.shapes import generate_shapes

    root = generate_shapes(tmp_path_factory.mktemp("shapes") / "shapes", images_per_category=4, image_size=32)
    return [line for path in sorted(root.rglob("*.txt")) for line in path.read_text("utf-8").splitlines() if line]


def corpus(words: list[str], shapes_captions: list[str]) -> list[str]:
    """The edge cases, shapes and emoji captions, and random phrases of the table's compounds and common words."""
    texts = list(EDGE_CASES) + shapes_captions
    rng = random.Random(0)
    if EMOJI_CAPTIONS.is_file():
        with EMOJI_CAPTIONS.open(encoding="utf-8") as f:
            texts += [json.loads(line)["caption"] for line in f if line.strip()]
    compounds = [w for w in words if "-" in w or "'" in w]
    common = words[:5000]
    for _ in range(3000):
        phrase = " ".join(rng.choice(rng.choice([compounds, common])) for _ in range(rng.randint(1, 8)))
        texts.append(phrase.upper() if rng.random() < 0.3 else phrase)
    return texts


@pytest.fixture(scope="module")
def small_tokenizer() -> CaptionTokenizer:
    return CaptionTokenizer(sorted(KNOWN))


@pytest.mark.parametrize("text", EDGE_CASES)
def test_known_compounds_match_the_python_tokenizer(small_tokenizer, text):
    assert tf_tokens(small_tokenizer, [text]) == [tokenize(text, KNOWN)]


def test_lowercase_false_keeps_case():
    tokenizer = CaptionTokenizer(sorted(KNOWN), lowercase=False)
    texts = ["Paris T-shirt", "Paris t-shirt", "\uff21\uff22\uff23 don't"]
    assert tf_tokens(tokenizer, texts) == [tokenize(t, KNOWN, lowercase=False) for t in texts]


@pytest.mark.slow
def test_realistic_captions_give_the_same_tokens_with_the_glove_table(glove_words, glove_tokenizer, shapes_captions):
    """Shapes and emoji captions, edge cases and 3,000 phrases of GloVe's own hyphen and apostrophe words."""
    assert len(shapes_captions) == 400
    texts = corpus(glove_words, shapes_captions)
    known = frozenset(glove_words)
    expected = [tokenize(text, known) for text in texts]
    got = tf_tokens(glove_tokenizer, texts)
    wrong = [(text, g, e) for text, g, e in zip(texts, got, expected) if g != e]
    assert not wrong, f"{len(wrong)} of {len(texts)} differ, e.g. {wrong[:3]}"
    assert sum("-" in t for row in expected for t in row) > 100  # known compounds were exercised
    assert sum(t in ("'s", "n't") for row in expected for t in row) > 10


def test_token_matrix_pads_truncates_and_marks_empty_texts_as_encode_texts_does():
    from devise.encoders.text_encoder import TextEncoder

    words = ["a", "red", "circle", "t-shirt", "'s", "dog"]
    encoder = TextEncoder(words, 4, 4, max_length=3)
    tokenizer = CaptionTokenizer(words, max_length=3)
    texts = ["A red circle, a red circle", "", "!!", "the dog's t-shirt"]
    expected, _ = encoder.encode_texts(texts)
    got = tokenizer.token_matrix(tf.constant(texts)).numpy().astype(str)
    assert got.tolist() == expected.astype(str).tolist()


@pytest.mark.slow
def test_every_character_alone_normalises_and_tokenises_as_in_python():
    """NFKC + lowercase and the tokens of each of the 1,112,064 code points alone.

    Allowed differences (NOT_MATCHED): NUL normalises to a space (both are
    separators, so the tokens agree), and characters unassigned in this
    Python's Unicode version may be letters to RE2's newer tables.
    """
    tokenizer = CaptionTokenizer(["x"])
    normalize = tf.function(tokenizer.normalize, input_signature=[tf.TensorSpec([None], tf.string)])
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    normal, tokens = [], []
    for start in range(0, len(chars), 200_000):
        batch = chars[start : start + 200_000]
        normal += [s.decode("utf-8") for s in normalize(tf.constant(batch)).numpy()]
        tokens += tf_tokens(tokenizer, batch)
    wrong = [(hex(ord(c)), g) for c, g in zip(chars, normal) if g != normalize_text(c)]
    assert wrong == [("0x0", " ")]
    wrong = [c for c, t in zip(chars, tokens) if t != tokenize(c, {"x"})]
    assert {unicodedata.category(c) for c in wrong} <= {"Cn"}, [hex(ord(c)) for c in wrong][:10]


@pytest.mark.slow
def test_normalisation_matches_python_on_combining_sequences():
    """Random letters, combining marks in any order, Hangul jamo and compatibility characters."""
    rng = random.Random(0)
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    marks = [c for c in chars if unicodedata.combining(c)]
    latin = list("aeiouyAEOncsz") + list("\u00e0\u00e9\u00ee\u00f5\u00fc\u00e7\u00f1\u00f8\u00e5\u00e6\u0153")
    jamo = [chr(c) for c in [*range(0x1100, 0x1113), *range(0x1161, 0x1176), *range(0x11A8, 0x11C3)]]
    jamo += [chr(c) for c in range(0x3131, 0x3164)]
    compatibility = [c for c in chars if unicodedata.normalize("NFKC", c) != c]
    letters = [c for c in chars if unicodedata.category(c).startswith("L")]
    pools = [latin, latin, marks, marks, jamo, compatibility, letters, list(" '-.\u2019")]
    texts = ["".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 12))) for _ in range(20_000)]
    tokenizer = CaptionTokenizer(["x"])
    got = [s.decode("utf-8") for s in tf.function(tokenizer.normalize)(tf.constant(texts)).numpy()]
    wrong = [t for t, g in zip(texts, got) if g != normalize_text(t)]
    assert not wrong, [[hex(ord(c)) for c in t] for t in wrong[:3]]


def test_composition_pairs_never_chain():
    """The composition step relies on no character both starting and ending a pair (so hits never overlap)."""
    pairs, _ = composition_table()
    firsts, seconds = {p[0] for p in pairs}, {p[1] for p in pairs}
    assert not firsts & seconds
    keys, classes = combining_class_table()
    assert len(keys) == len(classes) and min(classes) > 0 and max(classes) < 256


def test_tokenizer_runs_inside_a_saved_model(tmp_path):
    tokenizer = CaptionTokenizer(sorted(KNOWN), max_length=4)
    module = tf.Module()
    module.tokenizer = tokenizer
    module.tokens = tf.function(tokenizer.token_matrix, input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(module, str(tmp_path / "m"))
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    got = loaded.tokens(tf.constant(["the dog's T-shirt", ""])).numpy().astype(str).tolist()
    assert got == [["the", "dog", "'s", "t-shirt"], ["<unk>", "", "", ""]]

"""The captions of the "shapes" demo dataset: the words for what a scene shows, and the templates.

Split from :mod:`devise.datasets.shapes` (which samples and draws the
scenes); each caption draws its words from the image's own random stream,
after the scene was sampled, so generation stays deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from devise.datasets.shapes import Scene

# Words a caption may use for each colour / shape. Repeating the plain word
# makes it the most common, as in human captions. Every word is in GloVe's
# lowercase vocabulary (checked by the tests).
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "red", "crimson", "scarlet", "bright red"),
    "green": ("green", "green", "emerald", "bright green", "lime"),
    "blue": ("blue", "blue", "navy", "azure", "deep blue"),
    "yellow": ("yellow", "yellow", "golden", "gold", "bright yellow"),
}
# (singular, plural) pairs.
SHAPE_WORDS: dict[str, tuple[tuple[str, str], ...]] = {
    "circle": (
        ("circle", "circles"),
        ("circle", "circles"),
        ("disc", "discs"),
        ("round shape", "round shapes"),
    ),
    "square": (("square", "squares"), ("square", "squares"), ("box", "boxes"), ("block", "blocks")),
    "triangle": (
        ("triangle", "triangles"),
        ("triangle", "triangles"),
        ("triangular shape", "triangular shapes"),
    ),
    "star": (
        ("star", "stars"),
        ("star", "stars"),
        ("five pointed star", "five pointed stars"),
        ("star shape", "star shapes"),
    ),
    "cross": (
        ("cross", "crosses"),
        ("cross", "crosses"),
        ("plus sign", "plus signs"),
        ("plus symbol", "plus symbols"),
    ),
}
# "dot" is only fitting for small circles.
_SMALL_CIRCLE_WORDS = (("dot", "dots"),)

_BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "white": ("white", "white", "plain white"),
    "light_grey": ("light grey", "grey", "pale grey", "light gray"),
    "dark_grey": ("dark grey", "dark", "dark gray"),
    "black": ("black", "dark", "plain black"),
    "pale": ("pale", "light coloured", "pastel"),
    "gradient": ("gradient", "shaded", "smooth gradient"),
    "dark_gradient": ("dark gradient", "dark shaded", "dark"),
}

_SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "tiny": ("tiny", "very small"),
    "small": ("small", "little"),
    "medium": (),
    "large": ("large", "big"),
}
_COUNT_WORDS = {2: ("two", "two", "a pair of"), 3: ("three",)}

_POSITION_WORDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("top", "left"): ("in the top left", "in the upper left corner", "near the top left corner"),
    ("top", "centre"): ("at the top", "near the top"),
    ("top", "right"): ("in the top right", "in the upper right corner", "near the top right corner"),
    ("middle", "left"): ("on the left", "on the left side"),
    ("middle", "centre"): ("in the centre", "near the centre", "in the middle"),
    ("middle", "right"): ("on the right", "on the right side"),
    ("bottom", "left"): ("in the bottom left", "in the lower left corner", "near the bottom left corner"),
    ("bottom", "centre"): ("at the bottom", "near the bottom"),
    ("bottom", "right"): ("in the bottom right", "in the lower right corner", "near the bottom right corner"),
}


def pick(rng: np.random.Generator, options: Sequence):
    """One of ``options``, uniformly."""
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class _Phrases:
    """Randomly worded pieces of a caption for one scene."""

    def __init__(self, rng: np.random.Generator, scene: Scene):
        self.rng = rng
        self.scene = scene

    @property
    def plural(self) -> bool:
        return self.scene.count > 1

    def colour(self) -> str:
        return pick(self.rng, COLOUR_WORDS[self.scene.colour])

    def noun(self) -> str:
        options = SHAPE_WORDS[self.scene.shape]
        if self.scene.shape == "circle" and self.scene.size_bucket in ("tiny", "small"):
            options = options + _SMALL_CIRCLE_WORDS
        singular, plural = pick(self.rng, options)
        return plural if self.plural else singular

    def size(self) -> str | None:
        if self.scene.size_bucket is None:
            return None
        words = _SIZE_WORDS[self.scene.size_bucket]
        return pick(self.rng, words) if words else None

    def with_count(self, phrase: str, allow_pair: bool = True) -> str:
        """Prefix ``phrase`` with the count: "a red star", "three red stars"."""
        if not self.plural:
            if self.rng.random() < 0.15:
                return f"a single {phrase}"
            return f"{_article(phrase)} {phrase}"
        options = _COUNT_WORDS[self.scene.count]
        if not allow_pair:
            options = tuple(word for word in options if word != "a pair of")
        return f"{pick(self.rng, options)} {phrase}"

    def noun_phrase(self, size_chance: float = 0.5, allow_pair: bool = True) -> str:
        """Count, optional size, colour and shape: "two small crimson discs"."""
        words = []
        size = self.size() if self.rng.random() < size_chance else None
        if size:
            words.append(size)
        words += [self.colour(), self.noun()]
        phrase = self.with_count(" ".join(words), allow_pair)
        if self.scene.size_bucket is None and self.rng.random() < size_chance:
            phrase += " of different sizes"
        return phrase

    def background_word(self) -> str:
        return pick(self.rng, _BACKGROUND_WORDS[self.scene.background])

    def background(self) -> str:
        word = self.background_word()
        preposition = pick(self.rng, ("on", "on", "against"))
        return f"{preposition} {_article(word)} {word} background"

    def position(self) -> str | None:
        if self.scene.position is None:
            return None
        return pick(self.rng, _POSITION_WORDS[self.scene.position])

    def detail(self) -> str:
        """Position (single shape) or background, as a trailing phrase."""
        position = self.position()
        if position and self.rng.random() < 0.6:
            return f" {position}"
        if self.rng.random() < 0.6:
            return f" {self.background()}"
        return ""

    def be(self) -> str:
        return "are" if self.plural else "is"


def _t_picture_of(p: _Phrases) -> str:
    return f"{pick(p.rng, ('a picture of', 'a photo of', 'an image of'))} {p.noun_phrase()}{p.detail()}"


def _t_there_is(p: _Phrases) -> str:
    # "there are a pair of ..." reads wrongly, so the count is a number here.
    return f"there {p.be()} {p.noun_phrase(allow_pair=False)} {p.background()}"


def _t_drawn_on(p: _Phrases) -> str:
    word = p.background_word()
    verb = pick(p.rng, ("drawn", "shown", "painted"))
    return f"{p.noun_phrase()} {verb} on {_article(word)} {word} background"


def _t_showing(p: _Phrases) -> str:
    opening = pick(p.rng, ("an image showing", "a picture showing", "a picture with"))
    return f"{opening} {p.noun_phrase(0.3)}{p.detail()}"


def _t_in_colour(p: _Phrases) -> str:
    return f"{p.with_count(p.noun())} in {p.colour()}{p.detail()}"


def _t_contains(p: _Phrases) -> str:
    return f"this {pick(p.rng, ('image', 'picture'))} contains {p.noun_phrase()}"


def _t_drawing_of(p: _Phrases) -> str:
    return f"a simple {pick(p.rng, ('drawing', 'illustration'))} of {p.noun_phrase(0.7)}{p.detail()}"


def _t_background_with(p: _Phrases) -> str:
    word = p.background_word()
    return f"{_article(word)} {word} background with {p.noun_phrase()} on it"


def _t_coloured(p: _Phrases) -> str:
    verb = pick(p.rng, ("coloured", "painted"))
    return f"{p.with_count(p.noun())} {verb} {p.colour()}{p.detail()}"


def _t_you_can_see(p: _Phrases) -> str:
    return f"you can see {p.noun_phrase()}{p.detail()}"


def _t_the_shape_is(p: _Phrases) -> str:
    scene = p.scene
    if scene.count == 1:
        position = p.position()
        where = f" {position}" if position else ""
        return f"the {p.noun()}{where} is {p.colour()}"
    number = "two" if scene.count == 2 else "three"
    return f"the {number} {p.noun()} are {p.colour()}"


_TEMPLATES: tuple[Callable[[_Phrases], str], ...] = (
    _t_picture_of,
    _t_there_is,
    _t_drawn_on,
    _t_showing,
    _t_in_colour,
    _t_contains,
    _t_drawing_of,
    _t_background_with,
    _t_coloured,
    _t_you_can_see,
    _t_the_shape_is,
)


def write_captions(rng: np.random.Generator, scene: Scene, count: int) -> list[str]:
    """``count`` captions of ``scene``, each from a different template (so they differ)."""
    phrases = _Phrases(rng, scene)
    chosen = rng.choice(len(_TEMPLATES), size=count, replace=False)
    captions = []
    for template_index in chosen:
        text = _TEMPLATES[int(template_index)](phrases)
        captions.append(text[0].upper() + text[1:] + ".")
    return captions

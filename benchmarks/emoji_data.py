"""Build real development data from emoji: rendered images, English captions and classes.

Renders every fully-qualified emoji of Unicode's ``emoji-test.txt`` with the
Noto Color Emoji font and writes, under ``--out``:

* ``images/<codepoints>.png``: one 136x128 RGB image per emoji (codepoints in
  upper-case hex joined by ``-``, e.g. ``1F415.png``). Skin-tone and hair
  variants (red, curly, white hair, bald) and the Component group are left
  out, and so is any emoji that renders blank or wider than one glyph; of
  pixel-identical renders (the flags of Norway, Svalbard and Bouvet Island)
  only the one with the shortest caption stays.
* ``captions.jsonl``: a devise manifest (see docs/datasets.md, "Manifests"),
  one item per image: ``image`` (relative to the manifest's folder), ``caption``
  (the CLDR name as plain lowercase words: "face with tears of joy",
  "flag of japan"), ``category`` (the subgroup, e.g. ``animal-mammal``) and
  ``split``.
* ``classes/{train,val,test}/<subgroup>/<codepoints>.png``: hard links (copies
  where links fail) for zero-shot classification, only subgroups with at
  least 8 images, and ``classes/labels.tsv`` mapping each folder name to
  label words that GloVe 6B knows (``animal-mammal<TAB>mammal``).
* ``summary.json``: the counts printed at the end.

Splits are deterministic: inside each subgroup, images are ordered by the
SHA-256 of their codepoints and dealt about 70/15/15 into train/val/test. An
image has the same split in ``captions.jsonl`` and in ``classes/``, so no
class test image is a caption training image.

This is development data for choosing training recipes and checking
zero-shot classification on real pictures; the images are never shipped or
committed. The font comes from Debian's ``fonts-noto-color-emoji`` and the
names from Debian's ``unicode-data`` (see docs/datasets.md, "Real development
data from emoji"):

    python benchmarks/emoji_data.py --font PATH/NotoColorEmoji.ttf \\
        --emoji-test PATH/emoji-test.txt --out /work/data/emoji
    python benchmarks/emoji_data.py --fetch-debian --out /work/data/emoji   # apt-get download + dpkg -x
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Pillow draws Noto Color Emoji (a bitmap font) only at this size; a glyph is 136x128.
FONT_SIZE = 109
CANVAS_SIZE = (136, 128)
#: Split fractions dealt inside each subgroup (the rest is test).
TRAIN_FRACTION = 0.70
VAL_FRACTION = 0.15
SPLITS = ("train", "val", "test")
#: A subgroup becomes a class folder when it has at least this many images.
MIN_CLASS_IMAGES = 8
DEBIAN_PACKAGES = ("fonts-noto-color-emoji", "unicode-data")

SKIN_TONES = frozenset({"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"})
HAIR_COMPONENTS = frozenset({"1F9B0", "1F9B1", "1F9B2", "1F9B3"})  # red, curly, bald, white

#: Label words per subgroup: a short English phrase every word of which is in
#: GloVe 6B. A subgroup missing here (another Unicode version) falls back to
#: its own name with the hyphens as spaces, with a warning.
CLASS_LABELS: dict[str, str] = {
    "face-smiling": "smiling face",
    "face-affection": "loving face",
    "face-neutral-skeptical": "skeptical face",
    "face-unwell": "sick face",
    "face-concerned": "worried face",
    "face-negative": "angry face",
    "face-costume": "costume face",
    "cat-face": "cat face",
    "heart": "heart",
    "emotion": "emotion symbol",
    "hand-fingers-open": "open hand",
    "hand-fingers-partial": "hand gesture",
    "body-parts": "body part",
    "person": "person",
    "person-gesture": "gesturing person",
    "person-role": "profession",
    "person-fantasy": "fantasy character",
    "person-activity": "activity",
    "person-sport": "athlete",
    "family": "family",
    "animal-mammal": "mammal",
    "animal-bird": "bird",
    "animal-reptile": "reptile",
    "animal-marine": "sea animal",
    "animal-bug": "insect",
    "plant-flower": "flower",
    "plant-other": "plant",
    "food-fruit": "fruit",
    "food-vegetable": "vegetable",
    "food-prepared": "prepared food",
    "food-asian": "asian food",
    "food-sweet": "dessert",
    "drink": "drink",
    "place-geographic": "landscape",
    "place-building": "building",
    "place-other": "place",
    "transport-ground": "ground transport",
    "transport-water": "boat",
    "transport-air": "aircraft",
    "time": "clock",
    "sky-and-weather": "weather",
    "event": "celebration",
    "sport": "sports equipment",
    "game": "game",
    "clothing": "clothing",
    "sound": "sound",
    "music": "music",
    "musical-instrument": "musical instrument",
    "computer": "computer",
    "light-and-video": "light and video",
    "book-paper": "book and paper",
    "money": "money",
    "mail": "mail",
    "office": "office supplies",
    "tool": "tool",
    "household": "household item",
    "other-object": "miscellaneous object",
    "transport-sign": "public sign",
    "warning": "warning sign",
    "arrow": "arrow",
    "religion": "religious symbol",
    "zodiac": "zodiac sign",
    "av-symbol": "media button",
    "other-symbol": "symbol",
    "keycap": "number key",
    "alphanum": "letter button",
    "geometric": "geometric shape",
    "flag": "flag",
    "country-flag": "country flag",
}

_KEYCAP_WORDS = {"#": "number sign", "*": "asterisk"}
# Hyphens and apostrophes count only inside a word ("t-shirt", "o'clock").
_STRAY_JOINER = re.compile(r"(?<![a-z0-9])['-]|['-](?![a-z0-9])")
_NOT_CAPTION_CHAR = re.compile(r"[^a-z0-9' -]")


@dataclasses.dataclass(frozen=True)
class Emoji:
    """One line of ``emoji-test.txt``.

    Args:
        codepoints: upper-case hex codepoints, e.g. ``("1F415",)``.
        status: ``fully-qualified``, ``minimally-qualified``, ``unqualified``
            or ``component``.
        group: the ``# group:`` header above it, e.g. ``Animals & Nature``.
        subgroup: the ``# subgroup:`` header above it, e.g. ``animal-mammal``.
        name: the CLDR short name, e.g. ``dog``.
    """

    codepoints: tuple[str, ...]
    status: str
    group: str
    subgroup: str
    name: str

    @property
    def text(self) -> str:
        return "".join(chr(int(cp, 16)) for cp in self.codepoints)

    @property
    def stem(self) -> str:
        """File name stem: the codepoints joined by ``-``."""
        return "-".join(self.codepoints)

    @property
    def category(self) -> str:
        return category_name(self.subgroup)


@dataclasses.dataclass(frozen=True)
class Item:
    """A rendered emoji in the data set."""

    emoji: Emoji
    caption: str
    split: str


def category_name(subgroup: str) -> str:
    """Folder-safe subgroup name: ``sky & weather`` -> ``sky-and-weather``."""
    return "-".join(subgroup.replace("&", " and ").split())


def parse_emoji_test(path: str | os.PathLike) -> list[Emoji]:
    """Every emoji line of an ``emoji-test.txt`` file, in file order."""
    group = subgroup = ""
    emoji: list[Emoji] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if line.startswith("# group:"):
                group = line.partition(":")[2].strip()
            elif line.startswith("# subgroup:"):
                subgroup = line.partition(":")[2].strip()
            elif line and not line.startswith("#"):
                # 1F415 ; fully-qualified # 🐕 E0.7 dog
                fields, _, comment = line.partition("#")
                codepoints, _, status = fields.partition(";")
                parts = comment.split(maxsplit=2)
                if not status.strip() or len(parts) < 3 or not parts[1].startswith("E"):
                    raise ValueError(f"{path}:{number}: not an emoji-test line: {line!r}")
                emoji.append(Emoji(tuple(codepoints.upper().split()), status.strip(), group, subgroup, parts[2]))
    if not emoji:
        raise ValueError(f"{path}: no emoji lines; is it emoji-test.txt?")
    return emoji


def skip_reason(emoji: Emoji) -> str | None:
    """Why an emoji is left out of the data set, or ``None`` to keep it."""
    if emoji.group == "Component":
        return "component"
    if emoji.status != "fully-qualified":
        return "not fully-qualified"
    if "skin tone" in emoji.name or SKIN_TONES.intersection(emoji.codepoints):
        return "skin-tone variant"
    if HAIR_COMPONENTS.intersection(emoji.codepoints):
        return "hair variant"
    return None


def caption_from_name(name: str) -> str:
    """A CLDR emoji name as plain lowercase words.

    ``flag: Japan`` -> ``flag of japan``, ``keycap: #`` -> ``keycap number
    sign``, ``woman: beard`` -> ``woman with beard``, ``family: man, woman,
    boy`` -> ``family man woman boy``, ``Japanese “here” button`` ->
    ``japanese here button``, ``piñata`` -> ``pinata``; inner hyphens and
    apostrophes stay (``t-shirt``, ``o'clock``, ``woman's hat``).
    """
    text = name.replace("\u2019", "'")
    head, colon, tail = text.partition(": ")
    if colon:
        if head == "flag":
            text = f"flag of {tail}"
        elif head == "keycap":
            text = f"keycap {_KEYCAP_WORDS.get(tail, tail)}"
        elif tail.endswith(("hair", "beard")):
            text = f"{head} with {tail}"
        else:
            text = f"{head} {tail}"
    text = text.replace("&", " and ").replace(".", "")  # "St. Kitts & Nevis", "U.S."
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = _NOT_CAPTION_CHAR.sub(" ", text.lower())
    words = _STRAY_JOINER.sub(" ", text).split()
    if not words:
        raise ValueError(f"emoji name {name!r} leaves no caption words")
    return " ".join(words)


def split_key(stem: str) -> int:
    """Deterministic pseudo-random rank of an image (SHA-256 of its codepoints)."""
    return int.from_bytes(hashlib.sha256(stem.encode("ascii")).digest()[:8], "big")


def deal_splits(stems: Iterable[str]) -> dict[str, str]:
    """Deal images ~70/15/15 into train/val/test by their :func:`split_key` order."""
    order = sorted(stems, key=split_key)
    splits = {}
    for rank, stem in enumerate(order):
        position = (rank + 0.5) / len(order)
        if position < TRAIN_FRACTION:
            splits[stem] = "train"
        elif position < TRAIN_FRACTION + VAL_FRACTION:
            splits[stem] = "val"
        else:
            splits[stem] = "test"
    return splits


def render_emoji(font: ImageFont.FreeTypeFont, text: str) -> Image.Image | None:
    """The emoji drawn on a white 136x128 canvas, or ``None`` when it is blank."""
    image = Image.new("RGB", CANVAS_SIZE, "white")
    ImageDraw.Draw(image).text((0, 0), text, font=font, embedded_color=True)
    if np.asarray(image).min() == 255:
        return None
    return image


def renders_as_one_glyph(font: ImageFont.FreeTypeFont, text: str) -> bool:
    """False when the font has no single glyph for the sequence and draws several side by side."""
    left, _, right, _ = font.getbbox(text)
    return right - left <= CANVAS_SIZE[0]


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def fetch_debian(directory: Path) -> tuple[Path, Path]:
    """``apt-get download`` the Debian packages into ``directory``, unpack them, find the two files."""
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"--fetch-debian needs {tool} (a Debian or Ubuntu system); pass --font and --emoji-test instead"
            )
    subprocess.run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=directory, check=True)
    root = directory / "root"
    for deb in sorted(directory.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    fonts = sorted(root.rglob("NotoColorEmoji.ttf"))
    tests = sorted(root.rglob("emoji-test.txt"))
    if not fonts or not tests:
        raise RuntimeError(f"the packages {', '.join(DEBIAN_PACKAGES)} hold no NotoColorEmoji.ttf or emoji-test.txt")
    return fonts[0], tests[0]


def render_images(
    font_path: Path, candidates: Sequence[Emoji], images_dir: Path
) -> tuple[list[tuple[Emoji, str]], collections.Counter[str]]:
    """Render the candidates into ``images_dir``.

    Returns each rendered emoji with the SHA-256 of its pixels, and how many
    were not rendered, by reason.
    """
    font = ImageFont.truetype(str(font_path), FONT_SIZE)
    images_dir.mkdir(parents=True, exist_ok=True)
    rendered: list[tuple[Emoji, str]] = []
    dropped: collections.Counter[str] = collections.Counter()
    for emoji in candidates:
        if not renders_as_one_glyph(font, emoji.text):
            dropped["not one glyph in the font"] += 1
            continue
        image = render_emoji(font, emoji.text)
        if image is None:
            dropped["blank render"] += 1
            continue
        image.save(images_dir / f"{emoji.stem}.png")
        rendered.append((emoji, hashlib.sha256(image.tobytes()).hexdigest()))
    return rendered, dropped


def drop_identical_renders(rendered: Sequence[tuple[Emoji, str]]) -> tuple[list[Emoji], list[list[Emoji]]]:
    """One emoji per distinct picture: the one with the shortest caption, then the first.

    The font draws some emoji identically (the flags of Norway, Svalbard and
    Bouvet Island); kept together they would be test items no model can get
    right. Returns the kept emoji in file order and the groups that had
    identical pictures (kept one first).
    """
    groups: dict[str, list[Emoji]] = collections.defaultdict(list)
    for emoji, digest in rendered:
        groups[digest].append(emoji)
    order = {emoji: index for index, (emoji, _) in enumerate(rendered)}
    chosen = {min(group, key=lambda e: (len(caption_from_name(e.name)), order[e])) for group in groups.values()}
    kept = [emoji for emoji, _ in rendered if emoji in chosen]
    identical = [sorted(group, key=lambda e: e not in chosen) for group in groups.values() if len(group) > 1]
    return kept, identical


def remove_stale_images(images_dir: Path, kept: Iterable[Emoji]) -> None:
    """Delete PNGs not in ``kept`` (identical renders, or left by a run with other inputs)."""
    wanted = {f"{emoji.stem}.png" for emoji in kept}
    for path in images_dir.glob("*.png"):
        if path.name not in wanted:
            path.unlink()


def build_items(kept: Sequence[Emoji]) -> list[Item]:
    by_subgroup: dict[str, list[str]] = collections.defaultdict(list)
    for emoji in kept:
        by_subgroup[emoji.category].append(emoji.stem)
    splits: dict[str, str] = {}
    for stems in by_subgroup.values():
        splits.update(deal_splits(stems))
    return [Item(emoji, caption_from_name(emoji.name), splits[emoji.stem]) for emoji in kept]


def write_manifest(items: Sequence[Item], path: Path) -> None:
    lines = [
        json.dumps(
            {
                "image": f"images/{item.emoji.stem}.png",
                "caption": item.caption,
                "category": item.emoji.category,
                "split": item.split,
            },
            ensure_ascii=False,
        )
        for item in items
    ]
    write_text_atomic(path, "\n".join(lines) + "\n")


def class_label(category: str) -> str:
    label = CLASS_LABELS.get(category)
    if label is None:
        label = category.replace("-", " ")
        print(f"warning: no label words for subgroup {category!r}; using {label!r}", file=sys.stderr)
    return label


def write_classes(items: Sequence[Item], images_dir: Path, classes_dir: Path) -> dict[str, list[Item]]:
    """Link the images of subgroups with enough images into class folders; write labels.tsv."""
    by_category: dict[str, list[Item]] = collections.defaultdict(list)
    for item in items:
        by_category[item.emoji.category].append(item)
    classes = {c: members for c, members in sorted(by_category.items()) if len(members) >= MIN_CLASS_IMAGES}
    for split in SPLITS:  # rebuilt from scratch, so a rerun leaves no stale links
        shutil.rmtree(classes_dir / split, ignore_errors=True)
    for category, members in classes.items():
        for item in members:
            folder = classes_dir / item.split / category
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{item.emoji.stem}.png"
            link_or_copy(images_dir / name, folder / name)
    rows = [f"{category}\t{class_label(category)}" for category in classes]
    write_text_atomic(classes_dir / "labels.tsv", "\n".join(rows) + "\n")
    return classes


@dataclasses.dataclass(frozen=True)
class UnseenWords:
    """Test caption words that no training caption has (as devise tokenizes them)."""

    test_tokens: int
    unseen_tokens: int
    test_types: int
    unseen_types: int

    @classmethod
    def measure(cls, items: Sequence[Item], tokenize: Callable[[str], list[str]]) -> UnseenWords:
        train = {t for item in items if item.split == "train" for t in tokenize(item.caption)}
        test = [t for item in items if item.split == "test" for t in tokenize(item.caption)]
        unseen = [t for t in test if t not in train]
        return cls(len(test), len(unseen), len(set(test)), len(set(unseen)))

    def __str__(self) -> str:
        return (
            f"{self.unseen_tokens}/{self.test_tokens} tokens ({percent(self.unseen_tokens, self.test_tokens)}), "
            f"{self.unseen_types}/{self.test_types} types ({percent(self.unseen_types, self.test_types)})"
        )


def percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"


def glove_vocabulary(words: Iterable[str]) -> set[str] | None:
    """The subset of ``words`` in the 400k GloVe 6B vocabulary, or ``None`` without the ``demo`` extra."""
    from devise.embeddings import load_offline_glove_50d
    from devise.errors import DeviseError

    try:
        return set(load_offline_glove_50d(vocabulary=sorted(set(words))).index)
    except (ImportError, DeviseError) as error:  # OptionalDependencyError is both
        print(f"warning: GloVe check skipped: {error}", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--font", type=Path, help="NotoColorEmoji.ttf")
    parser.add_argument("--emoji-test", type=Path, help="emoji-test.txt")
    parser.add_argument(
        "--fetch-debian",
        action="store_true",
        help=f"apt-get download {' '.join(DEBIAN_PACKAGES)} into a temporary folder and use those files",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (outside the repository)")
    args = parser.parse_args(argv)
    if (args.font or args.emoji_test) if args.fetch_debian else not (args.font and args.emoji_test):
        parser.error("give either --fetch-debian or both --font and --emoji-test")

    from devise.datasets import tokenize
    from devise.datasets.manifest import read_manifest

    with tempfile.TemporaryDirectory(prefix="emoji_debian_") as tmp:
        font_path, emoji_test = fetch_debian(Path(tmp)) if args.fetch_debian else (args.font, args.emoji_test)
        print(f"font: {font_path}\nnames: {emoji_test}")
        entries = parse_emoji_test(emoji_test)
        skipped = collections.Counter(reason for e in entries if (reason := skip_reason(e)) is not None)
        candidates = [e for e in entries if skip_reason(e) is None]
        out: Path = args.out
        rendered, dropped = render_images(font_path, candidates, out / "images")
    kept, identical = drop_identical_renders(rendered)
    dropped["identical to another render"] = sum(len(group) - 1 for group in identical)
    remove_stale_images(out / "images", kept)

    items = build_items(kept)
    write_manifest(items, out / "captions.jsonl")
    records = read_manifest(out / "captions.jsonl", strict=True)  # raises on any bad item
    if len(records) != len(items) or not all(os.path.isfile(r.image_path) for r in records):
        raise RuntimeError(f"{out / 'captions.jsonl'} does not read back as {len(items)} items with images")
    classes = write_classes(items, out / "images", out / "classes")

    caption_words = {w for item in items for w in tokenize(item.caption)}
    label_words = {w for category in classes for w in tokenize(class_label(category))}
    glove = glove_vocabulary(caption_words | label_words)
    unseen = UnseenWords.measure(items, tokenize)
    # Country names are nearly all seen once; without them the rate is about ordinary words.
    unseen_no_flags = UnseenWords.measure([i for i in items if i.emoji.category != "country-flag"], tokenize)
    split_sizes = collections.Counter(item.split for item in items)
    class_sizes = collections.Counter(item.split for members in classes.values() for item in members)
    summary = {
        "emoji_lines": len(entries),
        "skipped": dict(skipped),
        "left_out_after_rendering": dict(dropped),
        "identical_renders": [[e.name for e in group] for group in identical],
        "images": len(items),
        "flags": sum(1 for item in items if item.emoji.group == "Flags"),
        "subgroups": len({item.emoji.category for item in items}),
        "split_sizes": {s: split_sizes[s] for s in SPLITS},
        "classes": len(classes),
        "class_split_sizes": {s: class_sizes[s] for s in SPLITS},
        "caption_words": len(caption_words),
        "test_words_unseen_in_train": dataclasses.asdict(unseen),
        "test_words_unseen_in_train_without_country_flags": dataclasses.asdict(unseen_no_flags),
        "caption_words_not_in_glove": sorted(caption_words - glove) if glove is not None else None,
        "label_words_not_in_glove": sorted(label_words - glove) if glove is not None else None,
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")

    def sizes(counts: collections.Counter[str]) -> str:
        return ", ".join(f"{s} {counts[s]}" for s in SPLITS)

    print(f"emoji lines: {len(entries)}; skipped: " + ", ".join(f"{n} {r}" for r, n in skipped.most_common()))
    print(f"left out after rendering: {', '.join(f'{n} {r}' for r, n in dropped.items() if n) or 'none'}")
    for group in identical:
        left_out = ", ".join(repr(e.name) for e in group[1:])
        print(f"  identical renders: kept {group[0].name!r}, left out {left_out}")
    print(f"images: {len(items)} ({summary['flags']} flags) in {out / 'images'}")
    print(
        f"captions: {len(items)} in {out / 'captions.jsonl'} ({summary['subgroups']} subgroups): {sizes(split_sizes)}"
    )
    print(
        f"classes: {len(classes)} subgroups with >= {MIN_CLASS_IMAGES} images in {out / 'classes'}: "
        f"{sizes(class_sizes)}"
    )
    print(f"test caption words unseen in training captions: {unseen}")
    print(f"  without country flags: {unseen_no_flags}")
    if glove is not None:
        missing = summary["caption_words_not_in_glove"]
        print(f"caption words not in GloVe 6B (400k): {len(missing)}/{len(caption_words)}: {' '.join(missing)}")
        print(f"label words not in GloVe 6B: {' '.join(summary['label_words_not_in_glove']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tests of GloVe read straight from zip archives, and of the word-vector cache."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from devise.embeddings import vector_cache
from devise.embeddings.glove import choose_zip_member, load_glove_text, split_zip_member
from devise.embeddings.vector_cache import default_cache_dir, load_word_vectors_cached
from devise.errors import DataFormatError, DeviseError, MissingResourcesError


def vec(seed: int, dim: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


def fmt(vector: np.ndarray) -> str:
    return " ".join(np.format_float_positional(x, unique=True) for x in vector)


def glove_text(entries: list[tuple[str, np.ndarray] | str]) -> str:
    return "\n".join(e if isinstance(e, str) else f"{e[0]} {fmt(e[1])}" for e in entries) + "\n"


def make_zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


WORDS = [f"w{i}" for i in range(16)]


def entries(dim: int) -> list[tuple[str, np.ndarray] | str]:
    """16 good 50-d-style lines, then a short one (line 17), a bad one and two more words."""
    return [
        *[(w, vec(i, dim)) for i, w in enumerate(WORDS)],
        f"short {fmt(vec(99, dim - 1))}",  # line 17
        "bad " + " ".join(["x"] * dim),  # line 18
        ("cat", vec(100, dim)),
        ("w3", vec(101, dim)),  # line 20: duplicate
    ]


@pytest.fixture
def glove_zip(tmp_path: Path) -> Path:
    """A glove.6B.zip look-alike holding a 50-d and an 8-d member."""
    return make_zip(
        tmp_path / "glove.6B.zip",
        {
            "glove.6B.50d.txt": glove_text(entries(50)),
            "glove.6B.8d.txt": glove_text([(w, vec(i + 200, 8)) for i, w in enumerate(WORDS)]),
        },
    )


def assert_same_vectors(a, b) -> None:
    assert a.vectors.words == b.vectors.words
    np.testing.assert_array_equal(a.vectors.vectors, b.vectors.vectors)
    assert a.vectors.vectors.dtype == b.vectors.vectors.dtype == np.float32


# --------------------------------------------------------------------------
# Zip archives
# --------------------------------------------------------------------------


@pytest.mark.parametrize("vocabulary", [None, ["cat", "w5", "nope", "w3", "short"]])
def test_zip_member_equals_unpacked_text(glove_zip: Path, tmp_path: Path, vocabulary) -> None:
    text_path = tmp_path / "glove.6B.50d.txt"
    text_path.write_text(glove_text(entries(50)), encoding="utf-8")
    plain = load_glove_text(text_path, vocabulary=vocabulary)
    zipped = load_glove_text(glove_zip, member="glove.6B.50d.txt", vocabulary=vocabulary)
    assert_same_vectors(zipped, plain)
    assert zipped.lines_read == plain.lines_read == 20
    assert zipped.issue_count == plain.issue_count
    shown = f"{glove_zip}::glove.6B.50d.txt"
    assert [(i.path, i.line, i.reason) for i in zipped.issues] == [(shown, i.line, i.reason) for i in plain.issues]
    assert str(zipped.issues[0]) == f"{shown}:17: expected 50 values, found 49"


def test_member_chosen_by_dim_explicitly_or_in_the_path(glove_zip: Path) -> None:
    by_dim = load_glove_text(glove_zip, dim=8)
    assert by_dim.vectors.dim == 8 and by_dim.vectors.words == WORDS
    np.testing.assert_array_equal(by_dim.vectors.get("w2"), vec(202, 8))
    explicit = load_glove_text(glove_zip, member="glove.6B.8d.txt")
    spelled = load_glove_text(f"{glove_zip}::glove.6B.8d.txt")
    assert_same_vectors(explicit, by_dim)
    assert_same_vectors(spelled, by_dim)
    assert load_glove_text(Path(f"{glove_zip}::glove.6B.50d.txt")).vectors.dim == 50
    assert choose_zip_member(glove_zip, dim=50) == "glove.6B.50d.txt"


def test_ambiguous_zip_lists_its_members(glove_zip: Path) -> None:
    with pytest.raises(DeviseError) as info:
        load_glove_text(glove_zip)
    message = str(info.value)
    assert isinstance(info.value, DataFormatError)
    assert "glove.6B.50d.txt" in message and "glove.6B.8d.txt" in message
    assert "::" in message and "dim" in message


def test_missing_member_or_dim_lists_the_members(glove_zip: Path) -> None:
    with pytest.raises(MissingResourcesError, match="glove.6B.8d.txt") as info:
        load_glove_text(glove_zip, member="glove.6B.300d.txt")
    assert "glove.6B.300d.txt" in str(info.value)
    with pytest.raises(MissingResourcesError, match=r"\*\.300d\.txt.*glove\.6B\.50d\.txt"):
        load_glove_text(glove_zip, dim=300)
    with pytest.raises(DataFormatError, match="member"):
        load_glove_text(f"{glove_zip}::glove.6B.8d.txt", member="glove.6B.50d.txt")
    with pytest.raises(DataFormatError, match="nothing follows"):
        load_glove_text(f"{glove_zip}::")


def test_single_member_zip_needs_no_name_and_base_names_match(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "vectors.zip",
        {"readme.md": "hello", "sub/glove.tiny.txt": glove_text([("a", vec(0, 3)), ("b", vec(1, 3))])},
    )
    result = load_glove_text(archive)
    assert result.vectors.words == ["a", "b"]
    assert load_glove_text(archive, member="glove.tiny.txt").vectors.words == ["a", "b"]
    assert split_zip_member(f"{archive}::sub/glove.tiny.txt") == (archive, "sub/glove.tiny.txt")
    assert split_zip_member(archive) == (archive, None)


def test_zip_without_text_member(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "empty.zip", {"readme.md": "hello"})
    with pytest.raises(DataFormatError, match="no .txt file.*readme.md"):
        load_glove_text(archive)


def test_strict_error_names_zip_member_and_line(glove_zip: Path) -> None:
    with pytest.raises(DataFormatError) as info:
        load_glove_text(glove_zip, dim=50, strict=True)
    assert str(info.value) == f"{glove_zip}::glove.6B.50d.txt:17: expected 50 values, found 49"


def test_damaged_or_fake_zip_is_a_format_error(tmp_path: Path) -> None:
    fake = tmp_path / "glove.zip"
    fake.write_text("the 0.1 0.2\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="not a valid zip"):
        load_glove_text(fake)

    good = make_zip(tmp_path / "g.zip", {"g.txt": glove_text([(f"w{i}", vec(i, 50)) for i in range(200)])})
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match="damaged"):
        load_glove_text(damaged)


def test_zip_with_damaged_local_header_is_a_format_error(tmp_path: Path) -> None:
    # The central directory still lists the member; only opening it fails.
    good = make_zip(tmp_path / "g.zip", {"g.txt": glove_text([("the", vec(0, 50))])})
    data = bytearray(good.read_bytes())
    data[:4] = b"XXXX"  # the member's local header signature
    good.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match=r"g\.zip::g\.txt: cannot be read \(Bad magic number"):
        load_glove_text(good)


# --------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------


class CountingLoader:
    """Stands in for vector_cache.load_glove_text and counts the source reads."""

    def __init__(self, real):
        self.real = real
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingLoader:
    loader = CountingLoader(vector_cache.load_glove_text)
    monkeypatch.setattr(vector_cache, "load_glove_text", loader)
    return loader


VOCAB = ["cat", "w5", "nope", "w3", "w0", "short"]


def test_cache_hit_returns_the_same_result_without_reading(
    glove_zip: Path, tmp_path: Path, counting: CountingLoader, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = load_word_vectors_cached(glove_zip, vocabulary=VOCAB, dim=50, cache_dir=cache)
    assert counting.calls == 1
    assert len(list(cache.glob("*.npz"))) == 1
    direct = load_glove_text(glove_zip, vocabulary=VOCAB, dim=50)
    assert_same_vectors(first, direct)

    def fail(*args, **kwargs):
        raise AssertionError("the source was read again")

    monkeypatch.setattr(vector_cache, "load_glove_text", fail)
    second = load_word_vectors_cached(glove_zip, vocabulary=VOCAB, dim=50, cache_dir=cache)
    assert_same_vectors(second, first)
    assert second.issues == first.issues and second.issue_count == first.issue_count
    assert second.lines_read == first.lines_read
    assert str(second.issues[0]) == f"{glove_zip}::glove.6B.50d.txt:17: expected 50 values, found 49"

    # The key ignores vocabulary order; rows still follow the order asked for.
    reordered = load_word_vectors_cached(glove_zip, vocabulary=VOCAB[::-1], dim=50, cache_dir=cache)
    assert reordered.vectors.words == first.vectors.words[::-1]
    np.testing.assert_array_equal(reordered.vectors.vectors, first.vectors.vectors[::-1])
    # Other spellings of the same member share the entry.
    for other in (
        {"path": f"{glove_zip}::glove.6B.50d.txt", "dim": 50},
        {"path": glove_zip, "member": "glove.6B.50d.txt", "dim": 50},
    ):
        path = other.pop("path")
        assert_same_vectors(load_word_vectors_cached(path, vocabulary=VOCAB, cache_dir=cache, **other), first)


def test_cache_misses_on_other_vocabulary_or_changed_source(tmp_path: Path, counting: CountingLoader) -> None:
    source = tmp_path / "glove.txt"
    source.write_text(glove_text([(w, vec(i, 4)) for i, w in enumerate(WORDS)]), encoding="utf-8")
    cache = tmp_path / "cache"
    vocab = ["w1", "w2"]
    load_word_vectors_cached(source, vocabulary=vocab, cache_dir=cache)
    load_word_vectors_cached(source, vocabulary=vocab, cache_dir=cache)
    assert counting.calls == 1

    other = load_word_vectors_cached(source, vocabulary=["w1", "w2", "w3"], cache_dir=cache)
    assert counting.calls == 2 and other.vectors.words == ["w1", "w2", "w3"]
    load_word_vectors_cached(source, vocabulary=vocab, dim=4, cache_dir=cache)
    assert counting.calls == 3

    # Rewritten with another size: new vectors, not the cached ones.
    source.write_text(glove_text([(w, vec(i + 50, 4)) for i, w in enumerate(WORDS[:5])]), encoding="utf-8")
    changed = load_word_vectors_cached(source, vocabulary=vocab, cache_dir=cache)
    assert counting.calls == 4
    np.testing.assert_array_equal(changed.vectors.get("w1"), vec(51, 4))

    # Same size, only touched (mtime): also a miss.
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    load_word_vectors_cached(source, vocabulary=vocab, cache_dir=cache)
    assert counting.calls == 5
    load_word_vectors_cached(source, vocabulary=vocab, cache_dir=cache)
    assert counting.calls == 5


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_cache_entry_is_recomputed_with_a_warning(
    glove_zip: Path, tmp_path: Path, counting: CountingLoader, damage: str
) -> None:
    cache = tmp_path / "cache"
    first = load_word_vectors_cached(glove_zip, vocabulary=VOCAB, dim=50, cache_dir=cache)
    (entry,) = cache.glob("*.npz")
    data = entry.read_bytes()
    entry.write_bytes({"garbage": b"not an npz file", "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.warns(RuntimeWarning, match="ignoring unreadable word-vector cache entry"):
        again = load_word_vectors_cached(glove_zip, vocabulary=VOCAB, dim=50, cache_dir=cache)
    assert counting.calls == 2
    assert_same_vectors(again, first)
    assert again.issues == first.issues
    # The entry was rewritten: the next load is a clean hit.
    load_word_vectors_cached(glove_zip, vocabulary=VOCAB, dim=50, cache_dir=cache)
    assert counting.calls == 2
    assert [p.name for p in cache.iterdir()] == [entry.name]  # no temp files left


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "glove.txt"
    source.write_text(glove_text([("a", vec(0, 3))]), encoding="utf-8")
    monkeypatch.setenv("DEVISE_CACHE_DIR", str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root" / "word_vectors"
    load_word_vectors_cached(source, vocabulary=["a"])
    assert len(list((tmp_path / "root" / "word_vectors").glob("*.npz"))) == 1
    monkeypatch.delenv("DEVISE_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "devise" / "word_vectors"


def test_strict_cached_problems_still_raise(glove_zip: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_word_vectors_cached(glove_zip, vocabulary=VOCAB, dim=50, cache_dir=cache)
    with pytest.raises(DataFormatError, match=":17: expected 50 values, found 49"):
        load_word_vectors_cached(glove_zip, vocabulary=VOCAB, dim=50, cache_dir=cache, strict=True)


def test_unwritable_cache_warns_and_still_loads(tmp_path: Path) -> None:
    source = tmp_path / "glove.txt"
    source.write_text(glove_text([("a", vec(0, 3))]), encoding="utf-8")
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("", encoding="utf-8")
    with pytest.warns(RuntimeWarning, match="could not write"):
        result = load_word_vectors_cached(source, vocabulary=["a"], cache_dir=blocker / "cache")
    assert result.vectors.words == ["a"]


def test_cache_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingResourcesError):
        load_word_vectors_cached(tmp_path / "absent.txt", vocabulary=["a"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="'glove'.*'word2vec_text'.*'word2vec_binary'"):
        load_word_vectors_cached(tmp_path / "absent.txt", vocabulary=["a"], fmt="fasttext")
    assert not list(tmp_path.glob("*.npz"))


def test_failed_cache_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "glove.txt"
    source.write_text(glove_text([("a", vec(0, 3))]), encoding="utf-8")
    cache = tmp_path / "cache"

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vector_cache.np, "savez", disk_full)
    with pytest.warns(RuntimeWarning, match="could not write"):
        result = load_word_vectors_cached(source, vocabulary=["a"], cache_dir=cache)
    assert result.vectors.words == ["a"]
    assert list(cache.iterdir()) == []  # neither an entry nor its temporary file

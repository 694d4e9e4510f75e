"""Near-duplicates: the blocked self-join, grouping, pixel fingerprints, ``devise-dedup``."""

from __future__ import annotations

import io
import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from devise.cli import dedup as dedup_cli
from devise.search.dedup import (
    DEFAULT_THRESHOLD,
    DuplicateFinder,
    connected_rows,
    find_duplicates,
    group_pairs,
    nearest_pairs,
)
from devise.search.image_fingerprint import fingerprint_scores, image_fingerprint
from devise.search.index import ImageIndex, update_index

# -- helpers ----------------------------------------------------------------------


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_pairs(matrix: np.ndarray, k: int) -> dict[tuple[int, int], float]:
    """Each row's k nearest others by sorting (-score, row) in Python (float64), as {(low, high): score}."""
    x = matrix.astype(np.float64)
    pairs = {}
    for i in range(len(x)):
        ranked = sorted((-float(np.dot(x[i], x[j])), j) for j in range(len(x)) if j != i)
        for score, j in ranked[:k]:
            pairs[(min(i, j), max(i, j))] = -score
    return pairs


def reference_components(n: int, edges) -> list[int]:
    """Smallest row of each row's component, by merging sets one edge at a time."""
    component = {i: {i} for i in range(n)}
    for a, b in edges:
        if component[a] is not component[b]:
            merged = component[a] | component[b]
            for r in merged:
                component[r] = merged
    return [min(component[i]) for i in range(n)]


def photo_like(seed: int, size=(240, 180)) -> Image.Image:
    """A smooth random colour field with fine grain: like a photo to a 16-pixel fingerprint."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    grain = rng.normal(0, 6, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(coarse, np.float64) + grain, 0, 255).astype(np.uint8))


def copies_of(image: Image.Image) -> dict[str, Image.Image]:
    """Re-encoded (JPEG 60), resized (0.5x, 0.8x) and border-cropped (2%, 5%) copies."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=60)
    w, h = image.size

    def crop(f):
        return image.crop((round(w * f), round(h * f), w - round(w * f), h - round(h * f)))

    return {
        "q60.jpg": Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"),
        "half.png": image.resize((w // 2, h // 2), Image.LANCZOS),
        "r08.png": image.resize((int(w * 0.8), int(h * 0.8)), Image.LANCZOS),
        "crop2.png": crop(0.02),
        "crop5.png": crop(0.05),
    }


def random_embed(dim: int = 8, seed: int = 0):
    """An ``embed`` for update_index that needs no model: random unit vectors."""
    rng = np.random.default_rng(seed)

    def embed(paths):
        vectors = rng.normal(size=(len(paths), dim)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), list(range(len(paths))), []

    return embed


@pytest.fixture
def planted_folder(tmp_path) -> tuple[pathlib.Path, dict[str, set[str]]]:
    """Eight originals and copies of three of them; returns the folder and each planted group's ids."""
    root = tmp_path / "photos"
    (root / "copies").mkdir(parents=True)
    groups = {}
    for i in range(8):
        image = photo_like(i)
        image.save(root / f"photo{i}.jpg", quality=92)
        if i in (1, 4, 6):
            groups[f"photo{i}.jpg"] = {f"photo{i}.jpg"}
            for name, copy in copies_of(image).items():
                copy.save(root / "copies" / f"{i}_{name}", quality=60)
                groups[f"photo{i}.jpg"].add(f"copies/{i}_{name}")
    return root, groups


def random_index(tmp_path, root) -> ImageIndex:
    out = tmp_path / "photos.h5"
    update_index(out, root, model_fingerprint="test", run_dir="", embed=random_embed(), progress=False)
    return ImageIndex.open(out)


# -- the self-join ----------------------------------------------------------------


@pytest.mark.parametrize(
    "tile_rows, memory_bytes",
    [(1, 1 << 30), (7, 1 << 30), (64, 1 << 30), (2048, 1 << 30), (7, 0), (16, 64 * 32 * 4)],
    ids=["tile1", "tile7", "tile64", "one-tile", "panels-of-one-tile", "panels-of-4-tiles"],
)
@pytest.mark.parametrize("k", [1, 3, 10])
def test_nearest_pairs_equal_a_sorted_loop_reference(tile_rows, memory_bytes, k):
    matrix = unit_rows(150, 32)
    first, second, scores = nearest_pairs(matrix, k, tile_rows=tile_rows, memory_bytes=memory_bytes)
    expected = reference_pairs(matrix, k)
    assert list(zip(first.tolist(), second.tolist())) == sorted(expected)
    np.testing.assert_allclose(scores, [expected[p] for p in sorted(expected)], atol=1e-5)


def test_an_exact_copy_pairs_with_its_original_whatever_the_tie_order():
    matrix = unit_rows(40, 8, seed=1)
    matrix[[5, 17, 30]] = matrix[22]  # four identical rows: 5, 17, 22, 30
    first, second, _ = nearest_pairs(matrix, 3)
    pairs = set(zip(first.tolist(), second.tolist()))
    assert {(5, 17), (5, 22), (5, 30), (17, 22), (17, 30), (22, 30)} <= pairs
    assert all(a < b for a, b in pairs)  # never a row with itself


def test_nearest_pairs_of_tiny_inputs():
    for n in (0, 1):
        first, second, scores = nearest_pairs(unit_rows(n, 4) if n else np.zeros((0, 4), np.float32), 5)
        assert len(first) == len(second) == len(scores) == 0
    first, second, _ = nearest_pairs(unit_rows(2, 4), 5)  # k is cut to the other rows
    assert (first.tolist(), second.tolist()) == ([0], [1])


@pytest.mark.parametrize("seed", range(5))
def test_connected_rows_equal_merging_sets_edge_by_edge(seed):
    rng = np.random.default_rng(seed)
    n = 200
    edges = rng.integers(0, n, (150, 2))
    edges = edges[edges[:, 0] != edges[:, 1]]
    labels = connected_rows(n, edges[:, 0], edges[:, 1])
    assert labels.tolist() == reference_components(n, edges.tolist())


def test_a_long_chain_is_one_group():
    n = 1000
    labels = connected_rows(n, np.arange(n - 1)[::-1], np.arange(1, n)[::-1])
    assert (labels == 0).all()


def test_groups_are_sorted_by_size_then_best_score_and_members_name_their_nearest():
    ids = [f"img{i}.jpg" for i in range(10)]
    paths = [f"/p/{i}" for i in ids]
    first = np.array([0, 1, 4, 7, 8])
    second = np.array([1, 2, 5, 8, 9])
    scores = np.array([0.96, 0.97, 0.999, 0.95, 0.98], np.float32)
    groups = group_pairs(first, second, scores, ids, paths)
    assert [[m.row for m in g.members] for g in groups] == [[7, 8, 9], [0, 1, 2], [4, 5]]
    chain = groups[1]
    assert [(m.row, m.nearest, m.score) for m in chain.members] == [
        (0, 1, pytest.approx(0.96)),
        (1, 2, pytest.approx(0.97)),
        (2, 1, pytest.approx(0.97)),
    ]
    assert (chain.best_score, chain.lowest_score) == (pytest.approx(0.97), pytest.approx(0.96))
    assert chain.to_dict()["size"] == 3 and chain.to_dict()["members"][0]["id"] == "img0.jpg"
    assert group_pairs(np.zeros(0), np.zeros(0), np.zeros(0), ids, paths) == []


# -- fingerprints -----------------------------------------------------------------


def test_copies_score_above_the_default_threshold_and_other_photos_far_below():
    originals = [photo_like(seed) for seed in range(6)]
    prints = [image_fingerprint(image) for image in originals]
    for image, original in zip(originals, prints):
        for name, copy in copies_of(image).items():
            score = float(fingerprint_scores(image_fingerprint(copy), original))
            assert score >= DEFAULT_THRESHOLD + 0.02, name
    for i in range(len(prints)):
        for j in range(i + 1, len(prints)):
            assert float(fingerprint_scores(prints[i], prints[j])) < 0.8


def test_flat_images_match_only_flat_images_of_nearly_the_same_colour():
    white, grey, light = (image_fingerprint(Image.new("RGB", (50, 40), (v, v, v))) for v in (255, 128, 250))
    photo = image_fingerprint(photo_like(0))
    assert float(fingerprint_scores(white, white)) == pytest.approx(1.0)
    assert float(fingerprint_scores(white, light)) == pytest.approx(1 - 5 / 255, abs=1e-4)
    assert float(fingerprint_scores(white, grey)) < 0.6
    assert float(fingerprint_scores(white, photo)) == 0.0
    # A flat colour other than grey has a pattern (its channels differ), like any image.
    red = image_fingerprint(Image.new("RGB", (50, 40), (200, 30, 30)))
    assert float(fingerprint_scores(red, red)) == pytest.approx(1.0)


def test_fingerprint_reads_png_with_alpha_gif_and_exif_rotated_jpeg(tmp_path):
    image = photo_like(2, size=(120, 80))
    image.save(tmp_path / "plain.png")
    rgba = image.convert("RGBA")
    rgba.save(tmp_path / "alpha.png")
    image.convert("P").save(tmp_path / "frame.gif")
    rotated = image.rotate(90, expand=True)  # stored rotated, EXIF says to turn it back
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(tmp_path / "turned.jpg", quality=95, exif=exif)
    reference = image_fingerprint(tmp_path / "plain.png")
    for name in ("alpha.png", "frame.gif", "turned.jpg"):
        assert float(fingerprint_scores(image_fingerprint(tmp_path / name), reference)) > 0.95, name


# -- the finder over an index -----------------------------------------------------


def test_finder_groups_every_planted_copy_and_nothing_else(tmp_path, planted_folder):
    root, planted = planted_folder
    index = random_index(tmp_path, root)
    # With as many neighbours as images every pair is a candidate: the pixels alone decide.
    groups = find_duplicates(index, neighbours=len(index))
    assert sorted(sorted(m.id for m in g.members) for g in groups) == sorted(sorted(g) for g in planted.values())
    assert all(len(g) == 6 for g in groups)
    for group in groups:
        assert all(m.score >= DEFAULT_THRESHOLD for m in group.members)
        assert all(m.path == os.path.join(str(root), *m.id.split("/")) for m in group.members)


def test_one_finder_answers_any_threshold_from_one_pass(tmp_path, planted_folder):
    root, _ = planted_folder
    finder = DuplicateFinder(random_index(tmp_path, root), neighbours=100)
    loose = finder.groups(0.5)
    strict = finder.groups(1.0)
    first, _, _ = finder.scored_pairs()
    assert finder.scored_pairs()[0] is first  # computed once
    assert sum(len(g) for g in strict) <= sum(len(g) for g in loose)
    with pytest.raises(ValueError, match="threshold"):
        finder.groups(0.0)


def test_missing_changed_and_broken_files_are_skipped_with_a_reason(tmp_path, planted_folder):
    root, planted = planted_folder
    index = random_index(tmp_path, root)
    (root / "copies" / "1_half.png").unlink()
    os.utime(root / "copies" / "1_r08.png", ns=(1, 1))
    finder = DuplicateFinder(index, neighbours=100)
    groups = finder.groups()
    reasons = dict(finder.skipped)
    assert set(reasons) == {"copies/1_half.png", "copies/1_r08.png"}
    assert "missing" in reasons["copies/1_half.png"] and "changed" in reasons["copies/1_r08.png"]
    group1 = next(g for g in groups if any(m.id == "photo1.jpg" for m in g.members))
    assert {m.id for m in group1.members} == planted["photo1.jpg"] - set(reasons)


def test_nearest_pairs_over_an_index_equal_those_over_its_array(tmp_path, planted_folder):
    root, _ = planted_folder
    index = random_index(tmp_path, root)
    matrix = index.embeddings(np.arange(len(index)))
    expected = nearest_pairs(matrix, 4)
    for memory_bytes in (0, 1 << 30):  # streamed for every tile, or read once
        first, second, scores = nearest_pairs(index, 4, tile_rows=5, memory_bytes=memory_bytes)
        np.testing.assert_array_equal(first, expected[0])
        np.testing.assert_array_equal(second, expected[1])
        np.testing.assert_allclose(scores, expected[2], atol=1e-6)  # products of other shapes round otherwise


@pytest.mark.parametrize("images", [0, 1])
def test_an_index_of_fewer_than_two_images_has_no_groups(tmp_path, images):
    root = tmp_path / "few"
    root.mkdir()
    for i in range(images):
        photo_like(i).save(root / f"{i}.png")
    finder = DuplicateFinder(random_index(tmp_path, root), progress=True)
    assert finder.groups() == [] and finder.skipped == []


# -- devise-dedup -----------------------------------------------------------------


def test_cli_lists_groups_and_prints_json(tmp_path, planted_folder, capsys):
    root, planted = planted_folder
    index = random_index(tmp_path, root)
    assert dedup_cli.main(["--index", index.path, "--neighbours", "100", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 group(s) of near-duplicates, 18 of 23 images (threshold 0.95)")
    assert "group 1: 6 images" in out
    lines = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert len(lines) == 18 and all(float(score) >= 0.95 for score, _ in lines)
    assert {image_id for _, image_id in lines} == set().union(*planted.values())
    assert dedup_cli.main(["--index", index.path, "--neighbours", "100", "--json", "--threshold", "0.97"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["images"] == 23 and data["threshold"] == 0.97 and data["skipped"] == []
    assert sorted(sorted(m["id"] for m in g["members"]) for g in data["groups"]) == sorted(
        sorted(g) for g in planted.values()
    )
    assert [g["size"] for g in data["groups"]] == [6, 6, 6]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threshold", "0"], "--threshold must be in (0, 1]"),
        (["--threshold", "1.5"], "--threshold must be in (0, 1]"),
        (["--neighbours", "0"], "--neighbours must be between 1 and 1000"),
    ],
)
def test_cli_refuses_bad_options_with_usage_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        dedup_cli.main(["--index", str(tmp_path / "x.h5"), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_missing_index_is_one_line(tmp_path, capsys):
    assert dedup_cli.main(["--index", str(tmp_path / "nope.h5")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("devise-dedup: error:") and "not found" in err[0]


# -- end to end: real photos, a trained model -----------------------------------

# Real photographs shipped with scikit-image (the test extra), and scans,
# textures and a stereo pair (motorcycle_left/right: two distinct photos of
# one scene, the hardest negative here).
_SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "color.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "logo.png",
    "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
)  # fmt: skip


@pytest.mark.slow
def test_devise_dedup_finds_every_planted_copy_of_real_photos_and_no_false_group(tiny_run, tmp_path, capsys):
    """Issue 11: planted re-encoded and resized copies are all found, no group among the originals."""
    skimage = pytest.importorskip("skimage")
    from devise.cli import index as index_cli

    data = pathlib.Path(skimage.__file__).parent / "data"
    root = tmp_path / "photos"
    (root / "album").mkdir(parents=True)
    (root / "exports").mkdir()
    originals = []
    for name in _SKIMAGE_PHOTOS:
        image = Image.open(data / name).convert("RGB")
        stem = name.rsplit(".", 1)[0]
        image.save(root / "album" / f"{stem}.jpg", quality=92)
        originals.append((f"album/{stem}.jpg", image))
        if min(image.size) >= 500:  # four distinct photos more: the quarters of a large one
            w, h = image.size
            for q, (x, y) in enumerate([(0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2)]):
                quarter = image.crop((x, y, x + w // 2, y + h // 2))
                quarter.save(root / "album" / f"{stem}_q{q}.jpg", quality=92)
                originals.append((f"album/{stem}_q{q}.jpg", quarter))
    assert len(originals) >= 30
    planted = {}
    for image_id, image in originals[::3]:
        stem = image_id.split("/")[1].rsplit(".", 1)[0]
        w, h = image.size
        copies = {
            f"exports/{stem}-q60.jpg": image,  # re-encoded
            f"exports/{stem}-half.png": image.resize((w // 2, h // 2), Image.LANCZOS),
            f"exports/{stem}-80.jpg": image.resize((int(w * 0.8), int(h * 0.8)), Image.LANCZOS),
            f"exports/{stem}-crop.png": image.crop((w // 33, h // 33, w - w // 33, h - h // 33)),  # 3% borders
        }
        for copy_id, copy in copies.items():
            copy.save(root / copy_id, quality=60 if copy_id.endswith("q60.jpg") else 85)
        planted[image_id] = {image_id, *copies}

    out = tmp_path / "photos.h5"
    assert index_cli.main(["--run", str(tiny_run), "--images", str(root), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert dedup_cli.main(["--index", str(out), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["skipped"] == []
    groups = [{m["id"] for m in g["members"]} for g in result["groups"]]
    assert sorted(map(sorted, groups)) == sorted(map(sorted, planted.values()))

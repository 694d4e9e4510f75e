"""``/api/duplicates``: near-duplicate groups over HTTP, bounded and computed once."""

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def photo_like(seed: int, size=(160, 120)) -> Image.Image:
    """A smooth random colour field with grain (distinct seeds give distinct pictures)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    grain = rng.normal(0, 6, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(coarse, np.float64) + grain, 0, 255).astype(np.uint8))


@pytest.fixture
def planted(tmp_path, index_folder):
    """Four photos, and copies of two of them: a re-encoded and a resized one each."""
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(4):
        image = photo_like(i)
        image.save(root / f"p{i}.png")
        if i in (1, 3):
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=60)
            (root / f"p{i}-q60.jpg").write_bytes(buffer.getvalue())
            image.resize((80, 60), Image.LANCZOS).save(root / f"p{i}-half.png")
    return index_folder(root)  # random embeddings: with 8 images every pair is a candidate


def test_duplicates_lists_the_planted_groups_with_thumbnails(serve_index, planted, fetch):
    server = serve_index(planted)
    status, data = fetch.json(server, "/api/duplicates")
    assert status == 200
    assert data["threshold"] == 0.95 and data["images"] == 8 and data["skipped"] == 0
    assert data["groups_found"] == 2
    assert sorted(sorted(m["id"] for m in g["members"]) for g in data["groups"]) == [
        ["p1-half.png", "p1-q60.jpg", "p1.png"],
        ["p3-half.png", "p3-q60.jpg", "p3.png"],
    ]
    for group in data["groups"]:
        assert group["size"] == 3 and group["best_score"] >= group["lowest_score"] >= 0.95
        for rank, member in enumerate(group["members"], 1):
            assert member["rank"] == rank
            assert member["thumbnail_url"] == f"/api/thumbnail/{member['row']}"
            assert member["nearest"] in {m["row"] for m in group["members"]} - {member["row"]}
    thumb_status, headers, _ = fetch(server, data["groups"][0]["members"][0]["thumbnail_url"])
    assert thumb_status == 200 and headers.get_content_type() == "image/jpeg"


def test_images_are_fingerprinted_once_for_every_threshold(serve_index, planted, fetch, monkeypatch):
    from devise.search import dedup

    calls = []
    real = dedup.image_fingerprint
    monkeypatch.setattr(dedup, "image_fingerprint", lambda path: calls.append(path) or real(path))
    server = serve_index(planted)
    for threshold in ("0.5", "0.95", "0.999", "0.95"):
        status, _ = fetch.json(server, f"/api/duplicates?threshold={threshold}")
        assert status == 200
    assert len(calls) == 8


def test_groups_returned_are_capped(serve_index, planted, fetch):
    server = serve_index(planted, max_duplicate_groups=1)
    status, data = fetch.json(server, "/api/duplicates")
    assert status == 200 and data["groups_found"] == 2 and len(data["groups"]) == 1


@pytest.mark.parametrize("given", ["0", "-0.5", "1.5", "nan", "inf", "high"])
def test_a_threshold_outside_0_to_1_is_refused(serve_index, planted, fetch, given):
    server = serve_index(planted)
    status, data = fetch.json(server, f"/api/duplicates?threshold={given}")
    assert status == 400
    assert data["error"] == f"threshold must be a number in (0, 1], got {given!r}"


def test_the_page_has_the_duplicates_button(serve_index, planted, fetch):
    server = serve_index(planted)
    _, _, page = fetch(server, "/")
    _, _, script = fetch(server, "/static/app.js")
    assert b'id="dups"' in page and b"/api/duplicates" in script

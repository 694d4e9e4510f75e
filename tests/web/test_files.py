"""A served file must be the file that was indexed: no swapped links, no changed contents (issue 8 item 6)."""

import os
import shutil

import pytest

from devise.web.files import (
    IndexedFileChangedError,
    IndexedFileMissingError,
    open_indexed_file,
)

SECRET = b"root:x:0:0:secret line from outside the indexed folder\n"


def row_of(index, image_id: str) -> int:
    row = index.row_of(image_id)
    assert row is not None, image_id
    return row


@pytest.fixture
def indexed(photo_folder, index_folder, tmp_path):
    """(photo folder, its index, a folder outside it holding a secret file)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    return photo_folder, index_folder(photo_folder), outside


def test_an_unchanged_file_opens_with_the_indexed_bytes(indexed):
    root, index, _ = indexed
    for row, image_id in enumerate(index.ids):
        with open_indexed_file(index, row) as f:
            assert f.read() == (root / image_id).read_bytes()


def test_a_file_replaced_by_a_link_is_refused_even_to_an_identical_copy(indexed):
    root, index, outside = indexed
    row = row_of(index, "b.jpg")
    # A copy with the same size and mtime: only refusing the link itself stops it.
    shutil.copy2(root / "b.jpg", outside / "b.jpg")
    (root / "b.jpg").unlink()
    (root / "b.jpg").symlink_to(outside / "b.jpg")
    with pytest.raises(IndexedFileChangedError, match="symbolic link"):
        open_indexed_file(index, row)


def test_a_folder_swapped_for_a_link_is_refused(indexed):
    root, index, outside = indexed
    row = row_of(index, "sub/g.png")
    shutil.copytree(root / "sub", outside / "sub", copy_function=shutil.copy2)  # same sizes and mtimes
    shutil.rmtree(root / "sub")
    (root / "sub").symlink_to(outside / "sub", target_is_directory=True)
    with pytest.raises(IndexedFileChangedError, match="'sub' is now a symbolic link"):
        open_indexed_file(index, row)


@pytest.mark.parametrize("change", ["content", "mtime"])
def test_a_changed_file_is_refused_with_a_hint_to_reindex(indexed, change):
    root, index, _ = indexed
    row = row_of(index, "a.png")
    path = root / "a.png"
    if change == "content":
        path.write_bytes(path.read_bytes() + b"more")
    else:
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(IndexedFileChangedError, match="re-run devise-index"):
        open_indexed_file(index, row)


def test_a_deleted_file_is_missing_and_a_fifo_does_not_hang(indexed):
    root, index, _ = indexed
    (root / "c.gif").unlink()
    with pytest.raises(IndexedFileMissingError, match="no longer on disk"):
        open_indexed_file(index, row_of(index, "c.gif"))
    (root / "d.webp").unlink()
    os.mkfifo(root / "d.webp")
    with pytest.raises(IndexedFileChangedError, match="not a regular file|no longer a regular file"):
        open_indexed_file(index, row_of(index, "d.webp"))


def test_the_server_never_sends_a_swapped_file(indexed, serve_index, fetch):
    root, index, outside = indexed
    server = serve_index(index)
    row = row_of(index, "e.png")
    assert fetch(server, f"/api/image/{row}")[0] == 200
    (root / "e.png").unlink()
    (root / "e.png").symlink_to(outside / "secret.txt")
    for route in ("image", "thumbnail", "captions"):
        status, body = fetch.json(server, f"/api/{route}/{row}")
        assert status == 410, (route, body)
        assert "symbolic link" in body["error"] and str(outside) not in body["error"]
    assert SECRET not in fetch(server, f"/api/image/{row}")[2]
    assert server.engine.annotated == []  # not even captioned

    row = row_of(index, "f.jpg")
    (root / "f.jpg").write_bytes(b"\xff\xd8 a different picture")
    status, body = fetch.json(server, f"/api/image/{row}")
    assert status == 410 and "changed since it was indexed" in body["error"] and "re-run devise-index" in body["error"]

    (root / "a.png").unlink()
    status, body = fetch.json(server, f"/api/thumbnail/{row_of(index, 'a.png')}")
    assert status == 404 and "no longer on disk" in body["error"]
    status, body = fetch.json(server, "/api/health")
    assert status == 200 and body["status"] == "ok"


def test_a_thumbnail_cached_before_a_swap_is_not_served_after_it(indexed, serve_index, fetch):
    root, index, outside = indexed
    server = serve_index(index)
    row = row_of(index, "sub/h.jpg")
    assert fetch(server, f"/api/thumbnail/{row}")[0] == 200
    shutil.copy2(root / "sub" / "h.jpg", outside / "h.jpg")
    (root / "sub" / "h.jpg").unlink()
    (root / "sub" / "h.jpg").symlink_to(outside / "h.jpg")
    status, body = fetch.json(server, f"/api/thumbnail/{row}")
    assert status == 410, body

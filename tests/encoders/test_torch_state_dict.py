"""The legacy ``.pth`` reader refuses crafted files with one DataFormatError, before allocating.

Every file here is written byte by byte in PyTorch's legacy format (magic,
protocol, sys info, the pickled dict, the pickled storage keys, then each
storage as an int64 count and raw data), so nothing needs torch.
"""

from __future__ import annotations

import pickle
import struct
import tracemalloc

import numpy as np
import pytest

from devise.encoders.torch_state_dict import load_torch_state_dict
from devise.errors import DataFormatError

_TYPE_NAMES = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(i: int) -> bytes:
    raw = i.to_bytes(i.bit_length() // 8 + 1, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw if len(raw) < 256 else b"\x8b" + struct.pack("<i", len(raw)) + raw


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _tensor(storage, offset=0, size=None, stride=None, **extra) -> dict:
    """A tensor spec: storage array, its view (default: all of it), and optional lies about the storage."""
    size = (storage.size,) if size is None else size
    stride = tuple(int(np.prod(size[i + 1 :])) for i in range(len(size))) if stride is None else stride
    return {"storage": storage, "offset": offset, "size": size, "stride": stride, **extra}


def _legacy_pth(tensors: dict, *, magic: int = 0x1950A86A20F9469CFC6C, patch_type: bytes = b"") -> bytes:
    """``tensors``: name -> :func:`_tensor` spec; optional spec keys:

    ``type_name`` (the storage type global), ``declared`` (the element count
    in the persistent id), ``count`` (the int64 before the data), ``data``
    (the raw bytes), ``key`` (share a storage between entries).
    ``patch_type`` is pickle inserted after the storage type global (e.g. a BUILD).
    """
    body = b"\x80\x02" + _global("collections", "OrderedDict") + b")R("
    keys, blobs = [], []
    for i, (name, spec) in enumerate(tensors.items()):
        storage = spec["storage"]
        key = spec.get("key", str(i))
        pid = _tuple(
            _str("storage"),
            _global("torch", spec.get("type_name", _TYPE_NAMES[storage.dtype])) + patch_type,
            _str(key),
            _str("cpu"),
            _int(spec.get("declared", storage.size)),
            b"N",
        )
        args = _tuple(
            pid + b"Q",
            _int(spec["offset"]),
            _tuple(*map(_int, spec["size"])),
            _tuple(*map(_int, spec["stride"])),
            b"\x89",
            _global("collections", "OrderedDict") + b")R",
        )
        body += _str(name) + _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"
        if key not in keys:
            keys.append(key)
            data = spec.get("data", storage.astype(storage.dtype.newbyteorder("<")).tobytes())
            blobs.append(struct.pack("<q", spec.get("count", storage.size)) + data)
    body += b"u."
    out = pickle.dumps(magic, protocol=2)
    out += pickle.dumps(1001, protocol=2)
    out += pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
    return out + body + pickle.dumps(keys, protocol=2) + b"".join(blobs)


def _refused(tmp_path, content: bytes, match: str, *, max_peak_bytes: int = 16 << 20) -> str:
    """Load ``content`` as a .pth; assert one DataFormatError naming the file, with little memory used."""
    path = tmp_path / "crafted.pth"
    path.write_bytes(content)
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError, match=match) as info:
            load_torch_state_dict(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert peak < max_peak_bytes, f"{peak / 2**20:.0f} MiB allocated to refuse a {len(content)}-byte file"
    return message


def test_a_well_formed_file_still_loads(tmp_path):
    base = np.arange(6, dtype=np.float32)
    path = tmp_path / "ok.pth"
    path.write_bytes(_legacy_pth({"w": _tensor(base, 0, (3, 2), (1, 3)), "n": _tensor(np.array([5]), 0, (), ())}))
    sd = load_torch_state_dict(path)
    np.testing.assert_array_equal(sd["w"], base.reshape(2, 3).T)
    assert int(sd["n"]) == 5


def test_an_unknown_storage_type_is_named(tmp_path):
    content = _legacy_pth({"w": _tensor(np.zeros(2, np.float32), type_name="FloatStorageX")})
    _refused(tmp_path, content, r"torch\.FloatStorageX")


def test_a_storage_type_renamed_after_unpickling_is_refused(tmp_path):
    """A BUILD opcode on the storage type sets its ``name``: a KeyError traceback before."""
    rename = b"}" + _str("name") + _str("NoSuchStorage") + b"sb"
    content = _legacy_pth({"w": _tensor(np.zeros(2, np.float32))}, patch_type=rename)
    _refused(tmp_path, content, "crafted.pth")


def test_a_zero_stride_tensor_claiming_364_tib_is_refused_without_allocating(tmp_path):
    """One float repeated 10^14 times: a MemoryError traceback before."""
    content = _legacy_pth({"w": _tensor(np.ones(1, np.float32), 0, (10**7, 10**7), (0, 0))})
    assert len(content) < 1024
    message = _refused(tmp_path, content, "w")
    assert "364" in message or "TiB" in message or "bytes" in message


def test_a_1kb_file_cannot_allocate_hundreds_of_megabytes(tmp_path):
    """A zero-stride view that fits in memory was materialised anyway (400 MB from under 1 kB)."""
    content = _legacy_pth({"w": _tensor(np.ones(1, np.float32), 0, (10_000, 10_000), (0, 0))})
    _refused(tmp_path, content, "w")


def test_many_views_of_one_storage_are_bounded_in_total(tmp_path):
    """Each view is modest; together they would expand a 1 kB file to 24 MB."""
    one = np.ones(1, np.float32)
    content = _legacy_pth({f"w{i}": _tensor(one, 0, (1000, 750), (0, 0), key="shared") for i in range(8)})
    _refused(tmp_path, content, "crafted.pth")


def test_a_storage_larger_than_the_file_is_refused_before_reading(tmp_path):
    spec = _tensor(np.zeros(1, np.float32), declared=10**12, count=10**12, size=(1,), stride=(1,))
    _refused(tmp_path, _legacy_pth({"w": spec}), "storage")


@pytest.mark.parametrize("declared", [-1, 2**62, 10**2000])
def test_a_negative_or_huge_storage_count_is_refused(tmp_path, declared):
    spec = _tensor(np.zeros(1, np.float32), declared=declared)
    _refused(tmp_path, _legacy_pth({"w": spec}), "storage")


@pytest.mark.parametrize(
    "offset, size, stride",
    [
        (0, (3, 2), (2, 1)),  # the last element is storage[5] of 4
        (3, (2,), (1,)),  # the offset pushes it past the end
        (0, (2,), (-1,)),  # negative stride
        (-1, (1,), (1,)),  # negative offset
        (0, (2, 2), (1,)),  # rank of size and stride differ
        (0, (1,) * 100, (0,) * 100),  # more dimensions than numpy has
        (0, (0, 2**62, 2**62), (0, 0, 0)),  # empty, but its shape overflows
    ],
)
def test_a_view_outside_its_storage_is_refused(tmp_path, offset, size, stride):
    content = _legacy_pth({"w": _tensor(np.zeros(4, np.float32), offset, size, stride)})
    _refused(tmp_path, content, "'w'")


def test_a_wrong_magic_number_is_refused(tmp_path):
    content = _legacy_pth({"w": _tensor(np.zeros(2, np.float32))}, magic=12345)
    _refused(tmp_path, content, "magic number")


def test_every_truncation_of_a_file_is_refused(tmp_path):
    content = _legacy_pth({"w": _tensor(np.arange(3, dtype=np.float32)), "n": _tensor(np.array([1, 2]))})
    for cut in range(len(content)):
        _refused(tmp_path, content[:cut], "crafted.pth")


def test_a_huge_pickle_memo_index_does_not_allocate(tmp_path):
    """LONG_BINPUT 2^25 (a legal pickle): the C unpickler sizes its memo array by the index, 512 MB here."""
    content = _legacy_pth({"w": _tensor(np.zeros(2, np.float32))})
    assert content.startswith(b"\x80\x02")
    memo_bomb = b"N" + b"r" + struct.pack("<I", 2**25) + b"0"  # push None, memoise it at 2^25, pop it
    path = tmp_path / "memo.pth"
    path.write_bytes(content[:2] + memo_bomb + content[2:])
    tracemalloc.start()
    try:
        sd = load_torch_state_dict(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sd["w"].tolist() == [0.0, 0.0]
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB allocated for one memo entry"


def test_changing_a_stand_in_with_build_is_refused(tmp_path):
    """BUILD on the storage (a persistent id) replaced its checked type: an AttributeError traceback before."""
    content = _legacy_pth({"w": _tensor(np.zeros(2, np.float32))})
    marker = b"N" + b"t"  # the end of the persistent id tuple (view_metadata None)
    at = content.index(marker) + len(marker)
    assert content[at : at + 1] == b"Q"
    state = b"}" + _str("storage_type") + _str("x") + b"sb"
    crafted = content[: at + 1] + state + content[at + 1 :]
    _refused(tmp_path, crafted, "crafted.pth")

"""Read a PyTorch ``state_dict`` saved in the legacy (pre-zip) format, without torch.

PyTorch's legacy serialisation (``torch.save(..., _use_new_zipfile_serialization=False)``
and every ``.pth`` written before PyTorch 1.6) is a sequence of pickles
followed by raw tensor data::

    pickle(magic number) pickle(protocol version) pickle(sys info)
    pickle(the object)              # tensors are persistent ids to storages
    pickle([storage keys])          # the order the storages follow in
    for each key: int64 little-endian element count, then the raw elements

Unpickling is done by :class:`_RestrictedUnpickler`, which resolves only
the handful of globals a state dict needs (``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` and the ``torch.*Storage`` type names)
to harmless local stand-ins; any other global, such as ``os.system``, is
refused with a :class:`~devise.errors.DataFormatError`. Nothing from torch
is imported or needed.

A crafted file is refused before anything is allocated for it: every
storage's element count is checked against the bytes left in the file,
every tensor's offset, size and stride against its storage, and the tensors
together may not expand the file by more than :data:`MAX_EXPANSION` times
(plus :data:`EXPANSION_ALLOWANCE_BYTES`), which bounds zero-stride views
that claim terabytes from one stored number. Whatever is wrong with a file
is reported as one :class:`~devise.errors.DataFormatError` naming the file.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct

import numpy as np

from devise.errors import DataFormatError, DeviseError, shown

__all__ = ["load_torch_state_dict"]

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

#: The tensors of a file may take at most this many times the file's size in memory ...
MAX_EXPANSION = 4
#: ... plus this much, so that a small file may hold a few broadcast (zero-stride) tensors.
EXPANSION_ALLOWANCE_BYTES = 16 << 20
#: No real weight has more dimensions (numpy allows 64).
_MAX_RANK = 32


def _size_text(nbytes: int) -> str:
    if nbytes >= 1 << 60:  # claimed sizes can have thousands of digits
        return "over 1 EiB"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):  # noqa: B007 - the unit reached is used after the loop
        if nbytes < 1024:
            break
        nbytes /= 1024
    return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"


def _is_count(value) -> bool:
    """A non-negative Python int (pickle gives no other integer type; bool is refused)."""
    return type(value) is int and value >= 0


class _Frozen:
    """Stand-ins refuse the pickle ``BUILD`` opcode, which would change them after they were checked."""

    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"the pickle modifies a {type(self).__name__.lstrip('_')} (BUILD)")


# Storage type name -> numpy dtype (little-endian form; flipped if the file
# says it was written on a big-endian machine). bfloat16 has no numpy dtype:
# it is read as uint16 and widened to float32.
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "<i1",
    "ByteStorage": "<u1",
    "BoolStorage": "<?",
}


class _StorageType(_Frozen):
    """Stand-in for a ``torch.*Storage`` class named in a persistent id."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"torch.{self.name}"


class _StorageRef(_Frozen):
    """A storage announced by a persistent id; its bytes come later."""

    __slots__ = ("data", "key", "numel", "storage_type")

    def __init__(self, key: str, storage_type: _StorageType, numel: int):
        self.key = key
        self.storage_type = storage_type
        self.numel = numel
        self.data: np.ndarray | None = None


class _StorageView(_Frozen):
    """Legacy view of a slice of another storage (``view_metadata``)."""

    __slots__ = ("base", "numel", "offset")

    def __init__(self, base: _StorageRef, offset: int, numel: int):
        self.base = base
        self.offset = offset
        self.numel = numel


class _TensorRecord(_Frozen):
    """What ``torch._utils._rebuild_tensor_v2`` was called with."""

    __slots__ = ("size", "storage", "storage_offset", "stride")

    def __init__(self, storage, storage_offset, size, stride):
        self.storage = storage
        self.storage_offset = storage_offset
        self.size = size
        self.stride = stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *args):
    return _TensorRecord(storage, storage_offset, size, stride)


# The pure-Python unpickler, not the C one: the C unpickler sizes its memo
# array by the largest memo index in the stream, so five bytes (LONG_BINPUT
# 2**32-1) make it allocate 64 GB. The pickles of a state dict are small
# (the tensor data is read separately), so the speed does not matter.
class _RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that can build a state dict and nothing else."""

    def __init__(self, file, path: str, storages: dict[str, _StorageRef], file_size: int):
        super().__init__(file)
        self._path = path
        self._storages = storages
        self._file_size = file_size

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise DataFormatError(
            f"{self._path}: refusing to unpickle global '{module:.80}.{name:.80}' "
            "(only collections.OrderedDict, torch._utils._rebuild_tensor_v2 and "
            "torch.*Storage types are allowed in a weight file)"
        )

    def persistent_load(self, pid):
        path = self._path
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise DataFormatError(f"{path}: unexpected persistent id {shown(pid)}")
        _, storage_type, key, _location, numel = pid[:5]
        view_metadata = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise DataFormatError(f"{path}: storage {shown(key)} has unsupported type {shown(storage_type)}")
        if not _is_count(numel):
            raise DataFormatError(f"{path}: storage {shown(key)} has invalid size {shown(numel)}")
        nbytes = numel * np.dtype(_STORAGE_DTYPES[storage_type.name]).itemsize
        if nbytes > self._file_size:
            raise DataFormatError(
                f"{path}: storage {shown(key)} claims {shown(numel)} elements ({_size_text(nbytes)}), "
                f"more than the whole file ({_size_text(self._file_size)}); the file is corrupt or crafted"
            )
        key = str(key)
        ref = self._storages.get(key)
        if ref is None:
            ref = self._storages[key] = _StorageRef(key, storage_type, numel)
        elif ref.storage_type.name != storage_type.name or ref.numel != numel:
            raise DataFormatError(f"{path}: storage {shown(key)} is declared twice, differently")
        if view_metadata is None:
            return ref
        try:
            _view_key, offset, view_numel = view_metadata
        except (TypeError, ValueError):
            raise DataFormatError(f"{path}: malformed storage view {shown(view_metadata)}") from None
        if not (_is_count(offset) and _is_count(view_numel)) or offset + view_numel > numel:
            raise DataFormatError(f"{path}: storage view {shown(view_metadata)} is out of bounds")
        return _StorageView(ref, offset, view_numel)


def _load_pickle(f, path: str, storages: dict[str, _StorageRef], file_size: int, what: str):
    try:
        return _RestrictedUnpickler(f, path, storages, file_size).load()
    except DataFormatError:
        raise
    except EOFError:
        raise DataFormatError(f"{path}: truncated file (ended while reading the {what})") from None
    except Exception as exc:  # pickle raises many types on corrupt input
        detail = " ".join(str(exc).split())[:200]
        raise DataFormatError(f"{path}: corrupt {what} ({type(exc).__name__}: {detail})") from None


def _read_storages(f, raw: bytes, path: str, keys, storages: dict[str, _StorageRef], little_endian: bool) -> None:
    """Point each storage at its bytes in ``raw`` (no copy), after checking they are all there."""
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise DataFormatError(f"{path}: the storage key list is malformed")
    pos = f.tell()
    for key in keys:
        ref = storages.get(key)
        if ref is None:
            raise DataFormatError(f"{path}: storage {shown(key)} is listed but never referenced")
        if len(raw) - pos < 8:
            raise DataFormatError(f"{path}: truncated file (ended before storage {shown(key)})")
        (count,) = struct.unpack_from("<q", raw, pos)
        pos += 8
        if count != ref.numel:
            raise DataFormatError(f"{path}: storage {shown(key)} holds {count} elements, {ref.numel} were announced")
        dtype = np.dtype(_STORAGE_DTYPES[ref.storage_type.name])
        if not little_endian:
            dtype = dtype.newbyteorder(">")
        nbytes = count * dtype.itemsize
        if nbytes > len(raw) - pos:
            raise DataFormatError(
                f"{path}: truncated file (storage {shown(key)} needs {nbytes} bytes, only {len(raw) - pos} remain)"
            )
        data = np.frombuffer(raw, dtype=dtype, count=count, offset=pos)
        pos += nbytes
        if ref.storage_type.name == "BFloat16Storage":
            data = (data.astype(np.uint32) << 16).view(np.float32)
        elif not dtype.isnative:
            data = data.astype(dtype.newbyteorder("="))
        ref.data = data
    missing = [k for k, ref in storages.items() if ref.data is None]
    if missing:
        raise DataFormatError(f"{path}: storage(s) {shown(missing[:5])} are referenced but have no data")


def _materialise(path: str, name: str, record: _TensorRecord, budget: int) -> np.ndarray:
    """The tensor as a C-contiguous array, if its view lies inside its storage and ``budget`` bytes hold it."""
    storage, base_offset, base_numel = record.storage, 0, None
    if isinstance(storage, _StorageView):
        storage, base_offset, base_numel = storage.base, storage.offset, storage.numel
    if not isinstance(storage, _StorageRef):
        raise DataFormatError(f"{path}: tensor {shown(name)} is not backed by a storage")
    size, stride, offset = record.size, record.stride, record.storage_offset
    ok = (
        _is_count(offset)
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and len(size) == len(stride) <= _MAX_RANK
        and all(_is_count(v) for v in size + stride)
    )
    if not ok:
        raise DataFormatError(
            f"{path}: tensor {shown(name)} has malformed size/stride/offset "
            f"({shown(size)}, {shown(stride)}, {shown(offset)}): "
            f"non-negative integers, at most {_MAX_RANK} dimensions"
        )
    data = storage.data
    available = len(data) - base_offset if base_numel is None else base_numel
    numel = math.prod(size)
    # Zero-length dimensions aside, so that an empty tensor cannot claim a shape numpy cannot build.
    nbytes = math.prod(max(n, 1) for n in size) * data.itemsize
    if nbytes > budget:
        raise DataFormatError(
            f"{path}: tensor {shown(name)} (size {shown(size)}, stride {shown(stride)}) would take "
            f"{_size_text(nbytes)}, more than the file's tensors may expand to "
            f"({MAX_EXPANSION}x the file size plus {_size_text(EXPANSION_ALLOWANCE_BYTES)}); "
            "the file is corrupt or crafted"
        )
    if numel == 0:
        return np.zeros(size, dtype=data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= available:
        raise DataFormatError(
            f"{path}: tensor {shown(name)} (size {shown(size)}, stride {shown(stride)}, offset {offset}) "
            f"runs past the end of its storage of {available} elements"
        )
    start = base_offset + offset
    item = data.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[start:], shape=size, strides=tuple(s * item for s in stride), writeable=False
    )
    return np.array(view, copy=True, order="C")


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a legacy-format PyTorch ``state_dict`` into numpy arrays.

    Args:
        path: a ``.pth``/``.pt`` file written in PyTorch's pre-zip format.

    Returns:
        ``{parameter name: array}`` in file order, each array C-contiguous
        with the tensor's dtype (``bfloat16`` is widened to ``float32``).

    Raises:
        DataFormatError: the file is not in this format (wrong magic number,
            or a zip-based checkpoint), is truncated, its pickle names a
            global other than the few a state dict needs, or a tensor lies
            outside its storage or would expand the file past
            :data:`MAX_EXPANSION` times its size. The message names the
            file and what is wrong.
        DeviseError: the file cannot be read (a folder, no permission).
        FileNotFoundError: there is no such file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DeviseError(f"{path}: cannot read the weights file ({exc.strerror or exc})") from None
    if raw[:4] == b"PK\x03\x04":
        raise DataFormatError(
            f"{path}: this is a zip-based PyTorch checkpoint; only the legacy format is supported "
            "(re-save it with torch.save(sd, f, _use_new_zipfile_serialization=False))"
        )
    try:
        return _parse(raw, path)
    except DataFormatError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError, RecursionError) as exc:
        # A safety net: the checks in _parse should catch a bad file first.
        detail = " ".join(str(exc).split())[:200]
        raise DataFormatError(f"{path}: malformed weight file ({type(exc).__name__}: {detail})") from None


def _parse(raw: bytes, path: str) -> dict[str, np.ndarray]:
    f = io.BytesIO(raw)
    storages: dict[str, _StorageRef] = {}
    magic = _load_pickle(f, path, storages, len(raw), "magic number")
    if magic != _MAGIC_NUMBER:
        raise DataFormatError(f"{path}: not a legacy PyTorch file (wrong magic number)")
    protocol = _load_pickle(f, path, storages, len(raw), "protocol version")
    if protocol != _PROTOCOL_VERSION:
        raise DataFormatError(f"{path}: unsupported PyTorch serialisation protocol {shown(protocol)}")
    sys_info = _load_pickle(f, path, storages, len(raw), "system info")
    little_endian = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    if not isinstance(little_endian, bool):
        raise DataFormatError(f"{path}: the system info has a malformed little_endian {shown(little_endian)}")
    obj = _load_pickle(f, path, storages, len(raw), "state dict")
    keys = _load_pickle(f, path, storages, len(raw), "storage key list")
    _read_storages(f, raw, path, keys, storages, little_endian)

    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: expected a state dict, found {type(obj).__name__}")
    budget = MAX_EXPANSION * len(raw) + EXPANSION_ALLOWANCE_BYTES
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, _TensorRecord):
            raise DataFormatError(f"{path}: entry {shown(name)} is not a named tensor")
        out[name] = _materialise(path, name, value, budget)
        budget -= out[name].nbytes
    return out

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
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct

import numpy as np

from devise.errors import DataFormatError

__all__ = ["load_torch_state_dict"]

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

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


class _StorageType:
    """Stand-in for a ``torch.*Storage`` class named in a persistent id."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"torch.{self.name}"


class _StorageRef:
    """A storage announced by a persistent id; its bytes come later."""

    def __init__(self, key: str, storage_type: _StorageType, numel: int):
        self.key = key
        self.storage_type = storage_type
        self.numel = numel
        self.data: np.ndarray | None = None


class _StorageView:
    """Legacy view of a slice of another storage (``view_metadata``)."""

    def __init__(self, base: _StorageRef, offset: int, numel: int):
        self.base = base
        self.offset = offset
        self.numel = numel


class _TensorRecord:
    """What ``torch._utils._rebuild_tensor_v2`` was called with."""

    def __init__(self, storage, storage_offset, size, stride):
        self.storage = storage
        self.storage_offset = storage_offset
        self.size = size
        self.stride = stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *args):
    return _TensorRecord(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can build a state dict and nothing else."""

    def __init__(self, file, path: str, storages: dict[str, _StorageRef]):
        super().__init__(file)
        self._path = path
        self._storages = storages

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise DataFormatError(
            f"{self._path}: refusing to unpickle global '{module}.{name}' "
            "(only collections.OrderedDict, torch._utils._rebuild_tensor_v2 and "
            "torch.*Storage types are allowed in a weight file)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise DataFormatError(f"{self._path}: unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid[:5]
        view_metadata = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise DataFormatError(f"{self._path}: storage {key!r} has unsupported type {storage_type!r:.80}")
        if not isinstance(numel, int) or numel < 0:
            raise DataFormatError(f"{self._path}: storage {key!r} has invalid size {numel!r:.80}")
        key = str(key)
        ref = self._storages.get(key)
        if ref is None:
            ref = self._storages[key] = _StorageRef(key, storage_type, numel)
        elif ref.storage_type.name != storage_type.name:
            raise DataFormatError(f"{self._path}: storage {key!r} is declared with two types")
        if view_metadata is None:
            return ref
        try:
            _view_key, offset, view_numel = view_metadata
        except (TypeError, ValueError):
            raise DataFormatError(f"{self._path}: malformed storage view {view_metadata!r:.80}") from None
        if not (isinstance(offset, int) and isinstance(view_numel, int)) or offset < 0 or offset + view_numel > numel:
            raise DataFormatError(f"{self._path}: storage view {view_metadata!r:.80} is out of bounds")
        return _StorageView(ref, offset, view_numel)


def _load_pickle(f, path: str, storages: dict[str, _StorageRef], what: str):
    try:
        return _RestrictedUnpickler(f, path, storages).load()
    except DataFormatError:
        raise
    except EOFError:
        raise DataFormatError(f"{path}: truncated file (ended while reading the {what})") from None
    except Exception as exc:  # pickle raises many types on corrupt input
        raise DataFormatError(f"{path}: corrupt {what} ({type(exc).__name__}: {exc})") from None


def _read_storages(f, path: str, keys, storages: dict[str, _StorageRef], little_endian: bool) -> None:
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise DataFormatError(f"{path}: the storage key list is malformed")
    for key in keys:
        ref = storages.get(key)
        if ref is None:
            raise DataFormatError(f"{path}: storage {key!r} is listed but never referenced")
        header = f.read(8)
        if len(header) != 8:
            raise DataFormatError(f"{path}: truncated file (ended before storage {key!r})")
        (count,) = struct.unpack("<q", header)
        if count != ref.numel:
            raise DataFormatError(f"{path}: storage {key!r} holds {count} elements, {ref.numel} were announced")
        dtype = np.dtype(_STORAGE_DTYPES[ref.storage_type.name])
        if not little_endian:
            dtype = dtype.newbyteorder(">")
        nbytes = count * dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise DataFormatError(
                f"{path}: truncated file (storage {key!r} needs {nbytes} bytes, only {len(raw)} remain)"
            )
        data = np.frombuffer(raw, dtype=dtype)
        if ref.storage_type.name == "BFloat16Storage":
            data = (data.astype(np.uint32) << 16).view(np.float32)
        else:
            data = data.astype(dtype.newbyteorder("="), copy=False)
        ref.data = data
    missing = [k for k, ref in storages.items() if ref.data is None]
    if missing:
        raise DataFormatError(f"{path}: storage(s) {missing[:5]} are referenced but have no data")


def _materialise(path: str, name: str, record: _TensorRecord) -> np.ndarray:
    storage, base_offset = record.storage, 0
    if isinstance(storage, _StorageView):
        storage, base_offset = storage.base, storage.offset
    if not isinstance(storage, _StorageRef):
        raise DataFormatError(f"{path}: tensor {name!r} is not backed by a storage")
    size, stride, offset = record.size, record.stride, record.storage_offset
    ok = (
        isinstance(offset, int)
        and offset >= 0
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and len(size) == len(stride)
        and all(isinstance(v, int) and v >= 0 for v in size + stride)
    )
    if not ok:
        raise DataFormatError(f"{path}: tensor {name!r} has malformed size/stride/offset")
    data = storage.data
    start = base_offset + offset
    if 0 in size:
        return np.zeros(size, dtype=data.dtype)
    last = start + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= len(data):
        raise DataFormatError(
            f"{path}: tensor {name!r} (size {size}, stride {stride}, offset {offset}) "
            f"runs past the end of its storage of {len(data)} elements"
        )
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
            or a zip-based checkpoint), is truncated, or its pickle names a
            global other than the few a state dict needs. The message names
            the file (and the refused global).
        FileNotFoundError: there is no such file.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:4] == b"PK\x03\x04":
        raise DataFormatError(
            f"{path}: this is a zip-based PyTorch checkpoint; only the legacy format is supported "
            "(re-save it with torch.save(sd, f, _use_new_zipfile_serialization=False))"
        )
    f = io.BytesIO(raw)
    storages: dict[str, _StorageRef] = {}
    magic = _load_pickle(f, path, storages, "magic number")
    if magic != _MAGIC_NUMBER:
        raise DataFormatError(f"{path}: not a legacy PyTorch file (wrong magic number)")
    protocol = _load_pickle(f, path, storages, "protocol version")
    if protocol != _PROTOCOL_VERSION:
        raise DataFormatError(f"{path}: unsupported PyTorch serialisation protocol {protocol!r:.40}")
    sys_info = _load_pickle(f, path, storages, "system info")
    little_endian = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    obj = _load_pickle(f, path, storages, "state dict")
    keys = _load_pickle(f, path, storages, "storage key list")
    _read_storages(f, path, keys, storages, little_endian)

    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: expected a state dict, found {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, _TensorRecord):
            raise DataFormatError(f"{path}: entry {name!r:.80} is not a named tensor")
        out[name] = _materialise(path, name, value)
    return out

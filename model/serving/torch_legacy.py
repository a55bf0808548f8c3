"""Reads legacy (PyTorch < 1.6) ``torch.save`` files without torch and without running pickle code.

The authors released their trained networks as legacy ``torch.save`` files: a pickle
stream of a magic number, a protocol version and a system-info dict, then the checkpoint
object, whose tensors are ``torch._utils._rebuild_tensor_v2`` calls over storages that
are pickle persistent ids; then a pickled list of storage keys and, per key, an 8-byte
little-endian element count followed by the raw little-endian data.

``torch.load`` of such a file can run any code its pickle names. ``RestrictedUnpickler``
resolves only the handful of globals the format needs, to inert stand-ins, and refuses
every other global with ``UnsafeCheckpointError`` before anything is called; tensors come
back as numpy arrays.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import struct
from typing import Any, BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"), "FloatStorage": np.dtype("<f4"), "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"), "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"), "BoolStorage": np.dtype("?"),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The file names something outside the legacy checkpoint format: it is not loaded."""


class CheckpointFormatError(ValueError):
    """The file is not a legacy ``torch.save`` stream, or it is truncated."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only its element dtype matters."""

    name: str
    dtype: np.dtype


@dataclasses.dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclasses.dataclass
class _Tensor:
    """A ``_rebuild_tensor_v2`` call recorded, resolved to numpy once storages are read."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise CheckpointFormatError(f"storage {self.storage.key} has no data in the file")
        if not self.size:
            return data[self.offset].copy()
        needed = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
        if min(self.size) > 0 and needed > data.size:
            raise CheckpointFormatError(f"tensor of size {self.size} overruns storage {self.storage.key}")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=[s * data.itemsize for s in self.stride], writeable=False)
        return np.array(view)


def _rebuild_tensor_v2(storage: _Storage, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                       requires_grad: bool = False, backward_hooks: Any = None, *_: Any) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise UnsafeCheckpointError("_rebuild_tensor_v2 called on something that is not a storage")
    return _Tensor(storage, int(storage_offset), tuple(int(n) for n in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data: _Tensor, requires_grad: bool = False, backward_hooks: Any = None) -> _Tensor:
    return data


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }
    for name, dtype in STORAGE_DTYPES.items():
        allowed[("torch", name)] = _StorageType(name, dtype)
    return allowed


ALLOWED_GLOBALS = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ``ALLOWED_GLOBALS`` (to stand-ins) and storage ids."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage] | None = None) -> None:
        super().__init__(file)
        self.storages = {} if storages is None else storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load {module}.{name}: a legacy torch checkpoint only needs "
                f"{sorted('.'.join(k) for k in ALLOWED_GLOBALS)}; this file may run code") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafeCheckpointError(f"unexpected persistent id {pid!r:.100}")
        _, storage_type, key, _location, numel = pid[:5]
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype, int(numel))
        return self.storages[key]


def _convert(value: Any) -> Any:
    """The checkpoint object with every recorded tensor replaced by its numpy array."""
    if isinstance(value, _Tensor):
        return value.to_numpy()
    if isinstance(value, collections.OrderedDict):
        return collections.OrderedDict((k, _convert(v)) for k, v in value.items())
    if isinstance(value, dict):
        return {k: _convert(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_convert(v) for v in value)
    return value


def load(file: str | BinaryIO) -> Any:
    """The object a legacy ``torch.save`` wrote, tensors as numpy arrays.

    Raises UnsafeCheckpointError for any global outside the format (nothing is called),
    CheckpointFormatError for a file that is not a legacy checkpoint or is truncated.
    """
    if isinstance(file, str):
        with open(file, "rb") as handle:
            return load(handle)
    head = file.read(2)
    file.seek(-len(head), io.SEEK_CUR)
    if head == b"PK":
        raise CheckpointFormatError("this is a zip-format torch.save file (PyTorch >= 1.6), not the legacy format")
    try:
        magic, protocol, _sys_info = (RestrictedUnpickler(file).load() for _ in range(3))
    except UnsafeCheckpointError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, IndexError, TypeError) as error:
        raise CheckpointFormatError(f"not a legacy torch.save file: {error}") from error
    if magic != MAGIC_NUMBER or protocol != PROTOCOL_VERSION:
        raise CheckpointFormatError(f"not a legacy torch.save file (magic {magic!r}, protocol {protocol!r})")
    storages: dict[str, _Storage] = {}
    try:
        result = RestrictedUnpickler(file, storages).load()
        keys = RestrictedUnpickler(file).load()
    except (EOFError, TypeError, ValueError) as error:
        raise CheckpointFormatError(f"truncated or malformed checkpoint: {error!r}") from error
    if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
        raise CheckpointFormatError("the storage key list does not match the tensors' storages")
    for key in map(str, keys):
        storage = storages[key]
        (count,) = struct.unpack("<q", _read_exactly(file, 8))
        if count != storage.numel:
            raise CheckpointFormatError(f"storage {key}: {count} elements in the file, {storage.numel} declared")
        raw = _read_exactly(file, count * storage.dtype.itemsize)
        storage.data = np.frombuffer(raw, storage.dtype)
    return _convert(result)


def _read_exactly(file: BinaryIO, size: int) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise CheckpointFormatError(f"file ends {size - len(data)} bytes early")
    return data

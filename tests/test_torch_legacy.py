"""The legacy torch.save reader: the authors' format read back exactly, and no pickle code ever run."""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from model.serving import torch_legacy


class _Storage:
    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, data


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Just enough of a ``torch`` module for pickle to name its globals as torch 1.4 does."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # pragma: no cover - only named, never called
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch", "__qualname__": name}))
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return types.SimpleNamespace(torch=torch, storage_type={np.dtype("<f4"): torch.FloatStorage,
                                                             np.dtype("<i8"): torch.LongStorage})


def legacy_bytes(fake_torch: types.SimpleNamespace, obj: object, storages: list[_Storage]) -> bytes:
    """What legacy ``torch.save(obj)`` writes: header pickles, the object, storage keys, raw data."""
    out = io.BytesIO()
    for header in (torch_legacy.MAGIC_NUMBER, torch_legacy.PROTOCOL_VERSION,
                   {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, out, protocol=2)

    class Pickler(pickle.Pickler):
        def persistent_id(self, value):
            if isinstance(value, _Storage):
                return ("storage", fake_torch.storage_type[value.data.dtype], value.key, "cuda:0",
                        value.data.size, None)
            return None

    Pickler(out, protocol=2).dump(obj)
    pickle.dump([s.key for s in storages], out, protocol=2)
    for storage in storages:
        out.write(struct.pack("<q", storage.data.size) + storage.data.tobytes())
    return out.getvalue()


def test_tensors_come_back_with_their_offsets_strides_and_dtypes(fake_torch) -> None:
    shared = _Storage("140", np.arange(24, dtype="<f4"))
    counter = _Storage("141", np.array([52245], "<i8"))
    state = collections.OrderedDict([
        ("conv.weight", _Tensor(shared, 0, (2, 3, 4), (12, 4, 1))),
        ("transposed", _Tensor(shared, 0, (4, 3), (1, 4))),
        ("offset.bias", _Tensor(shared, 20, (4,), (1,))),
        ("bn.num_batches_tracked", _Tensor(counter, 0, (), ())),
    ])
    loaded = torch_legacy.load(io.BytesIO(legacy_bytes(fake_torch, {"arch": "vgg16", "state_dict": state},
                                                       [shared, counter])))
    got = loaded["state_dict"]
    assert loaded["arch"] == "vgg16" and list(got) == list(state)
    np.testing.assert_array_equal(got["conv.weight"], np.arange(24).reshape(2, 3, 4))
    np.testing.assert_array_equal(got["transposed"], np.arange(12).reshape(3, 4).T)
    np.testing.assert_array_equal(got["offset.bias"], [20, 21, 22, 23])
    assert got["conv.weight"].dtype == np.float32 and got["bn.num_batches_tracked"] == 52245
    assert got["bn.num_batches_tracked"].dtype == np.int64


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["header", "checkpoint"])
def test_a_pickle_that_would_run_code_is_refused_without_running_it(fake_torch, tmp_path: Path, where) -> None:
    marker = tmp_path / "ran"
    evil = _RunsCode(marker)
    if where == "header":
        data = pickle.dumps(evil, protocol=2)
    else:
        data = legacy_bytes(fake_torch, {"state_dict": collections.OrderedDict(x=evil)}, [])
    with pytest.raises(torch_legacy.UnsafeCheckpointError, match=r"refusing to load (posix|os)\.system"):
        torch_legacy.load(io.BytesIO(data))
    assert not marker.exists()


def test_a_storage_type_outside_the_format_and_a_foreign_persistent_id_are_refused(fake_torch) -> None:
    class Pickler(pickle.Pickler):
        def persistent_id(self, value):
            return ("file", "/etc/passwd") if value == "x" else None

    out = io.BytesIO()
    for header in (torch_legacy.MAGIC_NUMBER, torch_legacy.PROTOCOL_VERSION, {}):
        pickle.dump(header, out, protocol=2)
    Pickler(out, protocol=2).dump({"state_dict": "x"})
    with pytest.raises(torch_legacy.UnsafeCheckpointError, match="persistent id"):
        torch_legacy.load(io.BytesIO(out.getvalue()))


def test_truncated_and_foreign_files_are_format_errors(fake_torch) -> None:
    storage = _Storage("1", np.ones(8, "<f4"))
    data = legacy_bytes(fake_torch, {"w": _Tensor(storage, 0, (8,), (1,))}, [storage])
    with pytest.raises(torch_legacy.CheckpointFormatError, match="early"):
        torch_legacy.load(io.BytesIO(data[:-4]))
    with pytest.raises(torch_legacy.CheckpointFormatError, match="zip-format"):
        torch_legacy.load(io.BytesIO(b"PK\x03\x04rest"))
    with pytest.raises(torch_legacy.CheckpointFormatError, match="not a legacy"):
        torch_legacy.load(io.BytesIO(pickle.dumps(42) * 3))

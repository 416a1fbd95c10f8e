"""Safetensors files and Hugging Face folders read directly, slice by slice.

A folder holds ``config.json`` and either ``model.safetensors`` or shards named
by ``model.safetensors.index.json``. The format (an 8-byte header length, a JSON
header, raw little-endian data) is read directly so that bfloat16, the dtype of
nearly every released checkpoint, maps to ``ml_dtypes.bfloat16``
(``safe_open(framework="numpy")`` cannot represent it). Files are memory-mapped;
nothing is unpickled and nothing touches the network.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

Index = tuple[slice, ...]

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}




class SafetensorsFile:
    """Lazily sliceable tensors of one ``.safetensors`` file (memory-mapped)."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", raw)
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}: unreadable safetensors header: {e}") from None
        header.pop("__metadata__", None)
        self._header = header
        self._data_start = 8 + header_len
        self._mmap: np.memmap | None = None

    def keys(self) -> list[str]:
        return list(self._header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def array(self, name: str) -> np.ndarray:
        """A read-only memory-mapped view of tensor ``name`` (no data read yet)."""
        entry = self._header[name]
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        begin, end = entry["data_offsets"]
        buf = self._mmap[self._data_start + begin:self._data_start + end]
        return buf.view(dtype).reshape(entry["shape"])


class SafetensorsFolder:
    """``config.json`` plus the tensors of a single or sharded safetensors checkpoint."""

    def __init__(self, path: str):
        self.path = path
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model folder)")
        with open(config_path) as f:
            self.config: dict = json.load(f)
        index_path = os.path.join(path, "model.safetensors.index.json")
        single_path = os.path.join(path, "model.safetensors")
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index_path}: missing 'weight_map'")
            files = {name: SafetensorsFile(os.path.join(path, name))
                     for name in sorted(set(weight_map.values()))}
            self._where = {key: files[name] for key, name in weight_map.items()}
        elif os.path.isfile(single_path):
            file = SafetensorsFile(single_path)
            self._where = {key: file for key in file.keys()}
        else:
            raise FileNotFoundError(
                f"{path}: neither model.safetensors nor model.safetensors.index.json"
                " (pickled .bin checkpoints are not read; convert them to safetensors)")

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._file(name).shape(name)

    def array(self, name: str) -> np.ndarray:
        return self._file(name).array(name)

    def _file(self, name: str) -> SafetensorsFile:
        if name not in self._where:
            raise KeyError(f"{self.path}: no tensor {name!r} in the checkpoint")
        return self._where[name]

    def prefix_of(self, suffix: str) -> str:
        """The key prefix in front of ``suffix`` (e.g. ``vision_model.`` or ``model.``)."""
        hits = sorted(k[: -len(suffix)] for k in self._where if k.endswith(suffix))
        if not hits:
            raise KeyError(f"{self.path}: no tensor named '*{suffix}'")
        return hits[0]

"""Arrays read row-chunk by row-chunk from .npy and .safetensors files, so that multi-GiB dictionaries can be
converted one slice at a time instead of being held whole in memory."""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bfloat16",
                       "I64": np.int64, "I32": np.int32, "U8": np.uint8}
_TORCH_TO_SAFETENSORS = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                         torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8"}


class ArraySource(Protocol):
    """A (K, ...) array whose rows can be read in slices."""

    shape: tuple[int, ...]

    def rows(self, start: int, stop: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class MemoryArray:
    tensor: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.tensor[start:stop]


@dataclass(frozen=True)
class FileArray:
    """C-ordered little-endian array data at ``offset`` in ``path`` (``dtype`` a numpy dtype or "bfloat16")."""

    path: Path
    offset: int
    dtype: object
    shape: tuple[int, ...]

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.itemsize

    def rows(self, start: int, stop: int) -> torch.Tensor:
        row_items = int(np.prod(self.shape[1:], dtype=np.int64))
        count = (stop - start) * row_items
        raw_dtype = np.uint16 if self.dtype == "bfloat16" else self.dtype
        with open(self.path, "rb") as handle:
            handle.seek(self.offset + start * row_items * self.itemsize)
            data = np.fromfile(handle, dtype=raw_dtype, count=count)
        if data.size != count:
            raise ValueError(f"{self.path}: truncated file (rows {start}:{stop} extend past its end)")
        tensor = torch.from_numpy(data.astype(data.dtype.newbyteorder("<"), copy=False))
        if self.dtype == "bfloat16":
            tensor = tensor.view(torch.bfloat16)
        return tensor.view(stop - start, *self.shape[1:])


def _check_size(path: Path, end: int) -> None:
    size = os.path.getsize(path)
    if size < end:
        raise ValueError(f"{path}: truncated file: its data needs {end} bytes, the file has {size}")


def read_npy_header(path: str | os.PathLike) -> FileArray:
    """Parse a .npy header (no data read) → FileArray. Rejects object arrays and truncated files."""
    path = Path(path)
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran_order, dtype = read_header(handle)
        except ValueError as exc:
            raise ValueError(f"{path}: not a readable .npy file ({exc})") from exc
        offset = handle.tell()
    if dtype.hasobject or dtype.kind not in "fiu":
        raise ValueError(f"{path}: expected a numeric array, got dtype {dtype}")
    if fortran_order:
        raise ValueError(f"{path}: Fortran-ordered arrays are not supported; save it C-ordered")
    array = FileArray(path, offset, dtype, tuple(shape))
    _check_size(path, offset + array.nbytes)
    return array


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, FileArray], dict[str, str]]:
    """Parse a .safetensors header (no tensor data read) → ({name: FileArray}, metadata)."""
    path = Path(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header length {header_len})")
        raw = handle.read(header_len)
    if len(raw) != header_len:
        raise ValueError(f"{path}: truncated file (header incomplete)")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a safetensors file (header is not JSON: {exc})") from exc
    metadata = header.pop("__metadata__", {}) or {}
    base = 8 + header_len
    arrays = {}
    for name, info in header.items():
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        arrays[name] = FileArray(path, base + begin, dtype, tuple(info["shape"]))
        if arrays[name].nbytes != end - begin:
            raise ValueError(f"{path}: tensor {name!r} has inconsistent offsets")
        _check_size(path, base + end)
    return arrays, metadata


def write_safetensors(path: str | os.PathLike, tensors: Iterable[tuple[str, tuple[int, ...], torch.dtype, object]],
                      metadata: dict[str, str], chunk_rows: int = 16) -> None:
    """Stream tensors into a safetensors file without holding them all in memory.

    ``tensors`` yields (name, shape, dtype, source) where ``source.rows(a, b)`` returns rows a..b of that tensor.
    """
    entries = list(tensors)
    header: dict[str, object] = {"__metadata__": metadata}
    cursor = 0
    for name, shape, dtype, _ in entries:
        nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _TORCH_TO_SAFETENSORS[dtype], "shape": list(shape),
                        "data_offsets": [cursor, cursor + nbytes]}
        cursor += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for _, shape, dtype, source in entries:
            for start in range(0, shape[0], chunk_rows):
                block = source.rows(start, min(start + chunk_rows, shape[0])).to(dtype).contiguous()
                handle.write(block.view(torch.uint8).numpy().tobytes() if dtype == torch.bfloat16
                             else block.numpy().tobytes())


def describe_torch_load_error(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, in words — without torch's advice to retry with
    ``weights_only=False``, which would run whatever code the file carries."""
    import pickle

    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
        first = text.split("\n", 1)[0].split("Re-running")[0].strip()
        return (f"the file holds Python objects, not only tensors ({first[:200]}); dfd loads tensors only and "
                f"never runs code from a file")
    return f"{type(exc).__name__}: {text}"

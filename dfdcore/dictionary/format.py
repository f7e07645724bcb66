"""Component dictionaries: for each of 4 scales and 4 parts, K feature centres of shape (C, h, w).

Two file formats, both loaded lazily (headers only; data is read row-chunk by row-chunk when used):
- the official folder ``DictionaryCenter512/{part}_{scale}_center.npy`` (16 files), arrays (K, C, h, w) or
  (K, C·h·w);
- one ``dictionary.safetensors`` with tensors ``"{scale}/{part}"`` (K, C, h, w) and metadata (K, face size,
  channels, sizes, provenance).
A BasicSR ``.pth`` (``{"256": {"left_eye": T, ...}, ...}``) is read too.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from dfdcore.config import OFFICIAL, PARTS, GeneratorConfig
from dfdcore.io import (
    ArraySource,
    MemoryArray,
    atomic_path,
    read_npy_header,
    read_safetensors_header,
    write_safetensors,
)
from dfdcore.io.arrays import describe_torch_load_error

Key = tuple[int, str]
FORMAT_NAME = "dfd-component-dictionary"


class DictionaryError(ValueError):
    """A dictionary file or folder is missing, unreadable or has the wrong shapes."""


def official_file_name(scale: int, part: str) -> str:
    return f"{part}_{scale}_center.npy"


def _infer_config(entries: Mapping[Key, ArraySource], face_size: int | None = None) -> GeneratorConfig:
    """Face size from the largest scale (its side is face_size / 2), ngf from that scale's channels (2·ngf)."""
    face_size = face_size or 2 * max(scale for scale, _ in entries)
    probe = GeneratorConfig(face_size=face_size)
    top = entries.get((probe.scales[0], PARTS[0]))
    if top is None:
        return probe  # the constructor reports the missing entry
    side = probe.dict_size(probe.scales[0], PARTS[0])
    channels = int(np.prod(top.shape[1:])) // (side * side)
    return GeneratorConfig(face_size=face_size, ngf=max(1, channels // 2))


class _GeneratedArray:
    """Random (K, C, h, w) entries, deterministic per (seed, row), generated on demand."""

    def __init__(self, shape: tuple[int, ...], seed: int) -> None:
        self.shape, self.seed = shape, seed

    def rows(self, start: int, stop: int) -> torch.Tensor:
        out = torch.empty((stop - start, *self.shape[1:]))
        for i, row in enumerate(range(start, stop)):
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + row)
            # ReLU-like, non-negative features with some spread, as VGG activations are.
            out[i] = torch.randn(self.shape[1:], generator=gen).abs_()
        return out


class ComponentDictionary:
    """4 scales × 4 parts of (K, C, h, w) centres for a generator configuration.

    Entries are ``ArraySource`` objects (file-backed or in memory); shapes are validated on construction, the data is
    read only when used (``tensor`` or ``iter_rows``).
    """

    def __init__(self, entries: Mapping[Key, ArraySource | torch.Tensor | np.ndarray],
                 config: GeneratorConfig = OFFICIAL, metadata: Mapping[str, object] | None = None,
                 names: Mapping[Key, str] | None = None) -> None:
        self.config = config
        self.metadata = dict(metadata or {})
        names = names or {}
        expected = [(s, p) for s in config.scales for p in PARTS]
        missing = [names.get(key, f"{key[0]}/{key[1]}") for key in expected if key not in entries]
        if missing:
            raise DictionaryError(f"dictionary is missing {len(missing)} of 16 entries: {', '.join(missing)}")
        extra = sorted(set(entries) - set(expected))
        if extra:
            raise DictionaryError(f"dictionary has entries for unknown scales/parts {extra}; expected scales "
                                  f"{config.scales} for face size {config.face_size}")
        self._entries: dict[Key, ArraySource] = {}
        ks = set()
        for key in expected:
            source = entries[key]
            if isinstance(source, np.ndarray):
                source = torch.from_numpy(source)
            if isinstance(source, torch.Tensor):
                source = MemoryArray(source)
            self._entries[key] = self._validated(key, source, names.get(key, f"{key[0]}/{key[1]}"))
            ks.add(source.shape[0])
        if len(ks) != 1:
            raise DictionaryError(f"all 16 entries must have the same K, got {sorted(ks)}")
        self.k = ks.pop()

    def _validated(self, key: Key, source: ArraySource, name: str) -> ArraySource:
        scale, part = key
        _, c, h, w = self.config.dict_shape(scale, part, 1)
        shape = tuple(source.shape)
        if len(shape) == 2 and shape[1] == c * h * w:
            return _Reshaped(source, (shape[0], c, h, w))
        if len(shape) != 4 or shape[1:] != (c, h, w) or shape[0] < 1:
            raise DictionaryError(f"{name}: expected shape (K, {c}, {h}, {w}) or (K, {c * h * w}) for {part} at scale "
                                  f"{scale} (face size {self.config.face_size}, ngf {self.config.ngf}), got {shape}")
        return source

    # ----------------------------------------------------------------------------------------------- access
    def keys(self) -> list[Key]:
        return list(self._entries)

    def shape(self, scale: int, part: str) -> tuple[int, int, int, int]:
        return tuple(self._entries[(scale, part)].shape)

    def iter_rows(self, scale: int, part: str, chunk: int = 16) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (start, rows) with rows (n, C, h, w) float32, ``chunk`` entries at a time."""
        source = self._entries[(scale, part)]
        for start in range(0, self.k, chunk):
            yield start, source.rows(start, min(start + chunk, self.k)).to(torch.float32)

    def tensor(self, scale: int, part: str) -> torch.Tensor:
        """All entries of one (scale, part) as a float32 (K, C, h, w) tensor."""
        return torch.cat([rows for _, rows in self.iter_rows(scale, part, chunk=self.k)])

    @property
    def nbytes_float32(self) -> int:
        return sum(int(np.prod(src.shape)) * 4 for src in self._entries.values())

    def __repr__(self) -> str:
        return (f"ComponentDictionary(K={self.k}, face_size={self.config.face_size}, ngf={self.config.ngf}, "
                f"{self.nbytes_float32 / 2**30:.2f} GiB as float32)")

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | os.PathLike) -> ComponentDictionary:
        """Open a dictionary: an official folder, a dfd ``.safetensors`` file or a BasicSR ``.pth`` file."""
        path = Path(path)
        if path.is_dir():
            return cls.load_official(path)
        if not path.exists():
            raise DictionaryError(f"{path}: no such dictionary file or folder")
        if path.suffix == ".safetensors":
            return cls.load_safetensors(path)
        if path.suffix in (".pth", ".pt"):
            return cls.load_basicsr(path)
        raise DictionaryError(f"{path}: unknown dictionary format; expected a folder of 16 .npy files, "
                              f"a .safetensors file or a BasicSR .pth file")

    @classmethod
    def load_official(cls, folder: str | os.PathLike) -> ComponentDictionary:
        folder = Path(folder)
        found = {}
        for file in sorted(folder.glob("*_center.npy")):
            stem = file.name[: -len("_center.npy")]
            part, _, scale = stem.rpartition("_")
            if part in PARTS and scale.isdigit():
                found[(int(scale), part)] = file
        if not found:
            raise DictionaryError(f"{folder}: no '{{part}}_{{scale}}_center.npy' files (official dictionary layout)")
        probe = GeneratorConfig(face_size=2 * max(scale for scale, _ in found))
        expected_files = [official_file_name(s, p) for s in probe.scales for p in PARTS]
        missing = [name for name in expected_files if not (folder / name).exists()]
        if missing:
            raise DictionaryError(f"{folder}: missing {len(missing)} of 16 dictionary files: {', '.join(missing)}")
        entries, names = {}, {}
        for key, file in found.items():
            try:
                entries[key] = read_npy_header(file)
            except ValueError as exc:
                raise DictionaryError(str(exc)) from exc
            names[key] = str(file)
        return cls(entries, _infer_config(entries), {"source": str(folder), "format": "official"}, names)

    @classmethod
    def load_safetensors(cls, path: str | os.PathLike) -> ComponentDictionary:
        path = Path(path)
        try:
            arrays, metadata = read_safetensors_header(path)
        except (ValueError, KeyError, OSError) as exc:
            raise DictionaryError(str(exc)) from exc
        entries, names = {}, {}
        for name, array in arrays.items():
            scale, _, part = name.partition("/")
            if not scale.isdigit() or part not in PARTS:
                raise DictionaryError(f"{path}: unexpected tensor {name!r}; expected names like '256/left_eye'")
            entries[(int(scale), part)] = array
            names[(int(scale), part)] = f"{path} [{name}]"
        if not entries:
            raise DictionaryError(f"{path}: holds no dictionary tensors")
        try:
            face_size = int(metadata.get("face_size", 0)) or None
            meta = {k: v for k, v in metadata.items() if k not in ("face_size", "ngf", "k", "format")}
            if "provenance" in meta:
                meta["provenance"] = json.loads(meta["provenance"])
        except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            raise DictionaryError(f"{path}: malformed metadata ({type(exc).__name__}: {exc}); rebuild the "
                                  f"dictionary or restore the file from its source") from exc
        config = _infer_config(entries, face_size)
        meta["source"] = str(path)
        return cls(entries, config, meta, names)

    @classmethod
    def load_basicsr(cls, path: str | os.PathLike) -> ComponentDictionary:
        path = Path(path)
        try:
            nested = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises many types for corrupt files
            raise DictionaryError(f"{path}: cannot read BasicSR dictionary ({describe_torch_load_error(exc)})") from exc
        try:
            entries = {(int(scale), part): tensor for scale, parts in nested.items()
                       for part, tensor in parts.items()}
        except (AttributeError, TypeError, ValueError) as exc:
            raise DictionaryError(f"{path}: not a BasicSR dictionary (expected {{scale: {{part: tensor}}}}, got "
                                  f"{type(nested).__name__} holding {type(exc).__name__}: {exc})") from exc
        if not all(isinstance(t, torch.Tensor) for t in entries.values()):
            raise DictionaryError(f"{path}: not a BasicSR dictionary (its entries are not tensors)")
        return cls(entries, _infer_config(entries), {"source": str(path), "format": "basicsr"})

    @classmethod
    def random(cls, config: GeneratorConfig = OFFICIAL, k: int = 512, seed: int = 0) -> ComponentDictionary:
        """Random non-negative entries, generated lazily and reproducibly; labelled as random in the metadata."""
        entries = {}
        for i, scale in enumerate(config.scales):
            for j, part in enumerate(PARTS):
                entries[(scale, part)] = _GeneratedArray(config.dict_shape(scale, part, k), seed * 16 + i * 4 + j)
        return cls(entries, config, {"provenance": {"random": True, "seed": seed}})

    # ----------------------------------------------------------------------------------------------- saving
    def save(self, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
        """Write one safetensors file (atomically), streaming entry by entry."""
        path = Path(path)
        metadata = {"format": FORMAT_NAME, "k": str(self.k), "face_size": str(self.config.face_size),
                    "ngf": str(self.config.ngf),
                    "channels": json.dumps(list(self.config.tap_channels)),
                    "sizes": json.dumps({f"{s}/{p}": self.shape(s, p)[2:] for s, p in self.keys()}),
                    "provenance": json.dumps(self.metadata.get("provenance", {}))}
        tensors = [(f"{s}/{p}", self.shape(s, p), dtype, self._entries[(s, p)]) for s, p in self.keys()]
        with atomic_path(path) as tmp:
            write_safetensors(tmp, tensors, metadata)
        return path

    def save_official(self, folder: str | os.PathLike) -> Path:
        """Write the official layout: 16 float32 ``{part}_{scale}_center.npy`` files of shape (K, C, h, w)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for scale, part in self.keys():
            shape = self.shape(scale, part)
            with atomic_path(folder / official_file_name(scale, part)) as tmp:
                with open(tmp, "wb") as handle:
                    np.lib.format.write_array_header_1_0(
                        handle, {"descr": "<f4", "fortran_order": False, "shape": shape})
                    for _, rows in self.iter_rows(scale, part):
                        handle.write(rows.numpy().astype("<f4", copy=False).tobytes())
        return folder


class _Reshaped:
    """Present a (K, C·h·w) source as (K, C, h, w)."""

    def __init__(self, source: ArraySource, shape: tuple[int, int, int, int]) -> None:
        self.source, self.shape = source, shape

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.source.rows(start, stop).reshape(stop - start, *self.shape[1:])


__all__ = ["ComponentDictionary", "DictionaryError", "official_file_name"]

"""Content hashes: the keys of every dfd table (a rerun skips what it has already done) and the identities of
weights and configurations."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data`` (``image_id`` of photos, content keys of manifests)."""
    return hashlib.sha256(data).hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted), read in 4 MiB blocks."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            digest.update(str(file.relative_to(path)).encode() if path.is_dir() else b"")
            with open(file, "rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
    return digest.hexdigest()


def stable_json(value: object) -> str:
    """JSON with sorted keys (non-JSON values as ``str``): the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, default=str)


def sha256_json(value: object, length: int = 16) -> str:
    """The first ``length`` hex digits of the sha256 of ``stable_json(value)``: keys of configurations."""
    return hashlib.sha256(stable_json(value).encode()).hexdigest()[:length]

"""Content hashes: the keys of every dfd table (a rerun skips what it has already done)."""
from __future__ import annotations

import hashlib


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()

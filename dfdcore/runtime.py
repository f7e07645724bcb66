"""Process-level helpers: handing freed memory back to the OS, and the dfd home folder of embedded state."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from pathlib import Path


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_memory() -> None:
    """Hand memory that the C allocator holds but no longer uses back to the OS (glibc ``malloc_trim``).

    Loading a multi-GiB dictionary in chunks leaves freed chunks inside the heap; without this they stay in the
    process's resident set. A no-op where the C library has no ``malloc_trim``.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def dfd_home() -> Path:
    """The folder of dfd's embedded state (SQLite files, artifacts, Ray's session files, caches), created if missing:
    ``DFD_HOME``, default ``./.dfd``. Nothing is written to the user's home or to /tmp outside it."""
    home = Path(os.environ.get("DFD_HOME", ".dfd")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home

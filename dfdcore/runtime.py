"""Process-level helpers."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


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

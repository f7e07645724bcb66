"""Process-level helpers: handing freed memory back to the OS, the dfd home folder of embedded state, and the
CPUs this process may use."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
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


CGROUP_V2_CPU_MAX = "/sys/fs/cgroup/cpu.max"
CGROUP_V1_CPU = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cgroup_cpu_limit(quota: str, period: str) -> float | None:
    """CPUs a cgroup quota allows (``quota``/``period`` microseconds, as cpu.max or cpu.cfs_* hold them) → None
    when unlimited ("max" in v2, -1 in v1)."""
    if quota.strip() in ("max", "-1") or not quota.strip():
        return None
    return int(quota) / int(period)


def _cgroup_limit() -> float | None:
    """This process's cgroup CPU quota (v2, else v1), None when there is none or it cannot be read."""
    try:
        with open(CGROUP_V2_CPU_MAX) as f:
            return cgroup_cpu_limit(*f.read().split()[:2])
    except (OSError, ValueError, TypeError):
        pass
    try:
        quota, period = (Path(p).read_text() for p in CGROUP_V1_CPU)
        return cgroup_cpu_limit(quota, period)
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask (taskset, a container's cpuset), capped by its cgroup quota
    (rounded up: 1.5 CPUs keep 2 threads busy half the time) — not ``os.cpu_count()``, the machine's total, which
    oversubscribes a container limited to a few of a large machine's cores."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = _cgroup_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)

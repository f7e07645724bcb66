"""Atomic file writes: a reader sees the old file or the complete new one, never half of it.

The temporary file sits beside its target as ``.NAME.HOST.PID.RANDOM.part`` (hidden, so listings skip it); a
process killed mid-write leaves one behind, and ``remove_stale_parts`` takes away those whose writer is gone.
"""
from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

_HOST = socket.gethostname().replace(".", "-")
_UMASK_LOCK = threading.Lock()
STALE_AFTER_S = 24 * 3600  # a .part file of another machine (shared disk) is stale after a day


def current_umask() -> int:
    """The process umask (reading it means setting it; the lock keeps threads of this module from racing)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    The result gets the mode a plain ``open(path, "w")`` would give (0666 less the umask), not mkstemp's 0600.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{_HOST}.{os.getpid()}.", suffix=".part",
                                    dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_parts(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.part`` files under ``folder`` left by killed writers: this host's whose process is gone, and
    any older than a day. Returns what was removed."""
    removed = []
    for part in Path(folder).rglob(".*.part"):
        if _is_stale(part):
            part.unlink(missing_ok=True)
            removed.append(part)
    return removed


def _is_stale(part: Path) -> bool:
    try:
        age = time.time() - part.stat().st_mtime
    except FileNotFoundError:
        return False
    fields = part.name.rsplit(".", 4)  # [".NAME", HOST, PID, RANDOM, "part"]
    if len(fields) == 5 and fields[1] == _HOST and fields[2].isdigit():
        return not process_alive(int(fields[2])) or age > STALE_AFTER_S
    return age > STALE_AFTER_S


def process_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this machine (zombies included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""One writer per output and configuration: ``OUT/.dfd-run.lock`` while a run writes into OUT.

The lock file says who holds it (host, pid, start time, a token) and with which configuration (``config_hash``).
A second run into the same output:
- with another configuration refuses at once (``OutputBusy``), before it writes anything: two settings writing the
  same file names would leave whichever finished last, with rows that say otherwise;
- with the same configuration waits until the first is done (polling; ``on_wait`` is told once), then does what is
  left: the first run's finished rows make it skip those images. Waiting was chosen over sharing the work because
  it cannot duplicate work and needs no coordination beyond this file.
A lock whose holder is gone is stale and taken over: on this host when its pid no longer runs, on another host when
its heartbeat (refreshed by the holder as it records rows) is older than ``STALE_AFTER_S``. Locally the lock is
created exclusively (``O_EXCL``); on object stores creation is write-then-read-back, good enough for people who
start runs by hand, not for racing schedulers.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from dfdcore.io.atomic import process_alive
from dfdcore.io.storage import filesystem_for, is_local, join_uri, read_bytes, write_bytes_atomic

LOCK_NAME = ".dfd-run.lock"
STALE_AFTER_S = 600.0   # another host's lock without a heartbeat for this long is taken over
HEARTBEAT_S = 60.0      # how often ``OutputLock.heartbeat`` rewrites the lock at most
POLL_S = 1.0


class OutputBusy(RuntimeError):
    """Another run writes into this output with another configuration."""


@dataclass(frozen=True)
class LockInfo:
    host: str
    pid: int
    started: str        # ISO time, UTC
    heartbeat: float    # time.time() of the holder's last sign of life
    config_hash: str | None
    token: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}"


@dataclass
class OutputLock:
    """A held lock; ``heartbeat()`` as the run goes, released when its ``output_lock`` block ends."""

    uri: str
    info: LockInfo
    last_beat: float = 0.0

    def heartbeat(self) -> None:
        """Tell waiting runs on other hosts that this one is alive (at most every ``HEARTBEAT_S``)."""
        now = time.time()
        if now - self.last_beat >= HEARTBEAT_S:
            self.info = LockInfo(**{**asdict(self.info), "heartbeat": now})
            write_bytes_atomic(self.uri, _encode(self.info))
            self.last_beat = now


@contextlib.contextmanager
def output_lock(out: str, config_hash: str | None, on_wait: Callable[[str], None] | None = None,
                wait_s: float | None = None) -> Iterator[OutputLock]:
    """Hold ``OUT/.dfd-run.lock`` for the block. ``OutputBusy`` at once when another live run holds it with another
    configuration; with the same one, wait (at most ``wait_s`` seconds; None: as long as it takes)."""
    uri = join_uri(out, LOCK_NAME)
    now = time.time()
    mine = LockInfo(host=socket.gethostname(), pid=os.getpid(), config_hash=config_hash, heartbeat=now,
                    started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), token=uuid.uuid4().hex)
    deadline = None if wait_s is None else time.monotonic() + wait_s
    told = False
    while not _try_create(uri, mine):
        holder = _read(uri)
        if holder is None or _is_stale(holder):
            _remove(uri, holder)
            continue
        if holder.config_hash != config_hash:
            raise OutputBusy(f"{out} is being written by another dfd run ({holder.describe()}) with other settings "
                             f"(configuration {str(holder.config_hash)[:12]}, this run's {str(config_hash)[:12]}): "
                             f"nothing was written. Wait for it to finish, stop it, or choose another output "
                             f"(a stale lock from a crashed run is {uri}; delete it if that run is gone)")
        if not told and on_wait:
            on_wait(f"waiting for the dfd run writing into {out} with the same settings ({holder.describe()})")
            told = True
        if deadline is not None and time.monotonic() > deadline:
            raise OutputBusy(f"{out} is still being written by {holder.describe()} after {wait_s:g} s")
        time.sleep(POLL_S)
    lock = OutputLock(uri, mine, last_beat=now)
    try:
        yield lock
    finally:
        _remove(uri, lock.info)


def _try_create(uri: str, info: LockInfo) -> bool:
    data = _encode(info)
    if is_local(uri):
        os.makedirs(os.path.dirname(uri), exist_ok=True)
        try:
            fd = os.open(uri, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return True
    fs, path = filesystem_for(uri)
    if fs.exists(path):
        return False
    write_bytes_atomic(uri, data)
    held = _read(uri)
    return held is not None and held.token == info.token


def _read(uri: str) -> LockInfo | None:
    """The lock's holder; None when there is no lock or it cannot be parsed (a torn write: treated as stale)."""
    try:
        return LockInfo(**json.loads(read_bytes(uri)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return LockInfo(host="?", pid=-1, started="?", heartbeat=0.0, config_hash=None, token="unreadable")


def _is_stale(holder: LockInfo) -> bool:
    if holder.host == socket.gethostname():
        return not _pid_alive(holder.pid)
    return time.time() - holder.heartbeat > STALE_AFTER_S


def _pid_alive(pid: int) -> bool:
    return pid > 0 and process_alive(pid)


def _remove(uri: str, expected: LockInfo | None) -> None:
    """Delete the lock if it is still ``expected``'s (never another run's that took over meanwhile)."""
    current = _read(uri)
    if current is None or (expected is not None and current.token != expected.token):
        return
    fs, path = filesystem_for(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def _encode(info: LockInfo) -> bytes:
    return json.dumps(asdict(info), sort_keys=True).encode()

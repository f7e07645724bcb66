"""Asking a run to stop cleanly: it finishes the batch in hand, records every finished row and reports itself
interrupted. ``on_signals`` turns SIGINT and SIGTERM into such a request (a second signal stops at once)."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report them


class StopRequest:
    """Set once (by a signal handler, a UI, a test); read by the run between images."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def __bool__(self) -> bool:
        return self.reason is not None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.reason or "", 1)


@contextlib.contextmanager
def on_signals(stop: StopRequest, tell: Callable[[str], None] | None = None,
               signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[StopRequest]:
    """Within the block, the first of ``signals`` sets ``stop`` (``tell`` is given a line to show); the second
    restores the default handlers and raises KeyboardInterrupt (stop now, rows of the batch in hand lost).
    Outside the main thread (no handlers can be set there) the block runs without them."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handle(number: int, _frame) -> None:
        name = signal.Signals(number).name
        if stop:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            raise KeyboardInterrupt(f"second {name}: stopping now")
        stop.request(name)
        if tell:
            tell(f"{name}: stopping after the images in hand (their rows are recorded); send it again to stop now")

    for sig in signals:
        signal.signal(sig, handle)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

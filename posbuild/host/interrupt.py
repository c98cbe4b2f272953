"""Layer 0: SIGINT, SIGTERM and SIGHUP all stop posbuild the same way — as Ctrl-C does.

`timeout`, CI runners, `docker stop` and systemd stop a process with SIGTERM; a closed terminal
sends SIGHUP. Python would die at once on those two, leaving its commands running; instead each
of the three raises `Interrupted` (a KeyboardInterrupt) in the main thread, so one path handles
them all: the scheduler kills the running commands' process groups, nothing partial is kept,
everything finished is already committed, and the CLI prints one line and exits 128+N. A second
signal during that short wind-down ends the process at once (which is also safe: invariant 3),
unless it repeats the first within `REPEAT_S`: GNU `timeout` and some supervisors signal the
process and then its whole process group, and that second copy is the same request.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

from posbuild.core.words import quantity

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
REPEAT_S = 0.5  # the same signal again within this long after the first is not a second request


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by one of `SIGNALS`; `stopped` counts the commands it stopped."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.stopped = 0

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def line(self) -> str:
        """What the CLI prints: which signal, and what became of the running actions."""
        return (f"posbuild: interrupted by {signal.Signals(self.signum).name}; "
                f"{quantity(self.stopped, 'running action')} stopped, nothing partial kept")


_held: list[int] | None = None  # signals that came during `deferred()`, or None outside it


@contextmanager
def deferred() -> Iterator[None]:
    """Hold a signal's `Interrupted` until the block ends: for a few lines of bookkeeping that
    must not stop half-way (the scheduler handing out work). Other threads never get signals."""
    global _held
    if _held is not None or threading.current_thread() is not threading.main_thread():
        yield
        return
    _held = []
    try:
        yield
    finally:
        pending, _held = _held, None
        if pending:
            _raise(pending[0], None)


_first: tuple[int, float] | None = None  # the signal that started the wind-down, and when


def _raise(signum: int, frame: FrameType | None) -> None:
    global _first
    if _held is not None:
        _held.append(signum)
        return
    _first = (signum, time.monotonic())
    for other in SIGNALS:  # the wind-down is short; a second signal cuts it off
        signal.signal(other, _exit_now)
    raise Interrupted(signum)


def _exit_now(signum: int, frame: FrameType | None) -> None:
    if _first is not None and _first[0] == signum and time.monotonic() - _first[1] < REPEAT_S:
        return  # the first one again, sent to the process group as well
    os._exit(128 + signum)


def exiting() -> None:
    """The wind-down is over and its line printed: ignore any further signal while the process
    exits (Python's shutdown puts back the default handlers, under which a repeat killed it)."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def handle_signals() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise `Interrupted` (call once, from the main thread).
    A signal its parent told posbuild to ignore (`nohup`) stays ignored."""
    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _raise)

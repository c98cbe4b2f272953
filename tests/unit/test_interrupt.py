"""interrupt.py: SIGINT, SIGTERM and SIGHUP raise one exception, held off during `deferred()`."""

from __future__ import annotations

import os
import signal
from typing import Iterator

import pytest

from posbuild.host.interrupt import SIGNALS, Interrupted, deferred, handle_signals


@pytest.fixture
def handled() -> Iterator[None]:
    saved = {signum: signal.getsignal(signum) for signum in SIGNALS}
    handle_signals()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("sig", SIGNALS)
def test_each_signal_raises_interrupted_with_its_exit_code(handled, sig):
    with pytest.raises(Interrupted) as caught:
        os.kill(os.getpid(), sig)
        signal.sigtimedwait([], 0)  # let the handler run (a bytecode boundary)
    assert isinstance(caught.value, KeyboardInterrupt)
    assert caught.value.exit_code == 128 + sig
    caught.value.stopped = 2
    assert caught.value.line() == (f"posbuild: interrupted by {signal.Signals(sig).name}; 2 "
                                   f"running actions stopped, nothing partial kept")


def test_a_signal_during_deferred_is_raised_when_the_block_ends(handled):
    done = []
    with pytest.raises(Interrupted) as caught:
        with deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
            done.append(True)
    assert done == [True] and caught.value.signum == signal.SIGTERM


def test_a_signal_ignored_by_the_parent_stays_ignored():
    saved = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        handle_signals()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        for signum in SIGNALS:
            signal.signal(signum,
                          signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
        signal.signal(signal.SIGHUP, saved)

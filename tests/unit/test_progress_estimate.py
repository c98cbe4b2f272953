"""The time a build has left, estimated from the durations earlier builds recorded, and where
the reporters show it."""

from __future__ import annotations

import io
import re
import threading

import pytest

from posbuild.core.records import Outcome
from posbuild.engine.reporter import PlainReporter, TerminalReporter, duration_text, time_left


def test_remaining_work_is_spread_over_the_jobs() -> None:
    assert time_left(120.0, 4, 0, (), jobs=2) == 60.0


def test_the_build_lasts_at_least_as_long_as_its_longest_action() -> None:
    # 100 s of work on 4 jobs is 25 s, but one action alone needs 90 s
    assert time_left(100.0, 2, 0, [(90.0, 0.0)], jobs=4) == 90.0


def test_running_actions_count_what_they_have_done_already() -> None:
    # two 30 s actions left, one of them running for 20 s: 40 s of work on one job
    assert time_left(60.0, 2, 0, [(30.0, 20.0)], jobs=1) == 40.0


def test_an_action_running_past_its_recorded_duration_counts_as_nearly_done() -> None:
    assert time_left(30.0, 1, 0, [(30.0, 45.0)], jobs=1) == 0.0


def test_actions_without_a_record_count_as_the_mean_of_the_others() -> None:
    # 3 recorded (mean 10 s) and 1 unknown: 40 s on one job
    assert time_left(30.0, 3, 1, (), jobs=1) == 40.0
    # an unknown running action is expected to take the mean too
    assert time_left(30.0, 3, 1, [(None, 4.0)], jobs=1) == 36.0


def test_no_estimate_unless_most_remaining_actions_were_timed() -> None:
    assert time_left(30.0, 2, 2, (), jobs=1) is None
    assert time_left(0.0, 0, 5, (), jobs=1) is None
    assert time_left(0.0, 0, 0, (), jobs=1) is None


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (59.9, "59s"), (185, "3m05s"),
                                               (7440, "2h04m")])
def test_durations_read_short(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def _terminal() -> tuple[TerminalReporter, io.StringIO]:
    out = io.StringIO()
    return TerminalReporter(out, io.StringIO(), interval=0.0), out


def test_the_terminal_status_shows_the_time_left_of_a_long_build() -> None:
    reporter, out = _terminal()
    reporter.build_started(3, 0)
    reporter.expect({"//p:a": 60.0, "//p:b": 30.0, "//p:c": 30.0}, 1)
    reporter.action_started("//p:a", "aligning A")
    try:
        reporter.action_finished("//p:c", Outcome.CACHED, "", b"")
    finally:
        reporter.run_ended()
    # 60 s of //p:a (just started) and 30 s of //p:b remain, one job
    assert re.search(r"\[1/3\] 0s //p:a: aligning A \(1 cached\), ~1m30s left", out.getvalue())


def test_no_time_left_for_a_short_build_or_without_records() -> None:
    for durations in ({"//p:a": 2.0, "//p:b": 1.0}, {"//p:a": None, "//p:b": None}):
        reporter, out = _terminal()
        reporter.build_started(2, 0)
        reporter.expect(durations, 1)
        reporter.action_started("//p:a", "")
        reporter.action_finished("//p:b", Outcome.EXECUTED, "", b"")
        reporter.run_ended()
        assert "0s //p:a" in out.getvalue()
        assert "left" not in out.getvalue()


def _progress_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "posbuild-progress"]


@pytest.mark.parametrize("kind", [TerminalReporter, PlainReporter])
def test_no_ticker_thread_unless_an_action_runs(kind: type[TerminalReporter]) -> None:
    """A build the cache settles starts no thread; one that runs an action stops it at the end."""
    reporter = kind(io.StringIO(), io.StringIO())
    reporter.build_started(2, 1)
    reporter.expect({"//p:a": 1.0}, 2)
    reporter.action_finished("//p:a", Outcome.CACHED, "", b"")
    reporter.run_ended()
    assert not _progress_threads()
    reporter.build_started(2, 1)
    reporter.action_started("//p:a", "")
    assert len(_progress_threads()) == 1
    reporter.action_finished("//p:a", Outcome.EXECUTED, "", b"")
    reporter.run_ended()
    assert not _progress_threads()


def test_a_chain_of_dependent_actions_is_not_spread_over_the_jobs() -> None:
    assert time_left(40.0, 4, 0, (), jobs=4, critical=40.0) == 40.0


def test_the_status_counts_the_longest_chain_left() -> None:
    """Two samples, each a chain of two 30 s steps, on 4 jobs: the work alone (120 s / 4) says
    30 s, but each chain needs 60 s; once a first step ended, 30 s are left."""
    reporter, out = _terminal()
    reporter.build_started(4, 0)
    steps = {"//p:sort_a": 30.0, "//p:call_a": 30.0, "//p:sort_b": 30.0, "//p:call_b": 30.0}
    # the scheduler's priorities: (−the longest path from the action, label)
    paths = [(-60.0, "//p:sort_a"), (-30.0, "//p:call_a"), (-60.0, "//p:sort_b"),
             (-30.0, "//p:call_b")]
    reporter.expect(steps, 4, paths)
    reporter.action_started("//p:sort_a", "")
    reporter.action_finished("//p:sort_b", Outcome.CACHED, "", b"")
    assert "~1m00s left" in out.getvalue()
    reporter.action_finished("//p:sort_a", Outcome.EXECUTED, "", b"")
    reporter.action_started("//p:call_a", "")
    reporter.action_finished("//p:call_b", Outcome.CACHED, "", b"")
    reporter.run_ended()
    assert out.getvalue().count("~30s left") >= 1, out.getvalue()


def test_the_status_line_never_wraps_on_a_narrow_terminal() -> None:
    """A line longer than the terminal would wrap, and `\\r` would rewrite only its last row."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 30, 0, 0))
    with os.fdopen(terminal, "w") as screen:
        reporter = TerminalReporter(screen, io.StringIO(), interval=0.0)
        reporter.build_started(2, 0)
        reporter.action_started("//a/long/package:with_a_long_name", "a message as long")
        reporter.action_finished("//p:b", Outcome.EXECUTED, "", b"")
        reporter.run_ended()
    shown = os.read(controller, 4096).decode()
    os.close(controller)
    lines = [part for part in shown.split("\r") if part.strip()]
    assert lines and lines[0].startswith("[1/2] 0s //a/long/package")
    assert all(len(line) < 30 for line in lines), lines

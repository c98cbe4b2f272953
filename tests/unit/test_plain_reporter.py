"""The plain reporter (pipes, CI logs) writes the lines of finished actions in batches, never
holds one back for long, and keeps stderr's text after the lines before it."""

from __future__ import annotations

import io
import time

from posbuild.core.records import Outcome
from posbuild.engine.reporter import TICK, PlainReporter


class Recording(io.StringIO):
    """A stream that keeps each write apart, as an unbuffered pipe would send it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_a_burst_of_finished_actions_is_one_write() -> None:
    out = Recording()
    reporter = PlainReporter(out, out)
    reporter.build_started(200, 0)
    for n in range(200):
        reporter.action_finished(f"//p:t{n}", Outcome.EXECUTED, "", b"")
    assert len(out.writes) <= 2, out.writes[:3]  # the first line at once, the rest held
    reporter.run_ended()
    lines = out.getvalue().splitlines()
    assert lines == [f"[{n + 1}/200] //p:t{n}" for n in range(200)]


def test_a_held_line_is_written_while_the_next_action_runs() -> None:
    out = Recording()
    reporter = PlainReporter(out, out)
    reporter.build_started(3, 0)
    for label in ("//p:a", "//p:b", "//p:c"):
        reporter.action_started(label, "")
    reporter.action_finished("//p:a", Outcome.EXECUTED, "", b"")
    reporter.action_finished("//p:b", Outcome.EXECUTED, "", b"")
    assert "[2/3] //p:b" not in out.getvalue()  # held: it came right after the first
    deadline = time.monotonic() + TICK + 2.0
    while "[2/3] //p:b" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "[2/3] //p:b\n" in out.getvalue(), "still held while //p:c runs"
    reporter.run_ended()


def test_stderr_text_follows_the_lines_held_back() -> None:
    out = Recording()
    reporter = PlainReporter(out, out)
    reporter.build_started(4, 0)
    reporter.action_finished("//p:a", Outcome.EXECUTED, "", b"")
    reporter.action_finished("//p:b", Outcome.EXECUTED, "", b"")
    reporter.action_output("//p:b", b"", b"said\n")
    reporter.action_finished("//p:c", Outcome.EXECUTED, "", b"")
    reporter.action_finished("//p:d", Outcome.FAILED, "exit 1", b"broken\n")
    reporter.message("a note")
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["[1/4] //p:a", "[2/4] //p:b"]
    assert lines.index("said") > lines.index("[2/4] //p:b")
    assert lines.index("[3/4] //p:c") < lines.index("FAILED //p:d: exit 1")
    assert lines[-1] == "a note"

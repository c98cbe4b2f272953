"""Layer 0: how a build talks to people — a live status line, plain lines, or near silence.

The build emits events to a Reporter it is given and never prints itself. A terminal gets one
status line rewritten in place (`[done/total] label`, cache hits counted); a pipe gets one plain
line per executed or failed action, so logs stay readable; `-q` keeps only failures and errors.
Failures always show the action's stderr under its label. An executed action that printed
something shows it as Bazel does, `INFO: From //pkg:name:` and the text (stdout, then stderr), on
stderr, cut after `OUTPUT_LINES` lines or `OUTPUT_BYTES` bytes with a note naming the command that
prints all of it; `-q` shows none of it, and a cache hit never prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TextIO

from posbuild.core.records import Outcome

if TYPE_CHECKING:
    from posbuild.errors import OrchError


@dataclass(frozen=True, slots=True)
class BuildSummary:
    """Counts of one build, for the final line and the exit code."""

    total: int
    executed: int
    cached: int
    failed: int
    skipped: int
    wall: float
    failed_labels: tuple[str, ...]
    dry_run: bool = False
    # ORCH errors among the failures (ORCH-04 under --verify)
    orch: tuple[type[OrchError], ...] = ()


class Reporter(Protocol):
    def build_started(self, total: int, up_to_date: int) -> None: ...

    def action_finished(self, label: str, status: Outcome, error: str, stderr: bytes) -> None: ...

    def action_output(self, label: str, stdout: bytes, stderr: bytes) -> None: ...

    def failure_notes(self, label: str, notes: tuple[str, ...]) -> None: ...

    def build_finished(self, summary: BuildSummary) -> None: ...

    def message(self, text: str) -> None: ...


def summary_line(summary: BuildSummary) -> str:
    if summary.dry_run:
        return (f"DRY RUN: {summary.total} actions ({summary.executed} would execute, "
                f"{summary.cached} cached) in {summary.wall:.2f} s")
    verdict = "FAILED" if summary.failed else "OK"
    parts = f"{summary.executed} executed, {summary.cached} cached, {summary.failed} failed"
    if summary.skipped:
        parts += f", {summary.skipped} skipped"
    return f"{verdict}: {summary.total} actions ({parts}) in {summary.wall:.2f} s"


OUTPUT_LINES = 200  # an action's output shown on the terminal is cut after this many lines
OUTPUT_BYTES = 64 * 1024  # or this many bytes, whichever comes first


def clipped(text: str, lines: int = OUTPUT_LINES, size: int = OUTPUT_BYTES) -> tuple[str, int]:
    """The head of `text` a terminal shows, and how many of its lines are not shown whole (0:
    all of it): a build log stays readable when one action prints a megabyte."""
    every = text.splitlines()
    head = "\n".join(every[:lines])
    whole = min(lines, len(every))
    if len(head) > size:
        cut = head[:size]
        end = cut.rfind("\n")
        head = cut[:end] if end > 0 else cut  # one line longer than `size`: its start
        whole = head.count("\n") + 1 if end > 0 else 0
    return head, len(every) - whole


def output_block(label: str, stdout: bytes, stderr: bytes) -> str:
    """What an executed action printed, as Bazel shows it; "" when it printed nothing."""
    text = "".join(part.decode("utf-8", "replace") for part in (stdout, stderr) if part)
    text = text.rstrip("\n")
    if not text.strip():
        return ""
    head, left = clipped(text)
    block = f"INFO: From {label}:\n{head}\n"
    if left:
        block += (f"(output cut: {left} more line(s); all of it: "
                  f"posbuild log --output {label})\n")
    return block


class _Base:
    def __init__(self, out: TextIO, err: TextIO) -> None:
        self._out = out
        self._err = err
        self._total = 0
        self._done = 0
        self._cached = 0

    def build_started(self, total: int, up_to_date: int) -> None:
        """`up_to_date` actions were settled before any event: they count as done and cached."""
        self._total = total
        self._done = self._cached = up_to_date

    def message(self, text: str) -> None:
        self._err.write(text + "\n")

    def _planned(self, label: str) -> None:
        self._out.write(f"would execute {label}\n")

    def _count(self, status: Outcome) -> None:
        self._done += 1
        self._cached += status is Outcome.CACHED

    def action_output(self, label: str, stdout: bytes, stderr: bytes) -> None:
        """Show what an executed action printed (`output_block`)."""
        block = output_block(label, stdout, stderr)
        if block:
            self._out.flush()
            self._err.write(block)
            self._err.flush()

    def failure_notes(self, label: str, notes: tuple[str, ...]) -> None:
        """Lines that help debug a failure, under its stderr: the command, where it was kept."""
        self._err.write("".join(f"  {line}\n" for line in notes))
        self._err.flush()

    def _failure(self, label: str, error: str, stderr: bytes) -> None:
        self._err.write(f"FAILED {label}: {error}\n")
        text = stderr.decode("utf-8", "replace").rstrip("\n")
        if text:
            self._err.write("".join(f"  {line}\n" for line in text.splitlines()))
        self._err.flush()


class PlainReporter(_Base):
    """One line per executed or failed action; for pipes and CI logs."""

    def action_finished(self, label: str, status: Outcome, error: str, stderr: bytes) -> None:
        self._count(status)
        if status is Outcome.PLANNED:
            self._planned(label)
        elif status is Outcome.FAILED:
            self._failure(label, error, stderr)
        elif status is Outcome.EXECUTED:
            self._out.write(f"[{self._done}/{self._total}] {label}\n")

    def build_finished(self, summary: BuildSummary) -> None:
        self._out.write(summary_line(summary) + "\n")
        self._out.flush()


class QuietReporter(_Base):
    """Only failures and errors (`-q`)."""

    def action_output(self, label: str, stdout: bytes, stderr: bytes) -> None:
        pass

    def action_finished(self, label: str, status: Outcome, error: str, stderr: bytes) -> None:
        if status is Outcome.FAILED:
            self._failure(label, error, stderr)

    def build_finished(self, summary: BuildSummary) -> None:
        pass


class TerminalReporter(_Base):
    """A single status line rewritten in place, at most every `interval` seconds."""

    def __init__(self, out: TextIO, err: TextIO, interval: float = 0.05) -> None:
        super().__init__(out, err)
        self._interval = interval
        self._last = 0.0
        self._width = 0

    def _status(self, label: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        line = f"[{self._done}/{self._total}] {label}"
        if self._cached:
            line += f" ({self._cached} cached)"
        self._out.write("\r" + line.ljust(self._width) + "\r")
        self._width = len(line)
        self._out.flush()

    def _clear(self) -> None:
        if self._width:
            self._out.write("\r" + " " * self._width + "\r")
            self._width = 0

    def action_finished(self, label: str, status: Outcome, error: str, stderr: bytes) -> None:
        self._count(status)
        if status is Outcome.PLANNED:
            self._clear()
            self._planned(label)
        elif status is Outcome.FAILED:
            self._clear()
            self._failure(label, error, stderr)
        self._status(label)

    def message(self, text: str) -> None:
        self._clear()
        super().message(text)

    def action_output(self, label: str, stdout: bytes, stderr: bytes) -> None:
        if stdout or stderr:
            self._clear()
            super().action_output(label, stdout, stderr)

    def build_finished(self, summary: BuildSummary) -> None:
        self._clear()
        self._out.write(summary_line(summary) + "\n")
        self._out.flush()

"""Layer 0: how a build talks to people — a live status line, plain lines, or near silence.

The build emits events to a Reporter it is given and never prints itself. A terminal gets one
status line rewritten in place (`[done/total] 12s //pkg:name: message`: the oldest running
action and how long it has run, cache hits counted, the time left when earlier builds recorded
enough durations); a pipe gets one plain line per executed or failed action, so logs stay
readable, and a `still running` line for an action that runs longer than a few seconds; `-q`
keeps only failures and errors. Failures always show the action's stderr under its label. An
executed action that printed something shows it as Bazel does, `INFO: From //pkg:name:` and the
text (stdout, then stderr), on stderr, cut after `OUTPUT_LINES` lines or `OUTPUT_BYTES` bytes
with a note naming the command that prints all of it; `-q` shows none of it, and a cache hit
never prints.

Actions start on worker threads, which only note the start (`_Progress`, a lock held for a dict
update): what is drawn is drawn by the thread that finishes an action or by a small ticker thread
(`_Ticker`) that runs only while a build runs actions, all writes under one lock.
"""

from __future__ import annotations

import functools
import heapq
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence, \
    TextIO, TypeVar, cast

from posbuild.core.words import quantity
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

    def expect(self, durations: Mapping[str, float | None], jobs: int,
               paths: Sequence[tuple[float, str]] = ()) -> None:
        """The actions this build may run, each with its duration recorded by an earlier build
        (None if none is), how many run at once, and the scheduler's priorities (−the longest
        path of recorded durations from each action, label): what an estimate of the time left
        needs."""

    def action_started(self, label: str, message: str) -> None:
        """An action's command starts (a worker thread calls this; it must not block)."""

    def run_ended(self) -> None:
        """No action runs any more, also after an error or a signal: live progress stops."""

    def action_finished(self, label: str, status: Outcome, error: str, stderr: bytes) -> None: ...

    def action_output(self, label: str, stdout: bytes, stderr: bytes) -> None: ...

    def failure_notes(self, label: str, notes: tuple[str, ...]) -> None: ...

    def build_finished(self, summary: BuildSummary) -> None: ...

    def message(self, text: str) -> None: ...


def summary_line(summary: BuildSummary) -> str:
    if summary.dry_run:
        return (f"DRY RUN: {quantity(summary.total, 'action')} ({summary.executed} would execute, "
                f"{summary.cached} cached) in {summary.wall:.2f} s")
    verdict = "FAILED" if summary.failed else "OK"
    parts = f"{summary.executed} executed, {summary.cached} cached, {summary.failed} failed"
    if summary.skipped:
        parts += f", {summary.skipped} skipped"
    return f"{verdict}: {quantity(summary.total, 'action')} ({parts}) in {summary.wall:.2f} s"


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
        block += (f"(output cut: {quantity(left, 'more line')}; all of it: "
                  f"posbuild log --output {label})\n")
    return block


# a plain `still running` line once an action has run this long, then each time its run doubles
# (at most every STILL_RUNNING_CAP seconds); tests shorten it with POSBUILD_STILL_RUNNING_AFTER
STILL_RUNNING_AFTER = 5.0
STILL_RUNNING_CAP = 300.0
REDRAW_INTERVAL = 0.1  # the terminal's status line is redrawn at most this often
TICK = 0.5  # and at least this often while an action runs
# plain lines are written together at most this often (and by the ticker, at least every TICK
# while actions run): one write per action woke the pipe's reader ten thousand times
WRITE_INTERVAL = 0.1
LONG_BUILD = 10.0  # seconds a build is expected to take for its status to show the time left

F = TypeVar("F", bound=Callable[..., Any])


def time_left(known_total: float, known: int, unknown: int,
              running: Iterable[tuple[float | None, float]], jobs: int,
              critical: float = 0.0) -> float | None:
    """Seconds an unfinished build still needs, from the durations earlier builds recorded;
    None unless most unfinished actions have one (a guess from a few would mislead).

    `known_total` sums the recorded durations of the `known` unfinished actions that have one;
    `unknown` have none and count as the mean of the others. `running` gives, for each running
    action, its recorded duration (or None) and how long it has run. The work left is spread over
    the `jobs` slots, but the build cannot end before its longest running action does, nor
    before the longest chain of dependent actions left, `critical` seconds, has run.
    """
    if known <= unknown:
        return None
    mean = known_total / known
    work, longest = known_total + unknown * mean, 0.0
    for recorded, elapsed in running:
        expected = mean if recorded is None else recorded
        done = min(elapsed, expected)
        work -= done
        longest = max(longest, expected - done)
    return max(work / max(jobs, 1), longest, critical, 0.0)


def duration_text(seconds: float) -> str:
    """`7s`, `3m05s`, `2h04m`: short enough for a status line."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole // 60 % 60:02d}m"


class _Running:
    """One running action (a plain class: a dataclass costs the start-up of every build)."""

    __slots__ = ("label", "message", "since", "recorded", "next_line")

    def __init__(self, label: str, message: str, recorded: float | None,
                 next_line: float) -> None:
        self.label = label
        self.message = message
        self.since = time.monotonic()  # when it started
        self.recorded = recorded  # its duration in an earlier build
        self.next_line = next_line  # elapsed seconds at which the plain output mentions it next


class _Progress:
    """The running actions and what the rest of the build is expected to take, shared by the
    workers that start actions, the thread that finishes them and the ticker."""

    def __init__(self, first_line: float) -> None:
        self._lock = threading.Lock()
        self._first_line = first_line
        self.running: dict[str, _Running] = {}
        self._durations: Mapping[str, float | None] = {}
        self._jobs = 1
        self._known_total, self._known, self._unknown = 0.0, 0, 0
        self._long = False  # whether the build was expected to take long enough for an estimate
        self._paths: list[tuple[float, str]] = []  # a heap of unfinished (−longest path, label)
        self._finished: set[str] = set()

    def expect(self, durations: Mapping[str, float | None], jobs: int,
               paths: Sequence[tuple[float, str]]) -> None:
        with self._lock:
            self._durations, self._jobs = durations, jobs
            self._paths = list(paths)
            heapq.heapify(self._paths)
            known = [d for d in durations.values() if d is not None]
            self._known_total, self._known = sum(known), len(known)
            self._unknown = len(durations) - len(known)
            left = time_left(self._known_total, self._known, self._unknown, (), jobs,
                             self._critical(time.monotonic()))
            self._long = left is not None and left >= LONG_BUILD

    def started(self, label: str, message: str) -> None:
        with self._lock:
            self.running[label] = _Running(label, message, self._durations.get(label),
                                           self._first_line)

    def finished(self, label: str) -> None:
        with self._lock:
            self.running.pop(label, None)
            self._finished.add(label)
            if label in self._durations:
                recorded = self._durations[label]
                if recorded is None:
                    self._unknown -= 1
                else:
                    self._known -= 1
                    self._known_total -= recorded

    def clear(self) -> None:
        with self._lock:
            self.running.clear()

    def oldest(self) -> tuple[_Running | None, int]:
        """The action that has run longest, and how many run."""
        with self._lock:
            first = next(iter(self.running.values()), None)
            return first, len(self.running)

    def overdue(self) -> list[tuple[_Running, float]]:
        """Running actions due a `still running` line, with how long each has run; each is due
        again when its run has doubled."""
        now, due = time.monotonic(), []
        with self._lock:
            for run in self.running.values():
                elapsed = now - run.since
                if elapsed >= run.next_line:
                    due.append((run, elapsed))
                    run.next_line = min(elapsed * 2, elapsed + STILL_RUNNING_CAP)
        return due

    def left(self) -> float | None:
        """The estimated time left (`time_left`), for a build expected to take long."""
        if not self._long:
            return None
        now = time.monotonic()
        with self._lock:
            running = [(r.recorded, now - r.since) for r in self.running.values()]
            return time_left(self._known_total, self._known, self._unknown, running, self._jobs,
                             self._critical(now))

    def _critical(self, now: float) -> float:
        """The longest chain of recorded durations still to run (under the lock): from the
        unfinished action whose path is longest, less what a running one has done. Running
        actions are few (one per job), so only they are looked past."""
        heap, passed, longest = self._paths, [], 0.0
        while heap:
            negative, label = heap[0]
            if label in self._finished:
                heapq.heappop(heap)
                continue
            run = self.running.get(label)
            if run is None:
                longest = max(longest, -negative)
                break
            passed.append(heapq.heappop(heap))
            done = min(now - run.since, run.recorded or 0.0)
            longest = max(longest, -negative - done)
        for entry in passed:
            heapq.heappush(heap, entry)
        return longest


class _Ticker:
    """A daemon thread that calls `tick` every `period` seconds until stopped."""

    def __init__(self, tick: Callable[[], None], period: float) -> None:
        self._tick = tick
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="posbuild-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._period):
                self._tick()
        except (OSError, ValueError):  # a closed pipe or terminal: the build itself says so
            pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


def _locked(method: F) -> F:
    """Run a reporter's method under its screen lock: lines never interleave, and the status
    line is never drawn between a clear and the text it made room for."""
    @functools.wraps(method)
    def locked(self: _Live, *args: Any, **kwargs: Any) -> Any:
        with self._screen:
            return method(self, *args, **kwargs)
    return cast(F, locked)


def _settles(method: F) -> F:
    """An `action_finished`: the action no longer runs, and what it prints is `_locked`."""
    @functools.wraps(method)
    def settled(self: _Live, label: str, *args: Any, **kwargs: Any) -> Any:
        self._progress.finished(label)
        with self._screen:
            return method(self, label, *args, **kwargs)
    return cast(F, settled)


def _still_running_after() -> float:
    """When the plain output first mentions a running action: STILL_RUNNING_AFTER seconds, or
    what the test suite sets in POSBUILD_STILL_RUNNING_AFTER to keep its slow actions short."""
    try:
        return max(float(os.environ.get("POSBUILD_STILL_RUNNING_AFTER", "")), 0.1)
    except ValueError:
        return STILL_RUNNING_AFTER


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

    def expect(self, durations: Mapping[str, float | None], jobs: int,
               paths: Sequence[tuple[float, str]] = ()) -> None:
        pass

    def action_started(self, label: str, message: str) -> None:
        pass

    def run_ended(self) -> None:
        pass

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


class _Live(_Base):
    """Live progress: the running actions, noted by the workers that start them, and a ticker
    that shows them (`_tick`) while the build runs actions; a no-op build never starts it."""

    def __init__(self, out: TextIO, err: TextIO, first_line: float, period: float) -> None:
        super().__init__(out, err)
        self._screen = threading.RLock()  # every write to out or err, and every redraw
        self._first_line = first_line
        self._period = period
        self._progress = _Progress(first_line)
        self._ticker: _Ticker | None = None
        self._ticker_lock = threading.Lock()

    def build_started(self, total: int, up_to_date: int) -> None:
        super().build_started(total, up_to_date)
        self._progress = _Progress(self._first_line)

    def expect(self, durations: Mapping[str, float | None], jobs: int,
               paths: Sequence[tuple[float, str]] = ()) -> None:
        self._progress.expect(durations, jobs, paths)

    def action_started(self, label: str, message: str) -> None:
        self._progress.started(label, message)
        if self._ticker is None:
            with self._ticker_lock:
                if self._ticker is None:
                    self._ticker = _Ticker(self._tick, self._period)

    def run_ended(self) -> None:
        self._stop_live()

    def _stop_live(self) -> None:
        """Stop the ticker (never under the screen lock: a tick may be waiting for it)."""
        with self._ticker_lock:
            ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.stop()
        self._progress.clear()

    def _tick(self) -> None:
        raise NotImplementedError

    def _clear(self) -> None:
        """Make room for lines of text: the terminal clears its status line; plain output has
        none."""

    @_locked
    def message(self, text: str) -> None:
        super().message(text)

    @_locked
    def action_output(self, label: str, stdout: bytes, stderr: bytes) -> None:
        if stdout or stderr:
            self._clear()
            super().action_output(label, stdout, stderr)

    @_locked
    def failure_notes(self, label: str, notes: tuple[str, ...]) -> None:
        self._clear()
        super().failure_notes(label, notes)


class PlainReporter(_Live):
    """One line per executed or failed action, and a `still running` line for an action that
    runs long; for pipes and CI logs.

    The lines of executed actions are written together, at most every WRITE_INTERVAL and at
    least every TICK while actions run: written one by one (under PYTHONUNBUFFERED, which CI
    images often set), each woke the pipe's reader, which took a processor from the build, and a
    cold build of 10,000 cheap actions took 13 s instead of 10; block-buffered (Python's default
    for a pipe), a slow build's lines reached the log minutes late. Whatever goes to stderr (a
    failure, an action's output, a message) first writes the lines held back, so the two
    streams keep their order.
    """

    def __init__(self, out: TextIO, err: TextIO) -> None:
        after = _still_running_after()
        super().__init__(out, err, after, min(TICK, after / 2))
        self._held: list[str] = []  # lines of executed actions not written yet
        self._written = 0.0  # time.monotonic() of the last write

    def _clear(self) -> None:
        """Write the lines held back (under the screen lock, or once no worker reports)."""
        self._written = time.monotonic()
        if self._held:
            self._out.write("".join(self._held))
            self._held.clear()
            self._out.flush()

    @_locked
    def _tick(self) -> None:
        """`still running: //pkg:name: message (12s); ~3m10s left`, for each action due one."""
        self._clear()
        due = self._progress.overdue()
        if not due:
            return
        left = self._progress.left()
        tail = f"; ~{duration_text(-(-left // 1))} left" if left is not None else ""
        for run, elapsed in due:
            text = f"{run.label}: {run.message}" if run.message else run.label
            self._out.write(f"still running: {text} ({duration_text(elapsed)}){tail}\n")
        self._out.flush()

    @_settles
    def action_finished(self, label: str, status: Outcome, error: str, stderr: bytes) -> None:
        self._count(status)
        if status is Outcome.PLANNED:
            self._planned(label)
        elif status is Outcome.FAILED:
            self._clear()
            self._failure(label, error, stderr)
        elif status is Outcome.EXECUTED:
            self._held.append(f"[{self._done}/{self._total}] {label}\n")
            if time.monotonic() - self._written >= WRITE_INTERVAL:
                self._clear()

    def run_ended(self) -> None:
        super().run_ended()
        with self._screen:
            self._clear()

    @_locked
    def message(self, text: str) -> None:
        self._clear()
        _Base.message(self, text)

    def build_finished(self, summary: BuildSummary) -> None:
        self._stop_live()
        with self._screen:
            self._clear()
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


class TerminalReporter(_Live):
    """A single status line rewritten in place, at most every `interval` seconds, and every
    TICK seconds while an action runs: the oldest running action with how long it has run."""

    def __init__(self, out: TextIO, err: TextIO, interval: float = REDRAW_INTERVAL) -> None:
        super().__init__(out, err, 0.0, TICK)
        self._interval = interval
        self._last = 0.0
        self._width = 0
        self._shown = ""  # the status line on the screen
        self._label = ""  # the last finished action, shown when none runs

    def _status(self, label: str, force: bool = False) -> None:
        now = time.monotonic()
        self._label = label
        if not force and now - self._last < self._interval:
            return
        self._last = now
        line = f"[{self._done}/{self._total}] {self._running(now) or label}"
        if self._cached:
            line += f" ({self._cached} cached)"
        left = self._progress.left()
        if left is not None:
            line += f", ~{duration_text(-(-left // 1))} left"
        line = _fit(line, _columns(self._out))
        if line == self._shown:
            return
        self._out.write("\r" + line.ljust(self._width) + "\r")
        self._width = len(line)
        self._shown = line
        self._out.flush()

    def _running(self, now: float) -> str:
        """`12s //pkg:name: its message, +2 running`: the action that has run longest."""
        oldest, count = self._progress.oldest()
        if oldest is None:
            return ""
        text = f"{duration_text(now - oldest.since)} {oldest.label}"
        text += f": {oldest.message}" if oldest.message else ""
        return text + (f", +{count - 1} running" if count > 1 else "")

    @_locked
    def _tick(self) -> None:
        if self._progress.oldest()[0] is not None:
            self._status(self._label, force=True)

    def run_ended(self) -> None:
        """Also clear the line: after an error or a signal, no summary replaces it."""
        super().run_ended()
        with self._screen:
            self._clear()
            self._out.flush()

    def _clear(self) -> None:
        if self._width:
            self._out.write("\r" + " " * self._width + "\r")
            self._width = 0
            self._shown = ""

    @_settles
    def action_finished(self, label: str, status: Outcome, error: str, stderr: bytes) -> None:
        self._count(status)
        if status is Outcome.PLANNED:
            self._clear()
            self._planned(label)
        elif status is Outcome.FAILED:
            self._clear()
            self._failure(label, error, stderr)
        self._status(label)

    @_locked
    def message(self, text: str) -> None:
        self._clear()
        _Base.message(self, text)

    def build_finished(self, summary: BuildSummary) -> None:
        self._stop_live()
        self._clear()
        self._out.write(summary_line(summary) + "\n")
        self._out.flush()


def _columns(out: TextIO) -> int:
    """The terminal's width: a longer status line would wrap, and `\r` rewrite only its end."""
    try:
        return os.get_terminal_size(out.fileno()).columns or 80
    except (OSError, ValueError):
        return 80


def _fit(line: str, columns: int) -> str:
    """`line`, cut to leave the terminal's last column free (some terminals wrap there)."""
    return line if len(line) < columns else line[:max(columns - 2, 1)] + "…"


def choose_reporter(quiet: bool, out: TextIO, err: TextIO) -> Reporter:
    """Live status on a terminal, plain lines on a pipe, failures only with -q."""
    if quiet:
        return QuietReporter(out, err)
    if out.isatty():
        return TerminalReporter(out, err)
    return PlainReporter(out, err)

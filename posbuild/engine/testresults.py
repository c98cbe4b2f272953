"""Layer 0: a test's result, read back from its JUnit XML, and the summary `posbuild test` prints.

The XML the test action wrote (load/testaction.py) is the result: no <failure>, PASSED; a
<failure type="TIMEOUT">, TIMEOUT; any other, FAILED. The summary is Bazel's, line for line:
`//pkg:name   (cached) PASSED in 0.3s`, then "Executed X out of Y tests: ...".
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

PASSED, FAILED, TIMEOUT, FLAKY, NO_STATUS = "PASSED", "FAILED", "TIMEOUT", "FLAKY", "NO STATUS"
FAILURES = (FAILED, TIMEOUT)


@dataclass(frozen=True, slots=True)
class Run:
    """One attempt's outcome: its status and how long the test ran (None: unknown)."""

    status: str
    seconds: float | None = None


def read_result(xml_path: Path) -> Run:
    """The outcome the XML records; NO STATUS when it is missing or unreadable."""
    try:
        case = ET.parse(xml_path).getroot().find("testsuite/testcase")
    except (OSError, ET.ParseError):
        return Run(NO_STATUS)
    if case is None:
        return Run(NO_STATUS)
    failure = case.find("failure")
    status = PASSED if failure is None else (TIMEOUT if failure.get("type") == TIMEOUT
                                             else FAILED)
    try:
        seconds: float | None = float(case.get("time", ""))
    except ValueError:
        seconds = None
    return Run(status, seconds)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A test's outcome over its attempts in one `posbuild test`."""

    label: str
    status: str  # PASSED, FAILED, TIMEOUT, FLAKY or NO STATUS
    cached: bool  # the result is the cache's: nothing ran
    attempts: int  # how many times it ran here (0 when cached or not run)
    seconds: float | None
    log: str  # workspace-relative path of its log

    @property
    def executed(self) -> bool:
        return self.attempts > 0


def summary(results: Sequence[Verdict]) -> list[str]:
    """Bazel's summary: one line per test, the log of each that did not pass, and the count."""
    states = [_state(result) for result in results]
    width = max((len(r.label) for r in results), default=0) + 2
    right = max((len(state) for state in states), default=0)
    lines = []
    for result, state in zip(results, states):
        lines.append(f"{result.label:<{width}}{state:>{right}}")
        if result.status in FAILURES or result.status == FLAKY:
            lines.append(f"  {result.log}")
    lines.append(final_line(results))
    return lines


def _state(result: Verdict) -> str:
    """`(cached) PASSED in 0.3s`, `FLAKY, failed in 1 out of 2 in 0.1s`, `NO STATUS`."""
    state = ("(cached) " if result.cached else "") + result.status
    if result.status == FLAKY:
        state += f", failed in {result.attempts - 1} out of {result.attempts}"
    if result.seconds is not None and result.status != NO_STATUS:
        state += f" in {result.seconds:.1f}s"
    return state


def final_line(results: Sequence[Verdict]) -> str:
    """"Executed X out of Y tests: 2 tests pass, 1 fails locally and 1 was skipped."""
    total, executed = len(results), sum(r.executed for r in results)
    counts = {s: sum(r.status == s for r in results) for s in (PASSED, FLAKY, FAILED, TIMEOUT,
                                                                 NO_STATUS)}
    parts = []
    first = True

    def part(n: int, one: str, many: str) -> None:
        nonlocal first
        if n:
            noun = ("test " if n == 1 else "tests ") if first else ""
            parts.append(f"{n} {noun}{one if n == 1 else many}")
            first = False

    part(counts[PASSED], "passes", "pass")
    part(counts[FLAKY], "is flaky", "are flaky")
    part(counts[FAILED], "fails locally", "fail locally")
    part(counts[TIMEOUT], "times out", "time out")
    part(counts[NO_STATUS], "was skipped", "were skipped")
    said = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"Executed {executed} out of {total} test{'' if total == 1 else 's'}: {said}."

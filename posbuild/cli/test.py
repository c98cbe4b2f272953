"""`posbuild test`: build the patterns, run the tests among them, print Bazel's summary.

Each test is an action (load/testaction.py), so it runs in the sandbox, in parallel with the
rest, and its log and result are cached by key. A passing result from the cache stands: the test
is `(cached) PASSED`. A failing one never does: as in Bazel, a failed or timed-out test runs
again (`--rerun` of that test) until it has passed or used its attempts (`flaky = True`: 3,
`--flaky-attempts N`: N for every test). Exit 5 when everything built but a test did not pass.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Container

import click

from posbuild.cli import (allow_env_drift_option, complete_targets, define_option, fail,
                          interrupted, jobs_option, workspace_and_package)
from posbuild.core.words import quantity
from posbuild.errors import ActionFailed, PosbuildError, TestsFailed

if TYPE_CHECKING:
    from posbuild.core.action import ActionGraph
    from posbuild.core.records import Outcome
    from posbuild.engine.plan import BuildOptions
    from posbuild.engine.reporter import BuildSummary, Reporter
    from posbuild.engine.session import BuildSession
    from posbuild.engine.testresults import Run, Verdict

FLAKY_ATTEMPTS = 3  # Bazel's attempts for a test marked flaky


class _Seen:
    """The build's reporter, noting how each action ended (which tests ran, which failed how)."""

    def __init__(self, reporter: Reporter) -> None:
        self._reporter = reporter
        self.executed: set[str] = set()
        self.errors: dict[str, str] = {}

    def action_finished(self, label: str, status: Outcome, error: str, stderr: bytes) -> None:
        from posbuild.core.records import Outcome

        if status in (Outcome.EXECUTED, Outcome.FAILED):
            self.executed.add(label)
        if status is Outcome.FAILED:
            self.errors[label] = error
        self._reporter.action_finished(label, status, error, stderr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reporter, name)


@click.command()
@click.argument("patterns", nargs=-1, shell_complete=complete_targets)
@jobs_option
@click.option("--flaky-attempts", type=click.IntRange(min=1), default=None, metavar="N",
              help="Run a failing test up to N times, flaky or not (default: 3 for tests with "
              "flaky = True, else 1).")
@click.option("-q", "--quiet", is_flag=True, help="Print only failures and the test summary.")
@click.option("-k", "--keep-going", is_flag=True,
              help="Accepted for Bazel's habit: tests always keep going after a failure.")
@allow_env_drift_option
@click.option("--remote-upload", is_flag=True,
              help="Upload executed results (test results too) to [cache] remote, as build does.")
@define_option
def test(patterns: tuple[str, ...], jobs: int | None, flaky_attempts: int | None, quiet: bool,
         keep_going: bool, allow_env_drift: bool, remote_upload: bool,
         defines: tuple[str, ...]) -> None:
    """Build PATTERNS (default: //...) and run the tests among them (sh_test, py_test).

    \b
    Exit codes: 0 every test passed, 1 a build action failed, 2 usage, 3 bad BUILD file or
    label, 5 built but a test failed or timed out, 11-17 ORCH-01..07.
    """
    from posbuild.engine.reporter import choose_reporter
    from posbuild.engine.plan import BuildOptions
    from posbuild.engine.session import BuildSession

    try:
        root, package = workspace_and_package()
        seen = _Seen(choose_reporter(quiet, sys.stdout, sys.stderr))
        session = BuildSession(root, seen, os.environ)
        options = BuildOptions(patterns=patterns or ("//...",), jobs=jobs or 0, keep_going=True,
                               cwd_package=package, allow_env_drift=allow_env_drift,
                               remote_upload=remote_upload, test=True, defines=defines)
        results, failure = _run_tests(root, session, seen, options, flaky_attempts)
    except PosbuildError as error:
        fail(error)
    except KeyboardInterrupt as interrupt:
        interrupted(interrupt)
    _finish(results, failure)


def _run_tests(root: Path, session: BuildSession, seen: _Seen, options: BuildOptions,
               flaky_attempts: int | None) -> tuple[list[Verdict], PosbuildError | None]:
    """Build and test, then run again the tests that did not pass while they have attempts
    left; the results in label order, and the error of the build, if it failed."""
    from posbuild.core.target import TEST_KINDS
    from posbuild.engine.testresults import FAILURES, FLAKY, NO_STATUS, PASSED, Verdict

    graphs: list[ActionGraph] = []
    summary = session.build(options, on_graph=graphs.append)
    tests = {a.label: a for a in graphs[0].actions if a.kind in TEST_KINDS}
    error = _build_error(summary, tests)
    runs = _judge(root, graphs[0], summary, seen)
    attempts = {label: int(executed) for label, (_, executed) in runs.items()}
    failed_once = {label for label, (run, executed) in runs.items()
                   if executed and run.status in FAILURES}
    cached = {label for label, (_, executed) in runs.items() if not executed}

    def allowed(label: str) -> int:
        return flaky_attempts or (FLAKY_ATTEMPTS if "flaky" in tests[label].tags else 1)

    while True:
        again = tuple(sorted(label for label, (run, executed) in runs.items()
                             if run.status in FAILURES and attempts[label] < allowed(label)))
        if not again:
            break
        seen.executed.clear()
        seen.errors.clear()
        graphs.clear()
        summary = session.build(replace(options, patterns=again, rerun=again),
                                on_graph=graphs.append)
        error = error or _build_error(summary, tests)
        for label in again:  # an attempt, even if it could not run (then it is NO STATUS)
            attempts[label] += 1
        for label, (run, executed) in _judge(root, graphs[0], summary, seen).items():
            runs[label] = (run, executed)
            if executed:
                cached.discard(label)
                if run.status in FAILURES:
                    failed_once.add(label)
    results = []
    for label in sorted(tests):
        run = runs[label][0]
        status = FLAKY if run.status == PASSED and label in failed_once else run.status
        log = next(o for o in tests[label].outputs if o.endswith(".test.log"))
        results.append(Verdict(label, status, label in cached and run.status != NO_STATUS,
                               attempts[label], run.seconds, log))
    return results, error


def _build_error(summary: BuildSummary, tests: Container[str]) -> PosbuildError | None:
    """Why the build itself failed: an ORCH error (a test over its declared memory is ORCH-05,
    as any action), or an action that is not a test failed."""
    from posbuild.engine.session import summary_error

    if summary.orch:
        return summary_error(summary)
    broken = [label for label in summary.failed_labels if label not in tests]
    if not broken:
        return None
    return ActionFailed(f"{quantity(len(broken), 'action')} failed: {', '.join(broken)}")


def _judge(root: Path, graph: ActionGraph, summary: BuildSummary,
           seen: _Seen) -> dict[str, tuple[Run, bool]]:
    """Each test's outcome in one build, and whether it ran in it: from its XML, unless its
    action failed (its runner was killed) or an action it needs failed (NO STATUS)."""
    from posbuild.core.target import TEST_KINDS
    from posbuild.engine.testresults import FAILED, NO_STATUS, TIMEOUT, Run, read_result

    failed = set(summary.failed_labels)
    blocked: list[bool] = []
    runs: dict[str, tuple[Run, bool]] = {}
    for action in graph.actions:
        blocked.append(action.label in failed or any(blocked[d] for d in action.deps))
        if action.kind not in TEST_KINDS:
            continue
        if action.label in failed:
            timed_out = "timed out" in seen.errors.get(action.label, "")
            runs[action.label] = (Run(TIMEOUT if timed_out else FAILED), True)
        elif blocked[-1]:
            runs[action.label] = (Run(NO_STATUS), False)
        else:
            xml = next(o for o in action.outputs if o.endswith(".test.xml"))
            runs[action.label] = (read_result(root / xml), action.label in seen.executed)
    return runs


def _finish(results: list[Verdict], error: PosbuildError | None) -> None:
    """Print the summary; exit as the build's error says if it failed, 5 if a test did not
    pass."""
    from posbuild.engine.testresults import FLAKY, PASSED, summary

    if not results:
        click.echo("No test targets were found, yet testing was requested.")
    else:
        for line in summary(results):
            click.echo(line)
    if error is not None:
        fail(error)
    bad = [r.label for r in results if r.status not in (PASSED, FLAKY)]
    if bad:
        fail(TestsFailed(f"{len(bad)} test{'s' if len(bad) != 1 else ''} did not pass: "
                         f"{', '.join(bad)}"))

"""`posbuild watch`: build, then rebuild on every change, one line per cycle, until Ctrl-C."""

from __future__ import annotations

import gc
import os
import sys
from typing import TextIO

import click

from posbuild.core.words import quantity
from posbuild.engine.session import summary_error
from posbuild.cli import (allow_env_drift_option, complete_targets, define_option, fail,
                          interrupted, jobs_option, keep_going_option, workspace_and_package)
from posbuild.errors import PosbuildError
from posbuild.engine.reporter import BuildSummary, QuietReporter, TerminalReporter
from posbuild.engine.watch import Cycle

SHOWN_PATHS = 3  # changed paths named in a cycle line; the rest are counted


class _TerminalStatus(TerminalReporter):
    """The live status line during a build; the cycle line replaces the build's summary line."""

    def build_finished(self, summary: BuildSummary) -> None:
        self._stop_live()
        self._clear()
        self._out.flush()


def cycle_line(cycle: Cycle, first: bool) -> str:
    """`[watch] 2 files changed (a, b): 3 executed, 97 cached, 0 failed in 0.21 s`."""
    if first:
        head = "initial build"
    else:
        names = ", ".join(cycle.changed[:SHOWN_PATHS])
        more = len(cycle.changed) - SHOWN_PATHS
        names += f", +{more} more" if more > 0 else ""
        count = len(cycle.changed)
        head = f"{count} file{'s' if count != 1 else ''} changed ({names})"
    if cycle.summary is not None:
        s = cycle.summary
        ran = f"{s.executed} executed, {s.cached} cached, {s.failed} failed"
        ran += f", {s.skipped} skipped" if s.skipped else ""
    else:
        ran = f"error (exit {cycle.error.exit_code if cycle.error else 1})"
    tail = f"; watching {quantity(cycle.watched, 'file')}, Ctrl-C to stop" if first else ""
    return f"[watch] {head}: {ran} in {cycle.elapsed:.2f} s{tail}"


class _CyclePrinter:
    """Prints each Cycle: errors on stderr as `posbuild: ...`, the cycle line on stdout."""

    def __init__(self, out: TextIO, err: TextIO, quiet: bool) -> None:
        self._out = out
        self._err = err
        self._quiet = quiet
        self._first = True

    def __call__(self, cycle: Cycle) -> None:
        error = cycle.error or (summary_error(cycle.summary) if cycle.summary else None)
        if error is not None:
            self._err.write(f"posbuild: {error.render()}\n")
            self._err.flush()
        if error is not None or not self._quiet:
            self._out.write(cycle_line(cycle, self._first) + "\n")
            self._out.flush()
        self._first = False


@click.command()
@click.argument("patterns", nargs=-1, shell_complete=complete_targets)
@jobs_option
@keep_going_option
@click.option("-q", "--quiet", is_flag=True,
              help="Print only failures and errors (no line for a good cycle).")
@click.option("--debounce", type=click.IntRange(min=0), default=50, show_default=True, metavar="MS",
              help="Build once no relevant change has come for MS milliseconds.")
@allow_env_drift_option
@define_option
def watch(patterns: tuple[str, ...], jobs: int | None, keep_going: bool, quiet: bool, debounce: int,
          allow_env_drift: bool, defines: tuple[str, ...]) -> None:
    """Build PATTERNS (default: //...), then rebuild whenever a file they depend on changes.

    \b
    Watched: every source file and tool of the requested actions, the BUILD, .bzl and data files
    they were loaded from, posbuild.toml and posbuild.lock, and new files in their packages
    (globs).
    Not watched: posbuild-out/, .posbuild/, .git/ and other folders whose name starts with '.'.
    Each build prints one line; a failed build or a broken BUILD file is reported and watching
    goes on. Ctrl-C stops at once (exit 130), keeping nothing partial.
    """
    from posbuild.engine.plan import BuildOptions
    from posbuild.engine.session import BuildSession
    from posbuild.workspace.config import load_config, with_defines
    from posbuild.core.label import parse_pattern
    from posbuild.engine.watch import watch as watch_loop
    from posbuild.engine.changefeed import ChangeFeed
    from posbuild.core.layout import STATE_DIR

    try:
        root, package = workspace_and_package()
        config = with_defines(load_config(root), defines)
        for text in patterns:  # no edit can mend a malformed pattern: stop rather than watch
            parse_pattern(text, package)
        options = BuildOptions(patterns=patterns or ("//...",), jobs=jobs or 0,
                               keep_going=keep_going,
                               cwd_package=package, allow_env_drift=allow_env_drift,
                               defines=defines)
        reporter = _TerminalStatus(sys.stdout, sys.stderr) if sys.stdout.isatty() and not quiet \
            else QuietReporter(sys.stdout, sys.stderr)  # a cycle is its one line
        environ = dict(os.environ)
        printer = _CyclePrinter(sys.stdout, sys.stderr, quiet)

        # As the build server does (changefeed.py): the workspace's changes, counted from
        # inotify, so that a rebuild looks only at the files that changed, not at every file of
        # the last state. Started once the first build made `.posbuild/`; the state it vouches
        # for is checked whole first.
        feed = ChangeFeed.of(config, environ)

        def report(cycle: Cycle) -> None:
            printer(cycle)
            if not feed.started and not feed.trouble and (root / STATE_DIR).is_dir():
                feed.start()
            feed.confirm()  # while waiting for the next change
            gc.collect()  # once per cycle, too

        # A build of 10,000 actions allocates hundreds of thousands of objects, and the cyclic
        # collector would walk the live ones many times over (100-300 ms of a 0.5 s rebuild) to
        # free next to nothing: builds make almost no reference cycles. It runs once per cycle
        # instead.
        gc.disable()
        session = BuildSession(root, reporter, environ, vouch=feed)
        try:
            watch_loop(config, lambda hook: session.build(options, on_graph=hook),
                       report, debounce / 1000)
        finally:
            feed.stop()
    except PosbuildError as error:
        fail(error)
    except KeyboardInterrupt as interrupt:
        interrupted(interrupt)

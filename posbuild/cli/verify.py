"""`posbuild verify`: build, then run every selected action twice, perturbed, and report what
differs."""

from __future__ import annotations

import os
import signal
import sys

import click

from posbuild.core.words import quantity
from posbuild.cli import (complete_targets, define_option, fail, interrupted, jobs_option,
                          workspace_and_package)
from posbuild.errors import ActionFailed, NonDeterminism, PosbuildError


@click.command()
@click.argument("patterns", nargs=-1, shell_complete=complete_targets)
@jobs_option
@click.option("-q", "--quiet", is_flag=True,
              help="Print only non-deterministic outputs and errors.")
@define_option
def verify(patterns: tuple[str, ...], jobs: int | None, quiet: bool,
           defines: tuple[str, ...]) -> None:
    """Check that the actions of PATTERNS (default: //...) are deterministic.

    Builds the targets first, then runs each action twice in fresh sandboxes that differ in
    sandbox path and length, environment order, TZ, umask, directory listing order (where the
    file system allows) and wall-clock time (shifted with libfaketime when installed, else one
    second later), and byte-compares every output of the two runs and of the cached result.
    Nothing is cached and posbuild-out/ is left as the build made it. Actions tagged no-cache
    are not verified.

    \b
    Each difference is one line:
      ORCH-04 //pkg:stamp: posbuild-out/pkg/stamp.txt: run 1 has 30 bytes, run 2 has 30 bytes, first
      difference at byte 18
    Exit codes: 0 all deterministic, 14 (ORCH-04) a difference, 1 the build failed, 2 usage, 3 bad
    BUILD file.
    """
    from posbuild.engine.locking import workspace_lock
    from posbuild.engine.plan import BuildOptions
    from posbuild.engine.resolve import make_request, resolve
    from posbuild.engine.session import BuildSession
    from posbuild.workspace.config import load_config, with_defines
    from posbuild.engine.reporter import QuietReporter
    from posbuild.engine.verify import verify_request

    verifying = False  # an interrupt before this is the build's (its finished actions are cached)
    try:
        root, package = workspace_and_package()
        patterns = patterns or ("//...",)
        environ = dict(os.environ)
        reporter = QuietReporter(sys.stdout, sys.stderr)
        config = with_defines(load_config(root), defines)
        with workspace_lock(config, reporter):  # one lock for both: nothing changes in between
            summary = BuildSession(root, reporter, environ).build(
                BuildOptions(patterns, jobs=jobs or 0, cwd_package=package, defines=defines))
            if summary.failed:
                fail(ActionFailed(f"cannot verify: {quantity(summary.failed, 'action')} failed "
                                  f"to build: {', '.join(summary.failed_labels)}"))
            graph = resolve(root, patterns, package, config)
            state_path = make_request(config, patterns, package).state_path
            verifying = True
            report = verify_request(config, graph, state_path, environ, jobs or config.jobs)
    except PosbuildError as error:
        fail(error)
    except KeyboardInterrupt as interrupt:  # SIGINT, SIGTERM or SIGHUP (interrupt.py): exit 128+N
        from posbuild.host.interrupt import Interrupted

        if not verifying:
            interrupted(interrupt)

        signum = interrupt.signum if isinstance(interrupt, Interrupted) else signal.SIGINT
        click.echo(f"posbuild: interrupted by {signal.Signals(signum).name}; nothing was cached or "
                   f"written to posbuild-out/", err=True)
        sys.exit(128 + signum)
    if report.notice:
        click.echo(report.notice, err=True)
    if not quiet:
        click.echo("verify: run 2 differs from run 1 in " + ", ".join(report.perturbed))
    for finding in report.findings:
        click.echo(f"ORCH-04 {finding.label}: {finding.detail}")
    if report.findings:
        bad = report.nondeterministic
        fail(NonDeterminism(
            f"{len(bad)} of {quantity(report.actions, 'action')} "
            f"{'is' if len(bad) == 1 else 'are'} not deterministic "
            f"({quantity(len(report.findings), 'difference')} above); make each output depend "
            "on its declared inputs only, then run `posbuild verify` again"
        ))
    if not quiet:
        click.echo(_summary(report))


def _summary(report) -> str:
    line = (f"verify: {quantity(report.actions, 'action')}, "
            f"{quantity(report.outputs, 'output')}, {quantity(report.bytes, 'byte')} "
            "compared: all deterministic")
    notes = []
    if report.not_verified:
        notes.append(f"{quantity(len(report.not_verified), 'no-cache action')} not verified")
    if report.without_cache:
        notes.append(f"{report.without_cache} without a cached result to compare with")
    if report.may_differ:
        notes.append(f"{quantity(report.may_differ, 'output')} tagged nondeterministic-output "
                     "not compared")
    return line + (f" ({'; '.join(notes)})" if notes else "")

"""`posbuild lock`: pin the digests of the source files a pattern's actions read, in
posbuild.lock."""

from __future__ import annotations

import sys

import click

from posbuild.core.words import quantity
from posbuild.cli import complete_targets, define_option, fail, workspace_and_package
from posbuild.errors import PosbuildError


@click.command()
@click.argument("patterns", nargs=-1, shell_complete=complete_targets)
@define_option
def lock(patterns: tuple[str, ...], defines: tuple[str, ...]) -> None:
    """Pin the digests of the source files read by PATTERNS (default: //...) in posbuild.lock.

    \b
    From then on, a build that reads a pinned file whose bytes changed stops before anything
    runs with ORCH-03 (exit 13); run `posbuild lock` again to accept the change. Pins of files
    outside PATTERNS are kept (those of deleted files are dropped); the "environment" section
    of posbuild.lock is left as it is.
    """
    from posbuild.engine.locking import workspace_lock
    from posbuild.engine.resolve import resolve
    from posbuild.workspace.config import load_config, with_defines
    from posbuild.engine.pins import lock_sources
    from posbuild.engine.reporter import PlainReporter

    try:
        root, package = workspace_and_package()
        config = with_defines(load_config(root), defines)
        with workspace_lock(config, PlainReporter(sys.stdout, sys.stderr)):
            graph = resolve(root, patterns or ("//...",), package, config)
            pinned, dropped = lock_sources(root, graph.actions)
    except PosbuildError as error:
        fail(error)
    click.echo(f"locked {quantity(pinned, 'source file')} in posbuild.lock")
    if dropped:
        files = "a file that no longer exists" if dropped == 1 else "files that no longer exist"
        click.echo(f"dropped {quantity(dropped, 'pin')} of {files}")

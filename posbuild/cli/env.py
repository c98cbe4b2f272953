"""`posbuild env show|approve|check`: the environment fingerprint (§14) and its approval in
posbuild.lock."""

from __future__ import annotations

import json
import os
import sys

import click

from posbuild.cli import define_option, fail, workspace_and_package
from posbuild.errors import PosbuildError


def _current(defines: tuple[str, ...] = ()):
    """The workspace root and the fingerprint of everything its actions run, computed afresh
    (and the cache refreshed); `defines` are the `--define` values the actions are loaded with."""
    from posbuild.workspace.config import load_config, with_defines
    from posbuild.workspace.envfp import environments_for

    root, _ = workspace_and_package()
    config = with_defines(load_config(root), defines)
    environments = environments_for(config, os.environ)
    environments.fresh()
    now = environments.table(_programs(config))
    environments.save()
    return root, now


def _programs(config) -> tuple[str, ...]:
    """The host programs of every action of the workspace (`//...`, its tests included, which
    `posbuild test` runs); none, with a warning, when its BUILD files do not load."""
    from posbuild.engine.resolve import graph_entry, make_request
    from posbuild.errors import BuildFileError

    try:
        return graph_entry(config, make_request(config, ("//...",), testing=True)).facts.programs
    except BuildFileError as error:
        click.echo(f"posbuild: warning: the BUILD files do not load ({error.render()}); the "
                   "fingerprint holds the platform and [env] tools only", err=True)
        return ()


@click.group()
def env() -> None:
    """Show, approve and check the environment fingerprint and its hash h_E.

    \b
    An action's key holds the environment it runs in: the platform (OS, kernel, libc, CPU
    architecture), the `[env] tools` of posbuild.toml, and the host programs it runs (the
    command words of its command, its `host_tools`, a py_task's interpreter), each by path and
    digest; a Python interpreter also by its version and every distribution it imports from.
    These commands show, approve and check the table of every action of the workspace; h_E is
    its hash. The CPU model, host name and posbuild's version are recorded but not hashed.
    """


@env.command(short_help="Print the fingerprint entries and h_E.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: hash, fingerprint, not_hashed.")
@define_option
def show(as_json: bool, defines: tuple[str, ...]) -> None:
    """Print each fingerprint entry and h_E."""
    from posbuild.workspace.envfp import is_hashed

    try:
        _, now = _current(defines)
    except PosbuildError as error:
        fail(error)
    if as_json:
        click.echo(json.dumps({
            "hash": now.hash.hex(),
            "fingerprint": now.entries,
            "not_hashed": [name for name in now.entries if not is_hashed(name)],
        }, indent=2, sort_keys=True))
        return
    width = max((len(name) for name in now.entries), default=0)
    for name, value in now.entries.items():
        note = "" if is_hashed(name) else "  (recorded, not hashed)"
        click.echo(f"{name:<{width}}  {value}{note}")
    click.echo(f"h_E {now.hash.hex()}")


@env.command(short_help="Approve this environment in posbuild.lock.")
@define_option
def approve(defines: tuple[str, ...]) -> None:
    """Write h_E and the fingerprint into posbuild.lock; later builds must match them (ORCH-07)."""
    from dataclasses import replace

    from posbuild.engine.locking import workspace_lock
    from posbuild.workspace.config import load_config
    from posbuild.workspace.envfp import approval_record
    from posbuild.workspace.lockfile import read_lock, write_lock
    from posbuild.engine.reporter import PlainReporter

    try:
        root, _ = workspace_and_package()
        # `posbuild lock` writes it too
        with workspace_lock(load_config(root), PlainReporter(sys.stdout, sys.stderr)):
            root, now = _current(defines)
            lock = read_lock(root)
            path = write_lock(root, replace(lock, environment=approval_record(now)))
    except PosbuildError as error:
        fail(error)
    click.echo(f"approved h_E {now.hash.hex()} ({len(now.entries)} entries) in {path.name}")


@env.command(short_help="Compare with the approved environment (ORCH-07 on drift).")
@define_option
def check(defines: tuple[str, ...]) -> None:
    """Compare this environment with the approved one: exit 0 if h_E matches, else ORCH-07 (exit
    17).

    \b
    Each differing entry is one line:
      changed os.release 6.1.0-17-amd64 -> 6.1.0-18-amd64
      added python[/usr/bin/python3].dist.foo 1.2
      removed python[/usr/bin/python3].dist.bar 0.3
    Differences in recorded-only entries (cpu.model, host.name, posbuild.version) are notes,
    never drift.
    """
    from posbuild.workspace.envfp import compare_with_approved

    try:
        root, now = _current(defines)
        approval = compare_with_approved(root, now)
        if approval.approved_hash is None:
            fail(PosbuildError("no approved environment in posbuild.lock (h_E is "
                               f"{now.hash.hex()}); "
                            f"run `posbuild env approve` first"))
        for change in approval.notes:
            click.echo(f"note: {change} (recorded, not hashed: not drift)", err=True)
        if approval.drifted:
            fail(approval.error())
    except PosbuildError as error:
        fail(error)
    click.echo(f"environment matches the approved hash {now.hash.hex()}")
    sys.exit(0)

"""Housekeeping commands: `posbuild clean`, `posbuild rollback` and `posbuild shutdown`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from posbuild.cli import fail, workspace_and_package
from posbuild.errors import PosbuildError

if TYPE_CHECKING:
    from posbuild.engine.reporter import Reporter


@click.command()
@click.option("--all", "everything", is_flag=True,
              help="Also empty .posbuild/ and the store (all state).")
def clean(everything: bool) -> None:
    """Remove posbuild-out/; with --all also the store, so the next build starts from nothing.

    Only folders posbuild made are touched: the store, the sandbox base and .posbuild/ hold a
    CACHEDIR.TAG posbuild wrote when it made them; a folder without one, or a link, is refused
    and nothing is deleted. Waits for a running command of the workspace.
    """
    from posbuild.client import shutdown as stop_server
    from posbuild.engine.reporter import PlainReporter

    try:
        root, _ = workspace_and_package()
        if everything:  # its socket, log and lock are in .posbuild/
            stop_server(str(root))
        removed = _clean(root, everything, PlainReporter(sys.stdout, sys.stderr))
    except PosbuildError as error:
        fail(error)
    for path in removed:
        click.echo(f"removed {path}")
    if not removed:
        click.echo("nothing to remove")


@click.command()
def shutdown() -> None:
    """Stop the workspace's build server, after the build it is running; the next build starts
    a new one. Exit 0 either way."""
    from posbuild.client import shutdown as stop_server

    try:
        root, _ = workspace_and_package()
    except PosbuildError as error:
        fail(error)
    click.echo("build server stopped" if stop_server(str(root)) else "no build server was running")


@click.command()
@click.option("--list", "list_only", is_flag=True,
              help="Show the recorded generations instead of rolling back.")
@click.option("--to", "generation_id", type=click.IntRange(min=1), default=None,
              help="Roll back to generation N instead of the latest one.")
def rollback(list_only: bool, generation_id: int | None) -> None:
    """Restore posbuild-out/ byte for byte to the last fully successful build, from the store.

    Nothing is executed: every file of the generation is rewritten from its verified blob if it
    is not already current, and files the generation does not list are removed.
    """
    from posbuild.engine.locking import workspace_lock
    from posbuild.workspace.config import load_config
    from posbuild.store.generations import generations_of, rollback as roll_back
    from posbuild.engine.reporter import PlainReporter
    from posbuild.store.lmdbstore import Store

    try:
        root, _ = workspace_and_package()
        config = load_config(root)
        with workspace_lock(config, PlainReporter(sys.stdout, sys.stderr)):
            store = Store(config.store_dir, config.workspace_tag)
            try:
                if list_only:
                    _print_generations(generations_of(config, store))
                    return
                report = roll_back(config, store, generation_id)
            finally:
                store.close()
    except PosbuildError as error:
        fail(error)
    g = report.generation
    click.echo(f"rolled back posbuild-out/ to generation {g.id} ({g.created}, "
               f"{' '.join(g.patterns)}): {report.restored} restored, {report.removed} removed, "
               f"{report.unchanged} unchanged")


def _print_generations(generations: list) -> None:
    if not generations:
        click.echo("no generations recorded yet")
        return
    click.echo(f"{'':2}{'id':>4}  {'created (UTC)':<32}  {'files':>6}  {'bytes':>10}  patterns")
    for g in generations:
        mark = "*" if g is generations[-1] else " "
        click.echo(
            f"{mark:2}{g.id:>4}  {g.created:<32}  {g.files:>6}  {g.size:>10}  "
            f"{' '.join(g.patterns)}")


def _clean(root: Path, everything: bool, reporter: Reporter) -> list[Path]:
    """Remove `posbuild-out/` (and with `everything`, the store and the rest of `.posbuild/`);
    returns what was removed.

    It holds the workspace lock (a build would go on writing into what clean removes), and with
    `everything` the shared store's too. Only what posbuild made is touched (owned.py): the store
    and `.posbuild/` are emptied, keeping their marks and lock files, so that a command waiting
    for the lock finds a workspace as good as new; a folder without posbuild's mark is refused.
    """
    import shutil

    from posbuild.core.layout import FAILED, STORE_LOCK, WORKSPACE_LOCK
    from posbuild.engine.locking import workspace_lock
    from posbuild.host.owned import STATE, STORE, empty, remove_outputs
    from posbuild.store.upstate import mark_tree
    from posbuild.workspace.config import load_config

    config = load_config(root)
    if not any(os.path.lexists(path)
               for path in (config.out_dir, config.state_dir, config.store_dir)):
        return []
    with workspace_lock(config, reporter, collect=everything):
        removed = [config.out_dir] if remove_outputs(config.out_dir) else []
        failed = config.state_dir / FAILED  # what failed runs left (postmortem.py)
        if failed.is_dir() and not failed.is_symlink():
            shutil.rmtree(failed)
            removed.append(failed)
        if not everything:
            # posbuild-out/ no longer matches the latest generation
            mark_tree(config, clean=False, withdrawn=())
            return removed
        if not config.store_dir.is_relative_to(config.state_dir) \
                and empty(config.store_dir, STORE, (STORE_LOCK,)):
            removed.append(config.store_dir)  # a shared store (`[cache] dir`)
        if empty(config.state_dir, STATE, (WORKSPACE_LOCK,)):
            removed.append(config.state_dir)
    return removed

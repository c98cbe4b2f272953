"""`posbuild fsck [--repair]`: check the store and posbuild-out/, print one line per finding.

Exit status: 13 (ORCH-03) while any checksum inconsistency remains, else 16 (ORCH-06) while any
partial state remains, else 0. Warnings never change it. After `--repair`, only what the repair
could not fix counts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from posbuild.core.words import quantity
from posbuild.cli import fail, workspace_and_package
from posbuild.errors import ChecksumMismatch, PartialState, PosbuildError

if TYPE_CHECKING:
    from posbuild.engine.fsck import Problem


@click.command()
@click.option("--repair", is_flag=True,
              help="Remove corrupt blobs and the results using them, dangling results, corrupt or "
              "unknown "
                   "files under posbuild-out/ and leftovers of interrupted builds; the next build "
                   "recreates what was removed.")
def fsck(repair: bool) -> None:
    """Re-hash every blob and every file under posbuild-out/, and look for partial state.

    \b
    ORCH-03: a blob or an output whose bytes do not hash to their recorded digest, or an
             execution record changed or deleted after its build was sealed.
    ORCH-06: a result or generation whose blobs are gone, or a file under posbuild-out/ posbuild
             did not write. Leftovers of killed posbuild processes (temp files, sandboxes) are
             swept, not reported.
    Exit codes: 0 nothing (left) to fix, 13 ORCH-03 found, 16 only ORCH-06 found.
    """
    from posbuild.engine.locking import workspace_lock
    from posbuild.workspace.config import load_config
    from posbuild.engine.fsck import check, repaired_line, summary, swept_line
    from posbuild.core.layout import STORE_DB
    from posbuild.engine.reporter import PlainReporter
    from posbuild.store.lmdbstore import Store

    try:
        root, _ = workspace_and_package()
        config = load_config(root)
        # alone with a shared store: its passes read it at different instants, and repair removes
        # rows
        with workspace_lock(config, PlainReporter(sys.stdout, sys.stderr), collect=True):
            rebuilt = _damaged_store(config.store_dir, config.workspace_tag, repair)
            store = Store(config.store_dir, config.workspace_tag) \
                if (config.store_dir / STORE_DB).exists() else None
            try:
                report = check(config, store, repair)
            finally:
                if store is not None:
                    store.close()
    except PosbuildError as error:
        fail(error)
    if rebuilt:
        click.echo(rebuilt)
    for problem in (*report.errors, *report.warnings):
        click.echo(str(problem))
    click.echo(summary(report))
    if report.swept:
        click.echo(swept_line(report))
    if report.repaired is not None:
        click.echo(repaired_line(report.repaired))
        for problem, why in report.repaired.failed:
            click.echo(f"not repaired: {problem}: {why}")
    _exit_for(report.remaining, repair)


def _damaged_store(store_dir: Path, workspace: str, repair: bool) -> str:
    """Read every row of the store in a child process (salvage.py); a damaged store fails fsck
    with ORCH-03, and `--repair` moves it aside and rebuilds it from the rows still readable.
    Returns the line saying what the repair did ("" if nothing)."""
    from posbuild.engine.fsck import record_chain_problems
    from posbuild.core.layout import STORE_DB
    from posbuild.store.salvage import damage, drop_records, salvage
    from posbuild.store.lmdbstore import Store

    db = store_dir / STORE_DB
    found = damage(db) if (db / "data.mdb").exists() else None
    if found is None:
        return ""
    if not repair:
        fail(ChecksumMismatch(f"the store {store_dir} is damaged: {found}; `posbuild fsck "
                              "--repair` moves it aside and rebuilds it from every row still "
                              "readable"))
    saved = salvage(db)
    store = Store(store_dir, workspace)
    try:
        chain_lost = bool(record_chain_problems(store))
    finally:
        store.close()
    if chain_lost:
        drop_records(db)
    incomplete = f"; not read whole: {', '.join(saved.incomplete)}" if saved.incomplete else ""
    records = "; execution records that lost rows were emptied" if chain_lost else ""
    return (f"repaired: the store was damaged ({found}); moved it to {saved.moved_to} and rebuilt "
            f"it from {quantity(saved.rows, 'row')} still readable{incomplete}{records}")


def _exit_for(remaining: tuple[Problem, ...], repaired: bool) -> None:
    """Fail with ORCH-03 if any checksum problem is left, else ORCH-06 if any partial state is."""
    if not remaining:
        return
    checksum = sum(1 for p in remaining if p.code == ChecksumMismatch.code)
    partial = len(remaining) - checksum
    error = ChecksumMismatch if checksum else PartialState
    mixed = f" ({checksum} {ChecksumMismatch.code}, {partial} {PartialState.code})" if checksum \
        and partial else ""
    if repaired:
        fail(error(f"fsck --repair could not fix {quantity(len(remaining), 'problem')}{mixed}, "
                   "listed above"))
    fail(
        error(
            f"fsck found {quantity(len(remaining), 'problem')}{mixed}, listed above; run "
            "`posbuild fsck --repair`"))

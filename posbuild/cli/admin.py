"""Housekeeping commands: `posbuild clean`."""

from __future__ import annotations

import click

from posbuild.cli import fail, workspace_and_package
from posbuild.errors import PosbuildError


@click.command()
@click.option("--all", "everything", is_flag=True, help="Also remove .posbuild/ (the store and all state).")
def clean(everything: bool) -> None:
    """Remove posbuild-out/; with --all also the store, so the next build starts from nothing."""
    from posbuild.build import clean as clean_workspace

    try:
        root, _ = workspace_and_package()
        removed = clean_workspace(root, everything)
    except PosbuildError as error:
        fail(error)
    for path in removed:
        click.echo(f"removed {path}")
    if not removed:
        click.echo("nothing to remove")

"""`posbuild cache export|import`: move the cache between CI runs as one archive file."""

from __future__ import annotations

import os
from pathlib import Path

import click

from posbuild.core.words import quantity
from posbuild.cli import complete_targets, fail, workspace_and_package
from posbuild.errors import PosbuildError, UsageError


class _Messages:
    """The one reporter method the workspace lock needs (it says when it waits)."""

    def message(self, text: str) -> None:
        click.echo(text, err=True)


def _signing_key(root: Path, secrets_file: str) -> bytes | None:
    """The secret POSBUILD_CACHE_KEY (environment, then the secrets file), or None when unset.

    A secrets file that may not be used (inside the workspace, readable by others, malformed) is
    a usage error, not "no key": silently exporting unsigned, or refusing an import for want of a
    key that is in fact configured, would hide the real problem.
    """
    from posbuild.store.remote import CACHE_KEY_VARIABLE
    from posbuild.workspace.secrets import SecretUnavailable, secret_source

    try:
        value = secret_source(root, secrets_file, dict(os.environ)).get(CACHE_KEY_VARIABLE)
    except SecretUnavailable as error:
        raise UsageError(f"cannot read {CACHE_KEY_VARIABLE}: {error}") from None
    return value.encode() if value else None


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


@click.group()
def cache() -> None:
    """Export or import the cache as one archive (to carry it between CI runs).

    \b
    Examples:
      posbuild cache export ci-cache.tar.gz //...     after a successful `posbuild build //...`
      posbuild cache import ci-cache.tar.gz           on the next machine, before building
    With the secret POSBUILD_CACHE_KEY set, export signs the archive and import refuses one
    that is unsigned or signed with another key. Without the key, import refuses every archive
    unless --allow-unsigned is given (then only the digests are checked).
    """


@cache.command("export", short_help="Write the last successful build's results and blobs to FILE.")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("patterns", nargs=-1, shell_complete=complete_targets)
def export(file: Path, patterns: tuple[str, ...]) -> None:
    """Write the results and blobs the last successful build of PATTERNS used (default //...) to
    FILE."""
    from posbuild.engine.locking import workspace_lock
    from posbuild.store.cachearchive import export_cache
    from posbuild.workspace.config import load_config
    from posbuild.core.label import parse_pattern
    from posbuild.store.lmdbstore import Store

    try:
        root, package = workspace_and_package()
        config = load_config(root)
        canonical = tuple(str(parse_pattern(p, package)) for p in patterns or ("//...",))
        key = _signing_key(root, config.secrets_file)
        with workspace_lock(config, _Messages()):  # type: ignore[arg-type]  # a gc of the workspace waits
            store = Store(config.store_dir, config.workspace_tag)
            try:
                report = export_cache(store, canonical, file.absolute(), key)
            finally:
                store.close()
    except PosbuildError as error:
        fail(error)
    notes = (f"; {quantity(report.uncacheable, 'action')} tagged no-cache "
             f"{'has' if report.uncacheable == 1 else 'have'} no result to export") \
        if report.uncacheable else ""
    if report.private:
        notes += (f"; {quantity(report.private, 'result')} that may hold a secret "
                  f"{'was' if report.private == 1 else 'were'} left out")
    click.echo(f"exported build {report.build} ({' '.join(report.patterns)}): "
               f"{quantity(report.results, 'action result')}, {quantity(report.blobs, 'blob')}, "
               f"{_size(report.size)}, "
               f"{'signed' if report.signed else 'unsigned'} to {file}{notes}")
    if not report.signed:
        click.echo("posbuild: note: POSBUILD_CACHE_KEY is not set, so the archive is unsigned; "
                   "importing it "
                   f"will need `posbuild cache import --allow-unsigned {file}`", err=True)


@cache.command("import", short_help="Verify FILE whole, then merge it into the store.")
@click.option("--allow-unsigned", is_flag=True,
              help="Import an archive whose signature cannot be checked (no POSBUILD_CACHE_KEY "
              "here, or "
                   "an unsigned archive): only its digests are verified, so trust where it came "
                   "from.")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def import_(file: Path, allow_unsigned: bool) -> None:
    """Verify every blob of FILE against its digest, and its signature against POSBUILD_CACHE_KEY,
    then merge it into the store (all or nothing)."""
    from posbuild.engine.locking import workspace_lock
    from posbuild.store.cachearchive import import_cache
    from posbuild.workspace.config import load_config
    from posbuild.core.layout import TMP
    from posbuild.store.lmdbstore import Store

    try:
        root, _ = workspace_and_package()
        config = load_config(root)
        with workspace_lock(config, _Messages()):  # type: ignore[arg-type]
            key = _signing_key(root, config.secrets_file)
            store = Store(config.store_dir, config.workspace_tag)
            try:
                report = import_cache(store, file.absolute(), config.state_dir / TMP, key,
                                      allow_unsigned)
            finally:
                store.close()
    except PosbuildError as error:
        fail(error)
    if not report.signed:
        why = "POSBUILD_CACHE_KEY is not set" if key is None else "the archive is unsigned"
        click.echo("posbuild: note: --allow-unsigned: the archive's signature was not checked "
                   f"({why}); only its digests were verified", err=True)
    click.echo(f"imported {quantity(report.results, 'action result')} ({report.new_results} new) "
               f"and {quantity(report.blobs, 'blob')} ({report.new_blobs} new, "
               f"{_size(report.size)}) from {file}"
               f"{' (signature verified)' if report.signed else ''}")

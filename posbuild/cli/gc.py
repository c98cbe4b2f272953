"""`posbuild gc`: parse the size bound, hold the workspace lock, run gc, print one summary line."""

from __future__ import annotations

import re
import sys
import time
from decimal import Decimal, InvalidOperation

import click

from posbuild.core.words import quantity
from posbuild.cli import fail, workspace_and_package
from posbuild.errors import PosbuildError
from posbuild.store.gc import DEFAULT_KEEP_GENERATIONS, SHARED_ORPHAN_GRACE_NS, collect

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"\A(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(?:i?b)?|b)?\Z", re.IGNORECASE)


class ByteSize(click.ParamType):
    """A byte count: plain bytes, or a number with K, M, G, T (binary: KiB = 1024 bytes; KB, KiB and
    K are the same, in any case)."""

    name = "size"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _SIZE_RE.match(str(value).strip())
        if match is None:
            self.fail(f"{value!r} is not a size (examples: 500000, 200K, 1.5G, 10MiB)", param, ctx)
        number, unit = match.groups()
        try:
            return int(Decimal(number) * _UNITS[(unit or "").lower()])
        except InvalidOperation:  # pragma: no cover - the pattern admits only decimal numbers
            self.fail(f"{value!r} is not a size", param, ctx)


def human(size: int) -> str:
    """Bytes for people: `512 B`, `3.4 KiB`, `1.2 MiB`, `2.0 GiB`."""
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _configured_size(text: str, root: object) -> int:
    """`[cache] max_size` of posbuild.toml, the default of --max-size."""
    from posbuild.errors import WorkspaceError

    try:
        return ByteSize().convert(text, None, None)
    except click.BadParameter as error:
        raise WorkspaceError(f"{root}/posbuild.toml: [cache] max_size: {error.message}") from None


@click.command()
@click.option("--max-size", type=ByteSize(), default=None, metavar="SIZE",
              help="Evict least recently used action results until the store's blobs take at most "
              "SIZE "
                   "(bytes, or with K, M, G, T: 1K = 1KB = 1KiB = 1024). Default: [cache] max_size "
                   "of posbuild.toml; without either, only garbage is removed.")
@click.option("--keep-generations", type=click.IntRange(min=1), default=DEFAULT_KEEP_GENERATIONS,
              show_default=True, metavar="N",
              help="Keep the newest N generations (successful builds) of each workspace using the "
              "store, "
                   "and everything they need; `posbuild rollback` can return to any of them.")
def gc(max_size: int | None, keep_generations: int) -> None:
    """Remove old generations and cache entries no kept generation needs.

    \b
    Always removed: generations older than the newest N of each workspace (--keep-generations,
    default 3), blobs that no remaining action result or kept generation references, and the
    Python environments of py_envs whose requirements have changed since.
    With --max-size: the least recently used action results that no kept generation needs,
    with their blobs, until the store fits in SIZE. What a kept generation needs is never
    removed, so the store may stay above SIZE.
    Each step is its own transaction: gc can be interrupted at any instant. The next build
    executes again what gc evicted and it still needs.
    """
    from posbuild.engine.locking import workspace_lock
    from posbuild.engine.pyenvs import sweep
    from posbuild.workspace.config import load_config
    from posbuild.core.layout import STORE_DB
    from posbuild.engine.reporter import QuietReporter
    from posbuild.store.lmdbstore import Store

    try:
        root, _ = workspace_and_package()
        config = load_config(root)
        if max_size is None and config.cache_max_size:
            max_size = _configured_size(config.cache_max_size, root)
        with workspace_lock(config, QuietReporter(sys.stdout, sys.stderr), collect=True):
            environments, environment_bytes = sweep(config)
            if environments:
                click.echo(f"gc: removed {quantity(environments, 'Python environment')} no "
                           f"py_env uses any more; freed {human(environment_bytes)}")
            if not (config.store_dir / STORE_DB).exists():
                click.echo("gc: no store yet; nothing to collect")
                return
            private = config.store_dir.is_relative_to(config.state_dir)
            store = Store(config.store_dir, config.workspace_tag)
            try:
                report = collect(store, max_size, keep_generations, time.time_ns(),
                                 orphan_grace_ns=0 if private else SHARED_ORPHAN_GRACE_NS)
            finally:
                store.close()
    except PosbuildError as error:
        fail(error)
    orphans = f", {quantity(report.orphans_removed, 'orphan file')}" \
        if report.orphans_removed else ""
    click.echo(
        f"gc: removed {quantity(report.generations_removed, 'generation')}, "
        f"{quantity(report.results_removed, 'action result')}, "
        f"{quantity(report.blobs_removed, 'blob')}{orphans}; freed {human(report.bytes_freed)}; "
        f"store now {human(report.size_after)} in {quantity(report.blobs_after, 'blob')}, "
        f"{quantity(report.generations_kept, 'generation')} kept"
    )
    if report.over_budget:
        hint = "; --keep-generations 1 keeps fewer" if keep_generations > 1 \
            and report.generations_kept > 1 else ""
        click.echo(f"gc: the store is still above --max-size {human(max_size or 0)}: "
                   f"{human(report.pinned_size)} is needed by the "
                   f"{quantity(report.generations_kept, 'kept generation')}{hint}")

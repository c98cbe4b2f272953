"""`posbuild log`: a build's execution records as a table, JSON lines, or a Chrome trace; with
`--builds`, one line per recorded build (how it ended: finished, interrupted, refused); with
`--output LABEL`, what the last run of an action printed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from posbuild.core.words import quantity
from posbuild.cli import complete_targets, fail, workspace_and_package
from posbuild.errors import PosbuildError, UsageError

if TYPE_CHECKING:
    from posbuild.core.records import BuildRow, ExecutionRecord
    from posbuild.store.lmdbstore import Store


def _matches(pattern_text: str | None, package: str):
    """A predicate on labels for the optional PATTERN."""
    if not pattern_text:
        return lambda label: True
    from posbuild.core.label import parse_pattern

    return parse_pattern(pattern_text, package).matches


def _heading(build: BuildRow) -> str:
    env = f"  h_E {bytes(build.env_hash).hex()[:12]}" if build.env_hash else ""
    return (f"build {build.number}  started {build.started}  patterns "
            f"{' '.join(build.patterns)}{env}"
            + ("  (environment drift allowed)" if build.allow_env_drift else "")
            + (f"  rerun {' '.join(build.rerun)}" if build.rerun else ""))


def _table(build: BuildRow, records: list[ExecutionRecord]) -> None:
    from posbuild.store.history import describe_build

    click.echo(_heading(build))
    if (build.status or "finished") != "finished":
        click.echo(describe_build(build))
        if not records:
            return
    # a column saying where each action ran, for builds on Dask
    remote = any(r.worker for r in records)
    width = max([8, *(len(r.state.value) for r in records)])  # INTERRUPTED is wider than the others
    click.echo(f"{'state':<{width}} {'seconds':>8} {'cpu s':>7} {'max RSS':>9} {'exit':>5}  "
               f"{'key':<12}  {'error':<14} "
               + (f"{'ran on':<32} " if remote else "") + "label")
    for r in records:
        cpu = f"{r.usage.user_s + r.usage.system_s:.2f}" if r.usage else "-"
        rss = f"{r.usage.max_rss_kb / 1024:.1f}M" if r.usage and r.usage.max_rss_kb is not None \
            else "-"
        exit_code = "-" if r.exit_code is None else str(r.exit_code)
        key = r.key.hex()[:12] if r.key else "-"
        where = f"{r.host} {r.worker.split('://')[-1]}" if r.worker else "-"
        click.echo(f"{r.state.value:<{width}} {r.duration:>8.3f} {cpu:>7} {rss:>9} {exit_code:>5}  "
                   f"{key:<12}  "
                   f"{r.error_code or '-':<14} " + (f"{where:<32} " if remote else "") + r.label)


@click.command()
@click.argument("pattern", required=False, shell_complete=complete_targets)
@click.option("--build", "number", type=click.IntRange(min=1), default=None,
              help="Build number (default: the latest).")
@click.option("--failed", is_flag=True, help="Only FAILED, SKIPPED and INTERRUPTED records.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record (JSON lines).")
@click.option("--builds", "list_builds", is_flag=True,
              help="One line per recorded build: how each ended.")
@click.option("--output", "output_of", metavar="LABEL", default=None,
              help="Print what the last run of LABEL wrote (its stdout, then its stderr), also "
              "when the last build took it from the cache.")
@click.option("--trace", "trace_file", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the build's records as a Chrome trace (open it in Perfetto or "
              "chrome://tracing).")
def log(pattern: str | None, number: int | None, failed: bool, as_json: bool, list_builds: bool,
        output_of: str | None, trace_file: str | None) -> None:
    """Show the execution records of a build: what ran, when, with which inputs and versions, what
    it produced and used, and how it ended. Every action a build requested has exactly one record; a
    build refused before anything ran, and one whose process died, are recorded too."""
    from posbuild.workspace.config import load_config
    from posbuild.store.history import chrome_trace, find_build, record_json, records_of_build
    from posbuild.core.records import FAILURES
    from posbuild.core.layout import STORE_DB
    from posbuild.store.lmdbstore import Store

    try:
        root, package = workspace_and_package()
        config = load_config(root)
        if not (config.store_dir / STORE_DB).exists():
            raise UsageError("no build recorded yet")
        store = Store(config.store_dir, config.workspace_tag)
        try:
            if output_of is not None:
                from posbuild.core.layout import FAILED

                stdout, stderr = _last_output(store, config.state_dir / FAILED, output_of,
                                              package)
                sys.stdout.buffer.write(stdout)
                sys.stdout.flush()
                sys.stderr.buffer.write(stderr)
                return
            store.settle_interrupted()  # a build whose process died is recorded as interrupted now
            if list_builds:
                _list_builds(store.builds(), as_json)
                return
            build = find_build(store, number)
            if build is None:
                raise UsageError("no build recorded yet"
                                 if number is None else f"no build {number} recorded")
            wanted = _matches(pattern, package)
            records = [r for r in records_of_build(store, build) if wanted(r.label)
                       and (not failed or r.state in FAILURES)]
        finally:
            store.close()
    except PosbuildError as error:
        fail(error)
    if trace_file:
        with open(trace_file, "w", encoding="utf-8") as handle:
            json.dump(chrome_trace(build, records), handle)
        click.echo(f"wrote {quantity(len(records), 'record')} of build {build.number} to "
                   f"{trace_file}")
    elif as_json:
        drift = bool(build.allow_env_drift)
        for record in records:
            click.echo(json.dumps({**record_json(record), "env_drift_allowed": drift},
                                  sort_keys=True))
        if build.status == "refused":  # no action ran: the attempt itself is the record
            click.echo(json.dumps(_build_json(build), sort_keys=True))
    else:
        _table(build, records)


def _build_json(build: BuildRow) -> dict[str, object]:
    """A build row as JSON-ready data: how it ended, and its place in the record chain."""
    return {
        "build": str(build.number), "label": None, "state": (build.status or "finished").upper(),
        "started": build.started or None, "ended": build.ended, "patterns": list(build.patterns),
        "error": build.error, "message": build.message,
        "in_flight": [label for label, _ in build.in_flight],
        "seal": bytes(build.chain[1]).hex() if build.chain else None,
    }


def _list_builds(builds: list[BuildRow], as_json: bool) -> None:
    from posbuild.store.history import describe_build

    for build in builds:
        if as_json:
            click.echo(json.dumps(_build_json(build), sort_keys=True))
        else:
            click.echo(f"build {build.number:<5} {build.started}  {' '.join(build.patterns)}  "
                       f"{describe_build(build).splitlines()[0]}")


def _last_output(store: Store, failed_root: Path, text: str, package: str) -> tuple[bytes, bytes]:
    """What the last run of the action `text` names wrote: from the result its last record names
    (the run that produced it, for a cache hit too), or, when that run failed, from what the
    failure left (postmortem.py)."""
    from posbuild.core.label import parse_label
    from posbuild.core.records import RecordState
    from posbuild.engine.postmortem import failure_folder

    label = str(parse_label(text, package))
    records = [r for r in store.records_of_label(label)
               if r.state in (RecordState.SUCCESS, RecordState.CACHED)
               or (r.state is RecordState.FAILED and r.exit_code is not None)]
    if not records:
        raise UsageError(f"no run of {label} is recorded (not a target, or it never ran)")
    last = records[-1]
    if last.state is RecordState.FAILED:
        folder = failure_folder(failed_root, label)
        try:
            return (folder / "stdout").read_bytes(), (folder / "stderr").read_bytes()
        except FileNotFoundError:
            raise UsageError(f"the output of the failed run of {label} is no longer kept "
                             "(posbuild clean removed it)") from None
    result = store.get_result(last.key) if last.key is not None else None
    if result is None:
        raise UsageError(f"the output of the last run of {label} is no longer kept (its result "
                         "is not cached: a no-cache action, or removed by gc)")
    return _blob(store, result.stdout_digest), _blob(store, result.stderr_digest)


def _blob(store: Store, digest: bytes) -> bytes:
    source = store.blob_source(digest)
    if source is None:
        raise UsageError("the action's output is no longer in the store (removed by gc)")
    return source if isinstance(source, bytes) else source.read_bytes()

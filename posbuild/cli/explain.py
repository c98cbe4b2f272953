"""`posbuild explain LABEL`: why the last build executed an action, or why it was a cache hit."""

from __future__ import annotations

import click

from posbuild.cli import fail, workspace_and_package
from posbuild.errors import PosbuildError, UsageError


@click.command()
@click.argument("label")
def explain(label: str) -> None:
    """Say why LABEL's action last executed (which parts of its key changed since the execution
    before, with old and new values) or why it was a cache hit."""
    from posbuild.config import load_config
    from posbuild.history import find_build, records_of_build
    from posbuild.label import parse_label
    from posbuild.reasons import differences
    from posbuild.store import Store

    try:
        root, package = workspace_and_package()
        config = load_config(root)
        if label.endswith(("...", ":all", ":*")):
            raise UsageError(f"explain takes one target label, not the pattern '{label}'")
        target = str(parse_label(label, package))
        if not (config.store_dir / "db").exists():
            raise UsageError("no build recorded yet")
        store = Store(config.store_dir)
        try:
            history = store.records_of_label(target)
            latest = find_build(store, None)
            settled = [r for r in records_of_build(store, latest) if r.label == target and r.slot == 0
                       and r.duration == 0.0 and r.state == "CACHED"] if latest else []
        finally:
            store.close()
        if not history:
            from posbuild.loader import describe_label

            unbuilt = describe_label(config, parse_label(target, ""))
            raise UsageError(unbuilt or f"no execution record of {target}; build it first")
    except PosbuildError as error:
        fail(error)
    last = history[-1]
    if settled and latest is not None and last.build_id != str(latest["number"]):
        click.echo(f"{target}: up to date in build {latest['number']}: its definition, inputs and outputs are "
                   f"unchanged since build {last.build_id}, so it was settled without looking at the store")
    key = last.key.hex() if last.key else "-"
    if last.state == "CACHED":
        producer = next((r for r in history if r.key == last.key and r.state == "SUCCESS"), None)
        origin = f", produced by build {producer.build_id} at {producer.started}" if producer else ""
        click.echo(f"{target}: cache hit in build {last.build_id}: key {key} was already in the store{origin}")
        return
    before = next((r for r in reversed(history[:-1]) if r.key != last.key and r.state in ("SUCCESS", "CACHED")), None)
    what = "executed" if last.state == "SUCCESS" else f"{last.state.lower()} ({last.error_code})"
    click.echo(f"{target}: {what} in build {last.build_id}, key {key}")
    if before is None:
        click.echo("  no earlier execution is recorded: it ran because its key was not in the store")
        return
    reasons = differences(before, last.command, last.env, last.versions, last.inputs, last.env_hash)
    click.echo(f"  compared with build {before.build_id} (key {before.key.hex() if before.key else '-'}):")
    for reason in reasons or ["no key component differs: the earlier result was no longer in the store"]:
        click.echo(f"  - {reason}")

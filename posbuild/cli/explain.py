"""`posbuild explain LABEL`: why the last build executed an action, why it was a cache hit, or
why it failed or never started."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from posbuild.cli import complete_targets, define_option, fail, workspace_and_package
from posbuild.errors import PosbuildError, UsageError

if TYPE_CHECKING:
    from posbuild.core.records import BuildRow, ExecutionRecord


@click.command()
@click.argument("label", shell_complete=complete_targets)
@define_option
def explain(label: str, defines: tuple[str, ...]) -> None:
    """Say why LABEL's action last executed (which parts of its key changed since its previous
    execution, with old and new values), why it was a cache hit, or why it failed or was skipped."""
    from posbuild.workspace.config import load_config, with_defines
    from posbuild.store.history import records_of_build
    from posbuild.core.label import parse_label
    from posbuild.core.layout import STORE_DB
    from posbuild.core.records import RecordState
    from posbuild.store.lmdbstore import Store

    try:
        root, package = workspace_and_package()
        config = with_defines(load_config(root), defines)
        if label.endswith(("...", ":all", ":*")):
            raise UsageError(f"explain takes one target label, not the pattern '{label}'")
        target = str(parse_label(label, package))
        if not (config.store_dir / STORE_DB).exists():
            raise UsageError("no build recorded yet")
        store = Store(config.store_dir, config.workspace_tag)
        try:
            history = store.records_of_label(target)
            builds = {str(b.number): b for b in store.builds()}
            latest = builds[max(builds, key=int)] if builds else None
            settled = [r for r in records_of_build(store, latest) if r.label == target
                       and r.slot == 0
                       and r.duration == 0.0 and r.state is RecordState.CACHED] if latest else []
            blocked = _blockers(store, builds, history[-1]) if history \
                and history[-1].state is RecordState.SKIPPED else ""
        finally:
            store.close()
        if not history:
            from posbuild.load.loader import describe_label

            unbuilt = describe_label(config, parse_label(target, ""))
            raise UsageError(unbuilt or f"no execution record of {target}; build it first")
    except PosbuildError as error:
        fail(error)
    for line in _story(target, history, builds, latest, bool(settled), blocked):
        click.echo(line)


def _story(target: str, history: list[ExecutionRecord], builds: dict[str, BuildRow],
           latest: BuildRow | None, settled: bool, blocked: str) -> list[str]:
    """The lines `explain` prints about the last record of `target` (`history`, oldest first)."""
    from posbuild.core.reasons import differences, failure, same_key, unexplained
    from posbuild.core.records import BuildRow, RecordState

    last = history[-1]
    lines = []
    if settled and latest is not None and last.build_id != str(latest.number):
        lines.append(f"{target}: up to date in build {latest.number}: its definition, inputs and "
                     "outputs are "
                     f"unchanged since build {last.build_id}, so it was settled without looking at "
                     "the store")
    key = last.key.hex() if last.key else "-"
    if last.state is RecordState.SKIPPED:
        return [*lines,
                f"{target}: skipped in build {last.build_id}: it never started, {blocked}; nothing "
                "of it "
                        f"was run or kept"]
    if last.state is RecordState.CACHED:
        producer = next((r for r in history if r.key == last.key
                         and r.state is RecordState.SUCCESS), None)
        origin = f", produced by build {producer.build_id} at {producer.started}" if producer \
            else ""
        return [*lines,
                f"{target}: cache hit in build {last.build_id}: key {key} was already in the "
                f"store{origin}"]
    if last.state is RecordState.FAILED:
        kept = "the cached result was kept" if last.error_code == "ORCH-04" \
            else "nothing was cached"
        lines.append(
            f"{target}: failed in build {last.build_id} ({failure(last)}), key {key}; {kept}")
    else:
        lines.append(f"{target}: executed in build {last.build_id}, key {key}")
    prior = next((r for r in reversed(history[:-1]) if r.key), None)
    if prior is None:
        return [*lines,
                "  no earlier execution is recorded: it ran because its key was not in the store"]
    if prior.key == last.key:
        if builds.get(last.build_id, BuildRow()).verify:
            return [*lines,
                    "  `build --verify` ran it again to compare with its cached result (the key "
                    "is that "
                            f"of build {prior.build_id})"]
        return [*lines, f"  {same_key(prior)}"]
    passed, passed_before = (builds.get(r.build_id, BuildRow()).passed_env for r in (last, prior))
    reasons = differences(prior, last.command, last.env, last.versions, last.inputs, last.env_hash,
                          passed, passed_before)
    state = {RecordState.SUCCESS: "executed",
             RecordState.CACHED: "a cache hit"}.get(prior.state, f"failed, {failure(prior)}")
    lines.append(f"  compared with its previous execution, in build {prior.build_id} ({state}, key "
                 f"{prior.key.hex() if prior.key else '-'}):")
    unknown = passed_before is None and bool(passed)
    return [*lines, *(f"  - {reason}" for reason in reasons)] if reasons \
        else [*lines, f"  - {unexplained(prior, unknown)}"]


def _blockers(store: Any, builds: dict[str, BuildRow], record: ExecutionRecord) -> str:
    """Why a skipped action never started: the failed actions it depends on in that build (from the
    build's graph), else the failures after which the build started nothing new."""
    from posbuild.load.graphcache import actions_of_entry
    from posbuild.core.reasons import failure
    from posbuild.core.records import BuildRow, RecordState

    build = builds.get(record.build_id, BuildRow())
    failed = {r.label: r for r in store.records_of(int(record.build_id))
              if r.state is RecordState.FAILED}
    actions = actions_of_entry(store.journal_blob(build.graph) or b"") if build.graph else ()
    index = next((i for i, a in enumerate(actions) if a.label == record.label), None)
    upstream: set[int] = set()
    pending = list(actions[index].deps) if index is not None else []
    while pending:
        node = pending.pop()
        if node not in upstream:
            upstream.add(node)
            pending.extend(actions[node].deps)
    causes = [failed[actions[n].label] for n in sorted(upstream) if actions[n].label in failed]
    if causes:
        named = ", ".join(f"{r.label} ({failure(r)})" for r in causes)
        return f"because what it depends on failed: {named}"
    if failed:
        named = ", ".join(f"{label} ({failure(r)})" for label, r in sorted(failed.items()))
        return (f"because the build started nothing new after {named} failed (with -k it builds "
                f"what does not depend on a failure)")
    return "because the build was stopped before it could start"

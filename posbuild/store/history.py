"""Layer 3: read execution records back — per build, including the ones a build only implied.

A build's row says which of its actions were settled by stat alone; their records are rebuilt
from the graph and up-to-date state the row names (journal.py explains why they are not stored
one by one). `records_of_build` therefore returns one record for every action the build
requested (§12's completeness condition), whichever way each was settled; for a build that was
interrupted, the actions it had in flight get a record each (state INTERRUPTED) from its row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from posbuild.core.words import quantity
from posbuild.core.action import Action
from posbuild.load.graphcache import actions_of_entry
from posbuild.core.records import BuildRow, ExecutionRecord, RecordState
from posbuild.store.upstate import BuildState, state_from_bytes

if TYPE_CHECKING:
    from posbuild.store.protocols import BuildLog


def find_build(store: BuildLog, number: int | None) -> BuildRow | None:
    """A build's row of the store's workspace (numbers are per workspace): the latest when
    `number` is None."""
    builds = store.builds()
    if number is None:
        return builds[-1] if builds else None
    return next((b for b in builds if b.number == number), None)


def records_of_build(store: BuildLog, build: BuildRow) -> list[ExecutionRecord]:
    """Every record of a build: the implied up-to-date ones first, then the rest in the order made,
    then those of the actions an interrupted build had in flight."""
    return _implied(store, build) + store.records_of(build.number) + _in_flight(build)


def _in_flight(build: BuildRow) -> list[ExecutionRecord]:
    """Records of the actions an interrupted build started and never concluded: their start time
    is known, their end is not (`ended` is empty)."""
    return [ExecutionRecord(
        build_id=str(build.number), label=label, state=RecordState.INTERRUPTED, key=None,
        started=started, ended="",
        duration=0.0, inputs=(), versions=(), outputs=(), usage=None, exit_code=None,
        error_code="interrupted", env_hash=bytes(build.env_hash or b""),
    ) for label, started in build.in_flight]


def describe_build(build: BuildRow) -> str:
    """How a build ended, in a few words: finished, still running, interrupted, or refused (and
    why)."""
    status = build.status or ("finished" if build.ended is not None else "unfinished")
    if status == "refused":
        return f"refused: {build.message or build.error}"
    if status == "interrupted":
        in_flight = quantity(len(build.in_flight), 'action')
        return f"interrupted (noticed {build.noticed}; {in_flight} in flight)"
    return f"running (process {build.pid})" if status == "running" and build.pid else str(status)


def _implied(store: BuildLog, build: BuildRow) -> list[ExecutionRecord]:
    settled = build.up_to_date
    if not settled or not build.graph:
        return []
    actions = actions_of_entry(store.journal_blob(build.graph) or b"")
    state = state_from_bytes(store.journal_blob(build.state) or b"") if build.state else None
    if not actions or state is None:
        return []
    indices = range(len(actions)) if isinstance(settled, str) else settled  # "all"
    return expand_up_to_date(build, actions, state, indices)


def expand_up_to_date(build: BuildRow, actions: Sequence[Action], state: BuildState,
                      indices: Sequence[int]) -> list[ExecutionRecord]:
    """Records (state CACHED) for actions a build settled by stat alone, from its graph and
    state."""
    when = build.started
    records = []
    for index in indices:
        action = actions[index]
        trace = state.actions.get(action.label)
        records.append(ExecutionRecord(
            build_id=str(build.number), label=action.label, state=RecordState.CACHED,
            key=trace[1] if trace else None, started=when, ended=when, duration=0.0,
            inputs=tuple((p, state.digests.get(p, b"")) for p in action.inputs),
            versions=action.versions,
            outputs=tuple((p, state.digests.get(p, b"")) for p in action.outputs), usage=None,
            exit_code=None,
            error_code="", env_hash=bytes(build.env_hash or b""), slot=0, command=action.command,
            env=action.env,
        ))
    return records


def chrome_trace(build: BuildRow, records: Sequence[ExecutionRecord]) -> dict[str, Any]:
    """A build's records in the Chrome trace-event format: one lane (tid) per job slot.

    Open the file in Perfetto (ui.perfetto.dev) or chrome://tracing. Timestamps are microseconds
    from the build's start; cache hits are instant events on lane 0, "cache".
    """
    from datetime import datetime

    def micros(iso: str) -> float:
        return datetime.fromisoformat(iso).timestamp() * 1e6

    origin = micros(build.started)
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 1,
         "args": {"name": f"posbuild build {build.number}"}},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "cache"}},
    ]
    for slot in sorted({r.slot for r in records if r.slot}):
        events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": slot,
                       "args": {"name": f"job {slot}"}})
    for record in records:
        args: dict[str, object] = {"state": record.state.value,
                                   "key": record.key.hex() if record.key else None,
                                   "error": record.error_code or None}
        if record.worker:
            args.update(worker=record.worker, host=record.host)
        if record.usage:
            args.update(user_s=record.usage.user_s, system_s=record.usage.system_s,
                        max_rss_kb=record.usage.max_rss_kb)
        start = round(micros(record.started) - origin, 1)
        if record.slot:
            events.append({"name": record.label, "cat": record.state.value.lower(), "ph": "X",
                           "pid": 1,
                           "tid": record.slot, "ts": start, "dur": round(record.duration * 1e6, 1),
                           "args": args})
        else:
            events.append({"name": record.label, "cat": record.state.value.lower(), "ph": "i",
                           "s": "t", "pid": 1, "tid": 0, "ts": start, "args": args})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def record_json(record: ExecutionRecord) -> dict[str, Any]:
    """A record as JSON-ready data, digests in hex."""
    return {
        "build": record.build_id, "label": record.label, "state": record.state.value,
        "key": record.key.hex() if record.key else None, "started": record.started,
        "ended": record.ended, "duration_s": record.duration,
        "inputs": {p: d.hex() for p, d in record.inputs}, "versions": dict(record.versions),
        "outputs": {p: d.hex() for p, d in record.outputs},
        "usage": None if record.usage is None else {
            "user_s": record.usage.user_s, "system_s": record.usage.system_s,
            "max_rss_kb": record.usage.max_rss_kb, "read_bytes": record.usage.read_bytes,
            "written_bytes": record.usage.written_bytes},
        "exit_code": record.exit_code, "error": record.error_code or None,
        "env_hash": record.env_hash.hex(), "slot": record.slot,
        "worker": record.worker or None, "host": record.host or None,  # where a Dask worker ran it
        "remote_started": record.remote_started or None,
        "remote_ended": record.remote_ended or None,
    }

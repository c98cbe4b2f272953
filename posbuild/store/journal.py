"""Layer 2: execution records of one build (§12) — numbered, filled in, and handed to the store.

Every action a build touches gets exactly one record: an executed action's record is committed in
the same transaction as its result (commit.py logs it with the result); cache hits, failures
and skips are batched and committed once at the end of the build.

A build's row is written when it starts, with status "running", and concluded ("finished") when
it ends; each action it starts is noted in the store's start log (`Store.start_log`), so that if
the process dies the next command records the build as "interrupted" with the actions in flight.
A build refused by a critical error before anything ran is recorded too ("refused", with the
error). Concluded rows are sealed into the store's hash chain (recordchain.py).

Actions settled by the up-to-date check get no row of their own: writing ten thousand rows would
cost a no-op build more than everything else it does. Their records are implied by the build's
row, which names the graph and the up-to-date state they were settled from (both kept as blobs,
stored once however many builds refer to them); history.py turns them back into records when
`posbuild log` asks.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Callable, Protocol, Sequence

from posbuild.core.action import Action
from posbuild.core.digest import Digest
from posbuild.core.records import (BuildRow, ExecutionRecord, RecordState, RemoteRun, ResourceUsage,
                                   utc)

Row = tuple[bytes, str, bytes]  # (record key, label, packed record), as Store.commit takes them


class Journal:
    """Creates the records of build number `number`; thread-safe (workers record concurrently)."""

    def __init__(self, number: int, build_id: str, env_of: Callable[[Action], Digest],
                 start_log: Callable[[str], None] | None = None, *, key: bytes) -> None:
        """`key` is the build's row key (Store.build_key): its records are keyed by it + a sequence,
        so that in a store shared by several workspaces each one's records stay apart."""
        self.number = number
        self._key = key
        self.build_id = build_id
        self._env_of = env_of  # the environment hash of an action's key (envfp.py)
        self._start_log = start_log
        self._sequence = itertools.count()
        self._lock = threading.Lock()
        self._pending: list[Row] = []

    def started(self, label: str) -> None:
        """Note that an action's command is about to start (what a killed build had in flight)."""
        if self._start_log is not None:
            self._start_log(label)

    def row(self, action: Action, state: RecordState, key: Digest | None, started: float,
            ended: float,
            inputs: Sequence[tuple[str, Digest]], outputs: Sequence[tuple[str, Digest]] = (),
            usage: ResourceUsage | None = None, exit_code: int | None = None, error_code: str = "",
            slot: int = 0, remote: RemoteRun | None = None) -> Row:
        """One record, keyed so that a build's records sort together in the order they were made.

        `remote` says where and when the command ran when a Dask worker ran it."""
        where = {} if remote is None else {"worker": remote.worker, "host": remote.host,
                                           "remote_started": utc(remote.started),
                                           "remote_ended": utc(remote.ended)}
        record = ExecutionRecord(
            build_id=self.build_id, label=action.label, state=state, key=key, started=utc(started),
            ended=utc(ended), duration=round(max(0.0, ended - started), 6), inputs=tuple(inputs),
            versions=action.versions, outputs=tuple(outputs), usage=usage, exit_code=exit_code,
            error_code=error_code, env_hash=self._env_of(action), slot=slot, command=action.command,
            env=action.env, **where,
        )
        with self._lock:
            sequence = next(self._sequence)
        return self._key + sequence.to_bytes(4, "big"), action.label, record.pack()

    def add(self, *args: object, **kwargs: object) -> None:
        """Make a record to be committed with the others at the end of the build."""
        row = self.row(*args, **kwargs)  # type: ignore[arg-type]
        with self._lock:
            self._pending.append(row)

    def take(self) -> list[Row]:
        with self._lock:
            rows, self._pending = self._pending, []
        return rows


class SavedState(Protocol):
    """What a build row takes of the saved state a build started from (upstate.BuildState)."""

    @property
    def raw(self) -> bytes: ...

    @property
    def raw_digest(self) -> Digest: ...


def build_row(started: float, patterns: Sequence[str], env_hash: Digest,
              graph: tuple[Digest, bytes], state: SavedState,
              up_to_date: Sequence[bool],
              **flags: object) -> tuple[BuildRow, list[tuple[Digest, bytes]]]:
    """A build's row for the store, and the (digest, bytes) payloads it refers to (graph and state).

    `graph` is the graph cache entry, with its digest; `state` the saved state the build started
    from; `up_to_date` marks the actions settled by stat alone: stored as "all", or as their
    indices.
    """
    every = all(up_to_date)
    settled = [] if every else [i for i, clean in enumerate(up_to_date) if clean]
    recorded = bool(state.raw) and any(up_to_date)
    payloads = {"graph": graph[1], "state": state.raw if recorded else b""}
    digests = {"graph": graph[0] if graph[1] else None,
               "state": state.raw_digest if recorded else None}
    info = BuildRow.of({
        "started": utc(started), "status": "running", "patterns": list(patterns),
        "env_hash": env_hash, **digests,
        "actions": len(up_to_date),
        "up_to_date": "all" if every else settled, **flags,
    })
    return info, [(digest, data) for name, data in payloads.items()
                  if data and (digest := digests[name]) is not None]


def record_settled_build(store_dir: Path, workspace: str, info: BuildRow,
                         blobs: Sequence[tuple[Digest, bytes]]) -> int:
    """Record a build whose every action was settled by stat alone, in the records of the
    workspace tagged `workspace` (Config.workspace_tag); returns its number."""
    from posbuild.store.lmdbstore import Store

    store = Store(store_dir, workspace)
    try:
        return store.begin_build(info.with_fields(status="finished", ended=utc(time.time())), blobs)
    finally:
        store.close()


def record_refused(store_dir: Path, workspace: str, started: float, patterns: Sequence[str],
                   code: str, message: str) -> int:
    """Record a build that a critical error refused before anything ran; returns its number."""
    from posbuild.store.lmdbstore import Store

    store = Store(store_dir, workspace)
    try:
        return store.begin_build(BuildRow.of({"started": utc(started), "status": "refused",
                                              "patterns": list(patterns),
                                              "ended": utc(time.time()), "error": code,
                                              "message": message}))
    finally:
        store.close()

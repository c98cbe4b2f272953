"""Layer 1: the values the store keeps, and their compact msgpack form.

ActionResult is the cache value of an action key. It holds no timings and no run-specific fields,
so a rebuild with nothing changed produces an equal value and writes nothing (DESIGN §7.5).
FileState is one row of the stat memo: the stat signature a digest was computed for. Commit is
what one action writes to the store.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import msgpack

from posbuild.core.digest import Digest

RESULT_FORMAT = 1


def utc(seconds: float) -> str:
    """A Unix time as UTC ISO 8601 with microseconds, the form every record's times take."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One declared output: its workspace-relative path, content digest, size and mode bits.
    `tree`: a folder output (`out_dirs`), whose digest names its manifest (tree.py) and whose
    size is that of all its files."""

    path: str
    digest: Digest
    size: int
    executable: bool
    tree: bool = False


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What the cache holds for a key. `secret`: its outputs may hold a secret's value (the action,
    or one it depends on, declares `allow_secret_in_output`; secrets.py), so it never leaves this
    store: not in a cache archive, not on a remote. Packed as a sixth element only when set, so
    rows written before the flag existed read as they were, and unflagged rows are unchanged;
    likewise an output's `tree` flag is a fifth element of its row only for a folder."""

    outputs: tuple[OutputFile, ...]
    exit_code: int
    stdout_digest: Digest
    stderr_digest: Digest
    secret: bool = False

    def blobs(self) -> tuple[Digest, ...]:
        """Every blob the result names (outputs, stdout, stderr): what the store must hold for
        it."""
        return (*(o.digest for o in self.outputs), self.stdout_digest, self.stderr_digest)

    def pack(self) -> bytes:
        rows = [[o.path, o.digest, o.size, o.executable, *((True,) if o.tree else ())]
                for o in self.outputs]
        row = [RESULT_FORMAT, self.exit_code, self.stdout_digest, self.stderr_digest, rows]
        return msgpack.packb([*row, True] if self.secret else row)

    @staticmethod
    def unpack(data: bytes) -> ActionResult:
        _, exit_code, out_digest, err_digest, rows, *secret = msgpack.unpackb(data)
        return ActionResult(tuple(OutputFile(*row) for row in rows), exit_code, out_digest,
                            err_digest, secret == [True])


Signature = tuple[int, int, int, int]  # (mtime_ns, size, inode, ctime_ns)
# recorded for a file hashed too soon after it was written to be trusted later: no stat matches it
UNSETTLED: Signature = (-1, -1, 0, -1)


def signature(stat: os.stat_result) -> Signature:
    """The part of a stat that changes whenever a file's content may have changed."""
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class FileState:
    """A stat-memo row: `digest` was computed for a file whose stat matched `signature`."""

    signature: Signature
    digest: Digest

    def pack(self) -> bytes:
        return msgpack.packb([*self.signature, self.digest])

    @staticmethod
    def unpack(data: bytes) -> FileState:
        mtime, size, inode, ctime, digest = msgpack.unpackb(data)
        return FileState((mtime, size, inode, ctime), digest)


@dataclass(frozen=True, slots=True)
class Commit:
    """Everything one action writes to the store, as one unit (the fields are those of
    `Commits.commit`, store/protocols.py)."""

    result: tuple[Digest, ActionResult] | None = None
    blobs: tuple[tuple[Digest, bytes | None], ...] = ()
    memo: tuple[tuple[str, FileState], ...] = ()
    used: tuple[tuple[Digest, int], ...] = ()
    records: tuple[tuple[bytes, str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Generation:
    """One fully successful build (§8's "previous stable" state): the digest of its manifest blob,
    which maps every file under posbuild-out/ to (digest, size, executable) after that build.
    `workspace` names the workspace it belongs to in a store shared by several ("" in a
    workspace's own store)."""

    id: int
    created: str
    patterns: tuple[str, ...]
    manifest: Digest
    files: int
    size: int
    workspace: str = ""

    def pack(self) -> bytes:
        row = [self.id, self.created, list(self.patterns), self.manifest, self.files, self.size]
        return msgpack.packb([*row, self.workspace] if self.workspace else row)

    @staticmethod
    def unpack(data: bytes) -> Generation:
        id_, created, patterns, manifest, files, size, *workspace = msgpack.unpackb(data)
        return Generation(id_, created, tuple(patterns), manifest, files, size, *workspace[:1])


# path under posbuild-out/ → (digest, size, executable)
Manifest = dict[str, tuple[Digest, int, bool]]


def pack_manifest(manifest: Manifest) -> bytes:
    return msgpack.packb({path: list(row) for path, row in sorted(manifest.items())})


def unpack_manifest(data: bytes) -> Manifest:
    return {path: (d, s, bool(x)) for path, (d, s, x) in msgpack.unpackb(data).items()}


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    """What the action's process tree used, as the kernel reports it on exit (wait4 rusage).

    Bytes read and written are block I/O (512-byte units): reads served from the page cache and
    writes to a memory file system count as zero. `max_rss_kb` is the peak of its largest
    process, or None when that peak is unknown: no higher than posbuild's own memory, with which
    the kernel charges a command posbuild starts itself (sandbox.py `_own_peak_kb`).
    """

    user_s: float
    system_s: float
    max_rss_kb: int | None
    read_bytes: int
    written_bytes: int


@dataclass(frozen=True, slots=True)
class RemoteRun:
    """Where and when an action ran when another machine ran it (a Dask worker,
    dask_executor.py)."""

    worker: str  # the worker's address, e.g. tcp://10.0.0.7:40211
    host: str  # the worker machine's host name
    started: float  # Unix time, by the worker's clock
    ended: float


class RecordState(enum.Enum):
    """How an action ended in one build, as its record says; the value is what the store holds."""

    SUCCESS = "SUCCESS"  # its command ran and its result was committed
    FAILED = "FAILED"
    CACHED = "CACHED"  # its result came from a cache, or the up-to-date check settled it
    SKIPPED = "SKIPPED"  # a dependency failed, so it never started
    INTERRUPTED = "INTERRUPTED"  # in flight when its build was stopped, or died (history.py)

    def ran(self) -> bool:
        """Whether the record's duration is a run of the command (the one a schedule may learn
        from)."""
        return self in (RecordState.SUCCESS, RecordState.FAILED)

    def produced(self) -> bool:
        """Whether the build ended with the action's result in hand."""
        return self in (RecordState.SUCCESS, RecordState.CACHED)


class Outcome(enum.Enum):
    """How an action ended in this build, as the reporter shows it and the build row counts it."""

    CACHED = "cached"  # its result came from a cache
    EXECUTED = "executed"
    FAILED = "failed"
    PLANNED = "planned"  # under --dry-run: it would run


RUN_OUTCOMES = (Outcome.CACHED, Outcome.EXECUTED, Outcome.FAILED)  # what a real build ends with


# `log --failed`
FAILURES = frozenset({RecordState.FAILED, RecordState.SKIPPED, RecordState.INTERRUPTED})


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """The audit row of one action in one build (§12): what ran, with what, and what it produced."""

    build_id: str
    label: str
    state: RecordState
    key: Digest | None
    started: str  # UTC, ISO 8601 with microseconds
    ended: str
    duration: float
    inputs: tuple[tuple[str, Digest], ...]
    versions: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, Digest], ...]
    usage: ResourceUsage | None
    exit_code: int | None
    error_code: str  # "ORCH-0N", "exit N", "signal N", "timeout", or "" on success
    env_hash: Digest
    slot: int = 0  # the job slot it ran in (one lane each in a trace); 0 for cache hits
    command: str = ""
    env: tuple[tuple[str, str], ...] = ()
    worker: str = ""  # the Dask worker that ran it (address), "" when it ran locally
    host: str = ""  # that worker's host name
    remote_started: str = ""  # UTC ISO 8601 by the worker's clock, "" when it ran locally
    remote_ended: str = ""

    def pack(self) -> bytes:
        row = {f: getattr(self, f) for f in self.__dataclass_fields__}
        row["state"] = self.state.value
        row["usage"] = [*(getattr(self.usage, f) for f in ResourceUsage.__dataclass_fields__)] \
            if self.usage else None
        return msgpack.packb(row, use_bin_type=True)

    @staticmethod
    def unpack(data: bytes) -> ExecutionRecord:
        row = msgpack.unpackb(data)
        row["state"] = RecordState(row["state"])
        row["usage"] = ResourceUsage(*row["usage"]) if row["usage"] is not None else None
        for name in ("inputs", "versions", "outputs", "env"):
            row[name] = tuple(tuple(pair) for pair in row[name])
        return ExecutionRecord(**row)


@dataclass(frozen=True, slots=True)
class BuildRow:
    """A build's row in the store's `builds` database: when and how it ran, and how it ended.

    Stored as a msgpack map whose fields depend on how the build went, in the order they were
    added (journal.py starts a row, the store concludes or interrupts it); the row's seal
    (recordchain.py) covers those bytes. So `order` keeps the stored field order and `extra`
    any field this version does not know, and `pack` writes the row back byte for byte.
    """

    number: int = 0
    status: str | None = None  # running, finished, interrupted, refused; absent in the oldest rows
    started: str = ""
    ended: str | None = None
    patterns: Sequence[str] = ()
    env_hash: Digest | None = None
    graph: Digest | None = None  # the graph cache entry, a journal blob
    state: Digest | None = None  # the up-to-date state it settled actions from, a journal blob
    actions: int = 0
    up_to_date: str | Sequence[int] = ()  # "all", or the indices of the actions settled by stat
    allow_env_drift: bool = False
    verify: bool = False
    rerun: Sequence[str] = ()  # `--rerun` patterns: their actions executed even if cached
    passed_env: Sequence[Sequence[str]] | None = None  # [[name, value]...] of [env] pass
    counts: Mapping[str, int] | None = None
    failed: int = 0
    skipped: int = 0
    pid: int | None = None  # of the process while it runs
    noticed: str | None = None  # when a later command found it interrupted
    in_flight: Sequence[Sequence[str]] = ()  # [[label, started]...] of an interrupted build
    error: str | None = None  # the code and message of a refused build
    message: str | None = None
    chain: Sequence[Any] | None = None  # [previous number, seal] once sealed
    order: tuple[str, ...] = field(default=(), compare=False)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def fields(self) -> dict[str, Any]:
        """The row as the store holds it: every field in stored order."""
        return {name: self.extra[name] if name in self.extra else getattr(self, name)
                for name in self.order}

    def pack(self) -> bytes:
        return msgpack.packb(self.fields(), use_bin_type=True)

    @staticmethod
    def unpack(data: bytes) -> BuildRow:
        row = msgpack.unpackb(data)
        if not isinstance(row, dict):
            raise ValueError("a build row is a map")
        return BuildRow.of(row)

    @staticmethod
    def of(row: Mapping[str, Any]) -> BuildRow:
        """The row of a mapping of fields, in its order."""
        known = {name: value for name, value in row.items() if name in _BUILD_FIELDS}
        extra = {name: value for name, value in row.items() if name not in _BUILD_FIELDS}
        return BuildRow(**known, order=tuple(row), extra=extra)

    def with_fields(self, **changes: Any) -> BuildRow:
        """The row with fields set, as a dict update would: a field it has keeps its place, a
        new one goes last."""
        return BuildRow.of({**self.fields(), **changes})

    def concluded(self) -> bool:
        """Whether the build finished (nothing was refused, interrupted or is still running)."""
        return (self.status or "finished") == "finished" and self.ended is not None


_BUILD_FIELDS = frozenset(BuildRow.__dataclass_fields__) - {"order", "extra"}

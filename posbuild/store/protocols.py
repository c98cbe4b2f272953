"""Layer 0: the store seen by its callers — one small protocol per concern.

Why a seam: a caller that names the one concern it uses (a blob reader, the stat memo, the build
log) can be tested against an in-memory fake instead of an LMDB folder, and a second back end (a
remote store, a store served by a long-lived process) implements only what is asked of it. Ninja
keeps its BuildLog and DepsLog as separate files behind separate classes for the same reason: each
concern has its own format and its own guarantees. lmdbstore.Store implements every facet here;
mypy checks that it does (the end of lmdbstore.py), and tests/store_contract.py states each
guarantee once and runs it against the LMDB store and the fake.

They exist for the type checker: import them under TYPE_CHECKING, and define a caller's
intersection of facets there too. Creating these classes takes about 3 ms, which a no-op build
does not pay.

The facets, and what each promises:

* Blobs: content by digest, verified on every read.
* ActionCache: action results by key.
* StatMemo: the last known state of a workspace file.
* Commits: the write path; one call's rows land together, and a build reads them at once.
* BuildLog: numbered build rows, their execution records and the payloads rows name.
* Generations: recorded output trees, numbered from 1.
* Sweep: walks of the whole store and removal, for gc and fsck.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from posbuild.core.digest import Digest
from posbuild.core.records import (ActionResult, BuildRow, Commit, ExecutionRecord, FileState,
                                   Generation)


class Blobs(Protocol):
    """Content-addressed bytes. Small blobs are written by `Commits` with their bytes; large ones
    are first placed by `store_external` and then committed as (digest, None)."""

    def has_blob(self, digest: Digest) -> bool:
        """Whether a blob is stored (unverified: a cheap check before copying it again)."""
        ...

    def get_blob(self, digest: Digest) -> bytes:
        """The blob's bytes, which hash to `digest`: ChecksumMismatch (ORCH-03) when it is missing
        or its bytes changed, never wrong bytes."""
        ...

    def blob_source(self, digest: Digest) -> bytes | Path | None:
        """Where a blob's bytes are, unverified (inline bytes, or its file); None if absent. For
        callers that stream a large blob and verify as they go."""
        ...

    def blob_size(self, digest: Digest) -> int:
        """Bytes the blob occupies; 0 if absent."""
        ...

    def external_path(self, digest: Digest) -> Path:
        """Where a large blob's file is (or would be); its content is verified by `get_blob`
        only."""
        ...

    def store_external(self, digest: Digest, source: Path, take: bool = False) -> None:
        """Copy a large file into the store, durable before any row refers to it;
        ChecksumMismatch, and nothing stored, when the file does not hash to `digest`. `take`:
        the caller hands over a file it has just hashed by descriptor, which may be linked in
        rather than copied (and is not hashed again)."""
        ...


class ActionCache(Protocol):
    """Action results by action key. Results are written by `Commits` (one per executed action)
    or in bulk by `add_results` (cache import)."""

    def get_result(self, key: Digest) -> ActionResult | None:
        """The result recorded for `key` (the last one committed), or None."""
        ...

    def add_results(self, results: Iterable[tuple[Digest, bytes]],
                    blobs: Iterable[tuple[Digest, bytes | None]], when: int) -> int:
        """Add packed results and their blobs at once, keeping any result already held for a key;
        a new one is marked used at `when` (unix ns). Returns how many were new."""
        ...


class StatMemo(Protocol):
    """The last known (stat signature, digest) of each workspace file, so an unchanged file is
    known by one stat; rows are written by `Commits`."""

    def get_memo(self, path: str) -> FileState | None:
        """The memo row of a workspace-relative path (the last one committed), or None."""
        ...


class Commits(Protocol):
    """The write path. The rows of one `commit` or one `log` call land together or not at all,
    whatever kills the process. Every read sees a commit's rows once it returns; a log's rows are
    seen at once by the reads a build makes (`get_result`, `has_blob`, `get_blob`,
    `blob_source`, `get_memo`) and by all others after `flush` or the next `commit`."""

    def commit(self, result: tuple[Digest, ActionResult] | None = None,
               blobs: Iterable[tuple[Digest, bytes | None]] = (),
               memo: Iterable[tuple[str, FileState]] = (),
               used: Iterable[tuple[Digest, int]] = (),
               records: Iterable[tuple[bytes, str, bytes]] = ()) -> None:
        """Write one action's rows at once: its result (replacing one held for the key), blobs
        (None: already placed by `store_external`; a blob held already is kept), memo rows,
        last-use times (unix ns) of action keys, and records (record key, label, packed)."""
        ...

    def log(self, commits: Sequence[Commit]) -> None:
        """Write several actions' rows as one unit, cheaper than a `commit` each: safe from a kill
        on return, durable against power loss after `flush`."""
        ...

    def flush(self) -> None:
        """Make everything written so far durable (once per build: it costs an fsync)."""
        ...


class BuildLog(Protocol):
    """Builds of one workspace, numbered from 1, and the execution records of each. A running
    build is concluded by `update_build`; one whose process died is recorded as interrupted
    with the actions it had started."""

    def begin_build(self, info: BuildRow, blobs: Iterable[tuple[Digest, bytes]] = ()) -> int:
        """Number a new build (one more than the last) and write its row and the payloads it
        names at once; a row whose status is not "running" is concluded already."""
        ...

    def start_log(self, number: int) -> Callable[[str], None]:
        """A function noting that running build `number` started the action labelled so."""
        ...

    def update_build(self, number: int, changes: dict[str, object],
                     blobs: Iterable[tuple[Digest, bytes]] = ()) -> None:
        """Conclude running build `number` with its final fields (status "finished" unless
        given), and store the payloads a later build's row will name, at once."""
        ...

    def settle_interrupted(self) -> list[int]:
        """Record as interrupted every running build whose process is gone; their numbers."""
        ...

    def build_key(self, number: int) -> bytes:
        """The key of build `number`'s row: its records are keyed by it + a 4-byte sequence."""
        ...

    def builds(self) -> list[BuildRow]:
        """Every build row of the workspace, oldest first."""
        ...

    def records_of(self, number: int) -> list[ExecutionRecord]:
        """The records committed for build `number`, in sequence order."""
        ...

    def latest_record(self, label: str) -> ExecutionRecord | None:
        """The record of `label` with the greatest key (its newest), or None."""
        ...

    def records_of_label(self, label: str) -> list[ExecutionRecord]:
        """Every record of `label`, oldest first (a scan: not for hot paths)."""
        ...

    def journal_blob(self, digest: Digest) -> bytes | None:
        """A payload given to `begin_build`, verified (ChecksumMismatch if changed); None if
        absent."""
        ...


class Generations(Protocol):
    """Recorded output trees (§8), numbered from 1 across the store, tagged by workspace."""

    def add_generation(self, created: str, patterns: tuple[str, ...], manifest: bytes, files: int,
                       size: int, workspace: str = "") -> Generation:
        """Record a generation and its manifest (as a blob, `get_blob(generation.manifest)`) at
        once; its id is one more than the last."""
        ...

    def generations(self) -> list[Generation]:
        """Every generation of every workspace, oldest first."""
        ...

    def latest_generation(self, workspace: str = "") -> Generation | None:
        """The newest generation tagged `workspace`, or None."""
        ...


class Sweep(Protocol):
    """The whole store at once, for gc and fsck: every row, and their removal."""

    def iter_blobs(self) -> Iterator[tuple[Digest, bytes | None]]:
        """(digest, bytes) of every blob held inline, (digest, None) of those kept as files."""
        ...

    def iter_results(self) -> Iterator[tuple[Digest, ActionResult]]:
        """Every (key, result), one per key."""
        ...

    def usage(self) -> dict[Digest, int]:
        """When each action key was last used (unix ns); keys never marked are absent."""
        ...

    def external_files(self) -> Iterator[Path]:
        """Every file where large blobs are kept, temp files of interrupted writes included."""
        ...

    def remove(self, results: Iterable[Digest] = (), blobs: Iterable[Digest] = (),
               memo: Iterable[str] = (), generations: Iterable[int] = ()) -> int:
        """Delete rows at once, then the files of removed blobs (never a row without its file);
        returns the bytes freed."""
        ...

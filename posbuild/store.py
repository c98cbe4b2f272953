"""Layer 3: the LMDB store — blobs (CAS), action results, the stat memo, metadata.

Design memo
-----------
* One LMDB environment, named databases `blobs`, `results`, `statmemo`, `meta`, `generations`
  and `usage` (when each action key was last used, for gc). Everything an
  action produces is written by `commit()` in ONE write transaction, so after a crash at any
  instant the store holds all of an action's rows or none of them (§7). `commit_all()` writes
  the rows of several actions in one transaction, which keeps that promise for each of them.
* Blobs up to `INLINE_LIMIT` bytes live inside LMDB. Larger ones live as files `cas/ab/abcd…`
  beside it, written temp + fsync + rename *before* the transaction that references them, so a
  committed row never points at a missing or half-written file; a crash in between leaves at most
  an orphan file, which is harmless and collectable.
* Blobs are verified when read: a blob that does not hash to its name raises ORCH-03 rather than
  handing wrong bytes to `posbuild-out/` (DESIGN §7.8).
* Durability: the environment is opened with `sync=False`. LMDB's copy-on-write B-tree means a
  *process* crash (SIGKILL, OOM) can never tear a transaction — the pages are already in the OS
  page cache. What fsync buys is survival of a *machine* crash; posbuild flushes once at the end
  of every build (`flush()`), trading the last build's cache entries on power loss for avoiding
  an fsync per action (≈0.4 ms each, which would dominate cheap actions).
* LMDB readers never block the writer. Workers commit from their own threads; py-lmdb's lock
  serialises writers inside the process and LMDB's lock file across processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import lmdb
import msgpack

from posbuild.digest import Digest, hash_bytes, hash_file
from posbuild.epoch import advance_epoch
from posbuild.errors import ChecksumMismatch, PartialState
from posbuild.records import ActionResult, ExecutionRecord, FileState, Generation

STORE_FORMAT = b"1"
INLINE_LIMIT = 256 * 1024
MAP_SIZE = 1 << 36
# A build's payloads (journal.py; megabytes at 10,000 actions) are stored in chunks that each fit
# in one page: a value larger than that needs a run of contiguous free pages, which LMDB searches
# for in its free list, and after a large build that search alone took a no-op build 150 ms.
# Rows are keyed digest + 4-byte chunk number; stores written before keep one row keyed by digest.
PAYLOAD_CHUNK = 1900
_INLINE, _EXTERNAL = b"\x00", b"\x01"


@dataclass(frozen=True, slots=True)
class Commit:
    """Everything one action writes to the store (see `Store.commit` for the fields)."""

    result: tuple[Digest, ActionResult] | None = None
    blobs: tuple[tuple[Digest, bytes | None], ...] = ()
    memo: tuple[tuple[str, FileState], ...] = ()
    used: tuple[tuple[Digest, int], ...] = ()
    records: tuple[tuple[bytes, str, bytes], ...] = ()


def _has_payload(cursor: lmdb.Cursor, digest: Digest) -> bool:
    """Whether a payload is stored (whole or in chunks), without copying it."""
    return cursor.set_range(digest) and cursor.key()[:len(digest)] == digest


class Store:
    """The artifact store of one workspace (or of a shared `[cache] dir`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(path / "db"), map_size=MAP_SIZE, max_dbs=16, sync=False, metasync=False)
        self._blobs = self._env.open_db(b"blobs")
        self._results = self._env.open_db(b"results")
        self._memo = self._env.open_db(b"statmemo")
        self._meta = self._env.open_db(b"meta")
        self._generations = self._env.open_db(b"generations")
        self._usage = self._env.open_db(b"usage")
        self._records = self._env.open_db(b"records")
        self._builds = self._env.open_db(b"builds")
        self._latest = self._env.open_db(b"latest")
        self._journal_blobs = self._env.open_db(b"journal_blobs")
        self._check_format()

    def _check_format(self) -> None:
        with self._env.begin() as txn:
            found = txn.get(b"format", db=self._meta)
        if found is None:
            with self._env.begin(write=True) as txn:
                txn.put(b"format", STORE_FORMAT, db=self._meta)
        elif found != STORE_FORMAT:
            raise PartialState(
                f"store {self.path} has format {found.decode()}, this posbuild reads {STORE_FORMAT.decode()}; "
                f"run `posbuild clean --all`"
            )

    def close(self) -> None:
        self._env.close()

    def flush(self) -> None:
        """Force everything committed so far to disk (once per build; see the memo above)."""
        self._env.sync(True)

    # -- reading ---------------------------------------------------------------------------

    def _get(self, key: bytes, db: Any) -> bytes | None:
        """One row, read in a snapshot of its own.

        No read transaction outlives its read: LMDB can reuse a page freed by a commit only once
        no reader still sees it, and one long-lived snapshot during a build of thousands of
        commits made the file grow several times over the data it holds.
        """
        with self._env.begin() as txn:
            return txn.get(key, db=db)

    def get_result(self, key: Digest) -> ActionResult | None:
        data = self._get(key, self._results)
        return ActionResult.unpack(data) if data is not None else None

    def get_memo(self, path: str) -> FileState | None:
        data = self._get(path.encode(), self._memo)
        return FileState.unpack(data) if data is not None else None

    def get_blob(self, digest: Digest) -> bytes:
        """A blob's bytes, verified against its digest (ORCH-03 on mismatch or loss)."""
        with self._env.begin() as txn:
            row = txn.get(digest, db=self._blobs)
        if row is None:
            raise ChecksumMismatch(f"blob {digest.hex()} is referenced by an action result but missing from the store")
        data = row[1:] if row[:1] == _INLINE else self._read_external(digest)
        actual = hash_bytes(data)
        if actual != digest:
            raise ChecksumMismatch(
                f"blob {digest.hex()} in {self.path} hashes to {actual.hex()}; run `posbuild fsck --repair`"
            )
        return data

    def has_blob(self, digest: Digest) -> bool:
        with self._env.begin() as txn:
            return txn.get(digest, db=self._blobs) is not None

    def blob_source(self, digest: Digest) -> bytes | Path | None:
        """Where a blob's bytes are, unverified: inline bytes, or its file under cas/; None if absent.
        For callers that stream large blobs (cache export) and verify as they go."""
        with self._env.begin() as txn:
            row = txn.get(digest, db=self._blobs)
        if row is None:
            return None
        return row[1:] if row[:1] == _INLINE else self.external_path(digest)

    def external_path(self, digest: Digest) -> Path:
        hexed = digest.hex()
        return self.path / "cas" / hexed[:2] / hexed

    def _read_external(self, digest: Digest) -> bytes:
        try:
            return self.external_path(digest).read_bytes()
        except FileNotFoundError:
            raise ChecksumMismatch(f"blob file {self.external_path(digest)} is missing") from None

    # -- writing ---------------------------------------------------------------------------

    def store_external(self, digest: Digest, source: Path) -> None:
        """Copy a large file into `cas/` (temp + fsync + rename), before any row refers to it."""
        target = self.external_path(digest)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        import tempfile  # only large outputs are stored as files

        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if hash_file(temp) != digest:
                raise ChecksumMismatch(f"{source} changed while it was stored")
            os.chmod(temp, 0o444)
            os.rename(temp, target)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)

    def commit(
        self,
        result: tuple[Digest, ActionResult] | None = None,
        blobs: Iterable[tuple[Digest, bytes | None]] = (),
        memo: Iterable[tuple[str, FileState]] = (),
        used: Iterable[tuple[Digest, int]] = (),
        records: Iterable[tuple[bytes, str, bytes]] = (),
    ) -> None:
        """Write an action's result, its blobs and stat-memo rows in one transaction.

        A blob given as `None` was already placed in `cas/` by `store_external`. `used` records
        when action keys were last used (for gc's least-recently-used order).
        """
        with self._env.begin(write=True) as txn:
            self._write(txn, result, blobs, memo, used, records)

    def commit_all(self, commits: Iterable[Commit]) -> None:
        """Write several actions' rows in ONE transaction: each action's rows all land, or none
        of any; a transaction per cheap action would cost more than writing its rows."""
        with self._env.begin(write=True) as txn:
            for commit in commits:
                self._write(txn, commit.result, commit.blobs, commit.memo, commit.used, commit.records)

    def _write(self, txn: lmdb.Transaction, result: tuple[Digest, ActionResult] | None,
               blobs: Iterable[tuple[Digest, bytes | None]], memo: Iterable[tuple[str, FileState]],
               used: Iterable[tuple[Digest, int]], records: Iterable[tuple[bytes, str, bytes]]) -> None:
        for key, when in used:
            txn.put(key, when.to_bytes(8, "big"), db=self._usage)
        for record_key, label, packed in records:
            txn.put(record_key, packed, db=self._records)
            txn.put(label.encode(), record_key, db=self._latest)
        for digest, data in blobs:
            if txn.get(digest, db=self._blobs) is None:
                txn.put(digest, _INLINE + data if data is not None else _EXTERNAL, db=self._blobs)
        for path, state in memo:
            txn.put(path.encode(), state.pack(), db=self._memo)
        if result is not None:
            key, value = result
            packed = value.pack()
            if txn.get(key, db=self._results) != packed:
                txn.put(key, packed, db=self._results)

    def add_results(self, results: Iterable[tuple[Digest, bytes]], blobs: Iterable[tuple[Digest, bytes | None]],
                    when: int) -> int:
        """Add many (key, packed result) rows and their blobs in ONE transaction, keeping any result
        the store already has for a key (cache import); returns how many results were new."""
        added = 0
        with self._env.begin(write=True) as txn:
            for digest, data in blobs:
                if txn.get(digest, db=self._blobs) is None:
                    txn.put(digest, _INLINE + data if data is not None else _EXTERNAL, db=self._blobs)
            for key, packed in results:
                if txn.get(key, db=self._results) is None:
                    txn.put(key, packed, db=self._results)
                    txn.put(key, when.to_bytes(8, "big"), db=self._usage)
                    added += 1
        return added

    def get_meta(self, name: str) -> bytes | None:
        return self._get(name.encode(), self._meta)

    def put_meta(self, name: str, value: bytes) -> None:
        with self._env.begin(write=True) as txn:
            txn.put(name.encode(), value, db=self._meta)

    # -- generations (§8) ------------------------------------------------------------------

    def add_generation(self, created: str, patterns: tuple[str, ...], manifest: bytes, files: int,
                       size: int, workspace: str = "") -> Generation:
        """Record a generation and its manifest blob in one transaction; ids count up from 1."""
        digest = hash_bytes(manifest)
        with self._env.begin(write=True) as txn:
            with txn.cursor(db=self._generations) as cursor:
                last = int.from_bytes(cursor.key(), "big") if cursor.last() else 0
            generation = Generation(last + 1, created, patterns, digest, files, size, workspace)
            if txn.get(digest, db=self._blobs) is None:
                txn.put(digest, _INLINE + manifest, db=self._blobs)
            txn.put(generation.id.to_bytes(8, "big"), generation.pack(), db=self._generations)
        return generation

    def generations(self) -> list[Generation]:
        """Every recorded generation, oldest first."""
        with self._env.begin() as txn:
            return [Generation.unpack(value) for _, value in txn.cursor(db=self._generations)]

    def latest_generation(self, workspace: str = "") -> Generation | None:
        """The newest generation of `workspace` (generations.workspace_tag)."""
        with self._env.begin() as txn, txn.cursor(db=self._generations) as cursor:
            for _, value in cursor.iterprev():
                generation = Generation.unpack(value)
                if generation.workspace == workspace:
                    return generation
            return None

    # -- whole-store walks and removal (fsck, gc) ------------------------------------------

    def iter_blobs(self) -> Iterator[tuple[Digest, bytes | None]]:
        """(digest, bytes) of inline blobs and (digest, None) of blobs kept as files in cas/."""
        with self._env.begin() as txn:
            for digest, row in txn.cursor(db=self._blobs):
                yield digest, (row[1:] if row[:1] == _INLINE else None)

    def iter_results(self) -> Iterator[tuple[Digest, ActionResult]]:
        with self._env.begin() as txn:
            for key, value in txn.cursor(db=self._results):
                yield key, ActionResult.unpack(value)

    def usage(self) -> dict[Digest, int]:
        """When each action key was last used (unix ns); keys never recorded are absent."""
        with self._env.begin() as txn:
            return {key: int.from_bytes(value, "big") for key, value in txn.cursor(db=self._usage)}

    def external_files(self) -> Iterator[Path]:
        """Every file under cas/, including temp files of interrupted writes."""
        cas = self.path / "cas"
        if cas.is_dir():
            for folder in sorted(cas.iterdir()):
                yield from sorted(folder.iterdir()) if folder.is_dir() else (folder,)

    def remove(self, results: Iterable[Digest] = (), blobs: Iterable[Digest] = (),
               memo: Iterable[str] = (), generations: Iterable[int] = ()) -> int:
        """Delete rows in one transaction, then the cas/ files of deleted blobs; returns bytes freed.

        Files go only after the transaction commits: a crash in between leaves orphan files,
        which fsck reports and gc or `fsck --repair` removes, never a row without its file.
        """
        advance_epoch(self.path)  # first: saved up-to-date states must not trust what goes (epoch.py)
        freed = 0
        external: list[Digest] = []
        with self._env.begin(write=True) as txn:
            for key in results:
                txn.delete(key, db=self._results)
                txn.delete(key, db=self._usage)
            for digest in blobs:
                row = txn.get(digest, db=self._blobs)
                if row is None:
                    continue
                if row[:1] == _INLINE:
                    freed += len(row) - 1
                else:
                    external.append(digest)
                txn.delete(digest, db=self._blobs)
            for path in memo:
                txn.delete(path.encode(), db=self._memo)
            for number in generations:
                txn.delete(number.to_bytes(8, "big"), db=self._generations)
        if external:
            self.flush()  # the rows' removal must be on disk before their files go (machine crash)
        for digest in external:
            path = self.external_path(digest)
            try:
                freed += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                pass
        return freed

    def blob_size(self, digest: Digest) -> int:
        """Bytes a blob occupies (0 if absent)."""
        with self._env.begin() as txn:
            row = txn.get(digest, db=self._blobs)
        if row is None:
            return 0
        if row[:1] == _INLINE:
            return len(row) - 1
        try:
            return self.external_path(digest).stat().st_size
        except FileNotFoundError:
            return 0

    # -- execution records (§12) ---------------------------------------------------------------

    def begin_build(self, info: dict[str, object], blobs: Iterable[tuple[Digest, bytes]] = ()) -> int:
        """Number a new build and write its row (and the payloads it refers to) in one transaction.

        The payloads (graph and up-to-date state, see journal.py) are kept apart from the artifact
        blobs, so recording a build never changes the CAS that results point into (§11).
        """
        with self._env.begin(write=True) as txn:
            with txn.cursor(db=self._builds) as cursor:
                number = int.from_bytes(cursor.key(), "big") + 1 if cursor.last() else 1
            with txn.cursor(db=self._journal_blobs) as cursor:
                for digest, data in blobs:
                    if _has_payload(cursor, digest):
                        continue
                    for index, start in enumerate(range(0, max(len(data), 1), PAYLOAD_CHUNK)):
                        txn.put(digest + index.to_bytes(4, "big"), data[start:start + PAYLOAD_CHUNK],
                                db=self._journal_blobs)
            txn.put(number.to_bytes(8, "big"), msgpack.packb({**info, "number": number}, use_bin_type=True),
                    db=self._builds)
        return number

    def update_build(self, number: int, changes: dict[str, object]) -> None:
        with self._env.begin(write=True) as txn:
            key = number.to_bytes(8, "big")
            info = msgpack.unpackb(txn.get(key, db=self._builds))
            txn.put(key, msgpack.packb({**info, **changes}, use_bin_type=True), db=self._builds)

    def builds(self) -> list[dict[str, object]]:
        """Every build row, oldest first."""
        with self._env.begin() as txn:
            return [msgpack.unpackb(value) for _, value in txn.cursor(db=self._builds)]

    def records_of(self, number: int) -> list[ExecutionRecord]:
        """The explicit records of one build, in the order they were written."""
        prefix = number.to_bytes(8, "big")
        found = []
        with self._env.begin() as txn, txn.cursor(db=self._records) as cursor:
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    found.append(ExecutionRecord.unpack(value))
        return found

    def latest_record(self, label: str) -> ExecutionRecord | None:
        """The newest explicit record of an action (its last execution or store lookup)."""
        with self._env.begin() as txn:
            key = txn.get(label.encode(), db=self._latest)
            value = txn.get(key, db=self._records) if key else None
        return ExecutionRecord.unpack(value) if value else None

    def records_of_label(self, label: str) -> list[ExecutionRecord]:
        """Every explicit record of one action, oldest first (a scan: for `explain`, not hot paths)."""
        with self._env.begin() as txn:
            return [r for r in (ExecutionRecord.unpack(v) for _, v in txn.cursor(db=self._records)) if r.label == label]

    def journal_blob(self, digest: Digest) -> bytes | None:
        """A payload that build rows refer to (graph or up-to-date state), verified; None if absent."""
        with self._env.begin() as txn, txn.cursor(db=self._journal_blobs) as cursor:
            parts = []
            if cursor.set_range(digest):
                for key, value in cursor.iternext():
                    if not key.startswith(digest):
                        break
                    parts.append(value)
        data = b"".join(parts) if parts else None
        if data is not None and hash_bytes(data) != digest:
            raise ChecksumMismatch(f"build record payload {digest.hex()} in {self.path} is corrupt")
        return data

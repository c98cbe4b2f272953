"""Layer 1: the LMDB store — blobs (CAS), action results, the stat memo, generations, records.

Design memo
-----------
* The store folder holds `db/` (one LMDB environment), `cas/` (large blobs), `wal/` (the
  write-ahead logs, wal.py), `running/` (start logs of running builds), `epoch` (epoch.py) and
  `gc.lock` (layout.py). The environment's ten named databases (DATABASES), keys and values
  in bytes; TAG is the workspace's tag and a NUL byte, or nothing in a workspace's own store
  (below); integers are big-endian:

  ============= =============================== ===============================================
  database      key                             value
  ============= =============================== ===============================================
  blobs         digest (32)                     byte 0 + the bytes, or byte 1: file in `cas/`
  results       action key (32)                 ActionResult.pack() (records.py)
  usage         action key (32)                 u64 nanoseconds it was last used, for gc
  statmemo      TAG + workspace-relative path   FileState.pack(): [mtime, size, inode, ctime,
                                                digest]
  meta          `format`                        STORE_FORMAT
  meta          `records` [+ NUL + tag]         msgpack {"head": [number, seal] | None,
                                                "running": [numbers]}: the record chain
  generations   u64 generation id               Generation.pack(), its tag inside (records.py)
  builds        TAG + u64 build number          BuildRow.pack() (records.py), fields as journal.py
                                                and this module add them; "chain" once sealed
  records       TAG + u64 build + u32 sequence  ExecutionRecord.pack() (records.py)
  latest        TAG + label                     the key of the label's newest `records` row
  journal_blobs digest (32) + u32 chunk         `PAYLOAD_CHUNK` bytes of a payload a build row
                                                names; older stores: digest → whole payload
  ============= =============================== ===============================================

* Everything an action produces is written by `commit()` in ONE write transaction, or logged by
  `log()` in one frame (below), so after a crash at any instant the store holds all of an action's
  rows or none of them (§7). An executed action's `usage` row is bookkeeping, not its product: it
  comes with the build's last commit, and a key without one is simply the least recently used.
* Blobs up to `INLINE_LIMIT` bytes live inside LMDB. Larger ones live as files `cas/ab/abcd…`
  beside it, written temp + fsync + rename *before* the transaction that references them, so a
  committed row never points at a missing or half-written file; a crash in between leaves at most
  an orphan file, which is harmless and collectable. A large output is taken in by a hard link
  where it can be, and `posbuild-out/` may share the file (materialize.py): such a file can be
  changed by an edit there, which the hash check on every read finds (materialize.py drops it).
* Blobs are verified when read: a blob that does not hash to its name raises ORCH-03 rather than
  handing wrong bytes to `posbuild-out/` (DESIGN §7.8).
* Durability: the environment is opened with `sync=False`. LMDB's copy-on-write B-tree means a
  *process* crash (SIGKILL, OOM) can never tear a transaction — the pages are already in the OS
  page cache. What fsync buys is survival of a *machine* crash; posbuild flushes once at the end
  of every build (`flush()`), trading the last build's cache entries on power loss for avoiding
  an fsync per action (≈0.4 ms each, which would dominate cheap actions).
* Executed actions are not committed one transaction each: `log()` appends their rows to the
  store's write-ahead log (wal.py), one `write()` per action, and applies the log to LMDB in one
  transaction per `LOG_GROUP` actions, and before any other write (a build's seal must cover the
  records logged before it). Until then reads of this process see the logged rows. A log whose
  process died is replayed by the next command that opens the store, before it reads anything.
  wal.py owns the file and its frames; a frame's payload is the msgpack list of one `log()` call's
  actions, each as `_rows` gives it: [result [key, packed] | None, blob rows [digest, row],
  memo rows [TAG + path, state], usage rows [key, u64], records [record key, TAG + label, packed]],
  every row already in the form its database stores.
* Execution records (§12). A running build holds a lock on `running/NUMBER` beside the database
  and appends each action it starts there; a concluded build's row is sealed into the hash chain
  of recordchain.py, whose head lives in the `meta` row `records` with the running builds' numbers.
* Workspaces. A store shared by several workspaces (`[cache] dir`) shares blobs, action results,
  their usage rows and the records' payloads (all content-addressed or keyed by action key).
  Everything that describes one workspace is keyed by its tag (Config.workspace_tag) as well:
  stat-memo rows, build rows, records and `latest` rows are keyed `TAG\0` + the key above, the
  chain's meta row is `records\0TAG`, start logs live in `running/w-HASH/`, and generations
  carry the tag in their row. The workspace's own store has tag "", and its keys are exactly
  the unprefixed keys of stores written before tags. Build and record keys are scanned by range:
  a tag is an absolute path, so its keys start with "/", and an untagged key with a build
  number, whose first byte is 0, so the ranges never mix.
* LMDB readers never block the writer. Workers commit from their own threads; py-lmdb's lock
  serialises writers inside the process and LMDB's lock file across processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, cast

import lmdb
import msgpack

from posbuild.core.digest import Digest, hash_bytes, hash_file
from posbuild.store.epoch import EPOCH_FILE, advance_epoch
from posbuild.errors import ChecksumMismatch, PartialState, PosbuildError
from posbuild.core.layout import STORE_DB, STORE_LOCK
from posbuild.host.liveness import lock_held
from posbuild.host.owned import STORE, claim, is_store
from posbuild.store.recordchain import CHAIN, GENESIS, records_digest, seal
from posbuild.core.records import (ActionResult, BuildRow, Commit, ExecutionRecord, FileState,
                                   Generation, utc)
from posbuild.store.wal import DeadLog, WriteAheadLog, dead_logs, has_dead_logs

STORE_FORMAT = b"1"
INLINE_LIMIT = 256 * 1024
MAP_SIZE = 1 << 36
# A build's payloads (journal.py; megabytes at 10,000 actions) are stored in chunks that each fit
# in one page: a value larger than that needs a run of contiguous free pages, which LMDB searches
# for in its free list, and after a large build that search alone took a no-op build 150 ms.
# Rows are keyed digest + 4-byte chunk number; stores written before keep one row keyed by digest.
PAYLOAD_CHUNK = 1900
_INLINE, _EXTERNAL = b"\x00", b"\x01"
# every named database, for walks of the whole store (salvage.py)
DATABASES = (b"blobs", b"results", b"statmemo", b"meta", b"generations", b"usage", b"records",
             b"builds", b"latest", b"journal_blobs")
# plus the meta row `records`
RECORD_DATABASES = (b"records", b"builds", b"latest", b"journal_blobs")
_CHAIN_META = b"records"  # meta row: {"head": [number, seal] | None, "running": [numbers]}
# The write-ahead log is applied to LMDB once this many actions, or this many bytes, are in it.
LOG_GROUP = 256
LOG_BYTES = 8 << 20


# An action's rows as they are written: (result key, packed result) or None, (digest, blob row),
# (memo key, packed state), (action key, 8-byte time), (record key, `latest` key, packed record).
_Rows = tuple[tuple[bytes, bytes] | None, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]],
              list[tuple[bytes, bytes]], list[tuple[bytes, bytes, bytes]]]


def _has_payload(cursor: lmdb.Cursor, digest: Digest) -> bool:
    """Whether a payload is stored (whole or in chunks), without copying it."""
    return cursor.set_range(digest) and cursor.key()[:len(digest)] == digest


class Store:
    """The artifact store of one workspace (or of a shared `[cache] dir`): every facet of
    protocols.py, over LMDB."""

    def __init__(self, path: Path, workspace: str = "") -> None:
        """Open the store at `path` as the workspace tagged `workspace` (Config.workspace_tag:
        "" in its own store, its path in a shared one) sees it: its memo, build rows, records and
        chain are keyed by the tag (see the memo above), so checkouts of one repository sharing a
        store never read each other's."""
        self.path = path
        self.workspace = workspace
        self._prefix = f"{workspace}\0".encode() if workspace else b""  # of every per-workspace key
        self._chain_key = _CHAIN_META + b"\0" + workspace.encode() if workspace else _CHAIN_META
        running = path / "running"  # start logs of running builds
        self._running = running / f"w-{hash_bytes(workspace.encode()).hex()[:16]}" if workspace \
            else running
        try:
            # made with posbuild's mark; never a folder posbuild did not make
            claim(path, STORE, is_store)
        except OSError as error:
            what = "a file, not a folder" if path.exists() \
                or isinstance(error, NotADirectoryError) else error.strerror
            raise StoreUnavailable(f"cannot create the store folder {path}: {what}") from None
        damage = file_damage(path / STORE_DB)
        if damage is not None:
            raise ChecksumMismatch(
                f"the store {path} is damaged: {damage}; run `posbuild fsck --repair`")
        # running builds of this process → the fd of their start log
        self._held: dict[int, int] = {}
        self._log: WriteAheadLog | None = None  # opened by the first `log()`
        # held from appending to the log until its rows are in LMDB
        self._log_lock = threading.Lock()
        self._logged: list[_Rows] = []  # rows in the log, not yet in LMDB
        self._logged_bytes = 0
        self._live_writers: set[int] = set()  # pids whose logs were held at the last write
        # what reads must see of the logged rows: result, blob and memo rows by key
        self._pending_results: dict[bytes, bytes] = {}
        self._pending_blobs: dict[bytes, bytes] = {}
        self._pending_memo: dict[bytes, bytes] = {}
        self._env = open_environment(path / STORE_DB)
        try:
            self._open_dbs()
            self._check_format()
            if has_dead_logs(path / "wal"):
                # a dead process's logged commits, before anything reads the store
                self._apply_log()
        except lmdb.Error as error:
            self._env.close()
            raise store_failure(path, error) from None

    def _open_dbs(self) -> None:
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

    def _check_format(self) -> None:
        with self._env.begin() as txn:
            found = txn.get(b"format", db=self._meta)
        # a new store, or one from before epochs:
        if found is None or not (self.path / EPOCH_FILE).exists():
            # states saved against a deleted store must not trust this one (epoch.py)
            advance_epoch(self.path)
        if found is None:
            (self.path / STORE_LOCK).touch()
            with self._env.begin(write=True) as txn:
                txn.put(b"format", STORE_FORMAT, db=self._meta)
        elif found != STORE_FORMAT:
            raise PartialState(
                f"store {self.path} has format {found.decode()}, this posbuild reads "
                f"{STORE_FORMAT.decode()}; run `posbuild clean --all`"
            )

    def close(self) -> None:
        """Close the store; the log is applied, and a build of ours still running (an error or
        Ctrl-C ended it before it concluded) is recorded as interrupted first."""
        if self._held or self._logged:
            try:
                with self._writing() as txn:
                    chain = self._chain(txn)
                    for number in list(self._held):
                        if number in chain["running"]:
                            self._interrupt(txn, chain, number)
                    txn.put(self._chain_key, msgpack.packb(chain, use_bin_type=True), db=self._meta)
            # the build stays "running": the next command records it from its log
            except lmdb.Error:
                for fd in self._held.values():
                    os.close(fd)
                self._held.clear()
            for number in list(self._held):
                self._release(number)
        if self._log is not None:
            # a log not applied stays, for the next command to replay
            self._log.close(delete=not self._logged)
        self._env.close()

    def flush(self) -> None:
        """Force everything committed or logged so far to disk (once per build; see the memo
        above)."""
        if self._logged:
            self._apply_log()
        self._env.sync(True)

    def _apply_log(self) -> None:
        """Put the rows logged so far, and those of dead processes' logs, into LMDB now."""
        with self._writing():
            pass

    @contextlib.contextmanager
    def _writing(self) -> Iterator[lmdb.Transaction]:
        """A write transaction that first applies the logs of dead processes and then this one's:
        every write lands after the rows logged before it (a build's seal covers its records).
        The logs are emptied, or deleted, once their rows are in."""
        with self._log_lock:
            dead, self._live_writers = dead_logs(self.path / "wal")
            try:
                with self._env.begin(write=True) as txn:
                    for log in dead:
                        self._replay(txn, log)
                    for rows in self._logged:
                        self._apply(txn, rows)
                    yield txn
            except BaseException:
                for log in dead:
                    log.release()  # it stays for the next command
                raise
            for log in dead:
                log.remove()
            if self._logged:
                assert self._log is not None
                self._log.clear()
                self._logged.clear()
                self._logged_bytes = 0
                self._pending_results.clear()
                self._pending_blobs.clear()
                self._pending_memo.clear()

    def _replay(self, txn: lmdb.Transaction, log: DeadLog) -> None:
        """Apply the complete frames of a dead process's log."""
        for payload in log.payloads:
            try:
                batch = msgpack.unpackb(payload)
            except ValueError:  # not a frame this module wrote: the rest of that log is dropped
                return
            for rows in batch:
                self._apply(txn, rows)

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
        data = self._pending_results.get(key) or self._get(key, self._results)
        return ActionResult.unpack(data) if data is not None else None

    def get_memo(self, path: str) -> FileState | None:
        key = self._prefix + path.encode()
        data = self._pending_memo.get(key) or self._get(key, self._memo)
        return FileState.unpack(data) if data is not None else None

    def _blob_row(self, digest: Digest) -> bytes | None:
        return self._pending_blobs.get(digest) or self._get(digest, self._blobs)

    def get_blob(self, digest: Digest) -> bytes:
        """A blob's bytes, verified against its digest (ORCH-03 on mismatch or loss)."""
        row = self._blob_row(digest)
        if row is None:
            raise ChecksumMismatch(
                f"blob {digest.hex()} is referenced by an action result but missing from the store")
        data = row[1:] if row[:1] == _INLINE else self._read_external(digest)
        actual = hash_bytes(data)
        if actual != digest:
            raise ChecksumMismatch(
                f"blob {digest.hex()} in {self.path} hashes to {actual.hex()}; run `posbuild fsck "
                "--repair`"
            )
        return data

    def has_blob(self, digest: Digest) -> bool:
        return self._blob_row(digest) is not None

    def blob_source(self, digest: Digest) -> bytes | Path | None:
        """Where a blob's bytes are, unverified: inline bytes, or its file under cas/; None if
        absent. For callers that stream large blobs (cache export) and verify as they go."""
        row = self._blob_row(digest)
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

    def store_external(self, digest: Digest, source: Path, take: bool = False) -> None:
        """Put a large file into `cas/` (temp + fsync + rename), before any row refers to it.

        The file is cloned (a reflink) or copied, and the copy hashed again, since its source
        may be changing under it. With `take`, the caller hands the file over: an action's output
        it has just hashed through the descriptor `source` names (`/proc/self/fd/N`), whose
        processes are gone. With no other name and on the store's file system (a sandbox on
        disk), it is then taken in by a hard link, made read-only, and not hashed again.
        """
        target = self.external_path(digest)
        try:
            # a file shared with posbuild-out/ may have been edited there (materialize.py)
            if os.stat(target).st_nlink == 1 or hash_file(target) == digest:
                return
            os.unlink(target)  # changed through its link: these bytes replace it
        except FileNotFoundError:
            pass
        target.parent.mkdir(parents=True, exist_ok=True)
        import tempfile  # only large outputs are stored as files

        temp = _adopt(source, target.parent) if take else None
        if temp is not None:
            os.rename(temp, target)
            return
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _copy_file(src, out.fileno())
                finally:
                    os.close(src)
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
        with self._writing() as txn:
            self._apply(txn, self._rows(Commit(result, tuple(blobs), tuple(memo), tuple(used),
                                               tuple(records))))

    def log(self, commits: Sequence[Commit]) -> None:
        """Make several actions' rows safe from a kill at once, and part of the store soon: they go
        to the write-ahead log now (one `write()`), and into LMDB with the next group. After a
        kill, all of them are replayed or none, as with one transaction."""
        batch = [self._rows(commit) for commit in commits]
        payload = msgpack.packb(batch, use_bin_type=True)
        with self._log_lock:
            if self._log is None:
                self._log = WriteAheadLog(self.path / "wal")
            self._log.append(payload)
            self._logged += batch
            self._logged_bytes += len(payload)
            for result, blobs, memo, _, _ in batch:
                if result is not None:
                    self._pending_results[result[0]] = result[1]
                self._pending_blobs.update(blobs)
                self._pending_memo.update(memo)
            full = len(self._logged) >= LOG_GROUP or self._logged_bytes >= LOG_BYTES
        if full:
            self._apply_log()

    def _rows(self, commit: Commit) -> _Rows:
        """A commit in the form it is logged and written in."""
        result = None if commit.result is None else (commit.result[0], commit.result[1].pack())
        return (result,
                [(digest, _INLINE + data if data is not None else _EXTERNAL)
                 for digest, data in commit.blobs],
                [(self._prefix + path.encode(), state.pack()) for path, state in commit.memo],
                [(key, when.to_bytes(8, "big")) for key, when in commit.used],
                [(key, self._prefix + label.encode(), packed)
                 for key, label, packed in commit.records])

    def _apply(self, txn: lmdb.Transaction, rows: _Rows) -> None:
        """Write one action's rows. Writing them twice changes nothing (a log replayed after its
        rows were applied): a blob row is kept, and `latest` never moves to an older record."""
        result, blobs, memo, used, records = rows
        for key, when in used:
            txn.put(key, when, db=self._usage)
        for record_key, label, packed in records:
            txn.put(record_key, packed, db=self._records)
            newest = cast("bytes | None", txn.get(label, db=self._latest))  # bytes: no `buffers`
            if newest is None or newest <= record_key:
                txn.put(label, record_key, db=self._latest)
        for digest, row in blobs:
            txn.put(digest, row, db=self._blobs, overwrite=False)
        for key, state in memo:
            txn.put(key, state, db=self._memo)
        if result is not None:
            key, packed = result
            if txn.get(key, db=self._results) != packed:
                txn.put(key, packed, db=self._results)

    def add_results(self, results: Iterable[tuple[Digest, bytes]],
                    blobs: Iterable[tuple[Digest, bytes | None]], when: int) -> int:
        """Add many (key, packed result) rows and their blobs in ONE transaction, keeping any result
        the store already has for a key (cache import); returns how many results were new."""
        added = 0
        with self._writing() as txn:
            for digest, data in blobs:
                if txn.get(digest, db=self._blobs) is None:
                    txn.put(digest, _INLINE + data if data is not None else _EXTERNAL,
                            db=self._blobs)
            for key, packed in results:
                if txn.get(key, db=self._results) is None:
                    txn.put(key, packed, db=self._results)
                    txn.put(key, when.to_bytes(8, "big"), db=self._usage)
                    added += 1
        return added

    # -- generations (§8) ------------------------------------------------------------------

    def add_generation(self, created: str, patterns: tuple[str, ...], manifest: bytes, files: int,
                       size: int, workspace: str = "") -> Generation:
        """Record a generation and its manifest blob in one transaction; ids count up from 1."""
        digest = hash_bytes(manifest)
        with self._writing() as txn:
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
        """Delete rows in one transaction, then the cas/ files of deleted blobs; returns bytes
        freed.

        Files go only after the transaction commits: a crash in between leaves orphan files,
        which fsck reports and gc or `fsck --repair` removes, never a row without its file.
        """
        # first: saved up-to-date states must not trust what goes (epoch.py)
        advance_epoch(self.path)
        freed = 0
        external: list[Digest] = []
        with self._writing() as txn:
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
                txn.delete(self._prefix + path.encode(), db=self._memo)
            for number in generations:
                txn.delete(number.to_bytes(8, "big"), db=self._generations)
        if external:
            self.flush()  # the rows' removal must be on disk before their files go (machine crash)
        for digest in external:
            file = self.external_path(digest)
            try:
                info = file.stat()
                # a blob shared with posbuild-out/ (a hard link) frees nothing while that stays
                freed += info.st_size if info.st_nlink == 1 else 0
                file.unlink()
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

    # -- execution records (§12) and their chain (recordchain.py) ----------------------------

    def begin_build(self, info: BuildRow, blobs: Iterable[tuple[Digest, bytes]] = ()) -> int:
        """Number a new build and write its row (and the payloads it refers to) in one transaction.

        A row with status "running" is concluded later (`update_build`); meanwhile this process
        holds the lock of `running/NUMBER`, where `start_log` notes each action it starts. Any
        other row is over already (a no-op, a refused build) and is sealed at once. Running builds
        whose process died are recorded as interrupted first. The payloads (graph and up-to-date
        state, see journal.py) are kept apart from the artifact blobs, so recording a build never
        changes the CAS that results point into (§11).
        """
        with self._writing() as txn:
            chain = self._chain(txn)
            if chain["running"]:
                self._settle_dead(txn, chain)
            last = next(self._scan(txn, self._builds, 8, reverse=True), (0,))[0]
            number = max(last, chain["head"][0] if chain["head"] else 0) + 1
            self._put_payloads(txn, blobs)
            row = info.with_fields(number=number)
            if info.status == "running":
                self._hold(number)
                txn.put(self.build_key(number), row.with_fields(pid=os.getpid()).pack(),
                        db=self._builds)
                chain["running"].append(number)
            else:
                self._seal(txn, chain, row)
            txn.put(self._chain_key, msgpack.packb(chain, use_bin_type=True), db=self._meta)
        return number

    def start_log(self, number: int) -> Callable[[str], None]:
        """A function noting that running build `number` started an action (one small append each,
        no fsync: a killed process's writes survive it, and the next command reads them back)."""
        fd = self._held[number]

        def started(label: str) -> None:
            os.write(fd, f"{label}\t{time.time():.6f}\n".encode())
        return started

    def update_build(self, number: int, changes: dict[str, object],
                     blobs: Iterable[tuple[Digest, bytes]] = ()) -> None:
        """Conclude running build `number` with its final fields (status "finished" unless given),
        and seal it into the chain, in one transaction; with payloads a later build's row will
        refer to (the up-to-date state this one saved, which the next build starts from)."""
        with self._writing() as txn:
            self._put_payloads(txn, blobs)
            chain = self._chain(txn)
            info = BuildRow.unpack(cast(bytes, txn.get(self.build_key(number), db=self._builds)))
            self._seal(txn, chain,
                       info.with_fields(**{**changes, "status": changes.get("status", "finished")}))
            txn.put(self._chain_key, msgpack.packb(chain, use_bin_type=True), db=self._meta)
        self._release(number)

    def _put_payloads(self, txn: lmdb.Transaction, blobs: Iterable[tuple[Digest, bytes]]) -> None:
        """Store build payloads (journal.py) that are not stored yet, in chunks."""
        with txn.cursor(db=self._journal_blobs) as cursor:
            for digest, data in blobs:
                if _has_payload(cursor, digest):
                    continue
                for index, start in enumerate(range(0, max(len(data), 1), PAYLOAD_CHUNK)):
                    txn.put(digest + index.to_bytes(4, "big"),
                            data[start:start + PAYLOAD_CHUNK], db=self._journal_blobs)

    def settle_interrupted(self) -> list[int]:
        """Record as interrupted every running build whose process is gone; returns their numbers.
        A read-only look (`chain_meta`) comes first, so that with none this writes nothing."""
        if not self.chain_meta()["running"]:
            return []
        with self._writing() as txn:
            chain = self._chain(txn)
            settled = self._settle_dead(txn, chain)
            if settled:
                txn.put(self._chain_key, msgpack.packb(chain, use_bin_type=True), db=self._meta)
        return settled

    def _chain(self, txn: lmdb.Transaction) -> dict[str, Any]:
        data = txn.get(self._chain_key, db=self._meta)
        return msgpack.unpackb(data) if data else {"head": None, "running": []}

    def chain_meta(self) -> dict[str, Any]:
        """The chain's head ([number, seal] of the last sealed build, None before the first) and
        the numbers of the builds still running."""
        with self._env.begin() as txn:
            return self._chain(txn)

    def _seal(self, txn: lmdb.Transaction, chain: dict[str, Any], row: BuildRow) -> None:
        """Write a concluded build's row with its seal, after the chain's head (recordchain.py)."""
        fields = msgpack.unpackb(row.pack())  # the form fsck reads it back in
        number = row.number
        previous, previous_seal = chain["head"] or (0, GENESIS)
        digest = seal(previous_seal, fields, records_digest(self._raw_records(txn, number)))
        txn.put(self.build_key(number), BuildRow.of({**fields, CHAIN: [previous, digest]}).pack(),
                db=self._builds)
        chain["head"] = [number, digest]
        if number in chain["running"]:
            chain["running"].remove(number)

    def _settle_dead(self, txn: lmdb.Transaction, chain: dict[str, Any]) -> list[int]:
        """Seal each running build whose process died (or, for our own, never concluded) as
        interrupted, naming the actions it started and never recorded."""
        settled = []
        for number in list(chain["running"]):
            if number in self._held or self.build_running(number) \
                    or self._row_pid(txn, number) in self._live_writers:
                # a process that let go of its start log but not yet of its write-ahead log is still
                # exiting
                continue
            self._interrupt(txn, chain, number)
            settled.append(number)
        return settled

    def _row_pid(self, txn: lmdb.Transaction, number: int) -> int | None:
        data = cast("bytes | None", txn.get(self.build_key(number), db=self._builds))
        try:
            return BuildRow.unpack(data).pid if data is not None else None
        except (ValueError, TypeError):  # a tampered row: fsck reports it
            return None

    def _interrupt(self, txn: lmdb.Transaction, chain: dict[str, Any], number: int) -> None:
        data = cast("bytes | None", txn.get(self.build_key(number), db=self._builds))
        try:
            row = _unpack_row(number, data) if data is not None else None
            recorded = {_unpack_record(number, value).label
                        for _, value in self._raw_records(txn, number)}
        except ChecksumMismatch:
            row = None
        # its row or records were tampered with: fsck reports it; stop waiting for it
        if row is None:
            chain["running"].remove(number)
            return
        in_flight = {label: started for label, started in self._started(number)
                     if label not in recorded}
        self._seal(txn, chain, row.with_fields(status="interrupted", noticed=utc(time.time()),
                                               in_flight=[[label, started]
                                                          for label, started in in_flight.items()]))
        self._running_file(number).unlink(missing_ok=True)

    def _started(self, number: int) -> list[tuple[str, str]]:
        """(label, start time) of every action the start log of `number` names, in start order."""
        try:
            text = self._running_file(number).read_text()
        except FileNotFoundError:
            return []
        started = []
        for line in text.splitlines():
            label, _, when = line.partition("\t")
            try:
                started.append((label, utc(float(when))))
            except ValueError:  # not a line this module wrote
                continue
        return started

    def build_running(self, number: int) -> bool:
        """Whether build `number`'s process still holds the lock of its start log."""
        return lock_held(self._running_file(number))

    def _running_file(self, number: int) -> Path:
        return self._running / str(number)

    def _hold(self, number: int) -> None:
        """Create and lock build `number`'s start log; the lock lives as long as this process
        does."""
        path = self._running_file(number)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                     0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._held[number] = fd

    def _release(self, number: int) -> None:
        fd = self._held.pop(number, None)
        if fd is not None:
            self._running_file(number).unlink(missing_ok=True)
            os.close(fd)

    def build_key(self, number: int) -> bytes:
        """The key of build `number`'s row; its records are keyed by it + a 4-byte sequence."""
        return self._prefix + number.to_bytes(8, "big")

    def _scan(self, txn: lmdb.Transaction, db: Any, size: int, start: int = 0,
              reverse: bool = False) -> Iterator[tuple[int, bytes, bytes]]:
        """(number, key, value) of this workspace's rows of `db`, keyed prefix + 8-byte number +
        `size - 8` more bytes, from build `start` on, in key order (or reversed)."""
        low, high = self.build_key(start), self._prefix + b"\x01"  # numbers stay below 2**56
        with txn.cursor(db=db) as cursor:
            if reverse:
                found = cursor.prev() if cursor.set_range(high) else cursor.last()
                rows = cursor.iterprev() if found else iter(())
            else:
                rows = cursor.iternext() if cursor.set_range(low) else iter(())
            for key, value in cast("Iterator[tuple[bytes, bytes]]", rows):  # bytes: no `buffers`
                if not low <= key < high:
                    break
                if len(key) == len(self._prefix) + size:
                    yield int.from_bytes(key[len(self._prefix):len(self._prefix) + 8],
                                         "big"), key, value

    def _raw_records(self, txn: lmdb.Transaction, number: int) -> list[tuple[bytes, bytes]]:
        found = []
        for found_number, key, value in self._scan(txn, self._records, 12, start=number):
            if found_number != number:
                break
            found.append((key, value))
        return found

    def raw_builds(self) -> list[tuple[int, bytes]]:
        """Every build row of this workspace as stored, for fsck's check of its chain."""
        with self._env.begin() as txn:
            return [(number, value) for number, _, value in self._scan(txn, self._builds, 8)]

    def raw_records(self) -> Iterator[tuple[int, bytes, bytes]]:
        """(build number, key, value) of every record row of this workspace as stored, in key
        order (so each build's rows come together)."""
        with self._env.begin() as txn:
            yield from self._scan(txn, self._records, 12)

    def builds(self) -> list[BuildRow]:
        """Every build row, oldest first; an unreadable one is ORCH-03."""
        return [_unpack_row(number, value) for number, value in self.raw_builds()]

    def records_of(self, number: int) -> list[ExecutionRecord]:
        """The explicit records of one build, in the order they were written."""
        with self._env.begin() as txn:
            return [_unpack_record(number, value) for _, value in self._raw_records(txn, number)]

    def latest_record(self, label: str) -> ExecutionRecord | None:
        """The newest explicit record of an action (its last execution or store lookup); None also
        when that record cannot be read (fsck reports it; builds only take hints from it)."""
        with self._env.begin() as txn:
            key = txn.get(self._prefix + label.encode(), db=self._latest)
            value = txn.get(key, db=self._records) if key else None
        try:
            return ExecutionRecord.unpack(value) if value else None
        except (ValueError, TypeError, KeyError, msgpack.UnpackException):
            return None  # tampered with: fsck reports it; a build goes on without the hint

    def records_of_label(self, label: str) -> list[ExecutionRecord]:
        """Every explicit record of one action, oldest first (a scan: for `explain`, not hot
        paths)."""
        with self._env.begin() as txn:
            return [r for r in (_unpack_record(n, v)
                                for n, _, v in self._scan(txn, self._records, 12))
                    if r.label == label]

    def journal_blob(self, digest: Digest) -> bytes | None:
        """A payload that build rows refer to (graph or up-to-date state), verified; None if
        absent."""
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


def _adopt(source: Path, folder: Path) -> str | None:
    """Link `source` (a path, or `/proc/self/fd/N` of an open file) into `folder` as a read-only
    temp file, synced; None, with nothing made, where it has other names (a link its action
    made: they could change the blob) or lives on another file system (a memory sandbox)."""
    try:
        if os.stat(source).st_nlink != 1:
            return None
        temp = f"{folder}/.tmp-{os.getpid()}-{threading.get_ident()}"
        text = str(source)
        if text.startswith("/proc/"):
            # linkat(AT_SYMLINK_FOLLOW) links the file a descriptor path names; os.link calls
            # linkat only when given a folder descriptor
            proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.link(text[len("/proc/"):], temp, src_dir_fd=proc, follow_symlinks=True)
            finally:
                os.close(proc)
        else:
            os.link(text, temp)
    except OSError:  # EXDEV, EPERM (no link(2) here, or protected hard links): copy instead
        return None
    try:
        fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o444)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        os.unlink(temp)
        raise
    return temp


_FICLONE = 0x40049409  # ioctl: share the source's blocks copy-on-write (btrfs, XFS ...)


def _copy_file(src: int, dst: int) -> None:
    """Copy a whole file between descriptors the cheapest way the file systems allow: a reflink
    (no data written), else `copy_file_range` (which may share extents, or copy inside the
    kernel), else `sendfile`."""
    try:
        fcntl.ioctl(dst, _FICLONE, src)
        return
    except OSError:
        pass
    size = os.fstat(src).st_size
    offset = 0
    copy_range = getattr(os, "copy_file_range", None)
    while offset < size:
        try:
            if copy_range is None:
                raise OSError
            sent = copy_range(src, dst, size - offset, offset, offset)
        except OSError:
            copy_range = None  # EXDEV before Linux 5.3, EINVAL, ENOSYS: sendfile does it
            os.lseek(dst, offset, os.SEEK_SET)
            sent = os.sendfile(dst, src, offset, size - offset)
        if sent == 0:
            break
        offset += sent


class StoreUnavailable(PosbuildError):
    """The store cannot be opened or written here: not a folder, read-only, the disk full, too
    little address space to map it. Nothing is damaged; the command stops before it changes
    anything it could not finish."""

    exit_code = 1


def file_damage(db: Path) -> str | None:
    """Why the LMDB file in folder `db` cannot be mapped safely, or None (also when it is absent).

    LMDB trusts its file: a page it reads past the end of a truncated file kills the process
    with SIGBUS. The newest meta page names the root page of the main and free databases, and the
    main root (a leaf, with posbuild's ten databases) the root of each named one; the tree grows
    from its roots, so a file that ends before one of them is found here, before mapping. The
    meta page's last page number is no measure: LMDB counts pages it allocated and freed again
    within one transaction, and never writes them.
    """
    try:
        with open(db / "data.mdb", "rb") as handle:
            head = handle.read(2 * _META_PAGE_MAX)
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                return None  # created, never committed: LMDB writes its meta pages on first open
            metas = []
            # the second meta page is one page in
            for offset in sorted({0, 4096, _meta_page_size(head)}):
                if offset < _META_PAGE_MAX and len(head) >= offset + _META_END:
                    magic, version = struct.unpack_from("<II", head, offset + 16)
                    page_size, = struct.unpack_from("<I", head, offset + 40)
                    free_root, = struct.unpack_from("<Q", head, offset + 80)
                    main_root, = struct.unpack_from("<Q", head, offset + 128)
                    txn_id, = struct.unpack_from("<Q", head, offset + 144)
                    if magic == _LMDB_MAGIC and version == 1 and page_size:
                        metas.append((txn_id, page_size, free_root, main_root))
            if not metas:
                return f"{db / 'data.mdb'} is not an LMDB file ({size} bytes, no valid meta page)"
            _, page_size, free_root, main_root = max(metas)
            roots = [root for root in (free_root, main_root) if root != _NO_PAGE]
            if main_root != _NO_PAGE and (main_root + 1) * page_size <= size:
                handle.seek(main_root * page_size)
                roots += _named_roots(handle.read(page_size))
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return f"{db / 'data.mdb'} is a folder, not LMDB's file"
    except OSError as error:
        raise StoreUnavailable(
            f"cannot read the store file {db / 'data.mdb'}: {error.strerror}") from None
    needed = (max(roots, default=1) + 1) * page_size
    if size < needed:
        return f"{db / 'data.mdb'} is truncated ({size} bytes; its last commit uses {needed})"
    return None


def _named_roots(page: bytes) -> list[int]:
    """The root pages of the named databases a leaf page of the main database lists (none when
    the page is not such a leaf: the check then rests on the two roots the meta page names)."""
    if len(page) < 16 or not struct.unpack_from("<H", page, 10)[0] & 0x02:  # P_LEAF
        return []
    lower, = struct.unpack_from("<H", page, 12)
    roots = []
    for index in range(max(0, (lower - 16) // 2)):
        pointer, = struct.unpack_from("<H", page, 16 + 2 * index)
        if pointer + 8 > len(page):
            return []
        flags, key_size = struct.unpack_from("<HH", page, pointer + 4)
        data = pointer + 8 + key_size
        if flags & 0x02 and data + 48 <= len(page):  # F_SUBDATA: the value is a database record
            root, = struct.unpack_from("<Q", page, data + 40)
            if root != _NO_PAGE:
                roots.append(root)
    return roots


_LMDB_MAGIC = 0xBEEFC0DE
_NO_PAGE = 0xFFFFFFFFFFFFFFFF  # LMDB's P_INVALID: the root of an empty database
# page header (16) + magic, version, address, map size, 2 db records, last page, txn id
_META_END = 152
_META_PAGE_MAX = 65536


def _meta_page_size(head: bytes) -> int:
    """The page size the first meta page records (the second meta page starts there)."""
    return struct.unpack_from("<I", head, 40)[0] if len(head) >= _META_END else 0


def open_environment(db: Path, map_size: int = MAP_SIZE,
                     readonly: bool = False) -> lmdb.Environment:
    """Open the LMDB environment; with too little address space for the full map (`ulimit -v`),
    a smaller one down to what the file already holds, as a store of that size still works."""
    try:
        floor = max((db / "data.mdb").stat().st_size * 2, 256 << 20)
    except OSError:
        floor = 256 << 20
    while True:
        try:
            return lmdb.open(str(db), map_size=map_size, max_dbs=16, sync=False, metasync=False,
                             readonly=readonly, lock=not readonly)
        except lmdb.MemoryError:
            if map_size <= floor:
                raise StoreUnavailable(
                    f"cannot map the store {db.parent}: not enough address space (a `ulimit -v` "
                    f"limit?); it needs at least {floor >> 20} MiB") from None
            map_size = max(map_size // 4, floor)
        except lmdb.Error as error:
            raise store_failure(db.parent, error) from None


def store_failure(path: Path | None, error: Exception) -> PosbuildError:
    """The one-line error for an LMDB failure: damage (ORCH-03, fsck repairs it) or a store this
    process cannot use (read-only, full disk); `path` None: the store of the command."""
    import errno
    import shutil

    text = str(error).replace(f"{path / 'db'}: ", "") if path is not None else str(error)
    where = path or Path.cwd()
    shown = path or "of this workspace"
    if isinstance(error, (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError,
                          lmdb.VersionMismatchError, lmdb.BadRslotError)):
        return ChecksumMismatch(
            f"the store {shown} is damaged ({text}); run `posbuild fsck --repair`")
    if isinstance(error, lmdb.MapFullError):
        return StoreUnavailable(
            f"the store {shown} is full: it reached its map size; run `posbuild gc`")
    try:
        full = shutil.disk_usage(where).free < 1 << 20
    except OSError:
        full = False
    if full:
        text = f"{text} ({os.strerror(errno.ENOSPC)})"
    return StoreUnavailable(f"cannot use the store {shown}: {text}")


def _unpack_row(number: int, value: bytes) -> BuildRow:
    try:
        return BuildRow.unpack(value)
    except (ValueError, TypeError, msgpack.UnpackException):
        pass
    raise ChecksumMismatch(f"the row of build {number} cannot be read: it was changed after it was "
                           f"recorded; run `posbuild fsck`")


def _unpack_record(number: int, value: bytes) -> ExecutionRecord:
    try:
        return ExecutionRecord.unpack(value)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException):
        raise ChecksumMismatch(f"a record of build {number} cannot be read: it was changed after "
                               f"it was recorded; run `posbuild fsck`") from None


if TYPE_CHECKING:
    from posbuild.store.protocols import (ActionCache, Blobs, BuildLog, Commits, Generations,
                                          StatMemo, Sweep)

    def _implements_every_facet(store: Store) -> tuple[Blobs, ActionCache, StatMemo, Commits,
                                                       BuildLog, Generations, Sweep]:
        """Never called: mypy fails here when Store stops satisfying a facet."""
        return store, store, store, store, store, store, store

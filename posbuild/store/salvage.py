"""Layer 2: find a damaged LMDB store, and rebuild a fresh one from every row still readable.

LMDB keeps no checksums and trusts its pages: a garbled page can make a read fail with
MDB_CORRUPTED, or follow a garbage pointer and kill the process with SIGBUS or SIGSEGV. No
Python code can catch that, so every walk of a suspect store happens in a forked child, and the
parent reads the outcome from a pipe and the child's exit status.

`damage` reads every row of every database (what fsck needs: a garbled page in a database no
check reads would otherwise pass, then crash every build). `salvage` moves the damaged folder
aside, kept as evidence, and copies each database into a new one in its own child: a crash in
one database loses the rows after the bad page in it, not the others.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lmdb

from posbuild.store.lmdbstore import DATABASES, RECORD_DATABASES, file_damage, open_environment

_BATCH = 2000  # rows per write transaction while copying: a crash keeps what was committed


@dataclass(frozen=True, slots=True)
class Salvaged:
    """What `salvage` kept: rows copied, databases not read whole, and where the damaged store
    went."""

    rows: int
    incomplete: tuple[str, ...]
    moved_to: Path


def damage(db: Path) -> str | None:
    """Why the LMDB environment in folder `db` cannot be trusted, or None once every row of every
    database was read back without an error or a crash."""
    found = file_damage(db)
    if found is not None:
        return found
    return _in_child(lambda: _read_all(db))


def _read_all(db: Path) -> str:
    env = open_environment(db, readonly=True)
    try:
        with env.begin() as txn:
            for _ in txn.cursor():  # the main database: the named databases' own records
                pass
            for name in DATABASES:
                try:
                    handle = env.open_db(name, txn=txn, create=False)
                except lmdb.NotFoundError:
                    continue
                for key, value in txn.cursor(db=handle):
                    len(key), len(value)
    finally:
        env.close()
    return ""


def salvage(db: Path) -> Salvaged:
    """Move the store folder `db` aside and build a fresh one at `db` from every row that can
    still be read; database by database, each in a child process of its own."""
    moved = db.with_name(f"{db.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    os.rename(db, moved)
    open_environment(db).close()
    rows, incomplete = 0, []
    for name in DATABASES:
        copied = _in_child(lambda: _copy(moved, db, name)) or ""  # never empty: it says a count
        count, _, why = copied.partition(" ")
        if not count.isdigit():  # killed before it reported: it crashed; count what was committed
            count, why = str(_count(db, name)), copied
        rows += int(count)
        if why:
            incomplete.append(name.decode())
    return Salvaged(rows, tuple(incomplete), moved)


def _copy(source: Path, target: Path, name: bytes) -> str:
    """Copy one database row by row; "COUNT" when whole, "COUNT why" when a read failed."""
    old = open_environment(source, readonly=True)
    new = open_environment(target)
    copied = 0
    try:
        with old.begin() as reading:
            try:
                handle = old.open_db(name, txn=reading, create=False)
            except lmdb.NotFoundError:
                return "0"
            into = new.open_db(name)
            batch: list[tuple[bytes, bytes]] = []
            try:
                for key, value in reading.cursor(db=handle):
                    batch.append((key, value))
                    if len(batch) >= _BATCH:
                        copied += _put(new, into, batch)
            except lmdb.Error as error:
                copied += _put(new, into, batch)
                return f"{copied} {error}"
            copied += _put(new, into, batch)
    except lmdb.Error as error:
        return f"{copied} {error}"
    finally:
        new.close()
        old.close()
    return str(copied)


def _put(env: lmdb.Environment, db: lmdb._Database, rows: list[tuple[bytes, bytes]]) -> int:
    with env.begin(write=True) as txn:
        for key, value in rows:
            txn.put(key, value, db=db)
    count = len(rows)
    rows.clear()
    return count


def _count(db: Path, name: bytes) -> int:
    env = open_environment(db)
    try:
        with env.begin() as txn:
            try:
                return txn.stat(env.open_db(name, txn=txn, create=False))["entries"]
            except lmdb.NotFoundError:
                return 0  # the child died before it created the database
    finally:
        env.close()


def _in_child(work: Callable[[], str]) -> str | None:
    """Run `work` in a forked child; its text ("" or None: all went well), or why it failed."""
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's exit handlers
        code = 0
        try:
            os.close(reading)
            text = work()
        except BaseException as error:  # noqa: BLE001 - any failure is the finding
            text, code = f"{type(error).__name__}: {error}", 1
        try:
            os.write(writing, text.encode(errors="replace"))
        finally:
            os._exit(code)
    os.close(writing)
    chunks = []
    while chunk := os.read(reading, 65536):
        chunks.append(chunk)
    os.close(reading)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode()
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return f"reading it killed a process with {name} (a damaged page)" + (f" after {text}"
                                                                              if text else "")
    return text or None


def drop_records(db: Path) -> None:
    """Empty the execution records of a salvaged store: with rows of their hash chain lost, every
    later fsck would report it, and the damaged store kept aside holds what could be read."""
    env = open_environment(db)
    try:
        with env.begin(write=True) as txn:
            for name in RECORD_DATABASES:
                txn.drop(env.open_db(name, txn=txn), delete=False)
            txn.delete(b"records", db=env.open_db(b"meta", txn=txn))
    finally:
        env.close()

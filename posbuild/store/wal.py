"""Layer 0: a write-ahead log of store commits — one append-only file per open store, per process.

A build executes thousands of cheap actions, and each one's result must be safe before its outputs
appear in `posbuild-out/` (a kill at any instant loses no accepted result). One LMDB transaction per
action copies a path of pages in five B-trees; appending the same rows to a file is one `write()`.
So the store appends each commit here first and applies the log to LMDB in groups (store.py).

The writer holds an exclusive flock on its log for as long as it lives (liveness.py). A log whose
lock anyone can take belongs to a dead process: the next command that opens the store replays its
complete frames into LMDB and deletes it. Nothing is fsynced, as in the store: a killed process's
writes are in the page cache already, and a machine crash loses at most what the last build made.

A frame is its length, the CRC-32 of its payload and the log's round (little-endian u32 each)
followed by the payload. Once its frames are applied, the log starts a new round at offset 0 and
writes over the old frames instead of truncating the file (freeing the cached pages of a
truncated file cost more than the appends it follows): an empty frame of the new round marks the
start, and a frame of another round, a frame cut short by a kill, or one that fails its checksum
ends the log.
"""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from posbuild.host.liveness import lock_held

_HEADER = struct.Struct("<III")
SUFFIX = ".wal"


class WriteAheadLog:
    """The log of one open store in this process: append frames, empty it once they are applied."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(exist_ok=True)
        self.path = folder / f"{os.getpid()}-{id(self):x}{SUFFIX}"
        # locked under another name first: a log that appeared unlocked would look dead to another
        # command, which would replay and delete it under us
        making = self.path.with_name(self.path.name + ".new")
        self._fd = os.open(making, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.rename(making, self.path)
        self._round = 0
        self._offset = 0

    def append(self, payload: bytes) -> None:
        """Add one frame: a single `write()`, so a kill leaves all of it or a torn tail."""
        frame = _HEADER.pack(len(payload), zlib.crc32(payload), self._round) + payload
        view = memoryview(frame)
        while view:
            written = os.pwrite(self._fd, view, self._offset)
            self._offset += written
            view = view[written:]

    def clear(self) -> None:
        """Forget every frame: their rows are committed to LMDB now."""
        self._round = (self._round + 1) & 0xFFFFFFFF
        os.pwrite(self._fd, _HEADER.pack(0, 0, self._round), 0)
        self._offset = 0

    def close(self, delete: bool = True) -> None:
        """Drop the log's lock, and delete it when every frame is applied."""
        if delete:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)


@dataclass(frozen=True, slots=True)
class DeadLog:
    """A log whose writer died; `fd` holds its lock until the caller has applied and deleted it."""

    path: Path
    fd: int
    payloads: tuple[bytes, ...]

    def remove(self) -> None:
        """Delete the log: its rows are committed."""
        self.path.unlink(missing_ok=True)
        os.close(self.fd)

    def release(self) -> None:
        """Let go of the log without applying it."""
        os.close(self.fd)


def has_dead_logs(folder: Path) -> bool:
    """Whether a dead process left a log in `folder` (a look that takes no lock and writes
    nothing)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return False
    return any(name.endswith(SUFFIX) and not lock_held(folder / name) for name in names)


def dead_logs(folder: Path) -> tuple[list[DeadLog], set[int]]:
    """The logs in `folder` whose writers are gone, locked for the caller, and the pids whose logs
    are still held (their processes live; the store does not conclude their builds yet)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return [], set()
    dead: list[DeadLog] = []
    live: set[int] = set()
    for name in sorted(names):
        path = folder / name
        if name.endswith(SUFFIX + ".new") and not lock_held(path):
            path.unlink(missing_ok=True)  # its maker died before naming it
        if not name.endswith(SUFFIX):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # another command replayed it just now
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            live.add(_pid_of(name))
            continue
        if os.fstat(fd).st_nlink == 0:  # replayed and deleted while we waited for nothing
            os.close(fd)
            continue
        dead.append(DeadLog(path, fd, tuple(_frames(fd))))
    return dead, live


def _pid_of(name: str) -> int:
    head = name.partition("-")[0]
    return int(head) if head.isdigit() else -1


def _frames(fd: int) -> Iterator[bytes]:
    """The complete, intact frames of a log, in order, up to the first torn or damaged one."""
    with os.fdopen(os.dup(fd), "rb") as handle:
        data = handle.read()
    offset = 0
    first = None
    while offset + _HEADER.size <= len(data):
        length, crc, round_ = _HEADER.unpack_from(data, offset)
        payload = data[offset + _HEADER.size:offset + _HEADER.size + length]
        if length == 0 or len(payload) != length or zlib.crc32(payload) != crc \
                or (first is not None and round_ != first):
            return
        first = round_
        yield payload
        offset += _HEADER.size + length

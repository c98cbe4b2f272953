"""Layer 0: content digests of workspace files, each file hashed once per stat signature.

A no-op build must stat files but read none (DESIGN §5). FileStates answers "what is this file's
digest?" from the stat memo in the store when the file's (mtime_ns, size, inode, ctime_ns) is the
one the digest was computed for, and hashes the file only otherwise.

Racy files: file-system timestamps are coarse (a few milliseconds), so a file written again
within the same tick as the write before it keeps its mtime and ctime. A digest computed less
than `RACY_WINDOW_NS` after a file's ctime is therefore used for this build but not memoised, as
git does for its index; the next build hashes that one file again. The ctime, not the mtime:
`cp -p`, tar and the Nix store put an old mtime back on bytes written just now.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from posbuild.core.digest import hash_file
from posbuild.core.records import UNSETTLED, FileState, Signature, signature

if TYPE_CHECKING:
    from posbuild.store.protocols import StatMemo

RACY_WINDOW_NS = 100_000_000


class FileStates:
    """Digests of files under `root`, by workspace-relative path, backed by the store's memo
    (read here; the build commits the rows `take_pending` hands over)."""

    def __init__(self, root: Path, store: StatMemo,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._root = root
        self._store = store
        self._clock_ns = clock_ns
        self._seen: dict[str, FileState] = {}
        self._pending: dict[str, FileState] = {}
        self._racy: set[str] = set()
        self.hashed = 0

    def state(self, path: str) -> FileState:
        """Signature and digest of a file now; raises FileNotFoundError if it is gone."""
        known = self._seen.get(path)
        if known is not None:
            return known
        sig = signature(os.stat(os.path.join(self._root, path)))
        memo = self._store.get_memo(path)
        if memo is None or memo.signature != sig:
            memo = FileState(sig, hash_file(os.path.join(self._root, path)))
            self.hashed += 1
            if self._clock_ns() - sig[3] > RACY_WINDOW_NS:
                self._pending[path] = memo
            else:
                self._racy.add(path)
        self._seen[path] = memo
        return memo

    def seen(self, path: str) -> FileState | None:
        """The state of a file already looked at in this build, or None (no system call)."""
        return self._seen.get(path)

    def recorded(self, path: str) -> FileState | None:
        """The state to record of a file already looked at (None if it was not).

        One too fresh to be trusted later keeps its digest under a signature no stat matches
        (UNSETTLED): the next build looks at that file again, and only at that file, where
        leaving it out would make it check every file of every action.
        """
        seen = self._seen.get(path)
        if seen is None or path not in self._racy:
            return seen
        return FileState(UNSETTLED, seen.digest)

    def unchanged(self, path: str, expected: Signature) -> bool:
        """Whether a file still has the signature it had when it was first looked at."""
        try:
            return signature(os.stat(os.path.join(self._root, path))) == expected
        except FileNotFoundError:
            return False

    def settle_racy(self) -> None:
        """Memoise files that were too fresh when hashed, if they have aged and still hash the same.

        Called at the end of a build: once a file's mtime lies outside the racy window, a second
        hash that matches proves the first one was taken of the bytes the file still holds.
        """
        for path in sorted(self._racy):
            seen = self._seen[path]
            if self._clock_ns() - seen.signature[3] <= RACY_WINDOW_NS \
                    or not self.unchanged(path, seen.signature):
                continue
            try:
                same = hash_file(os.path.join(self._root, path)) == seen.digest
            except FileNotFoundError:
                continue
            if same and self.unchanged(path, seen.signature):
                self._racy.discard(path)
                self._pending[path] = seen

    def take_pending(self) -> list[tuple[str, FileState]]:
        """Memo rows learned since the last call, for the store to commit."""
        rows = sorted(self._pending.items())
        self._pending.clear()
        return rows

"""Layer 0: the store's epoch — one small file that changes whenever rows are removed from the
store, and that a new store gets when it is created.

The up-to-date state (uptodate.py) settles actions by `stat()` alone, trusting that the results it
recorded are still in the store. Anything that removes results or blobs (`posbuild gc`,
`posbuild fsck --repair`) first gives the store a new epoch; a build whose saved state names
another epoch checks its recorded results against the store once before trusting any of them.
A store created anew (after `posbuild clean --all` in a workspace sharing it, or a cache folder
deleted by hand) gets an epoch of its own, and a deleted one reads as none, so a state saved
against the old store is checked too, instead of settling actions whose results are gone.
The epoch lives beside the store, not in a workspace, because a store may be shared by several
workspaces (`[cache] dir`). Reading it is one small read on the no-op path, and no LMDB import.
"""

from __future__ import annotations

import os
from pathlib import Path

from posbuild.host.atomic import write_atomically
from posbuild.core.layout import STORE_DB

EPOCH_FILE = "epoch"
MISSING = b"missing"  # the epoch of a store that does not exist: no saved state may trust it


def read_epoch(store_dir: Path) -> bytes:
    """The store's current epoch; empty while nothing was ever removed from a store made before
    stores got one at birth, MISSING where there is no store (another `[cache] dir`, a deleted
    one)."""
    try:
        return (store_dir / EPOCH_FILE).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return b"" if os.path.exists(store_dir / STORE_DB) else MISSING


def advance_epoch(store_dir: Path) -> None:
    """Give the store a new epoch, before anything is removed (a crash after it costs one check)."""
    write_atomically(store_dir / EPOCH_FILE, os.urandom(16).hex().encode())

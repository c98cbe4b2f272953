"""Layer 0: whether the process that marked a file is still alive, told by the file's flock.

A process that must be told apart from its leftovers (a build's start log, a sandbox owner mark)
holds an exclusive flock on a file of its own for as long as it lives. The kernel drops the lock
when the process dies, however it dies, so a free lock means a dead owner even after its pid was
reused; a pid check could not tell.
"""

from __future__ import annotations

import fcntl
import os


def lock_held(path: str | os.PathLike[str]) -> bool:
    """Whether a live process holds the exclusive flock on `path` (False when it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False

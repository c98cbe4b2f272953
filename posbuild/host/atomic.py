"""Layer 0: write a small file so that a reader, or a crash, sees the old content or the new, never
half.

Used for posbuild's own state files (graph cache, up-to-date state, tree marker). The temp file
sits beside the target, named `.tmp-<pid>-<thread>-<name>` (fsck recognises the prefix as a
leftover of an interrupted write), and is renamed over the target. Standard-library `tempfile`
would do the same, but importing it costs more start-up time than a no-op build should pay.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

TEMP_PREFIX = ".tmp-"


def write_atomically(path: Path, data: bytes) -> os.stat_result:
    """Replace `path` with `data` (creating its folder) by temp file + rename; returns the
    written file's stat, taken before the rename (so that it describes this file, whatever
    replaces it later)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{path.name}")
    try:
        # never through a link at the temp name (a checkout may come with one planted)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            written = os.fstat(handle.fileno())
        os.replace(temp, path)
        return written
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise

"""Layer 0: where an action's sandbox goes — the memory base, or on disk when its data is large.

Sandboxes live on a memory file system (`/dev/shm`) because a sandbox is a dozen file creations
and deletions, ten times cheaper there than on a journalled disk. But a file there is memory: an
action staging a 30 GB BAM, or writing one, fills RAM (and then fails with ENOSPC, or pushes the
machine into swap). So each action's expected bytes — the sizes of its inputs, known before
staging, plus the sizes its outputs had the last time it ran — are weighed against the free space
of the memory base, and an action that would not fit with room to spare runs in a sandbox on disk
(`.posbuild/sandbox`), where its outputs then enter the store by a hard link, not a copy.

Cost: the common small action is decided by one comparison (`LARGE` bytes); only a large one
costs a `statvfs`. The first run of an action that writes much from little input cannot be
foreseen (no earlier sizes): if it fills the memory base, it fails, and its next run goes to disk
only when its outputs were recorded; `[build] sandbox_base` on disk is the way for such a step.
"""

from __future__ import annotations

import os

from posbuild.host.paths import within

# Below this an action is never weighed: a memory base has far more room than that.
LARGE = 64 << 20
# Room kept free in the memory base beyond an action's expected bytes: as much again as half of
# them (temporary files, a sort's spill, logs) and 256 MiB for everything else living there
# (other actions running at the same time, other programs' shared memory).
SPARE = 256 << 20
# Tests only: the free bytes of the memory base as posbuild is to see them (a number of bytes),
# so that a few megabytes can stand for what does not fit.
MEMORY_FREE_VARIABLE = "POSBUILD_TEST_SANDBOX_MEMORY_FREE"


def needs_disk(expected: int, free: int) -> bool:
    """Whether an action expected to move `expected` bytes must run on disk, with `free` bytes
    left in the memory base."""
    return expected + expected // 2 + SPARE > free


def memory_free(base: str) -> int:
    """The bytes a sandbox under `base` may still use (what `df` shows as available), or the
    test override."""
    override = os.environ.get(MEMORY_FREE_VARIABLE)
    if override is not None:
        return int(override)
    info = os.statvfs(base if os.path.isdir(base) else os.path.dirname(base))
    return info.f_bavail * info.f_frsize


def weigh_from(base: str) -> int:
    """The expected bytes from which actions are weighed against `base`: `LARGE`, or 0 under the
    test override (so that a test's small files count)."""
    return 0 if os.environ.get(MEMORY_FREE_VARIABLE) is not None else LARGE


def in_memory(path: str) -> bool:
    """Whether `path` lies on a memory file system (tmpfs, ramfs), by the mount table: the
    longest mount point that holds it. Read once per build, and only when an action is large."""
    path = os.path.realpath(path)
    best, kind = "", ""
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                if within(path, point) and len(point) >= len(best):
                    best, kind = point, fields[2]
    except OSError:
        return path.startswith("/dev/shm/")
    return kind in ("tmpfs", "ramfs")

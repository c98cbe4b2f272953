"""Layer 3: owner marks — which sandboxes belong to a live posbuild process, and the sweep of the
rest.

Sandboxes are named `<pid>-<n>` after the process that makes them, which holds
`<base>/<pid>.owner` locked while it does. The kernel drops the lock however the process ends,
so the next build (`Spawner.clear_stale`) and fsck remove only what no live process owns, even
when a pid has been reused meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
from pathlib import Path

from posbuild.exec.stage import remove_tree
from posbuild.host.liveness import lock_held
from posbuild.host.owned import SANDBOX_NAME, SANDBOXES, is_marked

OWNER_SUFFIX = ".owner"


# owner mark → [its locked descriptor, how many spawners share it]
_claims: dict[str, list[int]] = {}
_claims_lock = threading.Lock()


def hold_mark(path: str) -> None:
    """Create and lock `path` for as long as this process builds: its sandboxes' owner mark. The
    kernel drops the lock when the process dies, however it dies, so a free lock means a dead
    owner even if its pid has been reused meanwhile. One mark per process, shared."""
    with _claims_lock:
        claim = _claims.get(path)
        if claim is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            claim = _claims[path] = [fd, 0]
        claim[1] += 1


def release_mark(path: str) -> None:
    """Drop one share of the claim on `path`; the last one removes the mark."""
    with _claims_lock:
        claim = _claims[path]
        claim[1] -= 1
        if claim[1] == 0:
            del _claims[path]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.close(claim[0])


def sweep_dead(base: Path) -> tuple[list[str], list[str]]:
    """Remove what dead posbuild processes left under the sandbox base: every `<pid>-<n>` sandbox
    and `<pid>.owner` mark whose mark no live process holds (or that has none). Only names posbuild
    gives, in a base with posbuild's mark (owned.py): other files there are never touched. Returns
    (the names removed, the names left because their owner lives: a build running now)."""
    if not is_marked(base, SANDBOXES):  # not made by posbuild: nothing in it is a sandbox of its
        return [], []
    names = sorted(name for name in os.listdir(base) if SANDBOX_NAME.fullmatch(name))
    owners = {name[:-len(OWNER_SUFFIX)] for name in names if name.endswith(OWNER_SUFFIX)}
    live = {owner for owner in owners if lock_held(f"{base}/{owner}{OWNER_SUFFIX}")}
    removed: list[str] = []
    kept: list[str] = []
    for name in names:
        owner = name[:-len(OWNER_SUFFIX)] if name.endswith(OWNER_SUFFIX) else name.split("-", 1)[0]
        if owner in live:
            kept.append(name)
            continue
        path = f"{base}/{name}"
        if os.path.isdir(path) and not os.path.islink(path):
            remove_tree(path)
            if os.path.lexists(path):  # read-only folders (an action's own chmod)
                for folder, _, _ in os.walk(path):
                    os.chmod(folder, 0o700)
                shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        removed.append(name)
    return removed, kept

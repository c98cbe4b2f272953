"""Layer 7: source pins — `posbuild lock` writes them, every build checks them before anything runs.

`posbuild.lock` may pin source files by digest (its "sources" section, lockfile.py). A build
checks the pins of the source files its actions read; a pinned file whose bytes changed stops the
build with ORCH-03 before any action runs, naming the file and both digests. Pins of files the
request does not read are ignored.

The check must not cost a no-op build any file reads. Without a `posbuild.lock` it is one
`stat()`. With one, a pinned file whose stat signature (mtime_ns, size, inode, ctime_ns) is the
one the request's up-to-date state recorded (uptodate.py) has the digest recorded with it; only
a file whose signature differs, or that the state does not know, is hashed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from posbuild.analysis import Action
from posbuild.digest import hash_file
from posbuild.errors import ChecksumMismatch
from posbuild.uptodate import BuildState

LOCK_FILE = "posbuild.lock"  # lockfile.LOCK_NAME; repeated so that a build without pins never imports json


def check_pins(root: Path, actions: Sequence[Action], state: BuildState) -> int:
    """Raise ChecksumMismatch if a pinned source that `actions` read no longer has its pinned digest.

    Returns how many pinned files were checked.
    """
    try:
        os.stat(root / LOCK_FILE)
    except FileNotFoundError:
        return 0
    from posbuild.lockfile import read_lock

    pins = read_lock(root).sources
    if not pins:
        return 0
    read = {path for action in actions for path in action.sources}
    checked = sorted(read.intersection(pins))
    # the hot loop of a no-op build with pins: flat, one stat() per pinned file, no reads
    signatures, digests = state.signatures, None
    base = str(root) + "/"
    stat = os.stat
    mismatches: list[tuple[str, str, str]] = []
    for path in checked:
        try:
            st = stat(base + path)
        except FileNotFoundError:
            continue  # a missing source is the build's own error, reported with the action reading it
        digest = None
        if signatures.get(path) == (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns):
            if digests is None:
                digests = state.digests
            digest = digests.get(path)
        if digest is None:
            digest = hash_file(base + path)
        if digest.hex() != pins[path].lower():
            mismatches.append((path, pins[path], digest.hex()))
    if mismatches:
        path, pinned, actual = mismatches[0]
        more = f" (and {len(mismatches) - 1} more pinned file(s) changed)" if len(mismatches) > 1 else ""
        raise ChecksumMismatch(
            f"{path} is pinned in {LOCK_FILE} to {pinned} but hashes to {actual}{more}; "
            f"run `posbuild lock` to accept the change"
        )
    return len(checked)


def source_files(actions: Sequence[Action]) -> list[str]:
    """Every source file (not another action's output) that `actions` read, sorted."""
    return sorted({path for action in actions for path in action.sources})


def lock_sources(root: Path, actions: Sequence[Action]) -> tuple[int, int]:
    """Pin the current digest of every source file `actions` read in `posbuild.lock`.

    Pins of other files are kept, so locking one pattern never unpins another, except pins of
    files that no longer exist, which are dropped. The "environment" section is left as it was.
    Returns (files pinned, stale pins dropped).
    """
    from posbuild.lockfile import Lock, read_lock, write_lock

    lock = read_lock(root)
    sources = {path: pin for path, pin in lock.sources.items() if (root / path).is_file()}
    dropped = len(lock.sources) - len(sources)
    paths = source_files(actions)
    for path in paths:
        sources[path] = hash_file(root / path).hex()
    write_lock(root, Lock(sources, lock.environment))
    return len(paths), dropped

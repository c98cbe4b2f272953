"""Layer 0: source pins — `posbuild lock` writes them, every build checks them before anything runs.

`posbuild.lock` may pin source files by digest (its "sources" section, lockfile.py). A build
checks the pins of the source files its actions read; a pinned file whose bytes changed stops the
build with ORCH-03 before any action runs, naming the file and both digests. Pins of files the
request does not read are ignored.

A genrule may also pin its own source inputs with a tag `pin:<workspace-relative path>=<digest>`
(the `checked_file` macro of the rule library writes it): the same check, with the expected digest
taken from the BUILD file instead of the lock. A pin tag naming a file that is not one of the
action's source inputs is a BUILD error.

The check must not cost a no-op build any file reads. Without a `posbuild.lock` it is one
`stat()`. With one, a pinned file whose stat signature (mtime_ns, size, inode, ctime_ns) is the
one the request's up-to-date state recorded (uptodate.py) has the digest recorded with it; only
a file whose signature differs, or that the state does not know, is hashed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from posbuild.core.words import quantity
from posbuild.core.action import PIN_TAG, Action
from posbuild.core.digest import hash_file
from posbuild.errors import BuildFileError, ChecksumMismatch
from posbuild.core.layout import LOCK_NAME
from posbuild.store.upstate import BuildState


def tag_pins(actions: Sequence[Action]) -> list[tuple[str, str, str]]:
    """(path, hex digest, label) of every `pin:` tag of `actions`, in action order."""
    found: list[tuple[str, str, str]] = []
    for action in actions:
        if not action.tags:
            continue
        for tag in action.tags:
            if not tag.startswith(PIN_TAG):
                continue
            path, _, digest = tag[len(PIN_TAG):].rpartition("=")
            if not path or len(digest) != 64 \
                    or any(c not in "0123456789abcdefABCDEF" for c in digest):
                raise BuildFileError(
                    f"{action.label}: tag '{tag}' is not 'pin:<path>=<64 hex digest>'")
            if path not in action.sources:
                raise BuildFileError(f"{action.label}: tag '{tag}' pins '{path}', which is not a "
                                     "source file input of this rule (only source files can be "
                                     "pinned)")
            found.append((path, digest.lower(), action.label))
    return found


def check_pins(root: Path, actions: Sequence[Action], state: BuildState) -> int:
    """Raise ChecksumMismatch if a pinned source that `actions` read no longer has its pinned
    digest.

    Pins come from `posbuild.lock` and from `pin:` tags. Returns how many pins were checked.
    """
    # (path, expected hex digest, where it is pinned, how to accept a change)
    expected = [(path, digest, f"by {label}",
                 "update the digest in its BUILD file to accept the change")
                for path, digest, label in tag_pins(actions)]
    try:
        os.stat(root / LOCK_NAME)
    except FileNotFoundError:
        pins: dict[str, str] = {}
    else:
        from posbuild.workspace.lockfile import read_lock

        pins = read_lock(root).sources
    if pins:
        read = {path for action in actions for path in action.sources}
        expected.extend((path, pins[path].lower(), f"in {LOCK_NAME}",
                         "run `posbuild lock` to accept the change")
                        for path in read.intersection(pins))
    if not expected:
        return 0
    expected.sort()
    # the hot loop of a no-op build with pins: flat, one stat() per pinned file, no reads
    signatures, digests = state.signatures, None
    base = str(root) + "/"
    stat = os.stat
    actual: dict[str, str] = {}
    mismatches: list[tuple[str, str, str, str, str]] = []
    for path, pinned, where, advice in expected:
        if path not in actual:
            try:
                st = stat(base + path)
            except FileNotFoundError:
                # a missing source is the build's own error, reported with the action reading it
                continue
            digest = None
            if signatures.get(path) == (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns):
                if digests is None:
                    digests = state.digests
                digest = digests.get(path)
            if digest is None:
                digest = hash_file(base + path)
            actual[path] = digest.hex()
        if actual[path] != pinned:
            mismatches.append((path, pinned, actual[path], where, advice))
    if mismatches:
        path, pinned, found, where, advice = mismatches[0]
        more = f" (and {quantity(len(mismatches) - 1, 'more pinned file')} changed)" \
            if len(mismatches) > 1 else ""
        raise ChecksumMismatch(
            f"{path} is pinned {where} to {pinned} but hashes to {found}{more}; {advice}")
    return len(expected)


def source_files(actions: Sequence[Action]) -> list[str]:
    """Every source file (not another action's output) that `actions` read, sorted."""
    return sorted({path for action in actions for path in action.sources})


def lock_sources(root: Path, actions: Sequence[Action]) -> tuple[int, int]:
    """Pin the current digest of every source file `actions` read in `posbuild.lock`.

    Pins of other files are kept, so locking one pattern never unpins another, except pins of
    files that no longer exist, which are dropped. The "environment" section is left as it was.
    Returns (files pinned, stale pins dropped).
    """
    from posbuild.workspace.lockfile import Lock, read_lock, write_lock

    lock = read_lock(root)
    sources = {path: pin for path, pin in lock.sources.items() if (root / path).is_file()}
    dropped = len(lock.sources) - len(sources)
    paths = source_files(actions)
    for path in paths:
        sources[path] = hash_file(root / path).hex()
    write_lock(root, Lock(sources, lock.environment))
    return len(paths), dropped

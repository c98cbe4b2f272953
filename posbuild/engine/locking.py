"""Layer 1: the workspace lock — one command at a time writes a workspace's outputs and state.

A build, gc, fsck, clean, rollback, `env approve` and the cache commands hold `.posbuild/lock`
exclusively, so two posbuild processes never write `posbuild-out/` at once; a second one waits,
saying why. The store is locked too: shared by every command, exclusively by those that remove
rows.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from posbuild.core.layout import (CONFIG_NAME, FAILED, GRAPHS, PY_ENVS, SANDBOX, STORE_LOCK, TMP,
                                  WORKSPACE_LOCK)
from posbuild.engine.reporter import Reporter
from posbuild.host.owned import STATE, STORE, claim, is_store, open_own_file, unlink_planted
from posbuild.workspace.config import Config

_held: set[str] = set()  # the workspace locks this process holds
# the folders of `.posbuild/` that are posbuild's alone: a link planted there is removed
OWN_FOLDERS = (GRAPHS, TMP, FAILED, SANDBOX, PY_ENVS)


@contextmanager
def workspace_lock(config: Config, reporter: Reporter, collect: bool = False) -> Iterator[None]:
    """Hold `.posbuild/lock` exclusively for the duration of a command that writes outputs.

    The store is also locked: shared by every command, exclusively by those that remove rows
    (`collect`: gc, `fsck`), so they never remove what a build of another workspace using the
    same store is about to reference. A workspace's own store is locked too, once it exists:
    another workspace may name it as its `[cache] dir`. Taking the lock makes `.posbuild/` and a
    store with their marks (owned.py), or refuses a store folder posbuild did not make. Held
    already by this process (a build inside a command that locked), it is not taken again.
    """
    key = str(config.state_dir)
    if key in _held:
        yield
        return
    with _locked_file(config, reporter) as handle:
        _held.add(key)
        try:
            if not config.store_dir.is_dir() \
                    and (collect or config.store_dir.is_relative_to(config.state_dir)):
                yield  # no store yet: nothing to collect or guard, and none is made for the lock
                return
            claim(config.store_dir, STORE, is_store,
                  f" ([cache] dir of {config.root / CONFIG_NAME})")
            who = "another workspace is using" if collect else "posbuild gc or fsck is using"
            with os.fdopen(open_own_file(config.store_dir / STORE_LOCK), "a+") as shared:
                _lock(shared, fcntl.LOCK_EX if collect else fcntl.LOCK_SH, reporter,
                      f"{who} the shared store {config.store_dir}")
                yield
        finally:
            _held.discard(key)
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _locked_file(config: Config, reporter: Reporter) -> Iterator[IO[str]]:
    """Open and flock `.posbuild/lock`; if the file was deleted or replaced while this process
    waited (an older posbuild's `clean --all`, or `rm -rf .posbuild`), lock the new one instead:
    a lock on a deleted file excludes nobody."""
    path = config.state_dir / WORKSPACE_LOCK
    while True:
        claim(config.state_dir, STATE, _not_a_link)
        with os.fdopen(open_own_file(path), "a+") as handle:
            _lock(handle, fcntl.LOCK_EX, reporter,
                  "another posbuild command is running in this workspace")
            unlink_planted(config.state_dir, OWN_FOLDERS)
            try:
                same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield handle
                return


def claim_state_dir(config: Config) -> None:
    """Make (or check) `.posbuild/` as a build would, for the build server's socket and log."""
    claim(config.state_dir, STATE, _not_a_link)


def _not_a_link(folder: Path) -> bool:
    """`.posbuild/` made before marks existed is adopted (its name is posbuild's), unless it is a
    link: the folder it points to need not be posbuild's (`ln -s ~ .posbuild`)."""
    return not folder.is_symlink()


def _lock(handle: IO[str], kind: int, reporter: Reporter, why: str) -> None:
    """flock `handle`, saying why posbuild waits when it must."""
    try:
        fcntl.flock(handle, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        reporter.message(f"posbuild: {why}; waiting for it")
        fcntl.flock(handle, kind)

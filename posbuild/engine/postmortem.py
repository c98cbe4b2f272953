"""Layer 0: what a failed run leaves for inspection, in `.posbuild/failed/<package>/<name>/`.

A failed run's sandbox goes like any other, and nothing of it reaches the store or
`posbuild-out/`; but the user needs what it said and what it wrote to see why it failed. So its
folder here gets `command` (the expanded command), `stdout`, `stderr` (redacted, as shown) and
`files/`: every file the command wrote in its working folder, declared outputs or not, at its
workspace path. The next failure of the action replaces the folder, its next successful run
removes it, and `posbuild clean` removes them all. `posbuild log --output` reads `stdout` and
`stderr` from here when the action's last run failed.

The folders below `.posbuild/failed/` are walked by descriptor, never through a link: a checkout
may come with `.posbuild/failed/<package>` as a link to any folder, and removing `<name>` there
(when the action passes) or writing into it (when it fails) would reach outside the workspace.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

from posbuild.core.action import Action
from posbuild.core.label import parse_label

_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # never through a link


def failure_folder(failed_root: Path, label: str) -> Path:
    """Where the last failed run of `label` is kept: `<failed_root>/<package>/<name>`."""
    parsed = parse_label(label, "")
    return failed_root / parsed.package / parsed.name


class FailureKeeper:
    """Keeps the failed runs of one build under `failed_root` and drops those that now pass."""

    def __init__(self, root: Path, failed_root: Path) -> None:
        self._workspace = root
        self._root = failed_root
        # nothing to remove on success when no run ever failed: no syscall per action then
        self._any = failed_root.is_dir()

    def keep(self, action: Action, exec_root: Path, stdout: bytes, stderr: bytes,
             files: bool = True) -> Path:
        """Keep a failed run's output and (with `files`) what it wrote; returns the folder.
        Raises OSError when it cannot, a link on the way included."""
        folder = failure_folder(self._root, action.label)
        self._root.mkdir(parents=True, exist_ok=True)  # below the state folder, which is claimed
        package = self._package(action.label, create=True)
        try:
            name = folder.name
            shutil.rmtree(name, dir_fd=package, ignore_errors=True)
            os.mkdir(name, dir_fd=package)
            kept = os.open(name, _FOLDER, dir_fd=package)
        finally:
            os.close(package)
        self._any = True
        try:
            for entry, data in (("command", (action.command + "\n").encode()),
                                ("stdout", stdout), ("stderr", stderr)):
                _write_new(kept, entry, data)
            if files and exec_root.is_dir():  # into the folder just made, by its descriptor
                copy_written(exec_root, Path(f"/proc/self/fd/{kept}/files"),
                             frozenset(action.inputs))
        finally:
            os.close(kept)
        return folder

    def shown(self, folder: Path) -> str:
        """`folder` as the failure message names it: relative to the workspace when inside it."""
        inside = folder.is_relative_to(self._workspace)
        return f"{folder.relative_to(self._workspace) if inside else folder}/"

    def passed(self, label: str) -> None:
        """The action ran and succeeded: what its last failure left is stale."""
        if not self._any:
            return
        try:
            package = self._package(label, create=False)
        except OSError:  # none kept, or a link where a folder of ours belongs: left alone
            return
        try:
            shutil.rmtree(failure_folder(self._root, label).name, dir_fd=package,
                          ignore_errors=True)
        finally:
            os.close(package)

    def _package(self, label: str, create: bool) -> int:
        """The descriptor of `<failed_root>/<package>` of `label`, every folder on the way opened
        without following a link (and made, with `create`); OSError when one is missing or is a
        link or a file."""
        parts = [part for part in parse_label(label, "").package.split("/") if part]
        fd = os.open(self._root, _FOLDER)
        for part in parts:
            try:
                if create:
                    try:
                        os.mkdir(part, dir_fd=fd)
                    except FileExistsError:
                        pass
                child = os.open(part, _FOLDER, dir_fd=fd)
            except OSError as error:
                raise OSError(error.errno or errno.ELOOP,
                              f"{self._root / '/'.join(parts)}: not a folder of posbuild's "
                              f"(a link or a file on the way is never followed)") from None
            finally:
                os.close(fd)
            fd = child
        return fd


def _write_new(folder: int, name: str, data: bytes) -> None:
    """Write a new file `name` in the open `folder` (which was just made: nothing is there)."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644, dir_fd=folder)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def copy_written(exec_root: Path, into: Path, inputs: frozenset[str]) -> None:
    """Copy the regular files under `exec_root` that are not staged inputs (what the command
    wrote), keeping their paths. The folder is the action's: it may have made `exec_root` itself,
    or any folder or file in it, a link to anything on the machine, so the walk goes by
    descriptors (`os.fwalk`), opens nothing through a link, and copies only regular files."""
    try:
        top = os.open(exec_root, _FOLDER)
    except OSError:  # gone, or not a real folder any more (a link): nothing to keep
        return
    try:
        for folder, dirs, names, folder_fd in os.fwalk(".", dir_fd=top):  # never follows a link
            rel = os.path.normpath(folder)
            # a staged folder input (another action's folder output) is not what this one wrote
            dirs[:] = [d for d in dirs if (d if rel == "." else f"{rel}/{d}") not in inputs]
            for name in names:
                path = name if rel == "." else f"{rel}/{name}"
                if path not in inputs:
                    _copy_regular(name, folder_fd, into / path)
    finally:
        os.close(top)


def _copy_regular(name: str, folder_fd: int, target: Path) -> None:
    """Copy file `name` of the open folder to `target` if it is a regular file (not a link, a
    FIFO or a socket) that can be read."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=folder_fd)
    except OSError:  # a link, or a file the command made unreadable: left out
        return
    with os.fdopen(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as copy:
            shutil.copyfileobj(source, copy)

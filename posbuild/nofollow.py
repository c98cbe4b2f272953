"""Layer 1: open the declared outputs under an action's sandbox without following any link.

A sandbox is the action's to change. When its command has ended, `exec/` itself, any folder on
the way to a declared output (`posbuild-out/pkg/d` for `outs = ["d/x"]`) or the output may be a
symbolic link to the workspace, the secrets file or the store, and posbuild sees the whole file
system. So each folder on the way is opened one component at a time, relative to the folder
before, with `O_NOFOLLOW | O_DIRECTORY` (as `O_PATH`), and the output is looked up in its
folder's descriptor without following a link. Everything done with it afterwards goes through
that descriptor: it is opened again there with `O_NOFOLLOW` and must be the very file found
(same inode), its bytes are read through that descriptor (or `/proc/self/fd/N`, which names the
opened file whatever its path holds by then), and it is renamed from its folder's descriptor
(`renameat`). A link swapped in later, by a process that outlived its command, redirects nothing
posbuild reads, hashes or moves.

The price, once per action: one open per folder on the way (shared by outputs in the same
folder) and an lstat per output where a plain lstat of the path was enough before.
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

_FOLDER = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: never hang on a FIFO swapped in


@dataclass(frozen=True, slots=True)
class Opened:
    """A declared output found without following links: the folder that holds it (a descriptor),
    its name there, and its lstat when the command had ended. Only folders stay open (an action
    may declare thousands of outputs, but in a few folders); the file is opened when it is used."""

    folder: int  # O_PATH descriptor of its folder: open or rename `name` from here
    name: str
    stat: os.stat_result

    @contextmanager
    def reading(self) -> Iterator[int]:
        """The file, opened read-only below its folder without following a link, for the block.
        OSError (ESTALE) if its name holds another file by now than the one found."""
        fd = os.open(self.name, _FILE, dir_fd=self.folder)
        try:
            info = os.fstat(fd)
            if (info.st_ino, info.st_dev) != (self.stat.st_ino, self.stat.st_dev):
                raise OSError(errno.ESTALE, "output replaced in its sandbox after the command ended", self.name)
            yield fd
        finally:
            os.close(fd)


def fd_path(fd: int) -> str:
    """A path to exactly the file open as `fd`, whatever its name holds now, for code that
    opens by path (hashing, copying into the store, comparing)."""
    return f"/proc/self/fd/{fd}"


class Outputs:
    """The declared outputs of one run: those found as regular files, those missing, and those
    that are something else (a link, a folder, a FIFO, or below a link) with why, in words."""

    def __init__(self) -> None:
        self.opened: dict[str, Opened] = {}
        self.missing: list[str] = []  # every output not found, the irregular ones included
        self.irregular: list[str] = []
        self.why = ""  # what is wrong with irregular[0]: "is a symbolic link" ...
        self._fds: list[int] = []

    def close(self) -> None:
        """Release the folders' descriptors; idempotent."""
        fds, self._fds, self.opened = self._fds, [], {}
        for fd in fds:
            os.close(fd)

    def _unusable(self, path: str, why: str) -> None:
        self.missing.append(path)
        self.irregular.append(path)
        if len(self.irregular) == 1:
            self.why = why


def open_outputs(exec_root: str, paths: Sequence[str]) -> Outputs:
    """Find each of `paths` (relative to `exec_root`) as described above. Never raises for what
    an action did: an output that cannot be reached is missing or irregular."""
    found = Outputs()
    try:
        top = os.open(exec_root, _FOLDER)  # O_NOFOLLOW covers `exec`, the one component an action can swap
    except OSError as error:
        for path in paths:
            found._unusable(path, f"cannot be reached: the sandbox's exec/ {_what(error)}")
        return found
    folders: dict[str, int] = {"": top}
    used: set[int] = set()
    try:
        for path in paths:
            where, _, name = path.rpartition("/")
            try:
                folder = _folder(folders, where)
                info = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except _Blocked as blocked:
                if blocked.missing:
                    found.missing.append(path)
                else:
                    found._unusable(path, f"lies below '{blocked.at}', which {blocked.what}")
                continue
            except FileNotFoundError:
                found.missing.append(path)
                continue
            except OSError as error:
                found._unusable(path, _cannot(error))
                continue
            if not stat.S_ISREG(info.st_mode):
                found._unusable(path, _kind(info.st_mode))
                continue
            found.opened[path] = Opened(folder, name, info)
            used.add(folder)
    finally:
        for fd in folders.values():
            if fd in used:
                found._fds.append(fd)
            else:
                os.close(fd)
    return found


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    return "is a folder" if stat.S_ISDIR(mode) else "is not a regular file"


class _Blocked(Exception):
    def __init__(self, at: str, what: str, missing: bool) -> None:
        self.at, self.what, self.missing = at, what, missing


def _folder(folders: dict[str, int], path: str) -> int:
    """The descriptor of folder `path`, opened below its parent without following a link (cached)."""
    fd = folders.get(path)
    if fd is not None:
        return fd
    parent_path, _, name = path.rpartition("/")
    parent = _folder(folders, parent_path)
    try:
        fd = os.open(name, _FOLDER, dir_fd=parent)
    except FileNotFoundError:
        raise _Blocked(path, "does not exist", True) from None
    except OSError as error:
        raise _Blocked(path, _what(error, name, parent), False) from None
    folders[path] = fd
    return fd


def _what(error: OSError, name: str = "", folder: int = -1) -> str:
    """Why folder `name` in `folder` could not be opened, in words (cold path: one lstat)."""
    if not name:  # exec/ itself: replaced by a link or a file, or gone
        return "is a symbolic link or not a folder" if error.errno in (errno.ENOTDIR, errno.ELOOP) else _cannot(error)
    try:
        mode = os.lstat(name, dir_fd=folder).st_mode
    except OSError:
        return _cannot(error)
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    return "is not a folder" if not stat.S_ISDIR(mode) else _cannot(error)


def _cannot(error: OSError) -> str:
    return f"cannot be opened ({error.strerror or error})"


def read_upto(fd: int, size: int) -> bytes:
    """The first `size` bytes of a file (fewer if it is shorter), whatever the descriptor's offset."""
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)

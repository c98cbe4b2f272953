"""Layer 0: open the declared outputs under an action's sandbox without following any link.

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

The price, once per action: one open of each output folder (openat2 with RESOLVE_NO_SYMLINKS
where the kernel has it, Linux 5.6; else an open per component) and an lstat per output, where a
plain lstat of the path was enough before: ~17 µs per action on a small VM.
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

_FOLDER = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# NONBLOCK: never hang on a FIFO swapped in
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


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
                raise OSError(errno.ESTALE,
                              "output replaced in its sandbox after the command ended", self.name)
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


def open_outputs(exec_root: str, paths: Sequence[str], out_dirs: Sequence[str] = ()) -> Outputs:
    """Find each of `paths` (relative to `exec_root`) as described above. Never raises for what
    an action did: an output that cannot be reached is missing or irregular. Those also in
    `out_dirs` must be real folders instead of regular files; what they hold is
    looked at later, through their descriptors (store/trees.py)."""
    found = Outputs()
    folders: dict[str, int] = {}  # folder (relative to exec_root, "" for itself) → its descriptor
    used: set[int] = set()
    try:
        for path in paths:
            where, _, name = path.rpartition("/")
            try:
                folder = folders.get(where)
                if folder is None:
                    folder = _opened_whole(exec_root, where) if _fast else -1
                    if folder >= 0:
                        folders[where] = folder
                    else:
                        folder = _folder(folders, exec_root, where)
                info = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except _Blocked as blocked:
                if blocked.missing:
                    found.missing.append(path)
                else:
                    found._unusable(path, blocked.why)
                continue
            except FileNotFoundError:
                found.missing.append(path)
                continue
            except OSError as error:
                found._unusable(path, _cannot(error))
                continue
            if path in out_dirs:
                if not stat.S_ISDIR(info.st_mode):
                    found._unusable(path, "is a file, not a folder"
                                    if stat.S_ISREG(info.st_mode) else _kind(info.st_mode))
                    continue
            elif not stat.S_ISREG(info.st_mode):
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
    def __init__(self, why: str, missing: bool = False) -> None:
        self.why, self.missing = why, missing


def _folder(folders: dict[str, int], exec_root: str, path: str) -> int:
    """The descriptor of folder `path` (relative to `exec_root`), opened below its parent without
    following a link (cached in `folders`); `exec_root` itself is opened with O_NOFOLLOW, which
    covers `exec`, the one component of it an action can swap."""
    fd = folders.get(path)
    if fd is not None:
        return fd
    if not path:
        try:
            fd = os.open(exec_root, _FOLDER)
        except OSError as error:
            what = "is a symbolic link or not a folder" \
                if error.errno in (errno.ENOTDIR, errno.ELOOP) else \
                _cannot(error)
            raise _Blocked(f"cannot be reached: the sandbox's exec/ {what}") from None
    else:
        parent_path, _, name = path.rpartition("/")
        parent = _folder(folders, exec_root, parent_path)
        try:
            fd = os.open(name, _FOLDER, dir_fd=parent)
        except FileNotFoundError:
            raise _Blocked("", missing=True) from None
        except OSError as error:
            raise _Blocked(f"lies below '{path}', which {_what(error, name, parent)}") from None
    folders[path] = fd
    return fd


def _what(error: OSError, name: str, folder: int) -> str:
    """Why folder `name` in `folder` could not be opened, in words (cold path: one lstat)."""
    try:
        mode = os.lstat(name, dir_fd=folder).st_mode
    except OSError:
        return _cannot(error)
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    return "is not a folder" if not stat.S_ISDIR(mode) else _cannot(error)


# The fast path: openat2(2) (Linux 5.6) opens a whole absolute path in one call and fails if any
# component is a symbolic link (RESOLVE_NO_SYMLINKS), where the walk above costs an open and a
# close per component. Any failure falls back to the walk, which also says what is wrong; one
# that the walk does not reproduce (a link in the sandbox base's own path) ends the fast path.
_fast = True
_openat2: Callable[[str], int] | None = None


def _opened_whole(exec_root: str, path: str) -> int:
    """Folder `path` of `exec_root` opened (O_PATH) by one openat2 call; < 0 when it cannot be."""
    global _fast, _openat2
    if _openat2 is None:
        _openat2 = _make_openat2()
        if _openat2 is None:
            _fast = False
            return -1
    fd = _openat2(f"{exec_root}/{path}")
    if fd == -errno.ELOOP:
        _fast = _walk_agrees(exec_root, path)
    # no openat2 here (old kernel, seccomp)
    elif fd in (-errno.ENOSYS, -errno.EPERM, -errno.EINVAL, -errno.E2BIG):
        _fast = False
    return fd


def _walk_agrees(exec_root: str, path: str) -> bool:
    """Whether the walk also finds a link below `exec_root` (else the link is above it, in the
    sandbox base's path, and openat2 would fail for every action)."""
    probe: dict[str, int] = {}
    try:
        _folder(probe, exec_root, path)
    except _Blocked:
        return True
    finally:
        for fd in probe.values():
            os.close(fd)
    return False


def _make_openat2() -> Callable[[str], int] | None:
    """A function calling openat2(AT_FDCWD, path, O_PATH | O_DIRECTORY | O_CLOEXEC,
    RESOLVE_NO_SYMLINKS) that returns the descriptor or -errno; None without libc's syscall()."""
    try:
        import ctypes  # only builds that execute actions get here
    except ImportError:
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    call.restype = ctypes.c_long
    # flags, mode, RESOLVE_NO_SYMLINKS
    how = (ctypes.c_uint64 * 3)(_FOLDER & ~os.O_NOFOLLOW, 0, 0x04)
    # AT_FDCWD
    size, number, here = ctypes.c_size_t(ctypes.sizeof(how)), ctypes.c_long(437), ctypes.c_int(-100)

    def openat2(path: str) -> int:
        fd = call(number, here, os.fsencode(path), how, size)
        return fd if fd >= 0 else -ctypes.get_errno()

    return openat2


def _cannot(error: OSError) -> str:
    return f"cannot be opened ({error.strerror or error})"


def read_upto(fd: int, size: int) -> bytes:
    """The first `size` bytes of a file (fewer if it is shorter), whatever the descriptor's
    offset."""
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` (a write may take less than it is given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_small(fd: int, limit: int) -> tuple[os.stat_result, bytes | None]:
    """A produced file's stat and, when it holds at most `limit` bytes, its content: one fstat
    and a read, no buffered file object (every action reads its small outputs back)."""
    info = os.fstat(fd)
    return info, (read_upto(fd, info.st_size) if info.st_size <= limit else None)

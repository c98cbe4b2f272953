"""Layer 1: folder outputs on disk — take one in from a sandbox, write one out, check one.

A folder an action declared (`out_dirs`) is taken in by walking it through descriptors, never
following a link: each regular file becomes a blob and the folder a manifest (core/tree.py).
A symbolic link, FIFO, socket or device anywhere inside is refused with the path at fault.

A folder is written into `posbuild-out/` whole: built in the temp folder (`.posbuild/tmp`, on
the output tree's file system), then renamed into place; an older folder of that name is first
renamed away into the temp folder. So its final name shows either the old folder complete, the
new one complete, or (for an instant, and after a kill there) nothing, which the next build
restores; the temp folder is emptied at the start of every build and by fsck. Files are
read-only (0444, or 0555 when executable) as every output is; folders stay writable by their
owner, so that `rm -rf posbuild-out` works.

Whether a written folder is still intact is judged from the stat memo: the folder's own row
names its manifest's digest, each file's row its blob's, and a listing must show exactly the
manifest's entries.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from posbuild.core.digest import Digest, hash_bytes, hash_file
from posbuild.core.records import FileState, OutputFile, signature
from posbuild.core.tree import Tree, TreeFile
from posbuild.host.nofollow import fd_path, read_upto, write_all

if TYPE_CHECKING:
    from typing import Protocol

    from posbuild.store.protocols import Blobs, StatMemo

    class TreeStore(Blobs, StatMemo, Protocol):
        """Blobs to write a folder from, memo rows to check it by."""

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
NO_DIGEST = b""  # the digest recorded for a sub-folder's signature (it has no content of its own)


class RefusedEntry(ValueError):
    """A folder output holds something posbuild does not store (a link, a FIFO, a device)."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(f"'{path}' is {kind}")
        self.path = path
        self.kind = kind


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"


def _walk(fd: int, prefix: str, visit: Callable[[int, str, str, os.stat_result], None],
          folders: list[str]) -> None:
    """Call `visit(folder_fd, name, rel, stat)` for every regular file below the open folder
    `fd`, in sorted order, listing every sub-folder in `folders`; RefusedEntry for anything else."""
    with os.scandir(fd) as listing:
        entries = sorted((e.name, e.stat(follow_symlinks=False)) for e in listing)
    for name, info in entries:
        rel = prefix + name
        if stat.S_ISDIR(info.st_mode):
            folders.append(rel)
            child = os.open(name, _DIR, dir_fd=fd)
            try:
                _walk(child, rel + "/", visit, folders)
            finally:
                os.close(child)
        elif stat.S_ISREG(info.st_mode):
            visit(fd, name, rel, info)
        else:
            raise RefusedEntry(rel, _kind(info.st_mode))


def open_folder(folder: int, name: str) -> int:
    """The folder `name` below the descriptor `folder`, opened without following a link."""
    return os.open(name, _DIR, dir_fd=folder)


def refusal(folder: int, name: str) -> RefusedEntry | None:
    """What is wrong with a produced folder (a link, FIFO or device inside it), or None."""
    fd = open_folder(folder, name)
    try:
        _walk(fd, "", lambda *_: None, [])
    except RefusedEntry as error:
        return error
    finally:
        os.close(fd)
    return None


@dataclass(frozen=True, slots=True)
class Members:
    """The files of a produced folder, found by a walk that follows no link: their paths inside
    it, sorted, and each file opened on demand the same way, one component at a time."""

    top: int  # the folder, open
    names: tuple[str, ...]

    @contextmanager
    def opened(self, rel: str) -> Iterator[str]:
        """A path to exactly the file `rel` (through /proc/self/fd), valid in the block; OSError
        if a folder on the way is a link by now."""
        *parents, name = rel.split("/")
        at, opened = self.top, []
        try:
            for part in parents:
                at = os.open(part, _DIR, dir_fd=at)
                opened.append(at)
            fd = os.open(name, _FILE, dir_fd=at)
            opened.append(fd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.ESTALE, "output replaced in its sandbox while it was read",
                              rel)
            yield fd_path(fd)
        finally:
            for fd in opened:
                os.close(fd)

    def each(self) -> Iterator[str]:
        """Every file in turn, as a path valid until the next one is asked for."""
        for rel in self.names:
            with self.opened(rel) as path:
                yield path


@contextmanager
def members(folder: int, name: str) -> Iterator[Members]:
    """The files of a produced folder (`Members`), for the block. RefusedEntry for a link, FIFO
    or device inside."""
    fd = open_folder(folder, name)
    try:
        files: list[str] = []
        _walk(fd, "", lambda _f, _n, rel, _i: files.append(rel), [])
        yield Members(fd, tuple(sorted(files)))
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class TakenTree:
    """A produced folder hashed: its manifest, and the blobs of its files (None: stored as a
    file already)."""

    tree: Tree
    blobs: list[tuple[Digest, bytes | None]]


def take(folder: int, name: str, inline_limit: int,
         store_external: Callable[[Digest, Path], None]) -> TakenTree:
    """Hash every file of a produced folder: small files' bytes are returned for the commit,
    large ones copied into the store now (`store_external`). RefusedEntry for a link, FIFO or
    device inside (something changed it since it was judged)."""
    files: list[TreeFile] = []
    blobs: list[tuple[Digest, bytes | None]] = []

    def visit(at: int, entry: str, rel: str, info: os.stat_result) -> None:
        fd = os.open(entry, _FILE, dir_fd=at)
        try:
            now = os.fstat(fd)
            if (now.st_ino, now.st_dev) != (info.st_ino, info.st_dev):
                raise OSError(errno.ESTALE, "output replaced in its sandbox while it was read", rel)
            data = read_upto(fd, now.st_size) if now.st_size <= inline_limit else None
            if data is not None:
                digest = hash_bytes(data)
            else:
                digest = hash_file(fd_path(fd))
                store_external(digest, Path(fd_path(fd)))
        finally:
            os.close(fd)
        blobs.append((digest, data))
        files.append(TreeFile(rel, digest, now.st_size, bool(now.st_mode & 0o111)))

    folders: list[str] = []
    fd = open_folder(folder, name)
    try:
        _walk(fd, "", visit, folders)
    finally:
        os.close(fd)
    return TakenTree(Tree.of(files, folders), blobs)


@dataclass(frozen=True, slots=True)
class WrittenTree:
    """A folder put into `posbuild-out/`: the folder's memo row, its files' memo rows, and the
    signature rows of folder and files and sub-folders (what the up-to-date check stats)."""

    state: FileState
    memo: list[tuple[str, FileState]]
    members: list[tuple[str, FileState]]


def write_tree(root: str, temp_dir: Path, output: OutputFile, tree: Tree,
               blob: Callable[[Digest], bytes]) -> WrittenTree:
    """Write the folder `output` from its (checked) manifest and verified blobs, atomically as
    the module docstring says."""
    target = f"{root}/{output.path}"
    os.makedirs(os.path.dirname(target), exist_ok=True)
    base = f"{temp_dir}/{os.path.basename(output.path)}.{os.getpid()}.{threading.get_ident()}"
    fresh, old = base + ".tree", base + ".old"
    for leftover in (fresh, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        os.mkdir(fresh)
        for folder in tree.folders:
            os.mkdir(f"{fresh}/{folder}")
        for file in tree.files:
            _write_file(f"{fresh}/{file.path}", blob(file.digest), file.executable)
        if os.path.lexists(target):
            os.rename(target, old)
        os.rename(fresh, target)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    discard(old)
    return _states(target, output, tree)


def discard(path: str) -> None:
    """Remove what was renamed out of the way (a folder, or a file a folder replaced)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def move_aside(target: str, temp_dir: Path) -> None:
    """Take a folder (a folder output before) out of the way of a file, whole: renamed into
    the temp folder, then removed there."""
    aside = f"{temp_dir}/{os.path.basename(target)}.{os.getpid()}.{threading.get_ident()}.old"
    discard(aside)
    os.rename(target, aside)
    discard(aside)


def _states(target: str, output: OutputFile, tree: Tree) -> WrittenTree:
    state = FileState(signature(os.stat(target)), output.digest)
    memo = [(output.path, state)]
    members = []
    for folder in tree.folders:
        members.append((f"{output.path}/{folder}",
                        FileState(signature(os.stat(f"{target}/{folder}")), NO_DIGEST)))
    for file in tree.files:
        row = (f"{output.path}/{file.path}",
               FileState(signature(os.stat(f"{target}/{file.path}")), file.digest))
        memo.append(row)
        members.append(row)
    return WrittenTree(state, memo, members)


def _write_file(path: str, content: bytes, executable: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                 0o555 if executable else 0o444)
    try:
        write_all(fd, content)
    finally:
        os.close(fd)


def intact(root: str, output: OutputFile, tree: Tree, store: TreeStore) -> WrittenTree | None:
    """The folder's rows if `posbuild-out/` holds exactly this folder as posbuild wrote it (its
    memo rows match every stat, and it lists exactly the manifest's entries), else None."""
    target = f"{root}/{output.path}"
    try:
        fd = os.open(target, _DIR)
    except OSError:
        return None
    files: list[str] = []
    folders: list[str] = []
    try:
        _walk(fd, "", lambda _f, _n, rel, _i: files.append(rel), folders)
    except (RefusedEntry, OSError):
        return None
    finally:
        os.close(fd)
    if folders != list(tree.folders) or sorted(files) != [f.path for f in tree.files]:
        return None
    try:
        written = _states(target, output, tree)
    except OSError:
        return None
    for path, state in written.memo:
        memo = store.get_memo(path)
        if memo is None or memo != state:
            return None
    return written

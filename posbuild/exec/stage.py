"""Layer 2: staging — make an action's sandbox folder from its declared inputs, and remove it.

A sandbox is `<sandboxes>/<n>/` with `exec/` (the working directory: the declared inputs at their
workspace-relative paths, and the folders of the declared outputs) and `tmp/` (HOME and TMPDIR).
Making and removing one is file-system work alone, apart from running the command in it
(sandbox.py), so that it can be read, measured and changed on its own.

Inputs are copied, so an action that writes to an input changes only its own copy. Inputs of
`LINK_LIMIT` bytes or more are cloned where the file system can (a reflink, `FICLONE`: btrfs,
XFS ...; `[build] sandbox_base` on such a file system makes large data sets free to stage), and
copied elsewhere: never linked, since a link (symbolic or hard) is a writable path to the
original whatever its mode says. The namespace sandbox is the exception: it stages a large input
as a symbolic link, which it turns into a read-only bind before the command runs.

Removing a sandbox unlinks, by name, what staging made (its `Layout`); only a sandbox holding
anything else is walked, and never through a link the command left.

Both are done by native.c where it could be compiled (native.py), in one call each, and here
otherwise or when it hands something back (a folder input, a sandbox holding anything else).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
from dataclasses import dataclass

from posbuild.core.action import Action
from posbuild.exec import native

LINK_LIMIT = 16 * 1024 * 1024

# what staging made in a folder: name → its own layout, or None for a file
Layout = dict[str, "Layout | None"]
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Staged:
    """What native.c staged: the paths below `exec/` (native.paths_blob), for its removal."""

    paths: bytes
    count: int


Made = Layout | Staged  # what staging made, for `remove_tree`


def stage(root: str, action: Action, sandbox: str, link_large: bool = False) -> Made:
    """Make a sandbox: `tmp/`, and `exec/` with the action's inputs (read below `root`, the
    workspace with a trailing "/") at their workspace paths and the folders of its outputs.
    Returns what it made (the outputs as files), for `remove_tree`. `link_large`: see
    `_stage_file`."""
    if native.available():
        paths = (*action.inputs, *action.outputs)
        blob = native.paths_blob(paths)
        staged = native.stage(root, sandbox, blob, len(paths), len(action.inputs), LINK_LIMIT,
                              link_large)
        if staged:
            return Staged(blob, len(paths))
        if staged is False:  # stopped part way (a folder input, an error): start again here
            remove_tree(sandbox)
    try:
        os.mkdir(sandbox)
    except FileNotFoundError:  # the first sandbox under a base nobody has made yet
        os.makedirs(sandbox)
    os.mkdir(sandbox + "/tmp")
    os.mkdir(sandbox + "/exec")
    exec_layout: Layout = {}
    for path in (*action.inputs, *action.outputs):
        folder, made = exec_layout, sandbox + "/exec"
        *parents, name = path.split("/")
        for part in parents:
            made += "/" + part
            if part not in folder:
                folder[part] = {}
                os.mkdir(made)
            folder = folder[part]  # type: ignore[assignment]
        folder[name] = None
    for path in action.inputs:
        _stage_file(root + path, f"{sandbox}/exec/{path}", link_large)
    return {"tmp": {}, "exec": exec_layout}


def stage_reversed(root: str, action: Action, sandbox: str, link_large: bool = False) -> None:
    """Create what `stage` creates, with the entries of every folder made in reverse order.

    `stage` creates, in each folder, first the subfolders (in order of first appearance),
    then the input files (in input order). Here each folder's children are created last to
    first, each folder before its contents, so a creation-ordered readdir lists them reversed
    (`posbuild verify`). What it made is not returned: `remove_tree` lists such a sandbox.
    """
    exec_root = sandbox + "/exec"
    os.makedirs(exec_root)
    os.mkdir(sandbox + "/tmp")
    children: dict[str, list[str]] = {"": []}
    for path in (*action.inputs, *action.outputs):  # folders, as `stage` makes them
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth])
            if folder not in children:
                children[folder] = []
                children["/".join(parts[:depth - 1])].append(folder)
    for path in action.inputs:
        children[os.path.dirname(path)].append(path)
    pending = list(children[""])  # a stack: popping takes the last-created entry first
    while pending:
        path = pending.pop()
        if path in children:
            os.mkdir(f"{exec_root}/{path}")
            pending.extend(children[path])
        else:
            _stage_file(root + path, f"{exec_root}/{path}", link_large)


def _stage_file(source: str, target: str, link_large: bool = False) -> None:
    """Copy one input into the sandbox, keeping its executable bit. A large one is cloned where
    the file system can (a reflink: instant, and a write lands in the copy), else copied too; with
    `link_large` (the namespace sandbox, which binds it read-only in place) it is symlinked.

    A plain open/sendfile/close: `shutil.copy` would add four `stat` calls and a `chmod`.
    """
    fd_in = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd_in)
        if stat.S_ISDIR(info.st_mode):
            _stage_folder(fd_in, target)
            return
        if link_large and info.st_size >= LINK_LIMIT:
            os.symlink(source, target)
            return
        fd_out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         info.st_mode & 0o777)
        try:
            if info.st_size >= LINK_LIMIT and _clone(fd_in, fd_out):
                return
            offset = 0
            while offset < info.st_size:
                sent = os.sendfile(fd_out, fd_in, offset, info.st_size - offset)
                if sent == 0:
                    break
                offset += sent
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)


def _stage_folder(fd_in: int, target: str) -> None:
    """Copy a folder input (another action's folder output) whole, links never followed: its
    files keep their read-only modes, its folders are the sandbox's own (removable)."""
    os.mkdir(target)
    with os.scandir(fd_in) as listing:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in listing]
    for name, is_folder in entries:
        if is_folder:
            child = os.open(name, _FOLDER, dir_fd=fd_in)
            try:
                _stage_folder(child, f"{target}/{name}")
            finally:
                os.close(child)
        else:
            _stage_file(f"/proc/self/fd/{fd_in}/{name}", f"{target}/{name}")


_FICLONE = 0x40049409  # ioctl: share the source's blocks copy-on-write (btrfs, XFS, bcachefs ...)


def _clone(fd_in: int, fd_out: int) -> bool:
    """Make `fd_out` a reflink of `fd_in`; False where the file system cannot (then copy)."""
    try:
        fcntl.ioctl(fd_out, _FICLONE, fd_in)
    except OSError:
        return False
    return True


def remove_tree(path: str, layout: Made | None = None) -> None:
    """Remove a sandbox folder and everything in it.

    Like `shutil.rmtree`, it walks folders by file descriptor and never follows a symbolic link
    (a command may leave one pointing anywhere), with fewer system calls per folder, which
    counts when every action makes and removes one. Given the `layout` staging made, it removes
    those names without listing any folder, and lists what is left only when something else is
    there (or a name is now something else). Anything unexpected is left to rmtree.
    """
    if isinstance(layout, Staged):
        if native.remove(path, layout.paths, layout.count):
            return
        layout = None  # something else is there: list and remove what is left
    try:
        fd = os.open(path, _FOLDER)
    except FileNotFoundError:
        return
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        _empty_folder(fd, layout)
        os.rmdir(path)
        return
    except OSError:
        pass
    finally:
        os.close(fd)
    if layout is not None:
        remove_tree(path)  # something else is there: list and remove what is left
    else:
        shutil.rmtree(path, ignore_errors=True)


def _empty_folder(fd: int, layout: Layout | None = None) -> None:
    """Remove what a folder holds: the entries `layout` names (a file already gone is fine), or
    without a layout whatever a listing finds. Subfolders are opened without following links."""
    entries: list[tuple[str, bool, Layout | None]]
    if layout is None:
        with os.scandir(fd) as listing:
            entries = [(entry.name, entry.is_dir(follow_symlinks=False), None) for entry in listing]
    else:
        entries = [(name, inner is not None, inner) for name, inner in layout.items()]
    for name, is_folder, inner in entries:
        if not is_folder:
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:  # an output not made, or already moved out
                pass
            continue
        child = os.open(name, _FOLDER, dir_fd=fd)
        try:
            _empty_folder(child, inner)
        finally:
            os.close(child)
        os.rmdir(name, dir_fd=fd)

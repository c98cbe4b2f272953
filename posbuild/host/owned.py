"""Layer 0: the folders posbuild may delete carry a mark it wrote when it made them.

posbuild deletes or empties a folder only if it made it: the store (`.posbuild/store` or
`[cache] dir`), the sandbox base, and `.posbuild/` itself each hold a `CACHEDIR.TAG` that posbuild
wrote when it created the folder (Bazel marks its output base, CMake its build tree, Cargo its
`target/` the same way). The file follows the Cache Directory Tagging specification
(https://bford.info/cachedir/), so backup tools skip these folders (`tar --exclude-caches`,
borg, restic); its second line says which of posbuild's folders it is. A CACHEDIR.TAG written by
another program is not posbuild's: `[cache] dir = "~/.cache"` never makes `clean --all` empty
`~/.cache`.

Folders made before marks existed are adopted the first time posbuild uses them, but only when
they are recognisably posbuild's (`claim`'s `ours`): an empty folder, `.posbuild/` at the
workspace root (its name is reserved; not through a link), a store holding only a store's files
whose LMDB database holds posbuild's format row, a sandbox base holding only names posbuild
gives its sandboxes. Anything else is refused with one
line naming the folder; it is never used, emptied or removed.

`posbuild-out/` has no mark: every file in it is an output (tools and people list it), and its
place is fixed, never configured. It is removed only as a real folder at the workspace root,
never through a symbolic link.

A checkout may come with links where posbuild's folders and files belong (`posbuild-out/pkg`,
`.posbuild/tmp`, `.posbuild/lock`), pointing at any folder or file of the user's. posbuild
writes, sweeps and removes nothing through them: outputs go only into real folders
(`no_links_on_the_way`), a link in place of one of `.posbuild/`'s own folders is removed
(`unlink_planted`), and its locks and logs are opened without following one (`open_own_file`).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path
from typing import Callable, Iterable

from posbuild.errors import WorkspaceError
from posbuild.core.layout import STORE_DB, STORE_LOCK

MARKER = "CACHEDIR.TAG"
SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"  # fixed by the specification
STATE, STORE, SANDBOXES = "state folder", "store", "sandbox base"
# store.py, epoch.py
STORE_NAMES = frozenset({MARKER, STORE_DB, "cas", "epoch", "running", STORE_LOCK, "wal"})
# Names posbuild gives what it makes in a sandbox base (sandbox.py, dask_executor.py).
SANDBOX_NAME = re.compile(r"\d+-\d+.*|\d+\.owner|dask-\d+-\d+|readdir-probe-.*", re.DOTALL)


def _head(kind: str) -> bytes:
    """What a mark of `kind` starts with; the rest of it is prose that may change."""
    return SIGNATURE + b"\n# This file marks posbuild's " + kind.encode() + b":"


def marker_text(kind: str) -> bytes:
    """The mark of one kind of folder."""
    return (_head(kind) + b" posbuild made this folder and may delete what it holds.\n"
            + b"# Backup tools that honour CACHEDIR.TAG skip it; see https://bford.info/cachedir/\n")


def open_own_file(path: Path, flags: int = os.O_RDWR | os.O_APPEND) -> int:
    """Open (creating it) a file posbuild keeps in one of its folders: a lock or a log. Never
    through a link at its name, which a checkout may come with: opening it would create or
    append to any file the user may write (OSError ELOOP instead)."""
    return os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def is_marked(folder: Path, kind: str) -> bool:
    """Whether `folder` holds posbuild's mark of `kind` (read, not just seen: this decides a
    deletion)."""
    try:
        fd = os.open(folder / MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.read(fd, 4096).startswith(_head(kind))
    finally:
        os.close(fd)


def claim(folder: Path, kind: str, ours: Callable[[Path], bool], what: str = "") -> None:
    """Make `folder` (and its parents) with posbuild's mark, or check that the existing one is
    posbuild's: marked, empty, or recognised by `ours` (then it is marked now). Anything else is a
    WorkspaceError naming the folder; `what` says where it was configured. One small read when
    marked. A CACHEDIR.TAG of another program's does not count."""
    if is_marked(folder, kind):
        return
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        if not folder.is_dir():
            raise WorkspaceError(
                f"{folder}: not a folder; posbuild cannot use it as its {kind}{what}") from None
        with os.scandir(folder) as listing:
            # another posbuild making this folder right now leaves its mark's temp file first
            names = [entry.name for entry in listing if not entry.name.startswith(f".{MARKER}.")]
        if names and not is_marked(folder, kind) and not ours(folder):
            raise WorkspaceError(
                f"{folder}: holds files posbuild did not make (and no {MARKER} of posbuild's); "
                f"refusing to use it as the {kind}{what}: choose a new or empty folder") from None
    except OSError as error:
        raise WorkspaceError(f"{folder}: cannot make the {kind}{what}: {error.strerror}") from None
    _write_marker(folder, kind)


def _write_marker(folder: Path, kind: str) -> None:
    """Write the mark by temp file and rename: a crash leaves the old state, never half a mark."""
    temp = folder / f".{MARKER}.{os.getpid()}"
    try:
        temp.write_bytes(marker_text(kind))
        os.replace(temp, folder / MARKER)
    except OSError as error:
        temp.unlink(missing_ok=True)
        raise WorkspaceError(f"{folder}: cannot write {MARKER}: {error.strerror}") from None


def is_store(folder: Path) -> bool:
    """Whether `folder` is a store made before marks existed: it holds only what a store holds, and
    its LMDB files hold posbuild's format row."""
    if not (folder / STORE_DB / "data.mdb").is_file():
        return False
    if not all(name in STORE_NAMES or name.startswith(".tmp-") for name in os.listdir(folder)):
        return False
    import lmdb  # only when a store is adopted

    try:
        env = lmdb.open(str(folder / STORE_DB), readonly=True, lock=False, max_dbs=16)
    except lmdb.Error:
        return False
    try:
        with env.begin() as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            return txn.get(b"format", db=meta) is not None
    except lmdb.Error:
        return False
    finally:
        env.close()


def holds_only_sandboxes(folder: Path) -> bool:
    """Whether every entry of `folder` has a name posbuild gives what it makes in a sandbox base."""
    return all(SANDBOX_NAME.fullmatch(name) for name in os.listdir(folder) if name != MARKER)


def empty(folder: Path, kind: str, keep: Iterable[str] = ()) -> int:
    """Delete what `folder` holds except its mark and the names in `keep` (lock files others may
    be waiting on); returns how many entries went (0 when there is no such folder). Refused
    (WorkspaceError, nothing deleted) unless the folder is a real folder, not a link, holding
    posbuild's mark of `kind`."""
    if not real_folder(folder, kind):
        return 0
    if not is_marked(folder, kind):
        raise WorkspaceError(f"{folder}: refusing to delete it: it holds no {MARKER} of "
                             "posbuild's, so posbuild did not make it (see `posbuild clean "
                             "--help`)")
    kept = {MARKER, *keep}
    doomed = [Path(entry.path) for entry in os.scandir(folder) if entry.name not in kept]
    for path in doomed:
        remove_tree(path)
    return len(doomed)


def remove_outputs(out_dir: Path) -> bool:
    """Delete `posbuild-out/` (False if absent), only as a real folder, never through a link."""
    if not real_folder(out_dir, "output tree"):
        return False
    remove_tree(out_dir)
    return True


def real_folder(path: Path, kind: str) -> bool:
    """False if nothing is there; True for a real folder; a WorkspaceError for anything else (a
    link, a file): posbuild did not make it, and deletes nothing in it."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(mode):
        raise WorkspaceError(f"{path}: is a symbolic link (to {os.readlink(path)}), not the {kind} "
                             f"posbuild made; posbuild deletes nothing through a link")
    if not stat.S_ISDIR(mode):
        raise WorkspaceError(
            f"{path}: is not a folder, so not the {kind} posbuild made; posbuild deletes nothing "
            "there")
    return True


def unlink_planted(folder: Path, names: Iterable[str]) -> None:
    """Remove a symbolic link where one of posbuild's own subfolders of `folder` belongs (a
    checkout may come with `.posbuild/tmp` linked to any folder): posbuild makes the real folder
    when it needs it, and never writes, sweeps or removes through the link. One `lstat()` each."""
    for name in names:
        path = folder / name
        try:
            if stat.S_ISLNK(path.lstat().st_mode):
                path.unlink()
        except FileNotFoundError:
            pass


def no_links_on_the_way(root: Path, folders: Iterable[str]) -> None:
    """Raise a WorkspaceError when a folder on the way from `root` to one of `folders` (paths
    relative to it, such as `posbuild-out/pkg`) is a symbolic link. A checkout may come with
    `posbuild-out/` or a folder in it as a link to any folder of the user's (`~/.ssh`): writing
    an output there, or removing a stale one, would reach outside the workspace. One `lstat()`
    per folder, the folders shared by many outputs looked at once."""
    seen: set[str] = set()
    for folder in folders:
        parts = [part for part in folder.split("/") if part]
        for depth in range(1, len(parts) + 1):
            rel = "/".join(parts[:depth])
            if rel in seen:
                continue
            seen.add(rel)
            path = root / rel
            try:
                mode = path.lstat().st_mode
            except (FileNotFoundError, NotADirectoryError):
                break  # made by posbuild when it writes there
            if stat.S_ISLNK(mode):
                raise WorkspaceError(f"{path}: is a symbolic link (to {os.readlink(path)}), not a "
                                     "folder posbuild made; posbuild writes and removes outputs "
                                     "only in its own folders: remove the link")


def remove_tree(path: Path) -> None:
    """Delete a file or a folder tree without following links inside it. Read-only folders (an
    output's, or an action's own chmod) are made writable first; a name another process removes
    or adds meanwhile is not an error, what is left after a few tries is."""
    if not path.is_dir() or path.is_symlink():
        path.unlink(missing_ok=True)
        return
    for attempt in range(3):
        for folder, _, _ in os.walk(path):  # never follows links
            try:
                os.chmod(folder, 0o700)
            except FileNotFoundError:
                pass
        try:
            shutil.rmtree(path, onerror=_gone_is_fine)
            return
        except OSError as error:
            if attempt == 2:
                raise WorkspaceError(
                    f"{path}: cannot delete it: {error.strerror or error}") from None


def _gone_is_fine(function: object, name: str, info: tuple[type, BaseException, object]) -> None:
    if not isinstance(info[1], FileNotFoundError):
        raise info[1]

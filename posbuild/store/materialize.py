"""Layer 2: put outputs into `posbuild-out/` atomically and read-only, and check them cheaply.

Every file under `posbuild-out/` appears complete in one step, so no reader and no crash ever sees
half of one. A new file is written unnamed in its folder (`O_TMPFILE`) and linked into place once
complete: a crash leaves nothing of it, and no file-system-wide rename lock is taken (two workers
renaming out of one temp folder spent a tenth of a cold build's processor time spinning on it).
A file that replaces another, or one on a file system without `O_TMPFILE`, is written as a temp
file in `.posbuild/tmp` and renamed over its target. Files are made read-only (0444, or 0555 when
executable) so an editor refuses to change them. A materialized file's stat signature goes into
the stat memo, so the next build knows it is intact by one `stat()`. An action's output is taken
out of its sandbox through the descriptors nofollow.py opened, never by a path there. A folder
output is written and checked whole by trees.py; the Materializer only hands it over.

Large outputs (`SHARE_LIMIT` bytes or more) are not copied: `posbuild-out/` gets the store's own
file under `cas/`, as a reflink where the file system can (btrfs, XFS: an independent file
sharing the blocks), else as a hard link (one inode, read-only), else a copy (another file
system). Below the limit a copy costs less than a millisecond and keeps `posbuild-out/` wholly
apart from the store. A hard link is a way to change a blob: an editor told to write the
read-only file anyway (`:w!`, `chmod u+w`) writes into the store's file too. So nothing trusts a
shared file's bytes: its stat signature changes with the edit, so the next build restores the
output; a restore hashes the blob file (as every read of a blob does) and one that no longer
matches its name, while it still has another name, was changed through that link: it is dropped
from the store with every result that names it (`BlobChanged`), and the action runs again.
Cache export and fsck hash the blob files as well, so an edited blob never leaves the store.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from posbuild.core.words import quantity
from posbuild.core.digest import Digest, hash_file
from posbuild.core.records import FileState, OutputFile, Signature, signature
from posbuild.core.tree import Tree
from posbuild.errors import ChecksumMismatch
from posbuild.host.nofollow import Opened, write_all
from posbuild.store.trees import WrittenTree, intact, move_aside, write_tree

if TYPE_CHECKING:
    from typing import Protocol

    from posbuild.store.protocols import Blobs, StatMemo, Sweep

    class OutputStore(Blobs, StatMemo, Sweep, Protocol):
        """What the Materializer reads: blobs to write outputs from, memo rows to check them by;
        and what it removes: a shared blob an edit changed (`drop_changed`)."""

# The stat signature of a memo row committed before its file is put in place (commit.py): no
# file ever has it, so the row settles nothing, but it names the digest the path is getting.
INSTALLING: Signature = (0, 0, 0, 0)
# Outputs this large share the store's file (see above): a copy of 1 MiB costs ~0.3 ms and as
# much disk again; below it a copy is cheaper than the chance of re-running an action whose
# blob an edit changed. Above INLINE_LIMIT (256 KiB), so every shared blob is a file in cas/.
SHARE_LIMIT = 1 << 20


class BlobChanged(ChecksumMismatch):
    """A blob shared with `posbuild-out/` no longer hashes to its name: it was edited there in
    place. It has been dropped from the store; the action that made it must run again."""


def _mode(executable: bool) -> int:
    return 0o555 if executable else 0o444


class Materializer:
    """Writes and checks the files of `posbuild-out/` for one workspace."""

    def __init__(self, root: Path, store: OutputStore, temp_dir: Path) -> None:
        # paths are plain strings here: this runs once per output of every action
        self._root = str(root)
        self._store = store
        self._temp_dir = temp_dir
        self._folders: set[str] = set()
        self._renames = True  # False once a rename from the sandboxes proved to cross file systems
        self._reflinks = True  # False once a reflink failed: this file system has none
        self._asides = itertools.count()  # names of replaced files kept for `discard`

    def clear_temp(self) -> None:
        """Remove temp files a killed build left half-written, and make the folder for new ones.

        Temps live in one folder of their own (on the same file system as `posbuild-out/`, so the
        final rename stays atomic), never beside the outputs, so none can linger there.
        """
        shutil.rmtree(self._temp_dir, ignore_errors=True)
        self._temp_dir.mkdir(parents=True, exist_ok=True)

    def current(self, output: OutputFile) -> FileState | None:
        """The file's state if `posbuild-out/` already holds exactly this output, else None.

        One stat and one memo read: the memo row was written when posbuild put the file there.
        """
        try:
            sig = signature(os.stat(os.path.join(self._root, output.path)))
        except FileNotFoundError:
            return None
        memo = self._store.get_memo(output.path)
        return memo if memo is not None and memo.signature == sig \
            and memo.digest == output.digest else None

    def install(self, produced: Opened, output: OutputFile, data: bytes | None,
                replaced: list[str] | None = None) -> FileState:
        """Put a file an action just produced into place: renamed by its folder's descriptor on
        the same file system, else copied from its descriptor (or `data`, when the caller already
        read it); never by a path through the sandbox, whose folders may be links by now
        (nofollow.py). A rename that moved another file than the one found (something outside
        the sandbox swapped it since) is undone and fails; a file with other names (a hard link
        the action made) is copied. Sandboxes on another file system (a memory one) are learned
        from the first rename that fails, not retried for every file. `replaced`: the file it
        replaces is set aside there for `discard`, not freed now (`_set_aside`)."""
        if data is None and output.size >= SHARE_LIMIT:
            shared = self._install_shared(produced, output)
            if shared is not None:
                return shared
        target = self._target(output)
        # a hard link's other names must not change with it
        if self._renames and produced.stat.st_nlink == 1:
            aside = len(replaced) if replaced is not None else 0
            if replaced is not None:
                self._set_aside(target, replaced)
            try:
                try:
                    os.rename(produced.name, target, src_dir_fd=produced.folder)
                except IsADirectoryError:  # a folder output of this name before
                    move_aside(target, self._temp_dir)
                    os.rename(produced.name, target, src_dir_fd=produced.folder)
            # something outside the sandbox removed it since it was hashed
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT,
                                        "output removed from its sandbox before it was installed",
                                        output.path) from None
            except OSError as error:
                if error.errno != errno.EXDEV:
                    raise
                self._renames = False
                if replaced is not None:  # the copy below sets the file aside itself
                    discard(replaced[aside:])
                    del replaced[aside:]
            else:
                info = os.stat(target, follow_symlinks=False)
                if (info.st_ino, info.st_dev) != (produced.stat.st_ino, produced.stat.st_dev):
                    os.unlink(target)
                    raise OSError(errno.ESTALE,
                                  "output replaced in its sandbox after it was hashed; nothing "
                                  "installed",
                                  output.path)
                # the file checked just above, in posbuild-out/
                os.chmod(target, _mode(output.executable))
                return FileState(signature(os.stat(target)), output.digest)
        if data is not None:
            self._write(target, output, data, replaced)
        else:
            with produced.reading() as fd:
                self._write(target, output, fd, replaced)
        return FileState(signature(os.stat(target)), output.digest)

    def restore(self, output: OutputFile) -> FileState:
        """Write an output from its (verified) blob, as after `posbuild clean` or a hand edit."""
        source = self._store.blob_source(output.digest) if output.size >= SHARE_LIMIT else None
        if isinstance(source, Path):
            return self._restore_large(output, str(source))
        target = self._target(output)
        self._write(target, output, self._store.get_blob(output.digest))
        return FileState(signature(os.stat(target)), output.digest)

    def tree(self, output: OutputFile) -> Tree:
        """The manifest of a folder output, from its verified blob; ValueError if unsound."""
        return Tree.unpack(self._store.get_blob(output.digest))

    def current_tree(self, output: OutputFile) -> WrittenTree | None:
        """A folder output's rows if `posbuild-out/` holds exactly it (trees.py), else None."""
        return intact(self._root, output, self.tree(output), self._store)

    def install_tree(self, output: OutputFile, tree: Tree,
                     held: dict[Digest, bytes]) -> WrittenTree:
        """Write a folder an action just produced, from the bytes in hand (`held`, by digest)
        and the store's blobs for the rest."""
        def blob(digest: Digest) -> bytes:
            data = held.get(digest)
            return data if data is not None else self._store.get_blob(digest)
        return write_tree(self._root, self._temp_dir, output, tree, blob)

    def temp_file(self, name: str) -> Path:
        """A path in the temp folder (emptied by every build) for a file about to be stored."""
        return self._temp_dir / f"{name}.{threading.get_ident()}"

    def restore_tree(self, output: OutputFile) -> WrittenTree:
        """Write a folder output whole from its manifest and blobs, replacing what is there."""
        return write_tree(self._root, self._temp_dir, output, self.tree(output),
                          self._store.get_blob)

    def _restore_large(self, output: OutputFile, source: str) -> FileState:
        """Restore a large output from its blob file, hashed first and never read into memory:
        shared where it can be, else copied from the file."""
        self._check_blob(output, source)
        target = self._target(output)
        shared = self._share(output)
        if shared is not None:
            return shared
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._write(target, output, fd)
        finally:
            os.close(fd)
        return FileState(signature(os.stat(target)), output.digest)

    def _check_blob(self, output: OutputFile, source: str) -> None:
        """Raise unless the blob file hashes to its name: ORCH-03 as any corrupt blob, or
        BlobChanged, after dropping it, when it still has another name (an edit through a link
        into `posbuild-out/` changed it, and a new run is the only way back)."""
        try:
            if hash_file(source) == output.digest:
                return
            linked = os.stat(source).st_nlink > 1
        except FileNotFoundError:
            raise ChecksumMismatch(f"blob file {source} is missing") from None
        if not linked:
            raise ChecksumMismatch(f"blob {output.digest.hex()} ({source}) no longer hashes to "
                                   "its name; run `posbuild fsck --repair`")
        results = drop_changed(self._store, output.digest)
        raise BlobChanged(f"{output.path} was changed in place, and with it the "
                          f"store's file it shares (a hard link): blob {output.digest.hex()[:12]} "
                          f"and {quantity(results, 'cached result')} naming it dropped")

    def _install_shared(self, produced: Opened, output: OutputFile) -> FileState | None:
        """Install a large output the store has taken in (store_external): when the store's file
        is the produced file itself (a hard link: a sandbox on disk), its sandbox name is moved
        into place, so no name of it is left to vanish later (a link count change is a stat
        change to the memo); else the store's file is shared (`_share`). None: copy it."""
        try:
            blob = os.stat(self._store.external_path(output.digest))
        except FileNotFoundError:
            return None
        if (blob.st_ino, blob.st_dev) != (produced.stat.st_ino, produced.stat.st_dev):
            return self._share(output)
        target = self._target(output)
        os.rename(produced.name, target, src_dir_fd=produced.folder)
        info = os.stat(target)
        if (info.st_ino, info.st_dev) != (blob.st_ino, blob.st_dev):
            os.unlink(target)
            raise OSError(errno.ESTALE, "output replaced in its sandbox after it was hashed; "
                          "nothing installed", output.path)
        if info.st_mode & 0o777 != _mode(output.executable):
            os.chmod(target, _mode(output.executable))  # read-only either way
            info = os.stat(target)
        return FileState(signature(info), output.digest)

    def _share(self, output: OutputFile) -> FileState | None:
        """Put the store's file of a large output at its place in `posbuild-out/`: a reflink,
        else a hard link, renamed into place; None where neither works (another file system), or
        where a link would not do (below), with nothing made.

        A hard link only when the store's file has the output's mode and no other name: one
        name in one `posbuild-out/` per blob, since a second one (an equal output elsewhere,
        another workspace sharing the store) would change the first's stat signature (ctime)
        each time it is made or replaced, and each would then be restored again and again."""
        source = str(self._store.external_path(output.digest))
        target = self._target(output)
        mode = _mode(output.executable)
        with contextlib.suppress(FileNotFoundError):
            info, blob = os.stat(target), os.stat(source)
            # already this very file (a run that made the same bytes; a memo gone stale): kept,
            # read-only again if a `chmod -R u+w posbuild-out` reached it
            if (info.st_ino, info.st_dev) == (blob.st_ino, blob.st_dev):
                if info.st_mode & 0o777 != mode:
                    os.chmod(target, mode)
                    info = os.stat(target)
                return FileState(signature(info), output.digest)
        temp = f"{self._temp_dir}/{os.path.basename(target)}.{threading.get_ident()}"
        if not (self._reflinks and _reflink(source, temp, mode)):
            self._reflinks = False  # learned once, as renames are
            try:
                info = os.stat(source)
                if info.st_mode & 0o777 not in (0o444, 0o555):
                    os.chmod(source, 0o444)  # a `chmod -R u+w posbuild-out` reached it
                    info = os.stat(source)
                if info.st_mode & 0o777 != mode or info.st_nlink != 1:
                    return None
                os.link(source, temp)
            except OSError:
                return None
        try:
            try:
                os.rename(temp, target)
            except IsADirectoryError:  # a folder output of this name before
                move_aside(target, self._temp_dir)
                os.rename(temp, target)
        finally:
            # also when `target` was this very file already: rename then leaves both names
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        return FileState(signature(os.stat(target)), output.digest)

    def _target(self, output: OutputFile) -> str:
        target = f"{self._root}/{output.path}"
        folder = os.path.dirname(target)
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        return target

    def _write(self, target: str, output: OutputFile, content: bytes | int,
               replaced: list[str] | None = None) -> None:
        """Write a complete read-only file at `target`: linked in from an unnamed file when the
        path is free, else named in the temp folder (an unnamed file of the target's folder
        linked there, where the system has them) and renamed over it. `replaced`: the file it
        replaces is kept for the caller to `discard` later (below)."""
        mode = _mode(output.executable)
        folder = os.path.dirname(target)
        if not os.path.lexists(target) and _link_unnamed(folder, target, mode, content):
            return
        temp = f"{self._temp_dir}/{os.path.basename(target)}.{threading.get_ident()}"
        try:
            # made in the target's folder, named in the temp folder: `_unnamed` says why
            if not _link_unnamed(folder, temp, mode, content):
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
                try:
                    _fill(fd, content)
                finally:
                    os.close(fd)
            if replaced is not None:
                self._set_aside(target, replaced)
            try:
                os.rename(temp, target)
            except IsADirectoryError:  # a folder output of this name before
                move_aside(target, self._temp_dir)
                os.rename(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    def _set_aside(self, target: str, replaced: list[str]) -> None:
        """Give the file at `target` a second name in the temp folder, added to `replaced`, so
        that the rename over it does not free it: freeing a file's blocks is the dearest part of
        replacing it (on a file system mounted with `discard` more than writing the new one), and
        `discard` can do it once a dependent action no longer waits. A kill leaves the name in the
        temp folder, which the next build and fsck empty."""
        aside = f"{self._temp_dir}/replaced.{os.getpid()}.{next(self._asides)}"
        try:
            os.link(target, aside, follow_symlinks=False)
        except OSError:  # none there, or a folder: nothing to keep
            return
        replaced.append(aside)


def discard(replaced: list[str]) -> None:
    """Delete the files `Materializer.install` set aside as it replaced them (the list is
    emptied)."""
    for path in replaced:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    replaced.clear()


def drop_changed(store: OutputStore, digest: Digest) -> int:
    """Remove a blob that no longer hashes to its name, and every result naming it (they vouch
    for bytes the store no longer has); returns how many results went."""
    results = [key for key, result in store.iter_results() if digest in result.blobs()]
    store.remove(results=results, blobs=[digest])
    return len(results)


_FICLONE = 0x40049409  # ioctl: share the source's blocks copy-on-write (btrfs, XFS ...)


def _reflink(source: str, target: str, mode: int) -> bool:
    """Make `target` a new file sharing `source`'s blocks (a reflink); False, with nothing left
    behind, where the file system cannot."""
    import fcntl

    fd_in = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd_out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            fcntl.ioctl(fd_out, _FICLONE, fd_in)
        except OSError:
            os.close(fd_out)
            os.unlink(target)
            return False
        os.close(fd_out)
        return True
    finally:
        os.close(fd_in)


_proc: int | None = None  # /proc, opened once per process; -1 when unnamed files cannot be linked


def _link_unnamed(folder: str, path: str, mode: int, content: bytes | int) -> bool:
    """Write `content` as an unnamed file made in `folder` and link it in as `path`.

    False, with nothing written, where the file system or the system cannot (no `O_TMPFILE`, no
    `/proc`), or when something appeared at `path` meanwhile: the caller then makes it by name.
    """
    fd = _unnamed(folder, mode)
    if fd is None:
        return False
    try:
        _fill(fd, content)
        # linkat(2) of /proc/self/fd/N with AT_SYMLINK_FOLLOW: a directory fd makes os.link use
        # linkat
        os.link(f"self/fd/{fd}", path, src_dir_fd=_proc, follow_symlinks=True)
    except FileExistsError:
        return False
    finally:
        os.close(fd)
    return True


def _unnamed(folder: str, mode: int) -> int | None:
    """A new file without a name in `folder`'s file system, open for writing, that
    `_link_unnamed` names; None where the file system or the system cannot make or later link one.

    Its inode is placed near `folder`'s: new files of one folder come from the same part of the
    disk. That matters on ext4 without a journal, which skips each inode freed in the last
    minute when it looks for a free one: `.posbuild/tmp/`, where every replaced output used to
    be made and is later freed, took ~550 µs per new file, an output's folder ~100-200 µs."""
    global _proc
    if _proc is None:
        try:
            _proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) \
                if hasattr(os, "O_TMPFILE") else -1
        except OSError:
            _proc = -1
    if _proc < 0:
        return None
    try:
        return os.open(folder, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, mode)
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise


def _fill(fd: int, content: bytes | int) -> None:
    """Write all of `content` (bytes, or the whole file open as descriptor `content`) to `fd`."""
    if isinstance(content, bytes):
        write_all(fd, content)
        return
    offset = 0
    # by offset: the source's own is left alone
    while sent := os.sendfile(fd, content, offset, 1 << 30):
        offset += sent

"""Layer 5: put outputs into `posbuild-out/` atomically and read-only, and check them cheaply.

Every file under `posbuild-out/` appears by `rename()` of a complete file, so no reader and no
crash ever sees half of one. Files are made read-only (0444, or 0555 when executable) so an editor
refuses to change them; and since they are copies, never hard links into the store, even a forced
edit cannot corrupt a blob. A materialized file's stat signature goes into the stat memo, so the
next build knows it is intact by one `stat()`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from pathlib import Path

from posbuild.records import FileState, OutputFile, signature
from posbuild.store import Store


def _mode(executable: bool) -> int:
    return 0o555 if executable else 0o444


class Materializer:
    """Writes and checks the files of `posbuild-out/` for one workspace."""

    def __init__(self, root: Path, store: Store, temp_dir: Path) -> None:
        self._root = root
        self._store = store
        self._temp_dir = temp_dir
        self._folders: set[Path] = set()

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
        return memo if memo is not None and memo.signature == sig and memo.digest == output.digest else None

    def install(self, produced: Path, output: OutputFile, data: bytes | None) -> FileState:
        """Put a file an action just produced into place: a rename on the same file system,
        else a copy (`data` when the caller already read it) written temp + rename."""
        target = self._target(output)
        os.chmod(produced, _mode(output.executable))
        try:
            os.rename(produced, target)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            self._write(target, output, data if data is not None else produced)
        return FileState(signature(os.stat(target)), output.digest)

    def restore(self, output: OutputFile) -> FileState:
        """Write an output from its (verified) blob, as after `posbuild clean` or a hand edit."""
        target = self._target(output)
        self._write(target, output, self._store.get_blob(output.digest))
        return FileState(signature(os.stat(target)), output.digest)

    def _target(self, output: OutputFile) -> Path:
        target = self._root / output.path
        if target.parent not in self._folders:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(target.parent)
        return target

    def _write(self, target: Path, output: OutputFile, content: bytes | Path) -> None:
        """Write a complete read-only file beside `target`, then rename it over `target`."""
        temp = self._temp_dir / f"{target.name}.{threading.get_ident()}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _mode(output.executable))
        try:
            try:
                if isinstance(content, bytes):
                    view = memoryview(content)
                    while view:
                        view = view[os.write(fd, view):]
                else:
                    with open(content, "rb") as source, os.fdopen(fd, "wb", closefd=False) as handle:
                        shutil.copyfileobj(source, handle, 1 << 20)
            finally:
                os.close(fd)
            os.rename(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

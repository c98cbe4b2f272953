"""Layer 5: put outputs into `posbuild-out/` atomically and read-only, and check them cheaply.

Every file under `posbuild-out/` appears by `rename()` of a complete file, so no reader and no
crash ever sees half of one. Files are made read-only (0444, or 0555 when executable) so an editor
refuses to change them; and since they are copies, never hard links into the store, even a forced
edit cannot corrupt a blob. A materialized file's stat signature goes into the stat memo, so the
next build knows it is intact by one `stat()`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from posbuild.records import FileState, OutputFile, signature
from posbuild.store import Store


def _mode(executable: bool) -> int:
    return 0o555 if executable else 0o444


class Materializer:
    """Writes and checks the files of `posbuild-out/` for one workspace."""

    def __init__(self, root: Path, store: Store) -> None:
        self._root = root
        self._store = store

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

    def install(self, produced: Path, output: OutputFile) -> FileState:
        """Move a file an action just produced into place (same file system: a plain rename)."""
        os.chmod(produced, _mode(output.executable))
        target = self._root / output.path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(produced, target)
        return FileState(signature(os.stat(target)), output.digest)

    def restore(self, output: OutputFile) -> FileState:
        """Write an output from its (verified) blob, as after `posbuild clean` or a hand edit."""
        data = self._store.get_blob(output.digest)
        target = self._root / output.path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(temp, _mode(output.executable))
            os.rename(temp, target)
        except BaseException:
            os.unlink(temp)
            raise
        return FileState(signature(os.stat(target)), output.digest)

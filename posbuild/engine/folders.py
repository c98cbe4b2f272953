"""Layer 1: judging a run's folder outputs (`out_dirs`) before anything of them is kept.

A folder an action declared must hold only regular files and folders: a symbolic link (which
could name anything on the host), a FIFO, a socket or a device is refused, the run fails as one
that missed a declared output, and nothing of it is kept. Reading a folder's files (to look for
a secret's value) goes through descriptors, as every output does (store/trees.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from posbuild.core.action import Action
from posbuild.engine.outcome import Failure
from posbuild.exec.spawner import SpawnResult
from posbuild.host.nofollow import fd_path
from posbuild.store.trees import members, refusal


def refused_folder(action: Action, spawn: SpawnResult) -> Failure | None:
    """Why a folder output of a finished run cannot be kept, or None."""
    for path in action.out_dirs:
        found = spawn.output(path)
        why = refusal(found.folder, found.name)
        if why is not None:
            return Failure(f"declared output folder '{path}' holds {why.kind} '{why.path}'; a "
                           "folder output may hold only regular files and folders, and nothing "
                           "was kept", "missing output")
    return None


@contextlib.contextmanager
def output_files(action: Action, spawn: SpawnResult, path: str) -> Iterator[list[Path]]:
    """The files of one output of a finished run, as paths valid in the block: the file itself,
    or every file of a folder output."""
    found = spawn.output(path)
    if path in action.out_dirs:
        with members(found.folder, found.name) as paths:
            yield [Path(p) for p in paths.values()]
        return
    with found.reading() as fd:
        yield [Path(fd_path(fd))]

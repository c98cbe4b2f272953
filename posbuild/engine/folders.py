"""Layer 1: judging a run's folder outputs (`out_dirs`) before anything of them is kept.

A folder an action declared must hold only regular files and folders: a symbolic link (which
could name anything on the host), a FIFO, a socket or a device is refused, the run fails as one
that missed a declared output, and nothing of it is kept. Reading a folder's files (to look for
a secret's value) goes through descriptors, as every output does (store/trees.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from posbuild.core.action import Action
from posbuild.core.compare import first_file_difference, format_difference
from posbuild.core.records import OutputFile
from posbuild.core.tree import Tree
from posbuild.engine.outcome import Failure
from posbuild.exec.spawner import SpawnResult
from posbuild.host.nofollow import fd_path
from posbuild.store.trees import members, refusal

if TYPE_CHECKING:
    from posbuild.store.protocols import Blobs


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
def output_files(action: Action, spawn: SpawnResult, path: str) -> Iterator[Iterator[Path]]:
    """The files of one output of a finished run, for the block: the file itself, or every file
    of a folder output, each path valid until the next is taken."""
    found = spawn.output(path)
    if path in action.out_dirs:
        with members(found.folder, found.name) as files:
            yield (Path(p) for p in files.each())
        return
    with found.reading() as fd:
        yield iter([Path(fd_path(fd))])


def differs_from_cached(store: Blobs, cached: OutputFile, spawn: SpawnResult,
                        label: str = "this run") -> str | None:
    """The first difference between a run's folder output and the cached manifest's files, in
    words (the file that one side lacks, or the first differing bytes), or None."""
    tree = Tree.unpack(store.get_blob(cached.digest))
    recorded = {f.path: f for f in tree.files}
    found = spawn.output(cached.path)
    with members(found.folder, found.name) as produced:
        only = sorted(set(produced.names) ^ set(recorded))
        if only:
            which = label if only[0] in produced.names else "the cached result"
            return f"{cached.path}/{only[0]}: only {which} has it"
        for rel in produced.names:
            blob = store.get_blob(recorded[rel].digest)
            with produced.opened(rel) as path:
                size_cached, size_new, offset = first_file_difference(blob, path)
                if offset is not None:
                    return format_difference(f"{cached.path}/{rel}", "the cached result",
                                             size_cached, label, size_new, offset, blob, path)
    return None

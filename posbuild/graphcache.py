"""Layer 6: reuse the analysed ActionGraph of a request while nothing it was built from changed.

Evaluating BUILD files and analysing thousands of targets costs far more than the 100 ms §15
allows for DAG resolution, and almost never changes between builds. The cache entry of a request
(its patterns) holds the ActionGraph plus what it was derived from: the stat of every folder of
the workspace (a new file, a deleted file or a new package changes its folder's mtime), of every
BUILD/.bzl file read, and of posbuild.toml. Checking the entry is a few hundred `stat()` calls.

Entries are msgpack files under `.posbuild/graphs/`, written temp + rename; a damaged or
outdated one is simply ignored and rebuilt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

import msgpack

from posbuild import __version__
from posbuild.analysis import ACTION_SCHEMA, Action, ActionGraph
from posbuild.atomic import write_atomically
from posbuild.digest import hash_canonical
from posbuild.stamps import file_stamp, stamps_current

CACHE_FORMAT = 1
_decoded: dict[Path, tuple[tuple[int, int, int], Any, Any, ActionGraph]] = {}  # the last entry decoded
Stamp = tuple[str, int]  # (workspace-relative path, mtime_ns or a stat fingerprint)


def _file_stamps(root: Path, files: Sequence[str]) -> list[Stamp]:
    return [(rel, file_stamp(str(root), rel)) for rel in sorted(files)]


class GraphCache:
    """One folder of cached ActionGraphs, keyed by request."""

    def __init__(self, root: Path, folder: Path) -> None:
        self._root = root
        self._folder = folder

    def _entry(self, request: Sequence[str]) -> Path:
        return self.stem(request).with_suffix(".graph")

    def stem(self, request: Sequence[str]) -> Path:
        """The path, without suffix, of everything kept per request (graph, up-to-date state)."""
        return self._folder / hash_canonical([CACHE_FORMAT, list(request)]).hex()[:32]

    def load(self, request: Sequence[str]) -> ActionGraph | None:
        """The cached graph for `request` if every stamp still matches, else None.

        A process that builds again and again (`posbuild watch`) keeps the last entry it decoded:
        while the entry file is the same file (entries are replaced by rename, so a rewritten one
        has another inode), only its stamps are checked again.
        """
        path = self._entry(request)
        try:
            info = os.stat(path)
        except OSError:
            return None
        signature = (info.st_ino, info.st_mtime_ns, info.st_size)
        kept = _decoded.get(path)
        if kept is not None and kept[0] == signature:
            _, dirs, files, graph = kept
        else:
            try:
                data = path.read_bytes()
                entry = msgpack.unpackb(data, use_list=False)
            except (OSError, ValueError, msgpack.UnpackException):
                return None
            if not isinstance(entry, tuple) or len(entry) != 5 or entry[0] != _version():
                return None
            _, dirs, files, rows, requested = entry
            graph = ActionGraph(tuple(map(Action._make, rows)), requested, data)
            _decoded.clear()
            _decoded[path] = (signature, dirs, files, graph)
        if not stamps_current(str(self._root), dirs, files):
            return None
        return graph

    def save(self, request: Sequence[str], graph: ActionGraph, dirs: Sequence[Stamp], files: Sequence[str]) -> bytes:
        """Write the entry; returns its bytes (the build records refer to them)."""
        rows = [_action_row(a) for a in graph.actions]
        entry = [_version(), list(dirs), _file_stamps(self._root, files), rows, list(graph.requested)]
        data = msgpack.packb(entry, use_bin_type=True)
        write_atomically(self._entry(request), data)
        return data


def actions_of_entry(data: bytes) -> tuple[Action, ...]:
    """The Actions of a graph cache entry, whatever its stamps (for reading old build records)."""
    entry = msgpack.unpackb(data, use_list=False)
    return tuple(map(Action._make, entry[3])) if entry and entry[0] == _version() else ()


def _version() -> str:
    """Changes whenever a cached graph could no longer be read back as the same Actions.

    The interpreter is part of it because py_task commands name the one running posbuild.
    """
    return f"{CACHE_FORMAT}/{ACTION_SCHEMA}/{__version__}/{sys.executable}/{','.join(Action._fields)}"


def _action_row(action: Action) -> list[Any]:
    """The Action's fields in declaration order, so that `Action._make(row)` rebuilds it."""
    return list(action)

"""Layer 3: reuse the analysed ActionGraph of a request while nothing it was built from changed.

Evaluating BUILD files and analysing thousands of targets costs far more than the 100 ms §15
allows for DAG resolution, and almost never changes between builds. The cache entry of a request
(its patterns) holds the ActionGraph plus what it was derived from: the stamp of every folder of
the workspace (a new file, a deleted file or a new package changes its entries), of every
BUILD/.bzl file and data file (`read_json`, ...) read, and of posbuild.toml; and the
configuration values BUILD files may read (`[vars]` with `--define` over them). Checking the
entry is a few hundred `stat()` calls, plus a hash of each path changed too close to the load
for its stamp to be trusted (stamps.py).

Entries are msgpack files under `.posbuild/graphs/`, written temp + rename; a damaged or
outdated one is simply ignored and rebuilt. An entry is one array of eight elements:

    [version (`_version()`), vars [[key, value]...], folder stamps [[path, stamp]...],
     file stamps [[path, stamp]...],
     requested (the files the requested targets name), GraphFacts fields, racy digests
     {path: digest},
     action rows (each Action's fields in order)]

Everything before the action rows is small, and the rows are decoded only when needed
(CachedGraph). This module is the only one that reads or writes an entry.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import msgpack

from posbuild import __version__
from posbuild.core.action import ACTION_SCHEMA, Action, ActionGraph, GraphFacts, facts_of
from posbuild.load.analysis import CHECKS
from posbuild.host.atomic import write_atomically
from posbuild.core.digest import Digest, hash_bytes, hash_canonical
from posbuild.load.stamps import file_stamp, racy_digests, stamps_current

CACHE_FORMAT = 5
# the last entry opened
_decoded: dict[Path, tuple[tuple[int, int, int], Any, Any, Any, Any, "CachedGraph"]] = {}
Stamp = tuple[str, int]  # (workspace-relative path, mtime_ns or a stat fingerprint)


def _file_stamps(root: Path, files: Sequence[str]) -> list[Stamp]:
    return [(rel, file_stamp(str(root), rel)) for rel in sorted(files)]


class CachedGraph:
    """A current graph cache entry whose actions are decoded only when first asked for: a build
    that finds nothing to do reads the facts and never pays for decoding thousands of actions."""

    __slots__ = ("raw", "requested", "facts", "_rows_at", "_graph", "_digest")

    def __init__(self, raw: bytes, requested: tuple[str, ...], facts: GraphFacts, rows_at: int,
                 graph: ActionGraph | None = None) -> None:
        self.raw = raw
        self.requested = requested
        self.facts = facts
        self._rows_at = rows_at
        self._graph = graph
        self._digest: Digest | None = None

    @property
    def digest(self) -> Digest:
        """The entry's content digest: what the up-to-date state and the build records name it
        by."""
        if self._digest is None:
            self._digest = hash_bytes(self.raw)
        return self._digest

    def graph(self) -> ActionGraph:
        if self._graph is None:
            rows = msgpack.unpackb(memoryview(self.raw)[self._rows_at:], use_list=False)
            self._graph = ActionGraph(tuple(map(Action._make, rows)), self.requested,
                                       self.facts.environments(), raw=self.raw)
        return self._graph


class GraphCache:
    """One folder of cached ActionGraphs, keyed by request."""

    def __init__(self, root: Path, folder: Path,
                 variables: tuple[tuple[str, str], ...] = ()) -> None:
        self._root = root
        self._folder = folder
        # what config() answers: a graph evaluated under other values is no graph of this one
        self._vars = tuple(map(tuple, variables))
        # made just before a load: what changed since is racy (stamps.py)
        self._since = time.time_ns()

    def _entry(self, request: Sequence[str]) -> Path:
        return self.stem(request).with_suffix(".graph")

    def stem(self, request: Sequence[str]) -> Path:
        """The path, without suffix, of everything kept per request (graph, up-to-date state)."""
        return self._folder / hash_canonical([CACHE_FORMAT, list(request)]).hex()[:32]

    def load(self, request: Sequence[str]) -> CachedGraph | None:
        """The cached entry for `request` if it was evaluated with the same `[vars]` and
        `--define` values and every stamp still matches, else None.

        A process that builds again and again (`posbuild watch`) keeps the last entry it opened:
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
            _, variables, dirs, files, racy, cached = kept
        else:
            try:
                data = path.read_bytes()
                opened = _open_entry(data)
            except (OSError, ValueError, TypeError, msgpack.UnpackException):
                return None
            if opened is None:
                return None
            variables, dirs, files, racy, cached = opened
            _decoded.clear()
            _decoded[path] = (signature, variables, dirs, files, racy, cached)
        if variables != self._vars or not stamps_current(str(self._root), dirs, files, racy):
            return None
        return cached

    def save(self, request: Sequence[str], graph: ActionGraph, dirs: Sequence[tuple[str, bytes]],
             files: Sequence[str], read: dict[str, Digest] | None = None) -> CachedGraph:
        """Write the entry; returns it as `load` would (the build records refer to its bytes).
        `read`: the digests of the files as loading read them (Loader.digests)."""
        rows = [_action_row(a) for a in graph.actions]
        facts = facts_of(graph.actions, graph.py_envs)
        racy = racy_digests(str(self._root), [*(rel for rel, _ in dirs), *files], self._since, read)
        entry = [_version(), [list(pair) for pair in self._vars], list(dirs),
                 _file_stamps(self._root, files), list(graph.requested), list(facts), racy, rows]
        data = msgpack.packb(entry, use_bin_type=True)
        write_atomically(self._entry(request), data)
        return CachedGraph(data, graph.requested, facts, -1, replace(graph, raw=data))


def _open_entry(data: bytes) -> tuple[Any, Any, Any, Any, CachedGraph] | None:
    """(vars, folder stamps, file stamps, racy digests, entry) of an entry's bytes, reading
    everything but the actions."""
    unpacker = msgpack.Unpacker(use_list=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    if unpacker.read_array_header() != 8 or unpacker.unpack() != _version():
        return None
    variables = unpacker.unpack()
    dirs, files, requested = unpacker.unpack(), unpacker.unpack(), unpacker.unpack()
    facts = GraphFacts(*unpacker.unpack())
    racy = unpacker.unpack()
    if not isinstance(racy, dict):
        return None
    return variables, dirs, files, racy, CachedGraph(data, requested, facts, unpacker.tell())


def files_of_entry(data: bytes) -> tuple[str, ...]:
    """The BUILD, .bzl, data, Python and config files an entry was derived from (what watch must
    watch besides sources), without decoding its actions; () for bytes that are no entry."""
    try:
        opened = _open_entry(data) if data else None
    except (ValueError, TypeError, msgpack.UnpackException):
        return ()
    return tuple(str(rel) for rel, _ in opened[2]) if opened is not None else ()


def actions_of_entry(data: bytes) -> tuple[Action, ...]:
    """The Actions of a graph cache entry, whatever its stamps (for reading old build records)."""
    try:
        opened = _open_entry(data)
    except (ValueError, TypeError, msgpack.UnpackException):
        return ()
    return opened[4].graph().actions if opened is not None else ()


def _version() -> str:
    """Changes whenever a cached graph could no longer be read back as the same Actions.

    The interpreter is part of it because py_task commands name the one running posbuild.
    """
    return (f"{CACHE_FORMAT}/{ACTION_SCHEMA}/{CHECKS}/{__version__}/{sys.executable}/"
            f"{','.join(Action._fields)}/{','.join(GraphFacts._fields)}")


def _action_row(action: Action) -> list[Any]:
    """The Action's fields in declaration order, so that `Action._make(row)` rebuilds it."""
    return list(action)

"""Layer 0: the up-to-date check — which actions a build need not even look up in the store.

This is posbuild's equivalent of Ninja's build log check. Before a build, one pass in dependency
order marks an action *clean* when its definition and the environment are the same as in the
state saved after the last build (upstate.py), every dependency is clean, and every source input
and every output still has the recorded stat signature (for a folder output, also every file
and sub-folder recorded in it). Clean actions are settled with `stat()`
calls only — no file is read, no key is computed, no store row is touched — and never reach the
scheduler.

When the state was saved for the very graph being built and every action then ended well, even
that pass is skipped: `changed_files` compares the saved signatures, as one packed array, with a
fresh `stat()` of each file, so a no-op never decodes the actions at all (session.py), and an edit
hands the pass only the files that changed.

Everything else goes through the rebuilder, which can still reuse a recorded key when the input
digests it computes turn out to be the recorded ones (a touched file, an early cutoff).
"""

from __future__ import annotations

import os
import struct
from itertools import starmap
from pathlib import Path
from typing import Iterable, Sequence

from posbuild.core.action import Action
from posbuild.core.digest import Digest
from posbuild.core.records import Signature, signature
from posbuild.store.upstate import SIGNATURE_ROW, BuildState


def changed_files(state: BuildState, graph: Digest, root: Path) -> frozenset[str] | None:
    """The files of the saved state whose signature changed (or that are gone); None when the
    signatures alone cannot judge the graph.

    They can for a complete state saved for this very graph: every action's definition is the
    recorded one and every file it reads or writes has a recorded signature. The files are
    stat-ed in one pass and compared as one packed array; when some differ, only those are named,
    so that `clean_actions` need not stat anything again.
    """
    if not state.complete or state.graph != graph:
        return None
    base = str(root) + "/"
    try:
        return signature_changes(state, map(os.stat, [base + p for p in state.paths]))
    except (OSError, struct.error):  # a file is gone: look at them one by one
        return frozenset(path for path, row in zip(state.paths,
                                                   SIGNATURE_ROW.iter_unpack(
                                                       state.packed_signatures))
                         if stat_signature(base + path) != row)


def signature_changes(state: BuildState, infos: Iterable[os.stat_result]) -> frozenset[str]:
    """The files of the state whose recorded signature differs from `infos` (a stat of each of
    `state.paths`, in order, taken as they come), compared as one packed array."""
    now = b"".join(starmap(SIGNATURE_ROW.pack, map(signature, infos)))
    recorded = state.packed_signatures
    if now == recorded:
        return frozenset()
    size = SIGNATURE_ROW.size
    return frozenset(path for start, path in zip(range(0, len(now), size), state.paths)
                     if now[start:start + size] != recorded[start:start + size])


def stat_signature(path: str | os.PathLike[str]) -> Signature | None:
    """A file's signature now, or None when it cannot be stat-ed (gone)."""
    try:
        return signature(os.stat(path))
    except OSError:
        return None


def clean_actions(actions: Sequence[Action], state: BuildState, root: Path,
                  touched: frozenset[str] | None = None) -> list[bool]:
    """For each action (in dependency order), whether it is up to date by stat alone.

    The hot loop of a no-op build: written flat, one dict lookup and at most one `stat()` per
    file, each file stat-ed once however many actions read it. `touched`: the only files that
    may have changed since the state was saved (from `changed_files` or the build server's
    watch), given only for a complete state saved for these very actions; None: any file may
    have.
    """
    if touched is not None:
        return _clean_unless_touched(actions, state, touched)
    clean = [False] * len(actions)
    if not state.actions:
        return clean
    traces, files = state.actions, state.signatures
    seen: dict[str, bool] = {}
    base = str(root) + "/"
    stat = os.stat
    for index, action in enumerate(actions):
        trace = traces.get(action.label)
        if trace is None or trace[0] != action.def_hash:
            continue
        ok = True
        for dep in action.deps:
            if not clean[dep]:
                ok = False
                break
        if not ok:
            continue
        paths = (*action.sources, *action.outputs) if not action.out_dirs \
            else _with_members(action, state)
        if paths is None:
            continue
        for path in paths:
            same = seen.get(path)
            if same is None:
                row = files.get(path)
                try:
                    st = stat(base + path)
                    same = row == (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
                except FileNotFoundError:
                    same = False
                seen[path] = same
            if not same:
                ok = False
                break
        clean[index] = ok
    return clean


def _clean_unless_touched(actions: Sequence[Action], state: BuildState,
                          touched: frozenset[str]) -> list[bool]:
    """`clean_actions` when the changed files are known and the state is complete for these
    actions (so every action's trace and every file's row are the recorded ones): an action is
    clean unless it reads or writes a touched file or depends on an action that is not."""
    clean = [True] * len(actions)
    if not touched:
        return clean
    disjoint = touched.isdisjoint
    for index, action in enumerate(actions):
        if not (disjoint(action.sources) and disjoint(action.outputs)):
            clean[index] = False
            continue
        for dep in action.deps:
            if not clean[dep]:
                clean[index] = False
                break
        else:
            if action.out_dirs:
                members = _with_members(action, state)
                clean[index] = members is not None and disjoint(members)
    return clean


def _with_members(action: Action, state: BuildState) -> tuple[str, ...] | None:
    """The files an action with folder outputs reads and writes, with every file and sub-folder
    recorded in those folders (an added or removed file changes its folder's signature); None
    when a folder's members were never recorded."""
    paths = [*action.sources, *action.outputs]
    for folder in action.out_dirs:
        members = state.trees.get(folder)
        if members is None:
            return None
        paths += members
    return tuple(paths)

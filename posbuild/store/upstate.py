"""Layer 2: the up-to-date state — what the last build of a request saw — and the tree marker.

After each build, the state of the request is saved: for every action that ended well, its
definition hash and key; for every file it read or wrote, the stat signature and digest seen in
that build; and the environment key. The check that reads it before the next build is
uptodate.py.

The state is a cache of derived facts: losing it costs one slower build, never a wrong one.
It also names the store's epoch (epoch.py) when it was saved: after a gc or a repair removed rows
from the store, the first build checks each recorded result against the store once (`revalidate`)
and forgets the actions whose result is gone, so they execute again instead of passing for cached.
Signatures of files hashed within the racy window (filestate.py) are recorded only if they have
aged and still hash the same by the end of the build, so a file rewritten within one timestamp
tick is never taken as unchanged.

The tree marker (`.posbuild/tree`) says whether `posbuild-out/` is known to be exactly the latest
generation's tree (generations.py), and lists the outputs failed builds withdrew since.

A folder output (`out_dirs`) is recorded with the signatures of every file and sub-folder in it
(a sub-folder's digest is empty), and `trees` lists them under the folder's path, so that an
edited, added or removed file inside it makes its action not up to date.

Format: msgpack [STATE_FORMAT, env_key, graph, complete, paths, packed signatures (SIGNATURE_ROW
each), msgpack {label: (def_hash, key)}, msgpack {path: digest}, epoch, msgpack {folder output:
[member paths]}].
"""

from __future__ import annotations

import copy
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import msgpack

from posbuild.core.action import Action
from posbuild.host.atomic import write_atomically
from posbuild.workspace.config import Config
from posbuild.core.digest import Digest, hash_bytes
from posbuild.core.layout import STORE_DB, TREE
from posbuild.core.records import FileState, Signature

if TYPE_CHECKING:
    from typing import Protocol

    from posbuild.store.protocols import ActionCache, Blobs

    class _ResultStore(ActionCache, Blobs, Protocol):
        """Results and the blobs they name."""

STATE_FORMAT = 5
# 3: saved before states named the store's epoch; 4: before folder outputs
_FORMATS = (3, 4, STATE_FORMAT)


@dataclass(frozen=True, slots=True)
class ActionTrace:
    """What an action was, and what key it had, when it last ended well."""

    def_hash: Digest
    key: Digest


SIGNATURE_ROW = struct.Struct("<qqQq")  # one packed Signature: (mtime_ns, size, inode, ctime_ns)


class BuildState:
    """The saved state of one request after its last build.

    Rows stay the raw values msgpack returns (label → (def_hash, key), path → signature): the
    check reads tens of thousands of them and builds objects only for the few it uses. The
    signatures are saved as a list of paths and one packed array, because `settled` compares them
    without turning them into Python tuples; traces and file digests are needed only when some
    action is not clean, so they too stay packed until first use. `graph` names the graph cache
    entry the state was saved for, and `complete` says whether every action of it ended well with
    every file signature recorded: then the signatures alone say whether the whole request is still
    up to date. `epoch` is the store's epoch the recorded results were checked against (epoch.py).
    """

    __slots__ = ("env_key", "graph", "complete", "epoch", "paths", "packed_signatures",
                 "_signatures", "_actions", "_packed_actions", "_digests", "_packed_digests", "raw",
                 "_raw_digest", "_trees", "_packed_trees")

    def __init__(self, env_key: Digest, actions: dict[str, tuple[Digest, Digest]] | bytes,
                 signatures: dict[str, Signature] | tuple[Sequence[str], bytes],
                 digests: dict[str, Digest] | bytes,
                 raw: bytes = b"", graph: Digest = b"", complete: bool = False,
                 epoch: bytes = b"",
                 trees: dict[str, tuple[str, ...]] | bytes = b"") -> None:
        # the saved file's bytes, when loaded from one (the build records refer to them)
        self.raw = raw
        self._raw_digest: Digest | None = None
        self.env_key = env_key
        self.graph = graph
        self.complete = complete
        self.epoch = epoch
        if isinstance(signatures, dict):
            self._signatures: dict[str, Signature] | None = signatures
            self.paths: Sequence[str] = tuple(signatures)
            self.packed_signatures = b"".join(SIGNATURE_ROW.pack(*row)
                                              for row in signatures.values())
        else:
            self._signatures = None
            self.paths, self.packed_signatures = signatures
        self._actions = actions if isinstance(actions, dict) else None
        self._packed_actions = actions if isinstance(actions, bytes) else b""
        self._digests = digests if isinstance(digests, dict) else None
        self._packed_digests = digests if isinstance(digests, bytes) else b""
        self._trees = trees if isinstance(trees, dict) else None
        self._packed_trees = trees if isinstance(trees, bytes) else b""

    @property
    def raw_digest(self) -> Digest:
        """The digest of the saved file's bytes, by which the build records name it (hashed
        once: a build server settles many no-ops from one loaded state)."""
        if self._raw_digest is None:
            self._raw_digest = hash_bytes(self.raw)
        return self._raw_digest

    @property
    def signatures(self) -> dict[str, Signature]:
        if self._signatures is None:
            rows = SIGNATURE_ROW.iter_unpack(self.packed_signatures)
            self._signatures = dict(zip(self.paths, rows))
        return self._signatures

    @property
    def actions(self) -> dict[str, tuple[Digest, Digest]]:
        if self._actions is None:
            self._actions = msgpack.unpackb(self._packed_actions, use_list=False) \
                if self._packed_actions else {}
        return self._actions

    @property
    def digests(self) -> dict[str, Digest]:
        if self._digests is None:
            self._digests = msgpack.unpackb(self._packed_digests) if self._packed_digests else {}
        return self._digests

    @property
    def trees(self) -> dict[str, tuple[str, ...]]:
        """Folder output → the paths of its recorded files and sub-folders."""
        if self._trees is None:
            self._trees = msgpack.unpackb(self._packed_trees, use_list=False) \
                if self._packed_trees else {}
        return self._trees

    def as_saved(self, raw: bytes, epoch: bytes) -> BuildState:
        """This state as it reads back from the file it was saved to as `raw` under `epoch`: the
        same rows (shared, as nothing changes a BuildState), already decoded."""
        saved = copy.copy(self)
        saved.raw, saved.epoch, saved._raw_digest = raw, epoch, None
        return saved

    def trace_of(self, action: Action) -> ActionTrace | None:
        """The recorded trace, if the action's definition is the recorded one."""
        row = self.actions.get(action.label)
        return ActionTrace(*row) if row is not None and row[0] == action.def_hash else None

    def file(self, path: str) -> FileState | None:
        sig = self.signatures.get(path)
        return FileState(sig, self.digests[path]) if sig is not None else None


EMPTY = BuildState(b"", {}, {}, {})


# The last state file read in this process, by its path and stat signature, and what it held: a
# build server settles no-op after no-op from the same file (2.8 MB at 10,000 actions, read and
# decoded in ~3 ms). A state file is only ever replaced whole (write_atomically: a new inode),
# and nothing changes a loaded BuildState (what revises it copies it: products.state_for).
_last_loaded: tuple[tuple[str, int, int, int], BuildState] | None = None


def load_state(path: Path, env_key: Digest) -> BuildState:
    """The saved state, or EMPTY when there is none, it is unreadable, or the environment
    differs."""
    state = read_state(path)
    return state if state.env_key == env_key else EMPTY


def read_state(path: Path | str) -> BuildState:
    """The state saved at `path` whatever its environment, EMPTY when there is none or it is
    unreadable; decoded once per version of the file in this process (`_last_loaded`)."""
    global _last_loaded
    try:
        with open(path, "rb") as handle:
            key = _version(path, os.fstat(handle.fileno()))
            last = _last_loaded
            if last is not None and last[0] == key:
                return last[1]
            state = state_from_bytes(handle.read())
    except OSError:
        return EMPTY
    _last_loaded = (key, state)
    return state


def _version(path: Path | str, info: os.stat_result) -> tuple[str, int, int, int]:
    """What tells one version of a state file from another (`_last_loaded`)."""
    return (str(path), info.st_ino, info.st_size, info.st_mtime_ns)


def state_from_bytes(raw: bytes) -> BuildState:
    """A saved state from its bytes, or EMPTY when they are not one."""
    try:
        fields = msgpack.unpackb(raw, use_list=False)
        fmt, saved_env, graph, complete, paths, signatures, actions, digests, *rest = fields
    except (ValueError, TypeError, msgpack.UnpackException):
        return EMPTY
    if fmt not in _FORMATS or len(rest) != {3: 0, 4: 1}.get(fmt, 2) \
            or len(signatures) != len(paths) * SIGNATURE_ROW.size:
        return EMPTY
    return BuildState(saved_env, actions, (paths, signatures), digests, raw, graph=graph,
                      complete=complete, epoch=rest[0] if rest else b"",
                      trees=rest[1] if len(rest) > 1 else b"")


def save_state(path: Path, state: BuildState, epoch: bytes | None = None) -> bytes:
    """Write the state atomically (temp + rename), naming `epoch` (by default the state's own).

    Returns the bytes written: the build records refer to them. The state is also what this
    process reads back from the file while it is this version (`read_state`): the next build a
    server runs finds its rows without decoding them.
    """
    global _last_loaded
    epoch = state.epoch if epoch is None else epoch
    payload = msgpack.packb([
        STATE_FORMAT, state.env_key, state.graph, state.complete, state.paths,
        state.packed_signatures,
        msgpack.packb(state.actions, use_bin_type=True),
        msgpack.packb(state.digests, use_bin_type=True), epoch,
        msgpack.packb(state.trees, use_bin_type=True),
    ], use_bin_type=True)
    written = write_atomically(path, payload)
    _last_loaded = (_version(path, written), state.as_saved(payload, epoch))
    return payload


def revalidate(path: Path | None, state: BuildState, store_dir: Path, epoch: bytes) -> BuildState:
    """The state saved at `path` checked against a store whose epoch moved on since it was saved.

    Something removed rows from the store (gc, `fsck --repair`): an action whose recorded result,
    or a blob of it, is gone is forgotten, so that the build executes it again instead of settling
    it by stat and calling it cached. What is left is saved under the new epoch (unless `path` is
    None: a dry run writes nothing), so only the first build after a gc pays for the check (one
    result and a few blob lookups per recorded action).
    """
    if not state.actions:
        return state
    from posbuild.store.lmdbstore import Store  # LMDB only for the first build after a gc

    traces = state.actions
    if (store_dir / STORE_DB).exists():
        store = Store(store_dir)
        try:
            traces = {label: row for label, row in traces.items() if _result_held(store, row[1])}
        finally:
            store.close()
    else:
        traces = {}
    kept = BuildState(state.env_key, traces, (state.paths, state.packed_signatures), state.digests,
                      graph=state.graph,
                      complete=state.complete and len(traces) == len(state.actions),
                      trees=state.trees)
    if path is None:
        return kept
    return state_from_bytes(save_state(path, kept, epoch))


def _result_held(store: _ResultStore, key: Digest) -> bool:
    """Whether the store still holds the result of `key` and every blob it names."""
    result = store.get_result(key)
    return result is not None and all(store.has_blob(d) for d in result.blobs())


TREE_CLEAN = b"clean\n"
_TREE_DIRTY = b"dirty\n"


def tree_is_clean(config: Config) -> bool:
    """Whether posbuild-out/ is known to be exactly the latest generation's tree (generations.py).

    A build that failed, removed outputs or was interrupted leaves the marker "dirty" (or none),
    so the next build records a generation even if every action is up to date.
    """
    try:
        return (config.state_dir / TREE).read_bytes() == TREE_CLEAN
    except FileNotFoundError:
        return False


def withdrawn_outputs(config: Config) -> frozenset[str]:
    """Outputs that failed builds removed from posbuild-out/ since the latest generation.

    The next generations keep these files' rows (their last successful content) until a build
    produces them again or `posbuild rollback` puts them back, so that rollback restores what a
    failure removed even after successful builds of other targets (generations.py).
    """
    try:
        data = (config.state_dir / TREE).read_bytes()
    except FileNotFoundError:
        return frozenset()
    if not data.startswith(_TREE_DIRTY) or len(data) == len(_TREE_DIRTY):
        return frozenset()
    try:
        return frozenset(msgpack.unpackb(data[len(_TREE_DIRTY):]))
    except (ValueError, TypeError, msgpack.UnpackException):
        return frozenset()


def mark_tree(config: Config, clean: bool, withdrawn: Iterable[str] | None = None) -> None:
    """Record whether posbuild-out/ matches the latest generation (written temp + rename).

    A dirty tree also lists the outputs failed builds withdrew (`withdrawn_outputs`): `withdrawn`
    replaces that list, None keeps it.
    """
    if clean:
        write_atomically(config.state_dir / TREE, TREE_CLEAN)
        return
    paths = sorted(withdrawn_outputs(config) if withdrawn is None else set(withdrawn))
    write_atomically(config.state_dir / TREE,
                     _TREE_DIRTY + (msgpack.packb(paths) if paths else b""))

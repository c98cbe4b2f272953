"""Layer 2: where a result can come from instead of running the command — the local store, then
a remote cache.

A source answers one question, "is there a usable result for this key?", and on a hit leaves the
action settled: its outputs are in `posbuild-out/` (restored from verified blobs where missing)
and in the build's products. The local store answers under the scheduler's lock (a few reads and
stats). A remote cache answers on a worker thread, never under the lock: its HTTP round trips
would stall every other worker (the rebuilder's decision marks the miss "ask the remote").

A verified remote hit is put into the local store first and then settles exactly like a local
hit; any rejected or missing piece is a miss. A remote is never asked for an action whose outputs
may hold a secret (secrets.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from posbuild.core.action import Action
from posbuild.core.digest import Digest
from posbuild.core.records import ActionResult, Commit, FileState, Outcome, OutputFile
from posbuild.core.tree import Tree, tree_outputs
from posbuild.engine.outcome import ActionOutcome
from posbuild.engine.products import BuildProducts
from posbuild.errors import ChecksumMismatch
from posbuild.store.materialize import BlobChanged, Materializer

if TYPE_CHECKING:
    from typing import Protocol

    from posbuild.store.protocols import ActionCache, Blobs, Commits
    from posbuild.store.remote import RemoteCache

    class FetchStore(Blobs, Commits, Protocol):
        """What a remote hit writes: its blobs, then its result and blob rows in one commit."""


def describes(result: ActionResult, action: Action) -> bool:
    """Whether a cached result names exactly the action's declared outputs, its folders as
    folders.

    A result whose key matches always does, unless it was forged or imported from elsewhere: one
    naming other paths (`posbuild-out/../x`) must never be written out, so it counts as a miss
    and the action runs.
    """
    paths = [output.path for output in result.outputs]
    return len(paths) == len(action.outputs) and set(paths) == set(action.outputs) \
        and {o.path for o in result.outputs if o.tree} == set(action.out_dirs)


class LocalResults:
    """Hits from the local store. `dry_run`: nothing is restored (only the digests matter)."""

    def __init__(self, store: ActionCache, materializer: Materializer, products: BuildProducts,
                 dry_run: bool = False, warn: Callable[[str], None] | None = None) -> None:
        self._store = store
        self._materializer = materializer
        self._products = products
        self._dry_run = dry_run
        self._warn = warn  # says why a hit was dropped (a shared blob an edit changed)

    def result(self, action: Action, key: Digest) -> ActionResult | None:
        """The stored result of `key`, if it describes `action`'s outputs."""
        result = self._store.get_result(key)
        return result if result is not None and describes(result, action) else None

    def lookup(self, action: Action, key: Digest) -> ActionOutcome | None:
        """A hit by key: restore any output that `posbuild-out/` lacks, from verified blobs."""
        result = self.result(action, key)
        if result is None:
            return None
        restored: list[tuple[str, FileState]] = []
        for output in result.outputs:
            if output.tree:
                restored += self._folder(output)
                continue
            state = self._materializer.current(output)
            if state is None and self._dry_run:
                state = FileState((0, 0, 0, 0), output.digest)  # would be restored
            elif state is None:
                state = self._restore(action, output)
                if state is None:
                    return None  # its blob is gone: the action runs again
                restored.append((output.path, state))
            self._products.produced[output.path] = state
        # their memo rows ride along with the next commit, as an executed action's do
        self._products.installed(restored)
        self._products.settled(action, key, result.outputs)
        return ActionOutcome(Outcome.CACHED, key)

    def _folder(self, output: OutputFile) -> list[tuple[str, FileState]]:
        """Settle a folder output: as it is when intact, else written whole from the store.
        Returns the memo rows written (none when it was intact)."""
        try:
            written = self._materializer.current_tree(output)
        except ValueError as error:  # a manifest that is no sound one: corrupt, or forged
            raise ChecksumMismatch(f"folder manifest {output.digest.hex()} of '{output.path}' "
                                   f"is unsound ({error}); run `posbuild fsck --repair`") from None
        rows: list[tuple[str, FileState]] = []
        if written is None and self._dry_run:
            self._products.produced[output.path] = FileState((0, 0, 0, 0), output.digest)
            return rows
        if written is None:
            written = self._materializer.restore_tree(output)
            rows = written.memo
        self._products.produced[output.path] = written.state
        self._products.members[output.path] = written.members
        return rows


    def _restore(self, action: Action, output: OutputFile) -> FileState | None:
        """Restore one output from its verified blob; None when the blob, shared with
        `posbuild-out/`, was changed there by an edit (materialize.py) and is dropped."""
        try:
            return self._materializer.restore(output)
        except BlobChanged as error:
            if self._warn is not None:
                self._warn(f"posbuild: warning: {error}; {action.label} runs again")
            return None


class RemoteResults:
    """Hits from a remote cache, taken into the local store and then settled by `local`."""

    def __init__(self, remote: RemoteCache, store: FetchStore, local: LocalResults,
                 temp_dir: Path) -> None:
        self._remote = remote
        self._store = store
        self._local = local
        self._temp_dir = temp_dir

    def fetch(self, action: Action, key: Digest) -> ActionOutcome | None:
        """The remote's result for `key`, verified, stored and restored; None on any miss."""
        entry = self._remote.get_entry(key, action.label)
        if entry is None or not describes(entry.result, action):
            return None
        blobs: list[tuple[Digest, bytes | None]] = []
        temps: list[Path] = []
        fetched: dict[Digest, bytes | Path] = {}
        try:
            for digest, name, size in entry.blobs():
                if self._store.has_blob(digest):
                    continue
                got = self._remote.fetch_blob(digest, name, size, action.label, self._temp_dir)
                if got is None:
                    return None
                if isinstance(got, Path):
                    temps.append(got)
                    self._store.store_external(digest, got)
                blobs.append((digest, got if isinstance(got, bytes) else None))
                fetched[digest] = got
            if not self._folders_whole(entry.result, fetched):
                return None
        finally:
            for temp in temps:
                temp.unlink(missing_ok=True)
        self._store.log([Commit((key, entry.result), tuple(blobs))])
        self._remote.hit()
        return self._local.lookup(action, key)

    def _folders_whole(self, result: ActionResult, fetched: dict[Digest, bytes | Path]) -> bool:
        """Whether every file of the result's folder outputs was fetched or is stored already:
        an entry that lacks one is a miss, as one lacking any blob is."""
        for output in tree_outputs(result):
            got = fetched.get(output.digest)
            try:
                tree = Tree.unpack(self._store.get_blob(output.digest) if got is None
                                   else got if isinstance(got, bytes) else got.read_bytes())
            except (ValueError, OSError, ChecksumMismatch):
                return False
            if any(f.digest not in fetched and not self._store.has_blob(f.digest)
                   for f in tree.files):
                return False
        return True

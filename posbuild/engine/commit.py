"""Layer 4: keep an executed action's result — hash, commit, then install, then share.

The order is the invariant: result, blobs and the execution record are committed at once (to the
store's write-ahead log: one `write()`, replayed after a kill), and only then are the outputs
moved into `posbuild-out/`, so whatever `posbuild-out/` shows of an executed action, the store has
(a kill just after the command loses nothing the next build would not run again). The installed
files' memo rows ride along with the next commit, or with `flush()` at the end of the build;
meanwhile a placeholder row names each path's digest. An executed result is uploaded to the remote
cache once it is in the local store, when this process may upload; an upload never fails the
action, and a result whose outputs may hold a secret is flagged and never shared.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING

from posbuild.core.action import Action
from posbuild.core.digest import Digest, hash_bytes, hash_file
from posbuild.core.layout import NO_CACHE_TAG
from posbuild.core.records import ActionResult, Commit, FileState, OutputFile, RecordState
from posbuild.core.tree import Tree
from posbuild.engine.products import BuildProducts
from posbuild.engine.rebuilder import Miss
from posbuild.engine.scheduler import current_slot
from posbuild.exec.spawner import SpawnResult
from posbuild.host.nofollow import Opened, fd_path, read_small
from posbuild.store.journal import Journal, Row
from posbuild.store.lmdbstore import INLINE_LIMIT
from posbuild.store.materialize import INSTALLING, Materializer
from posbuild.store.trees import RefusedEntry, take

if TYPE_CHECKING:
    from typing import Protocol

    from posbuild.store.protocols import Blobs, Commits
    from posbuild.store.remote import RemoteCache

    class CommitStore(Blobs, Commits, Protocol):
        """What a commit writes: large outputs as files, then one logged commit per action."""


class Committer:
    """Commits the runs of one build that passed every check."""

    def __init__(self, store: CommitStore, materializer: Materializer, products: BuildProducts,
                 journal: Journal | None = None, upload_to: RemoteCache | None = None,
                 carriers: frozenset[str] = frozenset()) -> None:
        self._store = store
        self._materializer = materializer
        self._products = products
        self._journal = journal
        self._upload_to = upload_to if upload_to is not None and upload_to.upload else None
        self._carriers = carriers  # labels of actions whose outputs may hold a secret

    def commit(self, action: Action, spawn: SpawnResult, miss: Miss, started: float,
               ended: float, replaced: list[str] | None = None) -> ActionResult:
        """Hash and store the outputs, commit result, blobs and record at once, then install;
        `replaced` gets the files the outputs replaced, for the caller to discard later
        (materialize.discard)."""
        key = miss.key
        blobs: list[tuple[Digest, bytes | None]] = []
        produced: list[tuple[Opened, OutputFile, bytes | None]] = []
        trees: list[tuple[OutputFile, Tree]] = []
        for path in action.outputs:
            # found without following links; never reached by its path again
            file = spawn.output(path)
            if path in action.out_dirs:
                output, tree = self._take_tree(path, file, blobs)
                trees.append((output, tree))
                continue
            with file.reading() as fd:
                stat, data = read_small(fd, INLINE_LIMIT)
                if data is not None:
                    digest = hash_bytes(data)
                    blobs.append((digest, data))
                else:
                    digest = hash_file(fd_path(fd))
                    self._store.store_external(digest, Path(fd_path(fd)), take=True)
                    blobs.append((digest, None))
            produced.append((file, OutputFile(path, digest, stat.st_size,
                                              bool(stat.st_mode & 0o111)), data))
        outputs = [output for _, output, _ in produced]
        if trees:  # in declaration order, as the result of a run without folders
            order = {path: n for n, path in enumerate(action.outputs)}
            outputs = sorted(outputs + [o for o, _ in trees], key=lambda o: order[o.path])
        stdout_digest, stderr_digest = hash_bytes(spawn.stdout), hash_bytes(spawn.stderr)
        blobs += [(stdout_digest, spawn.stdout), (stderr_digest, spawn.stderr)]
        result = ActionResult(tuple(outputs), spawn.exit_code, stdout_digest, stderr_digest,
                              action.label in self._carriers)
        cached = None if NO_CACHE_TAG in action.tags else (key, result)
        records: list[Row] = []
        if self._journal is not None:
            records.append(self._journal.row(action, RecordState.SUCCESS, key, started, ended,
                                             miss.inputs, [(o.path, o.digest) for o in outputs],
                                             spawn.usage, spawn.exit_code, "", current_slot(),
                                             remote=spawn.remote))
        placeholders = tuple((o.path, FileState(INSTALLING, o.digest)) for o in outputs)
        memo = self._products.take_installed()
        self._store.log((Commit(cached, tuple(blobs), placeholders, (), tuple(records)),
                         Commit(memo=tuple(memo))))
        try:
            installed = [(o.path, self._materializer.install(file, o, data, replaced))
                         for file, o, data in produced]
            installed += self._install_trees(trees, blobs)
        except OSError:  # the result stands (its key is true), but this build failed to show it
            self._products.used.append(key)
            if records:
                self._amend_record(records[0], action, miss, started, ended, spawn)
            raise
        self._products.installed(installed)
        if cached is not None and not result.secret and self._upload_to is not None:
            self._upload_to.put_entry(key, result,
                                      {d: data if data is not None
                                       else self._store.external_path(d) for d, data in blobs},
                                      action.label)
        self._products.produced.update(installed)
        # its gc usage row comes with the build's last commit: one B-tree less per action
        self._products.settled(action, key, outputs, traced=cached is not None)
        return result

    def _take_tree(self, path: str, found: Opened,
                   blobs: list[tuple[Digest, bytes | None]]) -> tuple[OutputFile, Tree]:
        """Hash a produced folder: its files' blobs and its manifest's go into `blobs`."""
        try:
            taken = take(found.folder, found.name, INLINE_LIMIT, self._store.store_external)
        except RefusedEntry as error:  # changed since it was judged
            raise OSError(errno.ESTALE, f"output folder changed after the command ended: {error}",
                          path) from None
        blobs += taken.blobs
        manifest = taken.tree.pack()
        digest = hash_bytes(manifest)
        if len(manifest) <= INLINE_LIMIT:
            blobs.append((digest, manifest))
        else:  # a folder of many thousand files: its manifest is a large blob like any other
            temp = self._materializer.temp_file(digest.hex())
            try:
                temp.write_bytes(manifest)
                self._store.store_external(digest, temp)
            finally:
                temp.unlink(missing_ok=True)
            blobs.append((digest, None))
        return OutputFile(path, digest, taken.tree.size, False, tree=True), taken.tree

    def _install_trees(self, trees: list[tuple[OutputFile, Tree]],
                       blobs: list[tuple[Digest, bytes | None]]) -> list[tuple[str, FileState]]:
        """Write the produced folders into place; their memo rows (folder and files)."""
        if not trees:
            return []
        held = {digest: data for digest, data in blobs if data is not None}
        memo: list[tuple[str, FileState]] = []
        for output, tree in trees:
            written = self._materializer.install_tree(output, tree, held)
            self._products.members[output.path] = written.members
            memo += written.memo
        return memo

    def _amend_record(self, committed: Row, action: Action, miss: Miss, started: float,
                      ended: float, spawn: SpawnResult) -> None:
        """Turn an executed action's committed SUCCESS record into a FAILED one, under the same
        record key, when installing its outputs failed: the log must say what the build said."""
        assert self._journal is not None
        failed = self._journal.row(action, RecordState.FAILED, miss.key, started, ended,
                                   miss.inputs, (), spawn.usage, spawn.exit_code,
                                   "install failed", current_slot(), remote=spawn.remote)
        self._store.commit(records=[(committed[0], failed[1], failed[2])])

    def flush(self) -> None:
        """Commit the memo rows of the outputs installed since the last transaction (end of the
        build)."""
        memo = self._products.take_installed()
        if memo:
            self._store.commit(memo=memo)

"""Layer 1: what one build knows of its outputs so far — shared by the decision, the run and the
commit.

A dependent's key needs the digests of its generated inputs: those produced (executed or restored)
in this build, else those the saved up-to-date state recorded for an action that was up to date.
Every action that ended with a result leaves here its trace (definition and key, for the next
build's up-to-date check), its outputs' rows (for the generation's manifest) and its key (for the
store's LRU). The memo rows of outputs installed into `posbuild-out/` wait here for the next
commit, so that the stat memo never costs a transaction of its own.

Written from the scheduler's calling thread and from its workers: single dict operations are
atomic under the interpreter lock, and the one list that is swapped whole is guarded.
"""

from __future__ import annotations

import threading
from typing import Iterable, Sequence

from posbuild.core.action import Action
from posbuild.core.digest import Digest
from posbuild.core.records import FileState, OutputFile, Signature
from posbuild.engine.filestate import FileStates
from posbuild.store.upstate import EMPTY, ActionTrace, BuildState


class BuildProducts:
    """The outputs, traces and used keys of one build, on top of the state the last one saved."""

    def __init__(self, previous: BuildState | None = None) -> None:
        self.previous = previous or EMPTY
        self.produced: dict[str, FileState] = {}
        self.traces: dict[str, ActionTrace] = {}
        self.outputs: dict[str, OutputFile] = {}
        self.used: list[Digest] = []
        # folder output → the signature rows of its files and sub-folders (up-to-date check)
        self.members: dict[str, list[tuple[str, FileState]]] = {}
        self._lock = threading.Lock()
        self._installed: list[tuple[str, FileState]] = []  # memo rows not yet committed

    def output_state(self, path: str) -> FileState:
        """An upstream output: produced in this build, or recorded for an up-to-date action."""
        state = self.produced.get(path)
        if state is None:
            state = self.previous.file(path)
            assert state is not None, f"{path} has neither been produced nor recorded"
        return state

    def output_digest(self, path: str) -> Digest:
        """The digest of an output of this build's request: produced now, or as last recorded."""
        state = self.produced.get(path)
        return state.digest if state is not None else self.previous.digests[path]

    def installed(self, rows: Sequence[tuple[str, FileState]]) -> None:
        """Files put into `posbuild-out/`: their memo rows ride along with the next commit."""
        if rows:
            with self._lock:
                self._installed += rows

    def take_installed(self) -> list[tuple[str, FileState]]:
        """The memo rows waiting for a commit, handed over once."""
        with self._lock:
            rows, self._installed = self._installed, []
        return rows

    def settled(self, action: Action, key: Digest, outputs: Iterable[OutputFile] = (),
                traced: bool = True) -> None:
        """`action` ended with the result of `key`: remember its outputs' rows, its trace (unless
        it may not be reused) and that the key was used."""
        self.outputs.update((o.path, o) for o in outputs)
        if traced:
            self.traces[action.label] = ActionTrace(action.def_hash, key)
        self.used.append(key)

    def state_for(self, actions: Sequence[Action], up_to_date: Sequence[bool], env_key: Digest,
                  graph: Digest, files: FileStates | None) -> BuildState:
        """The up-to-date state to save: every action that ended well, and the files it saw.

        Actions found up to date before the build keep their recorded rows unchanged. When the
        last state was saved for this very graph, its rows are those of these actions: they are
        taken whole and only the rows of the actions that were looked at are revised, so that a
        build of a few actions out of many writes a few rows (a row it leaves behind describes
        the file as it was when last seen, which a changed signature invalidates). The state is
        complete when every action ended well and no file it saw was too fresh to record.
        `files` is needed only when some action was not up to date.
        """
        previous = self.previous
        revising = previous.graph == graph
        traces: dict[str, tuple[Digest, Digest]] = dict(previous.actions) if revising else {}
        signatures: dict[str, Signature] = dict(previous.signatures) if revising else {}
        digests: dict[str, Digest] = dict(previous.digests) if revising else {}
        trees: dict[str, tuple[str, ...]] = dict(previous.trees) if revising else {}
        complete = True
        for action, clean in zip(actions, up_to_date):
            if clean:
                if revising:
                    continue
                traces[action.label] = previous.actions[action.label]
                for path in (*action.sources, *action.outputs):
                    signatures[path] = previous.signatures[path]
                    digests[path] = previous.digests[path]
                for folder in action.out_dirs:
                    trees[folder] = previous.trees[folder]
                    for path in trees[folder]:
                        signatures[path] = previous.signatures[path]
                        digests[path] = previous.digests[path]
                continue
            trace = self.traces.get(action.label)
            if trace is None:
                traces.pop(action.label, None)
                complete = False
                continue
            traces[action.label] = (trace.def_hash, trace.key)
            assert files is not None, "an action that ran needs the build's file states"
            # a source hashed too soon after it was written is recorded as to be looked at
            # again (filestate.py)
            states = [(p, files.recorded(p) if p in action.sources else self.output_state(p))
                      for p in action.inputs]
            states += [(p, self.produced[p]) for p in action.outputs]
            for folder in action.out_dirs:
                for gone in trees.pop(folder, ()):
                    signatures.pop(gone, None)
                    digests.pop(gone, None)
                members = self.members.get(folder)
                if members is None:  # settled without being looked at (a dry run)
                    complete = False
                    continue
                trees[folder] = tuple(path for path, _ in members)
                states += members
            for path, state in states:
                if state is not None:
                    signatures[path], digests[path] = state.signature, state.digest
                else:
                    signatures.pop(path, None)
                    digests.pop(path, None)
            complete = complete and all(p in signatures for p in action.sources)
        return BuildState(env_key, traces, signatures, digests, graph=graph, complete=complete,
                          trees=trees)

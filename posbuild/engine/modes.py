"""Layer 4: the two build modes that change what a run means — `--dry-run` and `--verify`.

Each wraps the normal pieces instead of threading a flag through them, as Ninja's dry run is a
command runner of its own. `DryRunExecutor` is a scheduler Executor that makes the decision for
every action and runs none: a miss is planned, and its dependents, whose inputs are unknown until
it runs, are planned after it. `SameAsCached` is one more check of a finished run under
`--verify`: the run's outputs must be byte-identical to the cached result of the same key
(ORCH-04 otherwise, and the cached result is kept).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from posbuild.core.action import Action, may_differ
from posbuild.core.compare import first_file_difference, format_difference
from posbuild.core.records import Outcome
from posbuild.engine.folders import differs_from_cached
from posbuild.engine.outcome import ActionOutcome, Failure
from posbuild.engine.rebuilder import Miss, Rebuilder
from posbuild.engine.scheduler import State
from posbuild.errors import NonDeterminism
from posbuild.exec.spawner import SpawnResult
from posbuild.host.nofollow import fd_path

if TYPE_CHECKING:
    from posbuild.store.protocols import Blobs


class SameAsCached:
    """`--verify`: a re-run whose outputs differ from the cached result of its key fails."""

    def __init__(self, store: Blobs) -> None:
        self._store = store

    def __call__(self, action: Action, spawn: SpawnResult, miss: Miss) -> Failure | None:
        if miss.cached is None:
            return None
        exempt = may_differ(action)
        for output in miss.cached.outputs:
            if output.path in exempt:
                continue
            if output.tree:
                difference = differs_from_cached(self._store, output, spawn)
                if difference is not None:
                    return Failure.of(NonDeterminism(f"{difference}; the cached result is kept"))
                continue
            cached = self._store.get_blob(output.digest)
            with spawn.output(output.path).reading() as fd:
                size_cached, size_new, offset = first_file_difference(cached, fd_path(fd))
                if offset is not None:
                    difference = format_difference(output.path, "the cached result",
                                                   size_cached, "this run", size_new, offset,
                                                   cached, fd_path(fd))
                    return Failure.of(NonDeterminism(f"{difference}; the cached result is kept"))
        return None


class DryRunExecutor:
    """`--dry-run`: which actions a build would execute, each with the reason under `--explain`.

    Run it with keep-going, so that every action the decision can reach is decided. An action
    would execute when its key misses the cache, or when a dependency would execute.
    """

    def __init__(self, actions: Sequence[Action], deps: Sequence[Sequence[int]],
                 rebuilder: Rebuilder, explain: bool) -> None:
        self._actions = actions
        self._deps = deps  # each action's dependencies among `actions`
        self._rebuilder = rebuilder
        self._explain = explain
        self._planned: dict[int, str] = {}

    def prepare(self, node: int) -> ActionOutcome:
        decided = self._rebuilder.check(self._actions[node])
        if isinstance(decided, Miss):
            self._planned[node] = decided.reason
            return ActionOutcome(Outcome.PLANNED)
        if decided.status is Outcome.FAILED:
            self._planned[node] = decided.error if self._explain else ""
        return decided

    def start(self, node: int) -> None:
        raise AssertionError("a dry run starts nothing")

    def wait(self, handle: None) -> bool:
        raise AssertionError("a dry run starts nothing")

    def conclude(self, handle: None) -> ActionOutcome:
        raise AssertionError("a dry run starts nothing")

    def tidy(self, handle: None) -> None:
        raise AssertionError("a dry run starts nothing")

    def succeeded(self, outcome: ActionOutcome) -> bool:
        return outcome.key is not None

    def finished(self, node: int, state: State, outcome: ActionOutcome | None) -> None:
        pass

    def cancel(self) -> None:
        pass

    def planned(self) -> list[tuple[int, str]]:
        """The actions that would execute, in dependency order, with their reasons."""
        planned = dict(self._planned)
        for node, deps in enumerate(self._deps):  # dependencies first: one pass suffices
            if node in planned:
                continue
            upstream = next((dep for dep in deps if dep in planned), None)
            if upstream is not None:
                planned[node] = (f"{self._actions[upstream].label}, which it depends on, would "
                                 "execute" if self._explain else "")
        return sorted(planned.items())

"""Layer 3: the rebuilder's decision — for ONE action, compute its key and say hit or miss.

As in "Build Systems à la Carte", the scheduler decides when an action is looked at and the
rebuilder whether it must run. `check()` runs under the scheduler's lock, never two at once:
input digests (from the stat memo, or from the outputs of upstream actions of this build), the
key, one store lookup, and a stat per output to make sure `posbuild-out/` holds it. A hit ends
there; a miss carries what the run and the commit need (`Miss`). It does no network I/O: when a
remote cache may have the result, the miss says so and the worker that takes the action asks
(sources.py).

Keys are computed only when the saved trace does not settle the action: an action whose inputs
have the digests its last build recorded, and whose outputs are unchanged, reuses its recorded
key. Early cutoff falls out of keying on input *contents*: a re-run that reproduces
byte-identical outputs leaves its dependents' keys unchanged, so they hit the cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from posbuild.core.action import Action, is_generated
from posbuild.core.digest import Digest
from posbuild.core.layout import NO_CACHE_TAG
from posbuild.core.records import ActionResult, Outcome, RecordState, Signature
from posbuild.engine.filestate import FileStates
from posbuild.engine.keys import action_key
from posbuild.engine.outcome import ActionOutcome
from posbuild.engine.plan import BuildEnvironment
from posbuild.engine.products import BuildProducts
from posbuild.engine.sources import LocalResults
from posbuild.engine.why import Explainer
from posbuild.store.journal import Journal


@dataclass(frozen=True, slots=True)
class Miss:
    """An action that must run (or be asked of the remote cache first): its key, the signatures of
    its source inputs when it was checked (a source that changes while it runs fails it), the
    digests of all its inputs (for its record), the result it must reproduce under `--verify`,
    and under `--explain` the reason it runs."""

    key: Digest
    sources: tuple[tuple[str, Signature], ...]
    inputs: tuple[tuple[str, Digest], ...]
    cached: ActionResult | None = None
    reason: str = ""
    ask_remote: bool = False


class Rebuilder:
    """Hit or miss for the actions of one build, keyed on `environment`.

    `explainer`: under `--explain`, says why a miss must run. `verify`: every action runs, and a
    miss carries the cached result the run must reproduce. `asks_remote`: whether a remote cache
    may be asked for an action after a local miss (None: there is no remote to ask). `forced`:
    labels `--rerun` names, which miss whatever the cache holds.
    """

    def __init__(self, files: FileStates, products: BuildProducts, local: LocalResults,
                 environment: BuildEnvironment, journal: Journal | None = None,
                 explainer: Explainer | None = None, verify: bool = False,
                 asks_remote: Callable[[Action], bool] | None = None,
                 forced: frozenset[str] = frozenset()) -> None:
        self._files = files
        self._products = products
        self._local = local
        self._environment = environment
        self._passed_env = environment.passed_env
        self._journal = journal
        self._explainer = explainer
        self._verify = verify
        self._asks_remote = None if verify else asks_remote
        self._forced = forced

    def check(self, action: Action) -> ActionOutcome | Miss:
        """Settle `action` from the local cache if possible; a `Miss` means it must run."""
        digests: list[Digest] = []
        sources: list[tuple[str, Signature]] = []
        for path in action.inputs:
            if is_generated(path):
                digests.append(self._products.output_state(path).digest)
            else:
                try:
                    state = self._files.state(path)
                except FileNotFoundError:
                    return ActionOutcome(Outcome.FAILED, error=f"source file '{path}' is missing")
                digests.append(state.digest)
                sources.append((path, state.signature))
        started = time.time()
        inputs = tuple(zip(action.inputs, digests))
        forced = action.label in self._forced
        cacheable = NO_CACHE_TAG not in action.tags and not forced
        hit = self._reuse_trace(action, digests) if cacheable else None
        key = hit.key if hit is not None else None
        if key is None:
            key = action_key(action, digests, self._environment.env_of(action), self._passed_env)
            hit = self._local.lookup(action, key) if cacheable else None
        if hit is not None and not self._verify:
            self.record_hit(action, hit, started, inputs)
            return hit
        cached = self._local.result(action, key) if self._verify else None
        reason = "" if self._explainer is None else "--rerun names it" if forced \
            else self._explainer.reason(action, inputs, key, cached is not None)
        ask_remote = cacheable and self._asks_remote is not None and self._asks_remote(action)
        return Miss(key, tuple(sources), inputs, cached, reason, ask_remote)

    def record_hit(self, action: Action, hit: ActionOutcome, started: float,
                   inputs: tuple[tuple[str, Digest], ...]) -> None:
        """The execution record of an action settled from a cache (§12: every action gets one)."""
        if self._journal is not None:
            assert hit.key is not None
            outputs = [(p, self._products.produced[p].digest) for p in action.outputs]
            self._journal.add(action, RecordState.CACHED, hit.key, started, time.time(), inputs,
                              outputs)

    def _reuse_trace(self, action: Action, digests: list[Digest]) -> ActionOutcome | None:
        """A hit without computing a key: the inputs and outputs are those of the last build."""
        previous = self._products.previous
        trace = previous.trace_of(action)
        # a folder output is checked file by file on the way through the store (sources.py)
        if trace is None or action.out_dirs:
            return None
        recorded_digests = previous.digests
        for path, digest in zip(action.inputs, digests):
            if recorded_digests.get(path) != digest:
                return None
        outputs = []
        for path in action.outputs:
            recorded = previous.file(path)
            if recorded is None or not self._files.unchanged(path, recorded.signature):
                return None
            outputs.append((path, recorded))
        self._products.produced.update(outputs)
        self._products.settled(action, trace.key)
        return ActionOutcome(Outcome.CACHED, trace.key)

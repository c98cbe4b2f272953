"""Layer 1: `--explain` — the one-line reason an action must run, from its last record.

The decision (rebuilder.py) knows only that a key missed; the reason compares the action's
definition and input digests with the record of its last execution (reasons.py), and the `[env]
pass` variables with those of the build that made that record. Only `--explain` pays for it: one
record read per action that runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from posbuild.core.action import Action
from posbuild.core.digest import Digest
from posbuild.core.reasons import differences, one_line
from posbuild.engine.plan import BuildEnvironment

if TYPE_CHECKING:
    from posbuild.store.protocols import BuildLog


class Explainer:
    """Why actions of one build must run, compared with what the store recorded of them."""

    def __init__(self, store: BuildLog, environment: BuildEnvironment) -> None:
        self._store = store
        self._environment = environment
        self._passed_by_build: dict[str, Sequence[Sequence[str]] | None] | None = None

    def reason(self, action: Action, inputs: tuple[tuple[str, Digest], ...], key: Digest,
               verifying: bool) -> str:
        """The one-line reason `action`, whose inputs and key are these, must run."""
        previous = self._store.latest_record(action.label)
        # skipped last time: compare with the run before
        if previous is not None and previous.key is None:
            previous = next((r for r in reversed(self._store.records_of_label(action.label))
                             if r.key), None)
        passed_before = None
        if previous is not None:
            if self._passed_by_build is None:
                self._passed_by_build = {str(b.number): b.passed_env for b in self._store.builds()}
            passed_before = self._passed_by_build.get(previous.build_id)
        env = self._environment
        reasons = differences(previous, action.command, action.env, action.versions, inputs,
                              env.env_of(action), env.passed_env, passed_before)
        return one_line(previous, reasons, key, verifying,
                        passed_before is None and bool(env.passed_env))

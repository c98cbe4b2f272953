"""Layer 2: why an action ran — the parts of its key that differ from its previous execution.

Reasons are data (as Ninja's explanations and doit's reasons): each names one key component —
an input path whose digest changed, an input added or removed, the command, an env entry, a
variable passed by `[env] pass`, a declared version, the environment hash — with its old and new
values. `posbuild explain` renders them in full, `posbuild build --explain` (and `build -n
--explain`) as one line per action.

An action compared with its previous execution is compared with the one right before it, never
with an older one: when that previous execution had the same key, nothing in the key changed,
and the sentence says why the same key ran again (a failure is never cached; a result that gc
removed is gone). Those sentences, and the ones for failed and skipped actions, live here so that
both commands word them alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence, cast

from posbuild.core.digest import Digest
from posbuild.core.records import ExecutionRecord, RecordState

UNSET = "(unset)"


@dataclass(frozen=True, slots=True)
class Reason:
    """One differing key component."""

    component: str  # "input", "command", "env", "passed", "version", "environment"
    subject: str  # the input path, variable name or version key ("" for command and environment)
    old: str
    new: str

    def __str__(self) -> str:
        if self.component == "command":
            return f"the command changed: {self.old!r} -> {self.new!r}"
        if self.component == "environment":
            return (
                f"the environment hash changed: {self.old} -> {self.new} (see `posbuild env show`)")
        if self.component == "passed":
            return (
                f"variable {self.subject} (passed by [env] pass) changed: {self.old} -> {self.new}")
        what = {"input": "input", "env": "env entry", "version": "version"}[self.component]
        return f"{what} {self.subject} changed: {self.old or '(none)'} -> {self.new or '(none)'}"


def _short(digest: Digest | None) -> str:
    return digest.hex()[:12] if digest else ""


def _pairs(old: Sequence[tuple[str, object]], new: Sequence[tuple[str, object]], component: str,
           render: Callable[[Any], str] = str, absent: str = "") -> list[Reason]:
    before, after = dict(old), dict(new)
    return [
        Reason(component, name, render(before.get(name)) if name in before else absent,
               render(after.get(name)) if name in after else absent)
        for name in sorted(before.keys() | after.keys()) if before.get(name) != after.get(name)
    ]


def differences(previous: ExecutionRecord | None, command: str, env: Sequence[tuple[str, str]],
                versions: Sequence[tuple[str, str]], inputs: Sequence[tuple[str, Digest]],
                env_hash: Digest, passed: Sequence[Sequence[str]] | None = None,
                passed_before: Sequence[Sequence[str]] | None = None) -> list[Reason]:
    """What differs between a previous execution and the action about to run (empty: nothing known).

    `passed` and `passed_before`: the `[env] pass` variables of the two builds (None: not
    recorded)."""
    if previous is None:
        return []
    reasons = _pairs(previous.inputs, inputs, "input", _short)
    if previous.command != command:
        reasons.append(Reason("command", "", previous.command, command))
    reasons += _pairs(previous.env, env, "env")
    if passed is not None and passed_before is not None:
        # [name, value] lists, as msgpack gives them back
        before = cast(Sequence[tuple[str, object]], passed_before)
        now = cast(Sequence[tuple[str, object]], passed)
        reasons += _pairs(before, now, "passed", repr, UNSET)
    reasons += _pairs(previous.versions, versions, "version")
    if previous.env_hash != env_hash:
        reasons.append(Reason("environment", "", _short(previous.env_hash), _short(env_hash)))
    return reasons


def same_key(previous: ExecutionRecord) -> str:
    """Why an action ran again with the key of its previous execution, which nothing changed."""
    where = f"its previous execution (build {previous.build_id}) had the same key"
    if previous.state is RecordState.FAILED:
        return (
            f"{where} and failed ({failure(previous)}); a failure is never cached, so it ran again")
    return (f"{where}, but that result was no longer in the store (removed by `posbuild gc`, or "
            f"never kept), so it ran again")


def failure(record: ExecutionRecord) -> str:
    """A failed execution's cause in words: "exit 3", "killed by signal 9", "ORCH-04 ..."."""
    code = record.error_code
    if code.startswith("signal "):
        return f"killed by {code}"
    if code == "ORCH-04":
        return "ORCH-04: a re-run under --verify produced other bytes than the cached result"
    return code or "failed"


def one_line(previous: ExecutionRecord | None, reasons: Sequence[Reason], key: Digest | None = None,
             verifying: bool = False, passed_unknown: bool = False) -> str:
    """The `build --explain` line for an action that runs (`key`: the key it runs with;
    `passed_unknown`: the previous build's `[env] pass` variables were not recorded)."""
    if verifying:
        return "--verify runs it again to compare with its cached result"
    if previous is None:
        return "no earlier execution is recorded"
    if key is not None and previous.key == key:
        return same_key(previous)
    if not reasons:
        return unexplained(previous, passed_unknown)
    extra = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
    return str(reasons[0]) + extra


def unexplained(previous: ExecutionRecord, passed_unknown: bool = False) -> str:
    """When the key differs from the previous execution's although no recorded component does."""
    passed = " a variable passed by [env] pass (not recorded in that build)," if passed_unknown \
        else ""
    return (f"its command, inputs, env and versions are those of its previous execution (build "
            f"{previous.build_id}), but something else in its key changed:{passed} its outputs, "
            f"tools or secrets, or the action format of posbuild itself")

"""Layer 3: why an action ran — the parts of its key that differ from its previous execution.

Reasons are data (as Ninja's explanations and doit's reasons): each names one key component —
an input path whose digest changed, an input added or removed, the command, an env entry, a
declared version, the environment hash — with its old and new values. `posbuild explain` renders
them in full, `posbuild build --explain` as one line per executed action.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from posbuild.digest import Digest
from posbuild.records import ExecutionRecord


@dataclass(frozen=True, slots=True)
class Reason:
    """One differing key component."""

    component: str  # "input", "command", "env", "version", "environment"
    subject: str  # the input path, env name or version key ("" for command and environment)
    old: str
    new: str

    def __str__(self) -> str:
        if self.component == "command":
            return f"the command changed: {self.old!r} -> {self.new!r}"
        if self.component == "environment":
            return f"the environment hash changed: {self.old} -> {self.new}"
        what = {"input": "input", "env": "env entry", "version": "version"}[self.component]
        return f"{what} {self.subject} changed: {self.old or '(none)'} -> {self.new or '(none)'}"


def _short(digest: Digest | None) -> str:
    return digest.hex()[:12] if digest else ""


def _pairs(old: Sequence[tuple[str, object]], new: Sequence[tuple[str, object]], component: str,
           render: object = str) -> list[Reason]:
    before, after = dict(old), dict(new)
    return [
        Reason(component, name, render(before.get(name)) if name in before else "",  # type: ignore[operator]
               render(after.get(name)) if name in after else "")  # type: ignore[operator]
        for name in sorted(before.keys() | after.keys()) if before.get(name) != after.get(name)
    ]


def differences(previous: ExecutionRecord | None, command: str, env: Sequence[tuple[str, str]],
                versions: Sequence[tuple[str, str]], inputs: Sequence[tuple[str, Digest]],
                env_hash: Digest) -> list[Reason]:
    """What differs between a previous execution and the action about to run (empty: nothing known)."""
    if previous is None:
        return []
    reasons = _pairs(previous.inputs, inputs, "input", _short)
    if previous.command != command:
        reasons.append(Reason("command", "", previous.command, command))
    reasons += _pairs(previous.env, env, "env")
    reasons += _pairs(previous.versions, versions, "version")
    if previous.env_hash != env_hash:
        reasons.append(Reason("environment", "", _short(previous.env_hash), _short(env_hash)))
    return reasons


def one_line(previous: ExecutionRecord | None, reasons: Sequence[Reason]) -> str:
    """The `build --explain` line for an executed action."""
    if previous is None:
        return "no earlier execution is recorded"
    if not reasons:
        return "same inputs as the last recorded execution, whose result is no longer cached"
    extra = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
    return str(reasons[0]) + extra

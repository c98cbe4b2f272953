"""Layer 1: roles — which targets the process's role (`POSBUILD_ROLE`) may build, and whether it
may write to the remote cache; checked once, before anything runs.

`[roles.NAME]` in posbuild.toml gives a role its target patterns (`build`, where a leading `-`
excludes) and `upload`. Without any `[roles]` every role may build everything and upload. With
them, the role must be one of those listed, and every target the request's patterns *select* must
be matched by one of the role's include patterns and by none of its excludes. Dependencies are
not checked: a `release` role limited to `//deploy/...` may still build the libraries its deploy
targets need, exactly as a developer building `//app` builds `//lib`; what a role controls is which
targets it may *ask for* (and so which outputs it may publish). Filegroups selected by a wildcard
run nothing and are not checked; a filegroup named on the command line is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from posbuild.core.action import Action, out_path
from posbuild.workspace.config import DEFAULT_ROLE, Config, Role
from posbuild.errors import BuildFileError, UsageError, WorkspaceError
from posbuild.core.label import PatternKind, TargetPattern, parse_pattern
from posbuild.core.layout import CONFIG_NAME

ROLE_VARIABLE = "POSBUILD_ROLE"


@dataclass(frozen=True, slots=True)
class Grant:
    """What this process may do, as decided before the build starts."""

    role: str
    upload: bool = False  # this process writes to the remote cache (it still needs the signing key)


def authorize(config: Config, patterns: Sequence[TargetPattern], actions: Sequence[Action],
              role_name: str | None, remote_upload: bool = False) -> Grant:
    """Check that the role may build what the patterns select (and upload, if asked); else
    UsageError."""
    name = role_name or DEFAULT_ROLE
    if remote_upload and not config.remote.url:
        raise UsageError(
            f"--remote-upload needs a remote cache: set [cache] remote in {CONFIG_NAME}")
    if not config.roles:
        return Grant(name, remote_upload or config.remote.upload)
    role = _role(config, name)
    denied = [label for label in requested_targets(patterns, actions) if not may_build(role, label)]
    if denied:
        shown = ", ".join(denied[:3]) + (f" and {len(denied) - 3} more" if len(denied) > 3 else "")
        others = [r.name for r in config.roles if r.name != name
                  and all(may_build(r, d) for d in denied)]
        hint = f"; a role that may: {', '.join(others)} (set {ROLE_VARIABLE})" if others else ""
        raise UsageError(f"role '{name}' may not build {shown} ([roles.{name}] build = "
                         f"{_listed(role.build)} in {CONFIG_NAME}){hint}; nothing was built")
    if remote_upload and not role.upload:
        raise UsageError(f"role '{name}' may not upload to the remote cache ([roles.{name}] upload "
                         f"is not true in {CONFIG_NAME}); build without --remote-upload")
    return Grant(name, (remote_upload or config.remote.upload) and role.upload)


def _role(config: Config, name: str) -> Role:
    for role in config.roles:
        if role.name == name:
            return role
    known = ", ".join(role.name for role in config.roles)
    raise UsageError(f"{ROLE_VARIABLE}={name} is not a role of {CONFIG_NAME} (known roles: "
                     f"{known}); "
                     f"set {ROLE_VARIABLE} to one of them" + ("" if name != DEFAULT_ROLE else
                                                              f", or add [roles.{DEFAULT_ROLE}]"))


def _listed(patterns: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{p}"' for p in patterns) + "]"


def requested_targets(patterns: Sequence[TargetPattern], actions: Sequence[Action]) -> list[str]:
    """The labels the patterns select: what the user asked for, not what it depends on."""
    selected: set[str] = set()
    for pattern in patterns:
        if pattern.kind is PatternKind.SINGLE:
            label = str(pattern.label)
            assert pattern.label is not None
            output = out_path(pattern.label.package, pattern.label.name)
            owner = next((a.label for a in actions if a.label == label or output in a.outputs),
                         label)
            selected.add(owner)
        elif pattern.kind is PatternKind.ALL and pattern.label is not None \
                and any(a.label == str(pattern.label) for a in actions):
            selected.add(str(pattern.label))  # `:all` names the target `all` (label.py)
        else:
            selected.update(a.label for a in actions if pattern.matches(a.label))
    return sorted(selected)


def may_build(role: Role, label: str) -> bool:
    """Whether `label` is matched by an include pattern of the role and by none of its excludes."""
    included = excluded = False
    for text in role.build:
        exclude = text.startswith("-")
        if _parse(role, text[1:] if exclude else text).matches(label):
            if exclude:
                excluded = True
            else:
                included = True
    return included and not excluded


def _parse(role: Role, text: str) -> TargetPattern:
    try:
        return parse_pattern(text)
    except BuildFileError as error:
        raise WorkspaceError(f"{CONFIG_NAME}: [roles.{role.name}] build: {error.detail}") from None



"""Layer 0: secret values (§16) — where they come from, and how they are kept out of everything
kept.

An action names the secrets it needs (`secrets = ["API_TOKEN"]`); only their names are part of its
definition. The values are looked up when the action is about to run, never earlier: a build whose
actions are all cache hits needs no secret at all, which is what a CI job without credentials
wants. A value comes from the environment of the posbuild process, else from a secrets file of
`NAME=value` lines that lives outside the workspace (so it can never be a declared input, a glob
match or part of an export) and that only its owner may read (mode 0600, as ssh insists for keys).

A value reaches that one action's environment and nothing else: it is not in the key, the execution
record, the store or a log. Captured stdout/stderr are redacted (`***`) before anything keeps or
shows them, and an output file holding a value fails the action unless the target declares
`allow_secret_in_output = True`.

Such an output holds the secret, and so may whatever is made from it: `secret_carriers` marks
every action whose outputs may hold a secret's value, following the graph downstream. An action
stops the trail of a secret only by declaring that secret itself without `allow_secret_in_output`:
then its outputs are searched for the value like any other's. A carrier's result is flagged
(ActionResult.secret) and stays in the local store: never uploaded to a remote cache, never
asked of one (the result there was made with someone else's value), never exported.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Protocol, Sequence

REDACTED = b"***"
SECRETS_FILE_VARIABLE = "POSBUILD_SECRETS_FILE"
_CHUNK = 1 << 20


class SecretUnavailable(Exception):
    """A declared secret has no value, or the secrets file may not be used; the message says
    which."""


def default_secrets_file(environ: Mapping[str, str]) -> str:
    """`$POSBUILD_SECRETS_FILE`, else `$XDG_CONFIG_HOME/posbuild/secrets` (~/.config by default)."""
    if environ.get(SECRETS_FILE_VARIABLE):
        return environ[SECRETS_FILE_VARIABLE]
    config_home = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config_home, "posbuild", "secrets")


def secret_source(root: Path, configured_file: str, environ: Mapping[str, str]) -> SecretSource:
    """The SecretSource of a workspace: `[secrets] file` (relative to the root) or the default
    file."""
    file = root / configured_file if configured_file else Path(default_secrets_file(environ))
    return SecretSource(environ, str(file), str(root))


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where one build finds secret values: the process environment, then the secrets file.

    The file is read (and its mode and place checked) only when an action needs a value the
    environment lacks; its contents are kept in this process's memory only.
    """

    environ: Mapping[str, str] = field(repr=False)
    file: str = ""
    workspace: str = ""
    _file_values: dict[str, dict[str, str]] = field(default_factory=dict, repr=False, compare=False)

    def values_for(self, names: Iterable[str]) -> tuple[tuple[str, str], ...]:
        """(name, value) for each name, in order; raises SecretUnavailable naming what is
        missing."""
        values = []
        for name in names:
            value = self.get(name)
            if value is None:
                where = f"nor in the secrets file {self.file}" if self.file \
                    else "and no secrets file is set"
                raise SecretUnavailable(f"secret '{name}' is not in posbuild's environment {where}")
            values.append((name, value))
        return tuple(values)

    def get(self, name: str) -> str | None:
        """The value of `name`, or None when neither the environment nor the secrets file has it;
        SecretUnavailable only when the secrets file may not be used."""
        value = self.environ.get(name)
        return self._from_file().get(name) if value is None else value

    def _from_file(self) -> dict[str, str]:
        if not self.file:
            return {}
        if "values" not in self._file_values:
            self._file_values["values"] = read_secrets_file(Path(self.file), self.workspace)
        return self._file_values["values"]


class Declares(Protocol):
    """What `secret_carriers` reads of an action (action.Action)."""

    @property
    def secrets(self) -> tuple[str, ...]: ...
    @property
    def allow_secret_in_output(self) -> bool: ...
    @property
    def deps(self) -> tuple[int, ...]: ...


def secret_carriers(actions: Sequence[Declares]) -> frozenset[int]:
    """Indices of the actions (dependencies first, `deps` naming earlier indices) whose outputs may
    hold the value of a secret: one that declares it with `allow_secret_in_output`, and every
    action downstream, except that an action declaring a secret without that permission has its
    outputs searched for the value, so that secret's trail ends there."""
    if not any(action.secrets for action in actions):
        return frozenset()
    carried: list[frozenset[str]] = []
    for action in actions:
        upstream = frozenset().union(*(carried[d] for d in action.deps))
        own = frozenset(action.secrets)
        carried.append(upstream | own if action.allow_secret_in_output else upstream - own)
    return frozenset(i for i, names in enumerate(carried) if names)


def values_of(source: SecretSource | None, names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The values of `names` (none for none); SecretUnavailable when there is nowhere to look."""
    if not names:
        return ()
    if source is None:
        raise SecretUnavailable(f"secret '{names[0]}' is needed but no secrets are available")
    return source.values_for(names)


def read_secrets_file(path: Path, workspace: str = "") -> dict[str, str]:
    """Parse `NAME=value` lines (blank lines and `#` comments skipped) after checking mode and
    place.

    A missing file holds no secrets. One inside the workspace, or readable by group or others, is
    refused: either would let the value leak into what the build reads or what other users see.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return {}
    real = os.path.realpath(path)
    if workspace and (real + "/").startswith(os.path.realpath(workspace).rstrip("/") + "/"):
        raise SecretUnavailable(f"the secrets file {path} is inside the workspace; move it outside "
                                f"(e.g. ~/.config/posbuild/secrets)")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise SecretUnavailable(f"the secrets file {path} has mode "
                                f"{stat.S_IMODE(info.st_mode):04o}; "
                                f"it must be 0600 (chmod 600 {path})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # the message must not quote the bytes: they may be a secret
        raise SecretUnavailable(
            f"the secrets file {path} is not UTF-8 text of NAME=value lines") from None
    except OSError as error:
        raise SecretUnavailable(
            f"the secrets file {path} cannot be read: {error.strerror or error}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, equals, value = text.partition("=")
        if not equals or not name.strip():
            raise SecretUnavailable(f"{path}:{number}: expected NAME=value")
        values[name.strip()] = value.strip()
    return values


def redact(data: bytes, values: Iterable[str]) -> bytes:
    """`data` with every occurrence of every non-empty value replaced by `***` (longest first,
    so a value that contains another is replaced whole)."""
    for value in sorted({v for v in values if v}, key=len, reverse=True):
        data = data.replace(value.encode(), REDACTED)
    return data


def file_containing(paths: Iterable[Path],
                    secrets: Iterable[tuple[str, str]]) -> tuple[Path, str] | None:
    """The first file that holds a secret's value, and that secret's name; None if none does.

    Files are read in chunks that overlap by the longest value, so a value split across two
    chunks is still found and a large output is never read whole into memory.
    """
    needles = [(name, value.encode()) for name, value in secrets if value]
    if not needles:
        return None
    overlap = max(len(value) for _, value in needles) - 1
    for path in paths:
        with open(path, "rb") as handle:
            tail = b""
            while True:
                chunk = handle.read(_CHUNK)
                if not chunk:
                    break
                window = tail + chunk
                for name, value in needles:
                    if value in window:
                        return path, name
                tail = window[-overlap:] if overlap else b""
    return None

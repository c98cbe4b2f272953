"""Layer 0: why a command was "not found" in its sandbox although the program is on this machine,
and which Python lacked the module a script did not find.

An action sees `PATH=/usr/local/bin:/usr/bin:/bin` whatever the caller's PATH, and under the
namespace sandbox it does not see the workspace, the store, `/tmp`, `/dev/shm` or `/run` at all.
A program installed elsewhere (a conda, `~/.local/bin`) or run from a hidden folder then fails
with a bare "command not found" (exit 127) that a user reads as "not installed". `hint` reads
the shell's complaint, looks the program up as the caller would, and says what hid it and how to
declare it.

A workspace can run more than one Python (`[python] interpreter`, a py_task's `python`, a py_env),
so a `ModuleNotFoundError` gets a line naming the one the action ran and how to choose another.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass

from posbuild.host.paths import within

# bash: "bash: line 1: NAME: command not found", dash: "sh: 1: NAME: not found", a path:
# "bash: line 1: /tmp/x/tool: No such file or directory"
_NOT_FOUND = re.compile(r"^(?:\S*(?:sh|bash)): (?:line )?(?:\d+: )?(\S+): "
                        r"(?:command not found|not found|No such file or directory)$", re.M)


@dataclass(frozen=True, slots=True)
class Sandbox:
    """What an action's command cannot see: `hidden` folders (empty under the namespace sandbox,
    none in the folder sandbox), and the PATH it runs with beside the caller's."""

    hidden: tuple[str, ...]
    action_path: str
    host_path: str
    workspace: str = ""  # the one hidden folder the hint calls by name

    def hiding(self, path: str) -> str | None:
        """The hidden folder `path` is in, as the hint names it; None when it is visible."""
        folder = next((h for h in self.hidden if within(path, h)), None)
        return f"the workspace ({folder})" if folder and folder == self.workspace else folder


def hint(exit_code: int, stderr: bytes, sandbox: Sandbox) -> str | None:
    """A line saying that the program a command did not find exists on this machine, what hid
    it, and how to declare it; None when the run did not fail that way or the program is nowhere
    here either."""
    if exit_code != 127:
        return None
    for name in _NOT_FOUND.findall(stderr.decode("utf-8", "replace")):
        line = _one(name, sandbox)
        if line is not None:
            return line
    return None


_NO_MODULE = re.compile(r"^ModuleNotFoundError: No module named '([^']+)'", re.M)


def module_hint(stderr: bytes, pythons: list[str]) -> str | None:
    """A line naming the Python(s) `pythons` an action ran when its script did not find a
    module; None when it did not fail that way."""
    match = _NO_MODULE.search(stderr.decode("utf-8", "replace"))
    if match is None or not pythons:
        return None
    return (f"hint: module '{match.group(1)}' is not installed in the Python this action ran "
            f"({', '.join(pythons)}); install it there, or choose the Python: [python] "
            "interpreter in posbuild.toml, or the target's python = \"...\" (an interpreter, or "
            "a py_env made from a requirements file)")


def _one(name: str, sandbox: Sandbox) -> str | None:
    if "/" in name:
        if not os.path.isabs(name) or not os.path.exists(name):
            return None
        folder = sandbox.hiding(name)
        if folder is None:
            return None
        return (f"hint: {name} exists on this machine, but the namespace sandbox hides {folder}; "
                f"declare it: a file of the workspace in the target's tools = [...] (and call it "
                f"by $(location ...)), or a program outside it in the target's host_tools = "
                f"[\"{name}\"] (a command that names it by path shows it already)")
    found = shutil.which(name, path=sandbox.host_path) if sandbox.host_path else None
    if found is None:
        return None
    found = os.path.abspath(found)
    folder = sandbox.hiding(found)
    if os.path.dirname(found) not in sandbox.action_path.split(":"):
        why = f"actions run with PATH={sandbox.action_path}"
    elif folder is not None:  # a link on the PATH to a hidden file
        why = f"the namespace sandbox hides {folder}"
    else:
        return None
    return (f"hint: '{name}' is {found} on this machine, but {why}; call it by that path (the "
            f"action's key then holds it, and the sandbox shows it), or put it in the workspace "
            f"and name it in the target's tools = [...]")

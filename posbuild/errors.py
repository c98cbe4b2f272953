"""Layer 0: every error a user can see, with its code and exit status, in one table.

Errors are part of the contract (DESIGN §8): each class fixes its exit code, and `render()` gives
the one line the CLI prints after `posbuild: `. Nothing here imports from posbuild, so every other
module may raise these.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """A place in a BUILD or .bzl file, as a user would type it into an editor."""

    file: str
    line: int
    column: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" + (f":{self.column}" if self.column else "")


class PosbuildError(Exception):
    """Base of every error posbuild reports without a traceback."""

    exit_code = 1
    code = ""  # an ORCH-0N code, or "" for errors outside the spec's classes
    title = ""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def render(self) -> str:
        """The single line printed to stderr after `posbuild: `."""
        head = " ".join(part for part in (self.code, self.title) if part)
        return f"{head}: {self.detail}" if head else self.detail


class UsageError(PosbuildError):
    """Bad command-line usage: an unknown option value, a malformed pattern."""

    exit_code = 2


class BuildFileError(PosbuildError):
    """A BUILD/.bzl file or a label in it is wrong; rendered with its file and line."""

    exit_code = 3

    def __init__(self, detail: str, location: SourceLocation | None = None) -> None:
        super().__init__(detail)
        self.location = location

    def render(self) -> str:
        return f"{self.location}: {self.detail}" if self.location else self.detail


class WorkspaceError(BuildFileError):
    """A broken posbuild.toml: the build cannot even be described."""


class NoWorkspace(UsageError):
    """posbuild was run outside any workspace (no posbuild.toml above the current folder)."""


class ActionFailed(PosbuildError):
    """One or more actions failed (non-zero exit, missing output, timeout)."""

    exit_code = 1


class TestsFailed(PosbuildError):
    """`posbuild test`: everything built, but a test failed or timed out (Bazel says this with 3,
    which is BUILD errors' code here)."""

    exit_code = 5


class SandboxUnavailable(PosbuildError):
    """`[sandbox] mode = "namespace"` on a machine where bubblewrap is missing or cannot run;
    raised before any action runs."""

    exit_code = 4


class OrchError(PosbuildError):
    """An error class of the Pipeline Orchestration Specification (§17); `location` is the BUILD
    line at fault, when there is one (after the code: `ORCH-02 version mismatch: p/BUILD:4:
    ...`)."""

    def __init__(self, detail: str, location: SourceLocation | None = None) -> None:
        super().__init__(detail)
        self.location = location

    def render(self) -> str:
        detail = f"{self.location}: {self.detail}" if self.location else self.detail
        return f"{self.code} {self.title}: {detail}"


class CycleError(OrchError):
    """`cycle` holds the nodes of the cycle in order, the first repeated at the end."""

    code, title, exit_code = "ORCH-01", "DAG cycle detected", 11

    def __init__(self, detail: str, cycle: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.cycle = cycle


class VersionMismatch(OrchError):
    code, title, exit_code = "ORCH-02", "version mismatch", 12


class ChecksumMismatch(OrchError):
    code, title, exit_code = "ORCH-03", "checksum inconsistency", 13


class NonDeterminism(OrchError):
    code, title, exit_code = "ORCH-04", "non-deterministic execution", 14


class ResourceOversubscription(OrchError):
    code, title, exit_code = "ORCH-05", "resource oversubscription", 15


class PartialState(OrchError):
    code, title, exit_code = "ORCH-06", "partial state persistence", 16


class EnvironmentDrift(OrchError):
    code, title, exit_code = "ORCH-07", "environment drift", 17

"""Layer 0: how one action ended in a build, as the scheduler, the reporter and the summary see it.

Every step of the run phase (the decision, the run, the commit, the dry run) ends an action with
an `ActionOutcome`; a run that cannot be committed says why with a `Failure` first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from posbuild.core.digest import Digest
from posbuild.core.records import Outcome
from posbuild.errors import OrchError


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """How one action ended in this build; `key` is set whenever the action ended with a result its
    dependents can use: it ended well, or `--verify` found a re-run that differs (ORCH-04) and kept
    the cached result, which the decision already put in `posbuild-out/`."""

    status: Outcome
    key: Digest | None = None
    error: str = ""
    orch: type[OrchError] | None = None  # the ORCH class of a failure, when it has one
    reason: str = ""  # under --explain: why it ran
    stderr: bytes = field(default=b"", repr=False, compare=False)
    stdout: bytes = field(default=b"", repr=False, compare=False)
    # a failed run: lines that help debug it (its command, where its files were kept)
    notes: tuple[str, ...] = field(default=(), compare=False)
    elapsed: float = field(default=0.0, compare=False)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a finished run was not committed: what the user reads, the record's error code ("exit 3",
    "timeout", "ORCH-05"...), and the ORCH error when the failure is one."""

    message: str
    code: str
    orch: OrchError | None = None

    @staticmethod
    def of(error: OrchError) -> Failure:
        return Failure(error.render(), error.code, error)


def own_failure(error: OSError) -> ActionOutcome:
    """An action that failed on a file-system error of posbuild's own (staging, installing): the
    action fails with the path at fault, as its command failing would, and the build goes on."""
    return ActionOutcome(Outcome.FAILED,
                         error=f"{error.strerror or error}: {error.filename or ''}".rstrip(": "))

"""Layer 0: the spawner — what the engine needs of whatever runs an action's command.

Ninja keeps its command runner behind one small interface, so that a dry run or a test runs
nothing; posbuild does the same. The local sandboxes (sandbox.py: a folder of its own per action,
optionally in its own namespaces) and the Dask executor (dask_executor.py) both implement
`Spawner`, and the engine knows no other. A run ends as a `SpawnResult`: how the command ended,
what it printed, and its declared outputs opened without following links.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, TypeVar

from posbuild.core.action import Action
from posbuild.core.records import RemoteRun, ResourceUsage
from posbuild.host.nofollow import Opened, Outputs


@dataclass(frozen=True, slots=True)
class Perturbation:
    """What to vary in one run, beyond what a normal run does; every field's default varies
    nothing."""

    name_suffix: str = ""  # appended to the sandbox folder's name: another, longer absolute path
    reverse_env_order: bool = False  # hand the environment to the command in reverse order
    tz: str | None = None  # TZ instead of UTC (unless the action declares TZ)
    umask: int | None = None  # the command's umask instead of posbuild's
    # create folders and stage inputs in reverse order (readdir order)
    reverse_staging: bool = False
    # FAKETIME offset such as "+397.3d", applied when libfaketime exists
    clock_shift: str | None = None


@dataclass(frozen=True, slots=True)
class SpawnResult:
    """How a command ended and its declared outputs, opened without following links (nofollow.py).

    `missing` lists every declared output that is not a regular file reached through real
    folders; `irregular` says which of them exist as something else (a link, a folder, a FIFO,
    or below a folder that is a link), and `why` what is wrong with the first. Whatever is done
    with an output goes through `output(path)`, never through `exec_root`: posbuild sees the
    whole file system, and a link the action left would take it anywhere. `Spawner.remove`
    closes the descriptors.
    """

    exit_code: int
    timed_out: bool
    exec_root: Path
    missing: tuple[str, ...]
    stdout: bytes = field(repr=False)
    stderr: bytes = field(repr=False)
    elapsed: float = field(default=0.0, compare=False)
    usage: ResourceUsage | None = field(default=None, compare=False)
    remote: RemoteRun | None = field(default=None, compare=False)  # set when a Dask worker ran it
    irregular: tuple[str, ...] = ()
    why: str = ""
    files: Outputs | None = field(default=None, compare=False, repr=False)

    def output(self, path: str) -> Opened:
        """A declared output that exists as a regular file (not in `missing`), found."""
        assert self.files is not None, "a run without collected outputs"
        return self.files.opened[path]


# what `start` returns and only `wait` reads: each implementation has its own
Handle = TypeVar("Handle")


class Spawner(Protocol[Handle]):
    """What the rebuilder needs of the place its actions run: the local sandboxes
    (sandbox.LocalSpawner) or a Dask cluster (dask_executor.DaskSpawner). One per build, used
    from the scheduler's worker threads at once; `cancel` also from the main thread.

    A run is `start`, then `wait` on its handle (exactly once), then `remove` of its result.
    A command that fails is an ordinary result, never an exception: the methods raise only when
    the spawner itself cannot do its part (OSError: a sandbox that cannot be made; PosbuildError:
    ORCH errors, a lost cluster).
    """

    @property
    def stopped(self) -> int:
        """How many running commands `cancel` killed, counted across its calls (the interrupt
        message says it)."""
        ...

    def clear_stale(self) -> None:
        """Before the first `start`: remove what dead posbuild processes left in the sandbox
        base (only names posbuild gives, in a base posbuild made; never what a live process
        owns), and mark this process's sandboxes as live (owners.py)."""
        ...

    def start(self, action: Action, extra_env: Sequence[tuple[str, str]] = (), /) -> Handle:
        """Start `action`'s command with `extra_env` (the passed env and its secrets) on top of
        the scrubbed environment, and return without waiting for it to end. If it raises,
        nothing of the run is left behind."""
        ...

    def wait(self, running: Handle, /) -> SpawnResult:
        """Wait for a started command to end (or its `action.timeout` to expire: `timed_out`,
        the command killed) and report how it ended, with its declared outputs opened
        (`SpawnResult.output`) or listed in `missing`. The caller must `remove` the result."""
        ...

    def remove(self, result: SpawnResult, /) -> None:
        """Close the result's descriptors and delete its sandbox, whatever the command left in
        it; afterwards `result.output` finds nothing."""
        ...

    def cancel(self) -> None:
        """Kill every running command (callable from any thread, any number of times): each
        `wait` returns soon after, with a failed result; a later `start` runs nothing and its
        `wait` reports a stopped run."""
        ...

    def close(self) -> None:
        """After the build, once every result is removed: release what `clear_stale` marked and
        whatever the spawner holds (a connection). Safe without a `clear_stale` before."""
        ...

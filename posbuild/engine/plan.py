"""Layer 0: the values a build session passes from its checks to its run.

`BuildOptions` is what the command line decides; `BuildEnvironment` what the environment decides
(§14: the environment hash, `[env] pass`, secrets, the role's grant); `DirtyWork` what the
up-to-date check left to do. The run phase (runphase.py) takes the three as they are: no option is
copied into another record on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from posbuild.core.action import Action
from posbuild.core.digest import Digest
from posbuild.core.records import BuildRow
from posbuild.store.upstate import BuildState
from posbuild.workspace.roles import Grant
from posbuild.workspace.envfp import Environments
from posbuild.workspace.secrets import SecretSource


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """What the command line decides about one build."""

    patterns: tuple[str, ...]
    jobs: int = 0  # 0: the workspace's [build] jobs, or one per CPU
    keep_going: bool = False
    dry_run: bool = False
    verify: bool = False  # re-execute actions that have a cached result and byte-compare (ORCH-04)
    explain: bool = False  # say in one line why each executed action ran
    cwd_package: str = ""
    allow_env_drift: bool = False  # build even if h_E is not the one approved in posbuild.lock
    # `--remote-upload`: write results to the remote cache (roles.py decides)
    remote_upload: bool = False
    # `--executor`: "local" or "dask://HOST:PORT"; "" follows `[executor]` in posbuild.toml
    executor: str = ""
    rerun: tuple[str, ...] = ()  # `--rerun`: patterns whose actions execute even when cached
    # `--keep-sandbox`: leave a failed action's sandbox in place and say how to re-run it there
    keep_sandbox: bool = False
    defines: tuple[str, ...] = ()  # `--define KEY=VALUE`: over `[vars]`, for config() in BUILD
    test: bool = False  # `posbuild test`: the tests the patterns name run (their actions exist)


@dataclass(frozen=True, slots=True)
class BuildEnvironment:
    """What the environment decides about one build, checked before anything runs."""

    env_hash: Digest  # h_E of what the request's actions run, approved or allowed to drift
    env_key: Digest  # h_E with the passed variables: the up-to-date state is saved under it
    passed_env: tuple[tuple[str, str], ...]  # `[env] pass`, part of every action key
    # each action's own environment (envfp.py); None: every action's is env_hash
    environments: Environments | None = None
    secrets: SecretSource | None = None  # where actions that declare secrets get their values
    grant: Grant | None = None  # what the role may do (roles.py); None: no remote uploads
    sandbox_writable: tuple[str, ...] = ()  # POSBUILD_SANDBOX_WRITABLE (namespaces.py)
    host_path: str = ""  # the caller's PATH: where a program a command did not find may be

    def programs_visible(self, actions: Sequence[Action], hidden: Sequence[str]) -> list[str]:
        """What the namespace sandbox must show for these actions' programs to run; program
        files under `hidden` stay hidden (envfp.Environments.visible)."""
        if self.environments is None:
            return []
        return self.environments.visible(sorted({p for a in actions for p in a.programs}),
                                         hidden)

    def env_of(self, action: Action) -> Digest:
        """The environment hash in `action`'s key: of the programs it runs, not of the build's."""
        if self.environments is None:
            return self.env_hash
        return self.environments.digest(action.programs)


@dataclass(frozen=True, slots=True)
class DirtyWork:
    """The part of one request that the up-to-date check could not settle by stat alone."""

    actions: Sequence[Action]  # all of the request's actions, dependencies first
    clean: Sequence[bool]  # for each, whether the up-to-date check settled it
    previous: BuildState  # the state the last build of the request saved
    state_path: Path  # where the new state goes
    graph: Digest  # the graph cache entry the actions came from (uptodate.settled)
    patterns: tuple[str, ...]  # the request's canonical patterns
    tree_clean: bool  # posbuild-out/ was exactly the latest generation when the build began
    row: BuildRow | None = None  # the build's row (journal.build_row); None: no records
    row_blobs: tuple[tuple[Digest, bytes], ...] = ()
    forced: frozenset[str] = frozenset()  # labels `--rerun` names: executed even when cached

    @property
    def dirty(self) -> list[int]:
        """The indexes of the actions left to check, dependencies first."""
        return [i for i, is_clean in enumerate(self.clean) if not is_clean]

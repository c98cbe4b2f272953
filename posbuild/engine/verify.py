"""Layer 0: `posbuild verify` — run actions twice in differently perturbed sandboxes, byte-compare.

A hermetic action's outputs depend on its declared inputs only. Verify re-executes every selected
action twice, each time in a fresh sandbox, varying what such an action must not depend on
(sandbox.py's Perturbation says what can be varied, and where):

    run 1: the build's own conditions (TZ=UTC, environment in order, inputs staged in order),
           with umask 022 and the real clock
    run 2: a longer sandbox path, the environment in reverse order, TZ=<+1345>-13:45, umask 077,
           every folder's entries created in reverse order, and the clock 397.3 days ahead
           (libfaketime) — or, without libfaketime, at least one wall-clock second later

and compares every declared output of run 1 with run 2 byte for byte, and run 1 with the cached
result of the action's key. Each output that differs is a Finding (ORCH-04), reported with both
sizes and the first differing byte. Runs that fail or miss an output are findings too: the build
just before verify ran the same action successfully.

Inputs are taken from the workspace as the build left it (`posbuild-out/` holds every upstream
output), so the actions are independent of each other here and run `jobs` at a time in any order;
findings come back in dependency order. Nothing is committed to the store, `posbuild-out/` is
not written, and both runs' sandboxes are removed. Actions are verified in batches of `BATCH`: all
first runs, then (without libfaketime) a wait for the next wall-clock second, then all second
runs, so that the sandboxes held at once stay bounded while the wait is paid once per batch.

Actions tagged `no-cache` declare that their output need not be reproducible (stamps, reports of
the build itself); they are not verified, and the report counts them.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from posbuild.core.action import Action, ActionGraph, may_differ
from posbuild.core.compare import Source, first_file_difference, format_difference
from posbuild.workspace.config import Config
from posbuild.core.digest import hash_file
from posbuild.workspace.envfp import (Environments, environment_key, environments_for,
                                      passed_environment)
from posbuild.errors import ChecksumMismatch
from posbuild.core.layout import NO_CACHE_TAG
from posbuild.exec.namespaces import writable_paths
from posbuild.host.nofollow import fd_path
from posbuild.core.records import OutputFile
from posbuild.exec.sandbox import (LocalSpawner, choose_isolation, hidden_folders,
                                     listing_follows_creation)
from posbuild.exec.spawner import Perturbation, SpawnResult
from posbuild.workspace.secrets import (SecretSource, SecretUnavailable, redact, secret_source,
                                        values_of)
from posbuild.store.lmdbstore import Store
from posbuild.store.trees import members
from posbuild.core.tree import Tree
from posbuild.store.upstate import BuildState, load_state

if TYPE_CHECKING:
    from typing import Protocol

    from posbuild.store.protocols import ActionCache, Blobs

    class CachedOutputs(ActionCache, Blobs, Protocol):
        """What verify reads of the store: each action's cached result, and its output
        blobs."""


BATCH = 256
CLOCK_SHIFT = "+397.3d"
SHIFTED_TZ = "<+1345>-13:45"
FIRST = Perturbation(umask=0o022)
SECOND = Perturbation(
    name_suffix="-" + "perturbed" * 10,
    reverse_env_order=True,
    tz=SHIFTED_TZ,
    umask=0o077,
    reverse_staging=True,
    clock_shift=CLOCK_SHIFT,
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One non-deterministic output (or run) of one action; `detail` is the line after the label."""

    label: str
    path: str
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What verify compared, what it varied, and what differed."""

    actions: int
    outputs: int
    bytes: int
    findings: tuple[Finding, ...]
    not_verified: tuple[str, ...] = ()  # labels of no-cache actions
    without_cache: int = 0  # verified actions that had no cached result to compare with
    may_differ: int = 0  # outputs a `nondeterministic-output:` tag exempts from the comparison
    perturbed: tuple[str, ...] = field(default=(), compare=False)
    # bubblewrap unavailable: the runs used the folder sandbox
    notice: str = field(default="", compare=False)

    @property
    def nondeterministic(self) -> tuple[str, ...]:
        """Labels with at least one finding, in dependency order."""
        return tuple(dict.fromkeys(f.label for f in self.findings))


def verify_request(config: Config, graph: ActionGraph, state_path: Path, environ: Mapping[str, str],
                   jobs: int = 1) -> VerifyReport:
    """Verify `graph` with the up-to-date state the build of the same request saved at
    `state_path`."""
    passed_env = passed_environment(config.env_pass, environ)
    programs = sorted({p for action in graph.actions for p in action.programs})
    env_hash = environments_for(config, environ).table(programs).hash
    state = load_state(state_path, environment_key(passed_env, env_hash))
    store = Store(config.store_dir, config.workspace_tag)
    try:
        return verify(config, graph, state, store, passed_env, jobs,
                      secrets=secret_source(config.root, config.secrets_file, environ),
                      sandbox_writable=writable_paths(environ))
    finally:
        store.close()


def verify(config: Config, graph: ActionGraph, state: BuildState, store: CachedOutputs,
           passed_env: Sequence[tuple[str, str]] = (), jobs: int = 1, shift_clock: bool = True,
           sleep: Callable[[float], None] = time.sleep, secrets: SecretSource | None = None,
           sandbox_writable: Sequence[str] = ()) -> VerifyReport:
    """Run each action of `graph` twice, perturbed, and compare outputs with each other and the
    cache.

    `shift_clock=False` does without libfaketime even where it is installed (run 2 then starts
    in a later wall-clock second than run 1).
    """
    masked = (secrets.file,) if secrets is not None and secrets.file else ()
    # SandboxUnavailable before anything runs
    environments = Environments.of_workspace(config)
    isolation, notice = choose_isolation(
        config, sandbox_writable, masked,
        lambda: environments.visible(sorted({p for a in graph.actions for p in a.programs}),
                                     hidden_folders(config)))
    sandboxes = LocalSpawner(config.root, config.sandbox_dir, isolation,
                             search_path=environments.search_path)
    shifted = shift_clock and sandboxes.faketime is not None
    second = SECOND if shifted else replace(SECOND, clock_shift=None)
    actions = [a for a in graph.actions if NO_CACHE_TAG not in a.tags]
    checker = _Checker(store, state)
    runs = _Runs(sandboxes, tuple(passed_env), secrets)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for start in range(0, len(actions), BATCH):
            batch = actions[start:start + BATCH]
            first_runs = runs.all(pool, batch, FIRST)
            try:
                if not shifted:
                    _wait_for_next_second(sleep)
                second_runs = runs.all(pool, batch, second)
                try:
                    for action, one, two in zip(batch, first_runs, second_runs):
                        checker.check(action, one, two)
                finally:
                    runs.remove(second_runs)
            finally:
                runs.remove(first_runs)
    return VerifyReport(
        actions=len(actions), outputs=checker.outputs, bytes=checker.bytes,
        findings=tuple(checker.findings),
        not_verified=tuple(a.label for a in graph.actions if NO_CACHE_TAG in a.tags),
        without_cache=checker.without_cache, may_differ=checker.may_differ,
        perturbed=_perturbed(config, sandboxes.faketime if shifted else None), notice=notice,
    )


def _wait_for_next_second(sleep: Callable[[float], None]) -> None:
    """Sleep into the next wall-clock second: every clock reading of the runs so far is behind
    us."""
    now = time.time()
    sleep(math.floor(now) + 1.01 - now)


def _perturbed(config: Config, faketime: str | None) -> tuple[str, ...]:
    """What run 2 varies relative to run 1, in words, for the report."""
    listing = "directory listing order" if listing_follows_creation(config.sandbox_dir) else (
        f"directory listing order (not variable: {config.sandbox_dir}'s file system lists in its "
        "own order)")
    clock = f"clock ({CLOCK_SHIFT} via libfaketime)" if faketime \
        else "clock (run 2 in a later second)"
    return ("sandbox path and its length", "environment order", f"TZ ({SHIFTED_TZ})",
            "umask (022, 077)", listing, clock)


class _Runs:
    """Runs a batch of actions in parallel under one perturbation; a run that cannot start is an
    OSError."""

    def __init__(self, sandboxes: LocalSpawner, passed_env: tuple[tuple[str, str], ...],
                 secrets: SecretSource | None = None) -> None:
        self._sandboxes = sandboxes
        self._passed_env = passed_env
        self._secrets = secrets

    def all(self, pool: ThreadPoolExecutor, batch: Sequence[Action],
            perturbation: Perturbation) -> list[SpawnResult | OSError]:
        def one(action: Action) -> SpawnResult | OSError:
            try:
                secrets = values_of(self._secrets, action.secrets)
                run = self._sandboxes.run(action, self._passed_env + secrets, perturbation)
            except OSError as error:
                return error
            except SecretUnavailable as error:  # reported as a run that could not start
                return OSError(str(error))
            if secrets:  # a finding quotes stderr: it must not quote a secret
                run = replace(run, stderr=redact(run.stderr, [value for _, value in secrets]))
            return run

        try:
            return list(pool.map(one, batch))
        except BaseException:
            # Ctrl-C: stop the commands; the next build removes their sandboxes
            self._sandboxes.cancel()
            raise

    def remove(self, runs: Sequence[SpawnResult | OSError]) -> None:
        for run in runs:
            if isinstance(run, SpawnResult):
                self._sandboxes.remove(run)


class _Checker:
    """Compares the two runs of each action, and run 1 with the cached result; collects findings."""

    def __init__(self, store: CachedOutputs, state: BuildState) -> None:
        self._store = store
        self._state = state
        self.findings: list[Finding] = []
        self.outputs = 0
        self.bytes = 0
        self.without_cache = 0
        self.may_differ = 0

    def check(self, action: Action, first: SpawnResult | OSError,
              second: SpawnResult | OSError) -> None:
        self.outputs += len(action.outputs)
        for number, run in ((1, first), (2, second)):
            problem = _run_problem(action, number, run)
            if problem is not None:
                self.findings.append(Finding(action.label, problem[0], problem[1]))
                return
        assert isinstance(first, SpawnResult) and isinstance(second, SpawnResult)
        cached = self._cached(action)
        if cached is None:
            self.without_cache += 1
        exempt = may_differ(action)
        self.may_differ += len(exempt)
        for path in action.outputs:
            if path in exempt:
                continue
            if path in action.out_dirs:
                self._check_folder(action.label, path, first, second,
                                   None if cached is None else cached.get(path))
                continue
            # no link followed
            with first.output(path).reading() as fd_one, second.output(path).reading() as fd_two:
                one, two = Path(fd_path(fd_one)), Path(fd_path(fd_two))
                size_one, size_two, offset = first_file_difference(one, two)
                self.bytes += size_one
                if offset is not None:
                    detail = format_difference(path, "run 1", size_one, "run 2", size_two, offset,
                                               one, two)
                    self.findings.append(Finding(action.label, path, detail))
                elif cached is not None and path in cached:
                    against = self._against_cache(path, cached[path], one)
                    if against is not None:
                        self.findings.append(Finding(action.label, path, against))

    def _check_folder(self, label: str, path: str, first: SpawnResult, second: SpawnResult,
                      cached: OutputFile | None) -> None:
        """Compare a folder output file by file (run 1 with run 2, then with the cached
        manifest's blobs); the first file that differs, or is in one only, is the finding."""
        one, two = first.output(path), second.output(path)
        with members(one.folder, one.name) as ones, members(two.folder, two.name) as twos:
            only = sorted(set(ones.names) ^ set(twos.names))
            if only:
                which = "run 1" if only[0] in ones.names else "run 2"
                self.findings.append(Finding(label, f"{path}/{only[0]}",
                                             f"{path}/{only[0]}: only {which} created it"))
                return
            for rel in ones.names:
                name = f"{path}/{rel}"
                with ones.opened(rel) as file_one, twos.opened(rel) as file_two:
                    a, b = Path(file_one), Path(file_two)
                    size_one, size_two, offset = first_file_difference(a, b)
                    self.bytes += size_one
                    if offset is not None:
                        self.findings.append(Finding(label, name, format_difference(
                            name, "run 1", size_one, "run 2", size_two, offset, a, b)))
                        return
            if cached is None:
                return
            tree = Tree.unpack(self._store.get_blob(cached.digest))
            recorded = {f.path: f for f in tree.files}
            only = sorted(set(ones.names) ^ set(recorded))
            if only:
                which = "run 1" if only[0] in ones.names else "the cached result"
                self.findings.append(Finding(label, f"{path}/{only[0]}",
                                             f"{path}/{only[0]}: only {which} has it"))
                return
            for rel in ones.names:
                entry = recorded[rel]
                name = f"{path}/{rel}"
                with ones.opened(rel) as file_one:
                    against = self._against_cache(
                        name, OutputFile(name, entry.digest, entry.size, entry.executable),
                        Path(file_one))
                if against is not None:
                    self.findings.append(Finding(label, name, against))
                    return

    def _cached(self, action: Action) -> dict[str, OutputFile] | None:
        """The outputs of the cached result of the action's key as last built, if there is one."""
        row = self._state.actions.get(action.label)
        if row is None or row[0] != action.def_hash:
            return None
        result = self._store.get_result(row[1])
        return None if result is None else {output.path: output for output in result.outputs}

    def _against_cache(self, path: str, cached: OutputFile, produced: Path) -> str | None:
        """Byte-compare a produced output with the cached blob; the difference in words, if any."""
        external = self._store.external_path(cached.digest)
        blob: Source = external if external.is_file() else self._store.get_blob(cached.digest)
        size_cached, size_run, offset = first_file_difference(blob, produced)
        if offset is None:
            return None
        if isinstance(blob, Path) and hash_file(blob) != cached.digest:
            raise ChecksumMismatch(
                f"blob file {blob} does not hash to its name; run `posbuild fsck --repair`")
        return format_difference(path, "cached result", size_cached, "run 1", size_run, offset,
                                 blob, produced)


def _run_problem(action: Action, number: int, run: SpawnResult | OSError) -> tuple[str, str] | None:
    """(path, detail) when run `number` could not produce outputs to compare, else None."""
    if isinstance(run, OSError):
        why = f"run {number} could not start: {run.strerror or run}: {run.filename or ''}"
        return "", why.rstrip(": ")
    if run.timed_out:
        return "", f"run {number} timed out after {action.timeout} s"
    if run.exit_code != 0:
        how = f"killed by signal {-run.exit_code}" if run.exit_code < 0 \
            else f"exit code {run.exit_code}"
        last = run.stderr.decode("utf-8", "replace").strip().splitlines()
        return "", f"run {number} failed ({how})" + (f": {last[-1]}" if last else "")
    if run.missing:
        return run.missing[0], f"{run.missing[0]}: run {number} did not create it"
    return None

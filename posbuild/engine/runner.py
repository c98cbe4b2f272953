"""Layer 2: run the part of a build that the up-to-date check could not settle.

Opens the store, wires the rebuilder (keys, cache, sandbox) to the scheduler for the dirty actions
only, and saves the new up-to-date state afterwards. It lives apart from build.py so that a no-op
build never imports it: LMDB, subprocess, threading and the sandbox cost start-up time that a
build with nothing to do should not pay.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from posbuild.core.action import Action
from posbuild.workspace.config import Config
from posbuild.core.digest import Digest
from posbuild.store.epoch import read_epoch
from posbuild.errors import OrchError
from posbuild.engine.execute import ActionOutcome, Rebuilder, Started
from posbuild.engine.filestate import FileStates
from posbuild.store.generations import current_manifest, record_generation, workspace_tag
from posbuild.host.interrupt import Interrupted, deferred
from posbuild.store.journal import Journal, utc
from posbuild.core.layout import STORE_DB
from posbuild.core.records import RUN_OUTCOMES, BuildRow, Manifest, Outcome, OutputFile, RecordState
from posbuild.workspace.roles import Grant
from posbuild.engine.reporter import Reporter
from posbuild.engine.resources import critical_path
from posbuild.exec.sandbox import LocalSpawner, choose_isolation
from posbuild.exec.spawner import Spawner
from posbuild.engine.scheduler import Scheduler, State
from posbuild.workspace.secrets import SecretSource, SecretUnavailable, secret_carriers
from posbuild.store.lmdbstore import INLINE_LIMIT, Store
from posbuild.store.upstate import BuildState, mark_tree, save_state, withdrawn_outputs

if TYPE_CHECKING:
    from posbuild.exec.dask_executor import DaskSpawner
    from posbuild.store.remote import RemoteCache


@dataclass(frozen=True, slots=True)
class DirtyRun:
    """What happened to the dirty actions: outcomes by index into the build's actions."""

    outcomes: dict[int, ActionOutcome]
    skipped: int

    def count(self, status: Outcome) -> int:
        return sum(1 for outcome in self.outcomes.values() if outcome.status is status)

    def failed_labels(self, actions: Sequence[Action]) -> tuple[str, ...]:
        return tuple(actions[n].label for n, o in sorted(self.outcomes.items())
                     if o.status is Outcome.FAILED)

    def failure_classes(self) -> tuple[type[OrchError], ...]:
        """The ORCH error classes among the failures, by code and without repeats."""
        found = {o.orch for o in self.outcomes.values() if o.status is Outcome.FAILED
                 and o.orch is not None}
        return tuple(sorted(found, key=lambda error: error.code))


@dataclass(frozen=True, slots=True)
class RunSettings:
    """The parts of the build's configuration the run needs."""

    jobs: int
    keep_going: bool
    env_hash: Digest
    env_key: Digest
    passed_env: tuple[tuple[str, str], ...]
    state_path: Path
    patterns: tuple[str, ...] = ()
    verify: bool = False
    build_info: BuildRow | None = None  # the build's row (journal.build_row); None: no records
    build_blobs: tuple[tuple[Digest, bytes], ...] = ()
    explain: bool = False
    secrets: SecretSource | None = None  # where actions that declare secrets get their values
    grant: Grant | None = None  # what the role may do (roles.py); None: no remote uploads
    # `--executor`: "local", "dask://HOST:PORT", or "" for `[executor]` in posbuild.toml
    executor: str = ""
    allow_env_drift: bool = False  # also accept Dask workers whose environment hash differs
    sandbox_writable: tuple[str, ...] = ()  # POSBUILD_SANDBOX_WRITABLE (namespaces.writable_paths)
    tree_clean: bool = False  # posbuild-out/ was exactly the latest generation when the build began
    # the digest of the graph cache entry the actions came from (uptodate.settled)
    graph: Digest = b""


class _Executor:
    """Adapts the Rebuilder to the scheduler's node numbers, and reports each finished action."""

    def __init__(self, actions: Sequence[Action], rebuilder: Rebuilder, reporter: Reporter) -> None:
        self._actions = actions
        self._rebuilder = rebuilder
        self._reporter = reporter
        self.outcomes: dict[int, ActionOutcome] = {}

    def prepare(self, node: int) -> ActionOutcome | None:
        return self._rebuilder.check(self._actions[node])

    def start(self, node: int) -> Started:
        return self._rebuilder.start(self._actions[node])

    def wait(self, started: Started) -> bool:
        return self._rebuilder.wait(started)

    def conclude(self, started: Started) -> ActionOutcome:
        return self._rebuilder.conclude(started)

    def succeeded(self, outcome: ActionOutcome) -> bool:
        """Whether dependents may start: the action has a result (a kept one after ORCH-04, too)."""
        return outcome.key is not None

    def finished(self, node: int, state: State, outcome: ActionOutcome | None) -> None:
        if outcome is None:
            return
        self.outcomes[node] = outcome
        label = self._actions[node].label
        if outcome.reason:
            self._reporter.message(f"explain {label}: {outcome.reason}")
        self._reporter.action_finished(label, outcome.status, outcome.error, outcome.stderr)

    def cancel(self) -> None:
        self._rebuilder.cancel()


def run_dirty(config: Config, actions: Sequence[Action], clean: Sequence[bool],
              previous: BuildState, settings: RunSettings, reporter: Reporter) -> DirtyRun:
    """Check, and where needed execute, every action not marked clean; save the new state."""
    dirty = [i for i, is_clean in enumerate(clean) if not is_clean]
    cluster = _open_cluster(config, settings, [actions[i] for i in dirty])  # None: actions run here
    # workers choose their own sandbox; here, SandboxUnavailable comes before anything runs
    masked = (settings.secrets.file,) if settings.secrets is not None and settings.secrets.file \
        else ()
    isolation, notice = choose_isolation(config, settings.sandbox_writable, masked) \
        if cluster is None else (None, "")
    if notice:
        reporter.message(notice)
    remote = _open_remote(config, settings, reporter)
    # their outputs may hold a secret: never shared
    carriers = [actions[i] for i in secret_carriers(actions)]
    # workers read inputs from its CAS
    if cluster is not None and remote is not None and not settings.verify:
        cluster.use_remote(remote, reporter.message,
                           frozenset(p for a in carriers for p in a.outputs))
    store = Store(config.store_dir, config.workspace_tag)
    # read once the store is open: a new store (or one from before epochs) got its epoch just now,
    # and
    # nothing can remove rows while this build holds the workspace's (and a shared store's) lock
    epoch = read_epoch(config.store_dir)
    sandboxes: Spawner | None = None
    try:
        files = FileStates(config.root, store)
        sandboxes = cluster or LocalSpawner(config.root, config.sandbox_dir, isolation)
        sandboxes.clear_stale()
        journal = None
        if settings.build_info is not None:
            number = store.begin_build(settings.build_info, settings.build_blobs)
            journal = Journal(number, str(number), settings.env_hash, store.start_log(number),
                              key=store.build_key(number))
        rebuilder = Rebuilder(config.root, store, files, sandboxes, settings.env_hash,
                              settings.passed_env, previous,
                              verify=settings.verify, journal=journal, explain=settings.explain,
                              secrets=settings.secrets, remote=remote,
                              carriers=frozenset(a.label for a in carriers))
        position = {node: i for i, node in enumerate(dirty)}
        sub_actions = [actions[i] for i in dirty]
        executor = _Executor(sub_actions, rebuilder, reporter)
        sub_deps = [[position[d] for d in a.deps if d in position] for a in sub_actions]
        demand, capacity = ([a.resources for a in sub_actions], config.resources.as_tuple()) \
            if cluster is None \
            else (None, ())  # on Dask, what each worker declared bounds what runs on it
        scheduler: Scheduler[ActionOutcome] = Scheduler(
            sub_deps, critical_path(sub_deps, [a.label for a in sub_actions],
                                    _recorded_duration(store, sub_actions)),
            settings.jobs, settings.keep_going, demand, capacity, critical=deferred,
        )
        try:
            states = scheduler.run(executor)
        except Interrupted as interrupt:  # SIGINT, SIGTERM, SIGHUP: say what it stopped (cli)
            interrupt.stopped = rebuilder.stopped
            raise
        finally:
            rebuilder.flush()
            files.settle_racy()
            now = time.time_ns()
            if journal is not None:
                for node, state in enumerate(scheduler.states):
                    if state is State.SKIPPED:
                        journal.add(sub_actions[node], RecordState.SKIPPED, None, now / 1e9,
                                    now / 1e9, ())
            store.commit(memo=files.take_pending(), used=[(key, now) for key in rebuilder.used],
                         records=journal.take() if journal else ())
            save_state(settings.state_path,
                       rebuilder.state_for(actions, clean, settings.env_key, settings.graph), epoch)
        outcomes = {dirty[i]: o for i, o in executor.outcomes.items()}
        failed = [n for n, o in outcomes.items() if o.status is Outcome.FAILED]
        if failed or State.SKIPPED in states:
            # ORCH-04 keeps its cached bytes
            stale = stale_outputs(actions, [n for n in failed if outcomes[n].key is None])
            # before they go
            mark_tree(config, clean=False, withdrawn=withdrawn_outputs(config).union(stale))
            removed = remove_outputs(config.root, stale)
            if removed:
                recorded = current_manifest(store, workspace_tag(config))[1]
                hint = ("`posbuild rollback` restores the last successful build"
                        if any(p in recorded for p in removed)
                        else "no successful build recorded them, so rollback has nothing to "
                             "restore")
                reporter.message(f"posbuild: removed {len(removed)} stale output(s) of failed "
                                 f"actions and their dependents; {hint}")
        else:
            latest, manifest = current_manifest(store, workspace_tag(config))
            rows = _request_rows(actions, clean, previous, rebuilder, store, manifest,
                                 None if settings.tree_clean else config.root)
            # after a build of every target, a withdrawn file it did not produce belongs to no
            # target any more
            withdrawn = withdrawn_outputs(config) if "//..." not in settings.patterns \
                else frozenset()
            record_generation(config, store, settings.patterns, rows, (latest, manifest), withdrawn)
            missing = [p for p in withdrawn if p in manifest and p not in rows
                       and not os.path.lexists(config.root / p)]
            mark_tree(config, clean=not missing, withdrawn=missing)
        if journal is not None:
            counts = {s.value: sum(1 for o in outcomes.values() if o.status is s)
                      for s in RUN_OUTCOMES}
            store.update_build(journal.number, {"ended": utc(time.time()), "counts": counts,
                                                "failed": len(failed),
                                                "skipped": states.count(State.SKIPPED)})
        store.flush()
        if remote is not None:
            _report_remote(remote, reporter)
    finally:
        store.close()
        if remote is not None:
            remote.close()
        if cluster is not None:
            cluster.close()
        elif sandboxes is not None:
            sandboxes.close()
    return DirtyRun(outcomes, states.count(State.SKIPPED))


def _open_cluster(config: Config, settings: RunSettings,
                  dirty: Sequence[Action]) -> DaskSpawner | None:
    """The Dask cluster that runs this build's actions (dask_executor.py), or None to run them here.

    It connects when the first action must run, and first checks that some worker could run each
    dirty action (ORCH-05); a build the cache settles never contacts it.
    """
    if settings.executor == "local" or (not settings.executor and config.executor == "local"):
        return None
    from posbuild.exec.dask_cluster import executor_address
    from posbuild.exec.dask_executor import DaskSpawner

    address = executor_address(settings.executor, config)
    return None if address is None \
        else DaskSpawner(address, config, dirty, not settings.allow_env_drift)


def _open_remote(config: Config, settings: RunSettings, reporter: Reporter) -> RemoteCache | None:
    """The remote cache client; None without `[cache] remote`, or without the key that verifies
    its results (unsigned results are never trusted, so without the key the remote is not used).
    `--remote-upload` without the key never gets here: build.py refuses it before anything runs.
    """
    if not config.remote.url:
        return None
    # http.client only when a remote is set
    from posbuild.store.remote import CACHE_KEY_VARIABLE, RemoteCache

    grant = settings.grant
    secret, why = "", f"the secret {CACHE_KEY_VARIABLE} is not set"
    try:
        values = settings.secrets.values_for([CACHE_KEY_VARIABLE]) \
            if settings.secrets is not None else ()
        secret = values[0][1] if values else ""
    except SecretUnavailable as error:
        why = str(error)
    if not secret:
        reporter.message(f"posbuild: remote cache {config.remote.url} not used: {why} (its results "
                         f"are signed, and never trusted unsigned)")
        return None
    return RemoteCache(config.remote.url, config.remote.timeout, secret.encode(),
                       grant.upload if grant is not None else False, reporter.message, INLINE_LIMIT)


def _report_remote(remote: RemoteCache, reporter: Reporter) -> None:
    """One closing line on what the remote cache did, when it did anything."""
    stats = remote.stats
    if stats.hits or stats.uploaded or stats.rejected or stats.worker_inputs:
        parts = [f"{stats.hits} hit(s)", f"{stats.misses} miss(es)"]
        if stats.rejected:
            parts.append(f"{stats.rejected} rejected")
        if remote.upload:
            parts.append(f"{stats.uploaded} result(s) uploaded")
        if stats.worker_inputs:
            parts.append(f"{stats.worker_inputs} input(s) read by Dask workers")
        reporter.message(f"posbuild: remote cache: {', '.join(parts)}")


def _recorded_duration(store: Store, actions: Sequence[Action]) -> Callable[[int], float | None]:
    """How long each action took when it last ran (its latest record, if that one executed it)."""
    def duration(node: int) -> float | None:
        record = store.latest_record(actions[node].label)
        return record.duration if record is not None and record.state.ran() else None
    return duration


def _request_rows(actions: Sequence[Action], clean: Sequence[bool], previous: BuildState,
                  rebuilder: Rebuilder,
                  store: Store, manifest: Manifest, check_modes_in: Path | None) -> Manifest:
    """Every output of the request → (digest, size, executable), for the generation's manifest.

    Outputs this build produced or restored come from their results. An output it left as it
    was keeps the latest manifest's row when that row holds the file's digest. That row's mode
    is the file's too when the build began with `posbuild-out/` exactly the latest generation
    (the tree marker) and the file is unchanged since; otherwise a build that recorded no
    generation (one that failed) may have installed the same bytes with another mode, so the
    mode is checked with one stat per file under `check_modes_in` (the workspace root). Only
    where no such row exists is the action's result read (one LMDB read and decode per action).
    """
    rows: Manifest = {}
    base = f"{check_modes_in}/" if check_modes_in is not None else None
    for action, is_clean in zip(actions, clean):
        found = True
        for path in action.outputs:
            output = None if is_clean else rebuilder.outputs.get(path)
            if output is not None:
                rows[path] = (output.digest, output.size, output.executable)
                continue
            row = manifest.get(path)
            if row is not None and row[0] == rebuilder.output_digest(path) and (
                    base is None or row[2] == _executable(base + path)):
                rows[path] = row
            else:
                found = False
        if not found:
            result = store.get_result(previous.actions[action.label][1]) \
                if action.label in previous.actions else None
            described = list(result.outputs) if result \
                else [_described(path, previous, store) for path in action.outputs]
            rows.update((o.path, (o.digest, o.size, o.executable)) for o in described
                        if o is not None)
    return rows


def _executable(path: str) -> bool | None:
    """Whether the installed file at `path` is executable (None if it is gone)."""
    try:
        return bool(os.stat(path).st_mode & 0o111)
    except FileNotFoundError:
        return None


def _described(path: str, previous: BuildState, store: Store) -> OutputFile | None:
    """An output whose result is no longer in the store, described from the recorded state; None
    when its blob is gone too, since a generation must not name bytes the store does not hold."""
    state = previous.file(path)
    return OutputFile(path, state.digest, state.signature[1], False) if state \
        and store.has_blob(state.digest) else None


def plan_dirty(config: Config, actions: Sequence[Action], clean: Sequence[bool],
               previous: BuildState, settings: RunSettings) -> list[tuple[int, str]]:
    """`--dry-run`: the actions that a build would execute, in order, each with the reason it
    would run under `--explain` (else ""); nothing is written.

    An action would execute when its key misses the cache, or when a dependency would execute
    (its outputs are unknown until then, so no key can be computed).
    """
    explain = settings.explain
    if not (config.store_dir / STORE_DB).exists():
        why = "no earlier execution is recorded" if explain else ""
        return [(i, why) for i, is_clean in enumerate(clean) if not is_clean]
    store = Store(config.store_dir, config.workspace_tag)
    try:
        rebuilder = Rebuilder(config.root, store, FileStates(config.root, store),
                              LocalSpawner(config.root, config.sandbox_dir),
                              settings.env_hash, settings.passed_env, previous, dry_run=True,
                              explain=explain)
        would_run: dict[int, str] = {}
        for index, action in enumerate(actions):
            if clean[index]:
                continue
            upstream = next((dep for dep in action.deps if dep in would_run), None)
            if upstream is not None:
                would_run[index] = (f"{actions[upstream].label}, which it depends on, would execute"
                                    if explain else "")
                continue
            outcome = rebuilder.check(action)
            if outcome is None:
                would_run[index] = rebuilder.planned_reason(action)
            elif outcome.status is Outcome.FAILED:
                would_run[index] = outcome.error if explain else ""
        return sorted(would_run.items())
    finally:
        store.close()


def stale_outputs(actions: Sequence[Action], failed: Sequence[int]) -> list[str]:
    """The outputs of failed actions and of everything downstream of them.

    An old output left in posbuild-out/ would pass for the result of the current sources (§8: all
    downstream artifacts are invalidated).
    """
    doomed = set(failed)
    for index, action in enumerate(actions):  # dependencies come first, so one pass suffices
        if index not in doomed and any(dep in doomed for dep in action.deps):
            doomed.add(index)
    return [path for index in sorted(doomed) for path in actions[index].outputs]


def remove_outputs(root: Path, paths: Sequence[str]) -> list[str]:
    """Delete these outputs from posbuild-out/; returns those that were there."""
    removed = []
    for path in paths:
        try:
            os.unlink(root / path)
            removed.append(path)
        except (FileNotFoundError, NotADirectoryError):  # gone, or a file where its folder was
            pass
    return removed

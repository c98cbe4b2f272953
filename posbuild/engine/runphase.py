"""Layer 6: run the part of a build that the up-to-date check could not settle.

Opens what a run needs (the store, the spawner: local sandboxes or a Dask cluster, the remote
cache), wires the decision, the run and the commit to the scheduler for the dirty actions only,
then saves the new up-to-date state and either records a generation (every action ended well) or
withdraws the outputs a failure made stale. It lives apart from session.py so that a no-op build
never imports it: LMDB, subprocess, threading and the sandbox cost start-up time that a build
with nothing to do should not pay.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from posbuild.core.words import quantity
from posbuild.core.action import Action
from posbuild.core.layout import FAILED, SANDBOX, STATE_DIR, STORE_DB, TMP
from posbuild.core.digest import Digest, hash_bytes
from posbuild.core.records import RUN_OUTCOMES, Manifest, Outcome, OutputFile, RecordState
from posbuild.core.tree import Tree
from posbuild.engine.commit import Committer
from posbuild.engine.filestate import FileStates
from posbuild.engine.modes import DryRunExecutor, SameAsCached
from posbuild.engine.outcome import ActionOutcome
from posbuild.engine.plan import BuildEnvironment, BuildOptions, DirtyWork
from posbuild.engine.notfound import Sandbox
from posbuild.engine.postmortem import FailureKeeper
from posbuild.engine.products import BuildProducts
from posbuild.engine.footprint import expected_bytes
from posbuild.engine.rebuilder import Rebuilder
from posbuild.engine.reporter import Reporter
from posbuild.engine.resources import critical_path
from posbuild.engine.run import ActionExecutor, ActionRunner, RunCheck
from posbuild.engine.scheduler import Scheduler, State
from posbuild.engine.sources import LocalResults, RemoteResults
from posbuild.engine.why import Explainer
from posbuild.errors import OrchError
from posbuild.exec.sandbox import LocalSpawner, choose_isolation, hidden_folders
from posbuild.exec.spawner import Spawner
from posbuild.host.interrupt import Interrupted, deferred
from posbuild.host.owned import no_links_on_the_way
from posbuild.store.epoch import read_epoch
from posbuild.store.generations import current_manifest, record_generation, workspace_tag
from posbuild.store.journal import Journal, utc
from posbuild.store.lmdbstore import INLINE_LIMIT, Store
from posbuild.store.materialize import Materializer
from posbuild.store.upstate import BuildState, mark_tree, save_state, withdrawn_outputs
from posbuild.workspace.config import Config
from posbuild.workspace.envfp import sandbox_path
from posbuild.workspace.secrets import SecretUnavailable, secret_carriers

if TYPE_CHECKING:
    from posbuild.exec.dask_executor import DaskSpawner
    from posbuild.store.remote import RemoteCache


def _disk_sandboxes(config: Config) -> Path | None:
    """Where sandboxes too large for the memory base go (exec/placement.py): the default base on
    disk, unless the sandboxes are there already."""
    disk = config.root / STATE_DIR / SANDBOX
    return None if config.sandbox_dir == disk else disk


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


def run_dirty(config: Config, options: BuildOptions, environment: BuildEnvironment,
              work: DirtyWork, reporter: Reporter) -> DirtyRun:
    """Check, and where needed execute, every action `work` left; save the new state."""
    dirty = work.dirty
    # outputs are written, restored or withdrawn only through real folders of posbuild-out/
    no_links_on_the_way(config.root, {os.path.dirname(output) for i in dirty
                                      for output in work.actions[i].outputs})
    cluster = _open_cluster(config, options, [work.actions[i] for i in dirty])
    secrets = environment.secrets
    masked = (secrets.file,) if secrets is not None and secrets.file else ()
    # workers choose their own sandbox; here, SandboxUnavailable comes before anything runs
    isolation, notice = choose_isolation(
        config, environment.sandbox_writable, masked,
        lambda: environment.programs_visible([work.actions[i] for i in dirty],
                                             hidden_folders(config))) \
        if cluster is None else (None, "")
    if notice:
        reporter.message(notice)
    remote = _open_remote(config, options, environment, reporter)
    # their outputs may hold a secret: never shared
    carriers = [work.actions[i] for i in secret_carriers(work.actions)]
    if cluster is not None and remote is not None and not options.verify:
        cluster.use_remote(remote, reporter.message,  # workers read inputs from its CAS
                           frozenset(p for a in carriers for p in a.outputs))
    store = Store(config.store_dir, config.workspace_tag)
    spawner: Spawner | None = cluster  # closed below, however far the run got
    try:
        if spawner is None:
            spawner = LocalSpawner(config.root, config.sandbox_dir, isolation,
                                   search_path=sandbox_path(config),
                                   disk_base=_disk_sandboxes(config))
        spawner.clear_stale()
        run = _Run(config, options, environment, work, reporter, store, spawner, remote,
                   frozenset(a.label for a in carriers))
        outcomes, states = run.drive(dirty, local=cluster is None)
        if any(o.status is Outcome.FAILED for o in outcomes.values()) or State.SKIPPED in states:
            _withdraw_stale(config, work.actions, outcomes, store, reporter)
        else:
            _record_generation(config, work, run.products, store)
        run.record_end(outcomes, states)
        store.flush()
        if remote is not None:
            _report_remote(remote, reporter)
    finally:
        store.close()
        if remote is not None:
            remote.close()
        if spawner is not None:
            spawner.close()
    return DirtyRun(outcomes, states.count(State.SKIPPED))


class _Run:
    """The collaborators of one run over an open store and spawner, and the scheduler over them."""

    def __init__(self, config: Config, options: BuildOptions, environment: BuildEnvironment,
                 work: DirtyWork, reporter: Reporter, store: Store, spawner: Spawner,
                 remote: RemoteCache | None, carriers: frozenset[str]) -> None:
        self._config, self._options, self._work = config, options, work
        self._reporter, self._store, self._spawner = reporter, store, spawner
        self._environment = environment
        # read once the store is open: a new store (or one from before epochs) got its epoch
        # just now, and nothing can remove rows while this build holds the workspace's lock
        self._epoch = read_epoch(config.store_dir)
        self._saved = b""  # the up-to-date state's bytes, once saved (`_save`)
        self.files = FileStates(config.root, store)
        self.products = BuildProducts(work.previous)
        self.journal: Journal | None = None
        if work.row is not None:
            number = store.begin_build(work.row, work.row_blobs)
            self.journal = Journal(number, str(number), environment.env_of,
                                   store.start_log(number), key=store.build_key(number))
        temp = config.root / STATE_DIR / TMP
        materializer = Materializer(config.root, store, temp)
        materializer.clear_temp()
        local = LocalResults(store, materializer, self.products, warn=reporter.message)
        # a remote is neither asked nor filled under --verify, nor for a secret's carrier
        remote = None if options.verify else remote
        self.rebuilder = Rebuilder(
            self.files, self.products, local, environment, self.journal,
            Explainer(store, environment) if options.explain else None, options.verify,
            (lambda action: action.label not in carriers) if remote is not None else None,
            work.forced)
        self.committer = Committer(store, materializer, self.products, self.journal, remote,
                                   carriers)
        checks: list[RunCheck] = [SameAsCached(store)] if options.verify else []
        if isinstance(spawner, LocalSpawner):  # large actions run on disk (exec/placement.py)
            spawner.expect_sizes(lambda action: expected_bytes(action, self.products, self.files))
        keep = spawner.keep if options.keep_sandbox and isinstance(spawner, LocalSpawner) else None
        if options.keep_sandbox and keep is None:
            reporter.message("posbuild: note: --keep-sandbox keeps local sandboxes only; the "
                             "Dask workers remove theirs")
        self.runner = ActionRunner(spawner, self.files, self.committer, environment,
                                   self.journal, checks,
                                   FailureKeeper(config.root, config.state_dir / FAILED), keep,
                                   _blind_spots(config, environment, spawner))
        self.remote = RemoteResults(remote, store, local, temp) if remote is not None else None

    def drive(self, dirty: Sequence[int],
              local: bool) -> tuple[dict[int, ActionOutcome], list[State]]:
        """Schedule the dirty actions (`local`: here, within the `[resources]` budget, else on
        Dask, where what each worker declared bounds what runs on it); whatever happens, commit
        what ended and save the state."""
        work, config = self._work, self._config
        position = {node: i for i, node in enumerate(dirty)}
        actions = [work.actions[i] for i in dirty]
        executor = ActionExecutor(actions, self.rebuilder, self.runner, self._reporter,
                                  self.remote)
        deps = [[position[d] for d in a.deps if d in position] for a in actions]
        demand, capacity = ([a.resources for a in actions], config.resources.as_tuple()) \
            if local else (None, ())
        recorded = _recorded_duration(self._store, actions)
        durations = [recorded(node) for node in range(len(actions))]
        jobs = self._options.jobs or config.jobs
        priorities = critical_path(deps, [a.label for a in actions], durations.__getitem__)
        scheduler: Scheduler[ActionOutcome] = Scheduler(
            deps, priorities, jobs, self._options.keep_going, demand, capacity, critical=deferred)
        self._reporter.expect(dict(zip((a.label for a in actions), durations)), jobs, priorities)
        try:
            states = scheduler.run(executor)
        except Interrupted as interrupt:  # SIGINT, SIGTERM, SIGHUP: say what it stopped (cli)
            interrupt.stopped = self.runner.stopped
            raise
        finally:
            self._reporter.run_ended()
            self._save(actions, scheduler.states)
        return {dirty[i]: o for i, o in executor.outcomes.items()}, states

    def _save(self, actions: Sequence[Action], states: Sequence[State]) -> None:
        """Commit what is pending (memo rows, LRU use, records) and save the up-to-date state."""
        self.committer.flush()
        self.files.settle_racy()
        now = time.time_ns()
        if self.journal is not None:
            for node, state in enumerate(states):
                if state is State.SKIPPED:
                    self.journal.add(actions[node], RecordState.SKIPPED, None, now / 1e9,
                                     now / 1e9, ())
        self._store.commit(memo=self.files.take_pending(),
                           used=[(key, now) for key in self.products.used],
                           records=self.journal.take() if self.journal else ())
        work = self._work
        self._saved = save_state(work.state_path,
                                 self.products.state_for(work.actions, work.clean,
                                                         self._environment.env_key, work.graph,
                                                         self.files), self._epoch)

    def record_end(self, outcomes: dict[int, ActionOutcome], states: Sequence[State]) -> None:
        """Fill in the build's row: when it ended and how its actions did."""
        if self.journal is None:
            return
        counts = {s.value: sum(1 for o in outcomes.values() if o.status is s)
                  for s in RUN_OUTCOMES}
        failed = sum(1 for o in outcomes.values() if o.status is Outcome.FAILED)
        # the next build's row names the state this one saved, which it starts from: stored
        # now, the next build (a no-op most often) has nothing to store but its row
        saved = [(hash_bytes(self._saved), self._saved)] if self._saved else []
        self._store.update_build(self.journal.number, {
            "ended": utc(time.time()), "counts": counts, "failed": failed,
            "skipped": list(states).count(State.SKIPPED)}, saved)


def _blind_spots(config: Config, environment: BuildEnvironment,
                 spawner: Spawner) -> Sandbox | None:
    """What the local sandbox keeps from a command (notfound.py); None on Dask, whose workers
    have their own."""
    if not isinstance(spawner, LocalSpawner):
        return None
    hidden = (str(config.root), str(config.store_dir), str(config.sandbox_dir), "/tmp",
              "/dev/shm", "/run") if spawner.namespaced else ()
    return Sandbox(hidden, sandbox_path(config), environment.host_path, str(config.root))


def _withdraw_stale(config: Config, actions: Sequence[Action],
                    outcomes: dict[int, ActionOutcome], store: Store, reporter: Reporter) -> None:
    """After a failure: remove the outputs of failed actions and their dependents from
    `posbuild-out/` (an old output would pass for the result of the current sources), and mark
    the tree dirty, listing them first."""
    # ORCH-04 keeps its cached bytes
    failed = [n for n, o in outcomes.items() if o.status is Outcome.FAILED and o.key is None]
    stale = stale_outputs(actions, failed)
    # a generation lists a folder's files: those are what rollback puts back
    files = folder_files(config.root, stale)
    mark_tree(config, clean=False, withdrawn=withdrawn_outputs(config).union(stale, files))
    removed = remove_outputs(config.root, stale, config.state_dir / TMP)
    if removed:
        recorded = current_manifest(store, workspace_tag(config))[1]
        hint = ("`posbuild rollback` restores the last successful build"
                if any(p in recorded for p in (*removed, *files))
                else "no successful build recorded them, so rollback has nothing to restore")
        reporter.message(f"posbuild: removed {quantity(len(removed), 'stale output')} of failed "
                         f"actions and their dependents; {hint}")


def _record_generation(config: Config, work: DirtyWork, products: BuildProducts,
                       store: Store) -> None:
    """After a build where every action ended well: record `posbuild-out/` as a generation."""
    latest, manifest = current_manifest(store, workspace_tag(config))
    rows = _request_rows(work, products, store, manifest,
                         None if work.tree_clean else config.root)
    # after a build of every target, a withdrawn file it did not produce belongs to no target
    withdrawn = withdrawn_outputs(config) if "//..." not in work.patterns else frozenset()
    record_generation(config, store, work.patterns, rows, (latest, manifest), withdrawn)
    missing = [p for p in withdrawn if p in manifest and p not in rows
               and not os.path.lexists(config.root / p)]
    mark_tree(config, clean=not missing, withdrawn=missing)


def _open_cluster(config: Config, options: BuildOptions,
                  dirty: Sequence[Action]) -> DaskSpawner | None:
    """The Dask cluster that runs this build's actions (dask_executor.py), or None to run them here.

    It connects when the first action must run, and first checks that some worker could run each
    dirty action (ORCH-05); a build the cache settles never contacts it.
    """
    if options.executor == "local" or (not options.executor and config.executor == "local"):
        return None
    from posbuild.exec.dask_cluster import executor_address
    from posbuild.exec.dask_executor import DaskSpawner

    address = executor_address(options.executor, config)
    return None if address is None \
        else DaskSpawner(address, config, dirty, not options.allow_env_drift)


def _open_remote(config: Config, options: BuildOptions, environment: BuildEnvironment,
                 reporter: Reporter) -> RemoteCache | None:
    """The remote cache client; None without `[cache] remote`, or without the key that verifies
    its results (unsigned results are never trusted, so without the key the remote is not used).
    `--remote-upload` without the key never gets here: the session refuses it before anything
    runs.
    """
    if not config.remote.url:
        return None
    # http.client only when a remote is set
    from posbuild.store.remote import CACHE_KEY_VARIABLE, RemoteCache

    grant, secrets = environment.grant, environment.secrets
    secret, why = "", f"the secret {CACHE_KEY_VARIABLE} is not set"
    try:
        values = secrets.values_for([CACHE_KEY_VARIABLE]) if secrets is not None else ()
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
        parts = [quantity(stats.hits, 'hit'), quantity(stats.misses, 'miss', 'misses')]
        if stats.rejected:
            parts.append(f"{stats.rejected} rejected")
        if remote.upload:
            parts.append(f"{quantity(stats.uploaded, 'result')} uploaded")
        if stats.worker_inputs:
            parts.append(f"{quantity(stats.worker_inputs, 'input')} read by Dask workers")
        reporter.message(f"posbuild: remote cache: {', '.join(parts)}")


def _recorded_duration(store: Store, actions: Sequence[Action]) -> Callable[[int], float | None]:
    """How long each action took when it last ran (its latest record, if that one executed it)."""
    def duration(node: int) -> float | None:
        record = store.latest_record(actions[node].label)
        return record.duration if record is not None and record.state.ran() else None
    return duration


def _request_rows(work: DirtyWork, products: BuildProducts, store: Store, manifest: Manifest,
                  check_modes_in: Path | None) -> Manifest:
    """Every output of the request → (digest, size, executable), for the generation's manifest.

    Outputs this build produced or restored come from their results. An output it left as it
    was keeps the latest manifest's row when that row holds the file's digest. That row's mode
    is the file's too when the build began with `posbuild-out/` exactly the latest generation
    (the tree marker) and the file is unchanged since; otherwise a build that recorded no
    generation (one that failed) may have installed the same bytes with another mode, so the
    mode is checked with one stat per file under `check_modes_in` (the workspace root). Only
    where no such row exists is the action's result read (one LMDB read and decode per action).
    """
    base = f"{check_modes_in}/" if check_modes_in is not None else None
    previous = work.previous
    rows: Manifest = {}
    rest: Iterable[int] = range(len(work.actions))
    if base is None:
        rows, rest = _kept_rows(work, manifest)
    for index in rest:
        action, is_clean = work.actions[index], work.clean[index]
        found = True
        for path in action.outputs:
            if path in action.out_dirs:
                rows.update(_folder_rows(store, path, products.output_digest(path)))
                continue
            output = None if is_clean else products.outputs.get(path)
            if output is not None:
                rows[path] = (output.digest, output.size, output.executable)
                continue
            row = manifest.get(path)
            if row is not None and row[0] == products.output_digest(path) and (
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


def _kept_rows(work: DirtyWork, manifest: Manifest) -> tuple[Manifest, list[int]]:
    """With `posbuild-out/` the latest generation's tree: the latest manifest's rows of every
    up-to-date action whose rows hold the digests the saved state records (one tight pass: at
    10,000 actions this is most of them), and the indices of the other actions."""
    recorded, row_of = work.previous.digests, manifest.get
    rows: Manifest = {}
    rest: list[int] = []
    for index, (action, is_clean) in enumerate(zip(work.actions, work.clean)):
        if not is_clean or action.out_dirs:
            rest.append(index)
            continue
        for path in action.outputs:
            row = row_of(path)
            if row is None or row[0] != recorded[path]:
                rest.append(index)
                break
            rows[path] = row
    return rows, rest


def _folder_rows(store: Store, path: str, digest: Digest) -> Manifest:
    """A folder output's rows in a generation's manifest: one per file, so that rollback and gc
    see its files as they see any output."""
    tree = Tree.unpack(store.get_blob(digest))
    return {f"{path}/{f.path}": (f.digest, f.size, f.executable) for f in tree.files}


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


def plan_dirty(config: Config, options: BuildOptions, environment: BuildEnvironment,
               work: DirtyWork) -> list[tuple[int, str]]:
    """`--dry-run`: the actions that a build would execute, in order, each with the reason it
    would run under `--explain` (else ""); nothing is written (modes.DryRunExecutor)."""
    dirty = work.dirty
    if not (config.store_dir / STORE_DB).exists():
        why = "no earlier execution is recorded" if options.explain else ""
        return [(i, why) for i in dirty]
    store = Store(config.store_dir, config.workspace_tag)
    try:
        files = FileStates(config.root, store)
        products = BuildProducts(work.previous)
        local = LocalResults(store, Materializer(config.root, store,
                                                 config.root / STATE_DIR / TMP),
                             products, dry_run=True)
        rebuilder = Rebuilder(files, products, local, environment,
                              explainer=Explainer(store, environment) if options.explain
                              else None, forced=work.forced)
        position = {node: i for i, node in enumerate(dirty)}
        actions = [work.actions[i] for i in dirty]
        deps = [[position[d] for d in a.deps if d in position] for a in actions]
        executor = DryRunExecutor(actions, deps, rebuilder, options.explain)
        scheduler: Scheduler[ActionOutcome] = Scheduler(deps, range(len(actions)), 1,
                                                        keep_going=True)
        scheduler.run(executor)
        return [(dirty[i], reason) for i, reason in executor.planned()]
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


def remove_outputs(root: Path, paths: Sequence[str], temp_dir: Path) -> list[str]:
    """Delete these outputs from posbuild-out/; returns those that were there. A folder output
    is renamed into `temp_dir` first, so no part of one is ever left under its name."""
    removed = []
    for path in paths:
        try:
            os.unlink(root / path)
            removed.append(path)
        except (FileNotFoundError, NotADirectoryError):  # gone, or a file where its folder was
            pass
        except IsADirectoryError:
            aside = temp_dir / f"withdrawn.{os.getpid()}.{len(removed)}"
            temp_dir.mkdir(parents=True, exist_ok=True)
            os.rename(root / path, aside)
            shutil.rmtree(aside, ignore_errors=True)
            removed.append(path)
    return removed


def folder_files(root: Path, paths: Sequence[str]) -> list[str]:
    """The files now in those of `paths` that are folders (not links), workspace-relative."""
    found: list[str] = []
    for path in paths:
        if not os.path.isdir(root / path) or os.path.islink(root / path):
            continue
        for folder, _, names in os.walk(root / path):
            found += [os.path.relpath(os.path.join(folder, n), root) for n in names]
    return found

"""Layer 7: a build session — the builds of one workspace in one process, each in five steps.

    resolve   patterns → the request's graph cache entry (resolve.py)
    preflight roles, secrets, `[env] pass`, the environment hash (ORCH-07); later, with the
              saved state at hand, pins (ORCH-03) and the `[resources]` budget (ORCH-05)
    settle    the saved up-to-date state settles what it can by `stat()` alone (uptodate.py)
    run       what is left goes to the run phase (runphase.py, imported only then)
    finish    one summary for the reporter and the exit code

A no-op stops at settle: when the checks can be made from the graph's facts and the saved state
settles the whole request, the actions are not even decoded, and a no-op costs one `stat()` per
file, or none at all when the build server vouches that nothing changed since it last checked
(changefeed.py). Critical errors stop a build before anything runs, and such a refusal is
recorded (§12: every attempt leaves a record). A session holds nothing of one build into the next
but what the workspace is: `posbuild watch` runs one build per change through the same session.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, Sequence

from posbuild.core.words import quantity
from posbuild.core.action import Action, ActionGraph, GraphFacts
from posbuild.core.digest import Digest
from posbuild.core.label import parse_pattern
from posbuild.core.layout import CONFIG_NAME, LOCK_NAME
from posbuild.core.records import Outcome
from posbuild.engine.locking import workspace_lock
from posbuild.engine.pins import check_pins
from posbuild.engine.plan import BuildEnvironment, BuildOptions, DirtyWork
from posbuild.engine.products import BuildProducts
from posbuild.engine.reporter import BuildSummary, Reporter
from posbuild.engine.resolve import Request, graph_entry, make_request
from posbuild.engine.resources import check_budget, fits
from posbuild.engine.uptodate import changed_files, clean_actions
from posbuild.errors import (ActionFailed, NonDeterminism, OrchError, PosbuildError,
                             ResourceOversubscription, UsageError)
from posbuild.load.graphcache import CachedGraph
from posbuild.store.epoch import read_epoch
from posbuild.store.upstate import (BuildState, load_state, revalidate, save_state,
                                    state_from_bytes, tree_is_clean)
from posbuild.workspace.config import Config, load_config, with_defines
from posbuild.workspace.envfp import (checked_environment, environment_key,
                                      passed_environment)
from posbuild.workspace.roles import ROLE_VARIABLE, authorize
from posbuild.workspace.secrets import SecretSource, SecretUnavailable, secret_source


@dataclass(frozen=True, slots=True)
class ResolvedBuild:
    """A build after `resolve`: its configuration, request and graph cache entry, and the actions
    when they had to be decoded (`graph` None: not yet, maybe never)."""

    config: Config
    options: BuildOptions
    request: Request
    entry: CachedGraph
    graph: ActionGraph | None
    started: float  # time.monotonic()

    @property
    def patterns(self) -> tuple[str, ...]:
        return tuple(str(p) for p in self.request.patterns)

    @property
    def local(self) -> bool:
        return _runs_here(self.config, self.options)


class Vouch(Protocol):
    """What a build server knows without a `stat()` (changefeed.ChangeFeed)."""

    def changes(self, state_path: Path) -> frozenset[str] | None:
        """The files that may differ from what the state saved at `state_path` records (every
        other file it names has the recorded signature); None when that is not known."""

    def built(self, state_path: Path) -> None:
        """A build ended that may have saved the state at `state_path`."""

    def starting(self) -> None:
        """A build begins: what changes from now on is this build's to be vouched for."""

    def writing(self, folders: Iterable[str] | None = None) -> None:
        """The build is about to write `posbuild-out/` (in `folders`, when known): its own
        writes need no watching."""


class BuildSession:
    """Builds of the workspace at `root`, reported to `reporter`, in the environment `environ`;
    `vouch` is the build server's knowledge of which files did not change, if any."""

    def __init__(self, root: Path, reporter: Reporter,
                 environ: Mapping[str, str] | None = None, vouch: Vouch | None = None) -> None:
        self.root = root
        self.reporter = reporter
        self.environ = dict(environ or {})
        self.vouch = vouch

    def build(self, options: BuildOptions,
              on_graph: Callable[[ActionGraph], None] | None = None) -> BuildSummary:
        """Build the patterns of `options`. `on_graph` is given the resolved graph before anything
        is checked or run (`posbuild watch` derives the files to watch from it)."""
        started = time.time()
        config = with_defines(load_config(self.root), options.defines)
        passed_checks = False
        resolved: ResolvedBuild | None = None
        with workspace_lock(config, self.reporter):  # from the start: loading writes the cache
            if self.vouch is not None:
                self.vouch.starting()
            try:
                resolved = self.resolve(config, options, on_graph)
                environment = self.preflight(resolved)
                work = self.settle(resolved, environment)
                passed_checks = True
                if work is None:
                    return self.finish(_settled_summary(resolved, options))
                if self.vouch is not None and not options.dry_run:
                    self.vouch.writing(_written_folders(work))
                return self.finish(self.run(resolved, environment, work))
            except OrchError as error:
                if not passed_checks and not options.dry_run:
                    _record_refused(config, options, started, error)
                raise
            finally:
                if self.vouch is not None and resolved is not None:
                    self.vouch.built(resolved.request.state_path)

    def resolve(self, config: Config, options: BuildOptions,
                on_graph: Callable[[ActionGraph], None] | None = None) -> ResolvedBuild:
        """The request's graph cache entry; the actions are decoded only when a check needs
        them or `on_graph` asks."""
        started = time.monotonic()
        request = make_request(config, options.patterns, options.cwd_package, options.test)
        entry = graph_entry(config, request)
        decode = on_graph is not None \
            or not _checks_need_no_actions(config, entry.facts, options)
        graph = entry.graph() if decode else None
        if on_graph is not None:
            on_graph(entry.graph())
        return ResolvedBuild(config, options, request, entry, graph, started)

    def preflight(self, resolved: ResolvedBuild) -> BuildEnvironment:
        """The checks that need no saved state: roles, secrets, the environment (ORCH-07)."""
        config, options, environ = resolved.config, resolved.options, self.environ
        actions = resolved.graph.actions if resolved.graph is not None else ()
        grant = authorize(config, resolved.request.patterns, actions,
                          environ.get(ROLE_VARIABLE), options.remote_upload)
        secrets = secret_source(config.root, config.secrets_file, environ)
        _check_secrets(config, actions, secrets, options.remote_upload)
        passed_env = passed_environment(config.env_pass, environ)
        py_envs = resolved.entry.facts.environments()
        if py_envs and not options.dry_run:
            from posbuild.engine.pyenvs import ensure  # only workspaces that declare py_envs

            ensure(config, py_envs, environ, self.reporter.message)
        environments, env_hash = checked_environment(
            config, environ, resolved.entry.facts.programs, options.allow_env_drift,
            self.reporter.message)
        return BuildEnvironment(env_hash, environment_key(passed_env, env_hash), passed_env,
                                environments, secrets, grant, host_path=environ.get("PATH", ""))

    def settle(self, resolved: ResolvedBuild, environment: BuildEnvironment) -> DirtyWork | None:
        """What the saved state cannot settle by stat alone; None when it settles everything
        (then the build's row is recorded here). Pins (ORCH-03) and the budget (ORCH-05) are
        checked once the actions are known, before anything runs, dry runs included."""
        config, options, request = resolved.config, resolved.options, resolved.request
        previous = load_state(request.state_path, environment.env_key)
        epoch = read_epoch(config.store_dir)  # MISSING without a store: nothing is there
        if previous.epoch != epoch:  # rows were removed from the store since: check the state
            previous = revalidate(None if options.dry_run else request.state_path, previous,
                                  config.store_dir, epoch)
        tree_clean = tree_is_clean(config)
        # the files that may have changed: from the server's watch, else from one stat pass over
        # the saved signatures; None: every file is to be looked at, action by action
        touched = self._touched(previous, resolved)
        if touched is None and not options.verify:
            touched = changed_files(previous, resolved.entry.digest, config.root)
        graph = resolved.graph
        if graph is None:  # the actions are not decoded: maybe a no-op
            if tree_clean and touched == frozenset():
                self._all_settled(resolved, previous, environment)
                return None
            graph = resolved.entry.graph()
        actions = graph.actions
        check_pins(config.root, actions, previous)
        if resolved.local:
            check_budget(actions, config.resources)
        forced = _forced(options, actions)
        clean = [False] * len(actions) if options.verify \
            else clean_actions(actions, previous, config.root, touched)
        if forced:  # a forced action, and whatever depends on it, is looked at again
            for index, action in enumerate(actions):  # dependencies first: one pass suffices
                if action.label in forced or not all(clean[d] for d in action.deps):
                    clean[index] = False
        if all(clean) and tree_clean:  # a no-op all the same
            if not options.dry_run and (previous.graph != resolved.entry.digest
                                        or not previous.complete):
                previous = _resaved(request.state_path, previous, actions, resolved.entry.digest,
                                    epoch)
            self._all_settled(resolved, previous, environment)
            return None
        self.reporter.build_started(len(actions), sum(clean))
        if options.dry_run:
            return DirtyWork(actions, clean, previous, request.state_path, resolved.entry.digest,
                             resolved.patterns, tree_clean, forced=forced)
        from posbuild.store.journal import build_row

        row, blobs = build_row(time.time(), resolved.patterns, environment.env_hash,
                               (resolved.entry.digest, resolved.entry.raw), previous, clean,
                               allow_env_drift=options.allow_env_drift, verify=options.verify,
                               passed_env=[list(pair) for pair in environment.passed_env],
                               **({"rerun": list(options.rerun)} if options.rerun else {}))
        return DirtyWork(actions, clean, previous, request.state_path, resolved.entry.digest,
                         resolved.patterns, tree_clean, row, tuple(blobs), forced)

    def _touched(self, previous: BuildState, resolved: ResolvedBuild) -> frozenset[str] | None:
        """The files of the saved state that changed since the build server last checked them
        all (empty: none did, a no-op with no `stat()`); None without a server that knows."""
        if self.vouch is None or not previous.complete \
                or previous.graph != resolved.entry.digest:
            return None
        changes = self.vouch.changes(resolved.request.state_path)
        if changes is None or not changes:
            return changes
        named = frozenset(previous.paths)
        return frozenset(path for path in changes if path in named)

    def _all_settled(self, resolved: ResolvedBuild, previous: BuildState,
                     environment: BuildEnvironment) -> None:
        """Every action is up to date: say so, and record the build as one row in the store."""
        count = resolved.entry.facts.count
        self.reporter.build_started(count, count)
        if not resolved.options.dry_run:
            _record_settled(resolved, previous, environment)

    def run(self, resolved: ResolvedBuild, environment: BuildEnvironment,
            work: DirtyWork) -> BuildSummary:
        """Run (or under `--dry-run`, plan) what `settle` left, and sum it up."""
        from posbuild.engine.runphase import plan_dirty, run_dirty
        from posbuild.exec.namespaces import writable_paths

        config, options, actions = resolved.config, resolved.options, work.actions
        up_to_date = sum(work.clean)
        wall = time.monotonic
        if options.dry_run:
            planned = plan_dirty(config, options, environment, work)
            for index, reason in planned:
                if reason:
                    self.reporter.message(f"explain {actions[index].label}: {reason}")
                self.reporter.action_finished(actions[index].label, Outcome.PLANNED, "", b"")
            return BuildSummary(len(actions), len(planned), len(actions) - len(planned), 0, 0,
                                wall() - resolved.started, (), dry_run=True)
        environment = replace(environment, sandbox_writable=tuple(writable_paths(self.environ)))
        run = run_dirty(config, options, environment, work, self.reporter)
        executed, cached, failed = (run.count(s)
                                    for s in (Outcome.EXECUTED, Outcome.CACHED, Outcome.FAILED))
        return BuildSummary(total=len(actions), executed=executed, cached=up_to_date + cached,
                            failed=failed, skipped=run.skipped, wall=wall() - resolved.started,
                            failed_labels=run.failed_labels(actions),
                            orch=run.failure_classes())

    def finish(self, summary: BuildSummary) -> BuildSummary:
        """Tell the reporter how the build ended."""
        self.reporter.build_finished(summary)
        return summary


def _written_folders(work: DirtyWork) -> set[str]:
    """The folders of `posbuild-out/` a run may write into: those of the outputs of the actions
    it looks at (executed, restored, or withdrawn after a failure)."""
    return {os.path.dirname(output) for action, clean in zip(work.actions, work.clean)
            if not clean for output in action.outputs}


def _runs_here(config: Config, options: BuildOptions) -> bool:
    """Whether the actions run here (else on Dask, within what its workers declared)."""
    return (options.executor or config.executor) == "local"


def _checks_need_no_actions(config: Config, facts: GraphFacts, options: BuildOptions) -> bool:
    """Whether the checks before a build can all be made from the graph's facts (actions that
    run here are also checked against the `[resources]` budget).

    Then a build that turns out to be a no-op never decodes the actions (uptodate.settled). Roles,
    pins and secrets that could clash with `[env] pass` need the actions themselves.
    """
    return (not options.verify and not options.rerun and not config.roles and not facts.pinned
            and not (facts.secrets and config.env_pass)
            and (not _runs_here(config, options) or fits(facts.resources, config.resources))
            and not (config.root / LOCK_NAME).exists())


def _forced(options: BuildOptions, actions: Sequence[Action]) -> frozenset[str]:
    """The labels of the actions `--rerun` names; a pattern that names none of this build's
    actions is a usage error (a typo would otherwise re-run nothing, silently)."""
    forced: set[str] = set()
    for text in options.rerun:
        pattern = parse_pattern(text, options.cwd_package)
        named = {action.label for action in actions if pattern.matches(action.label)}
        if not named:
            raise UsageError(f"--rerun {text}: matches no action of this build "
                             f"({' '.join(options.patterns)})")
        forced |= named
    return frozenset(forced)


def _record_settled(resolved: ResolvedBuild, previous: BuildState,
                    environment: BuildEnvironment) -> None:
    """A build whose every action the saved state settled: one row in the store, nothing else."""
    count, options = resolved.entry.facts.count, resolved.options
    from posbuild.store.journal import build_row, record_settled_build

    row, blobs = build_row(time.time(), resolved.patterns, environment.env_hash,
                           (resolved.entry.digest, resolved.entry.raw), previous,
                           [True] * count,
                           allow_env_drift=options.allow_env_drift, verify=options.verify)
    record_settled_build(resolved.config.store_dir, resolved.config.workspace_tag,
                         row.with_fields(counts={"cached": count}), blobs)


def _resaved(path: Path, previous: BuildState, actions: Sequence[Action], graph: Digest,
             epoch: bytes) -> BuildState:
    """The state of a build that found every action up to date by stat, saved again for the
    graph cache entry it was checked against.

    The entry is re-made whenever a folder the workspace loads from changes (a new file, an
    editor's backup), and its digest with it, though the actions are the same: without this the
    saved state would keep naming the old entry, and every later no-op would decode the actions
    and check them one by one instead of comparing the signatures in one pass (uptodate.settled).
    """
    state = BuildProducts(previous).state_for(actions, [True] * len(actions), previous.env_key,
                                              graph, None)
    return state_from_bytes(save_state(path, state, epoch))


def _settled_summary(resolved: ResolvedBuild, options: BuildOptions) -> BuildSummary:
    count = resolved.entry.facts.count
    return BuildSummary(count, 0, count, 0, 0, time.monotonic() - resolved.started, (),
                        dry_run=options.dry_run)


def _record_refused(config: Config, options: BuildOptions, started: float,
                    error: OrchError) -> None:
    from posbuild.store.journal import record_refused

    try:
        patterns = [str(p)
                    for p in make_request(config, options.patterns, options.cwd_package).patterns]
        record_refused(config.store_dir, config.workspace_tag, started, patterns, error.code,
                       error.render())
    except (PosbuildError, OSError):  # the refusal itself is what the user must see
        pass


def _check_secrets(config: Config, actions: Sequence[Action], secrets: SecretSource,
                   remote_upload: bool) -> None:
    """Refuse, before anything runs, what would leak a secret or upload unsigned.

    A secret also passed by `[env] pass` would put its value into the action key. `--remote-upload`
    needs the signing key even when everything is up to date, so that a CI job asking to fill
    the cache never silently fills nothing.
    """
    passed = set(config.env_pass)
    for action in actions if passed else ():
        clash = [name for name in action.secrets if name in passed]
        if clash:
            raise UsageError(f"{action.label}: '{clash[0]}' is both a secret and in [env] pass of "
                             f"{config.root / CONFIG_NAME}, which would put its value into the "
                             f"action key; remove it from [env] pass")
    if remote_upload:
        from posbuild.store.remote import CACHE_KEY_VARIABLE

        try:
            key = secrets.values_for([CACHE_KEY_VARIABLE])[0][1]
        except SecretUnavailable as error:
            raise UsageError(
                f"--remote-upload needs the signing key: {error}; nothing was built") from None
        if not key:
            raise UsageError(
                f"--remote-upload needs the signing key: {CACHE_KEY_VARIABLE} is empty; nothing "
                "was built")


def summary_error(summary: BuildSummary) -> PosbuildError | None:
    """The error a build with this summary exits with (ORCH-04, ORCH-05, or a failed action), if
    any."""
    labels = ", ".join(summary.failed_labels)
    if NonDeterminism in summary.orch:
        return NonDeterminism(f"{quantity(summary.failed, 'action')} failed, some produced "
                              f"bytes that differ from their cached result: {labels}")
    if ResourceOversubscription in summary.orch:
        return ResourceOversubscription(f"{quantity(summary.failed, 'action')} failed, some "
                                        f"used more memory than they declared: {labels}")
    if summary.failed:
        return ActionFailed(f"{quantity(summary.failed, 'action')} failed: {labels}")
    return None

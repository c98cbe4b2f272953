"""Layer 3: one build, end to end — the only module that wires loader, analysis, scheduler,
rebuilder and store together.

    config → (graph cache | discover → load → analyse) → scheduler(rebuilder) → summary

`resolve()` is the loading half on its own (used by `build`, by `-n` and by the benchmark of
§15's DAG-resolution time). A build holds an exclusive lock on the workspace's `.posbuild/`, so
two posbuild processes never write `posbuild-out/` at once; a second one waits.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Mapping, Sequence

from posbuild.core.action import Action, ActionGraph, GraphFacts
from posbuild.load.analysis import Analyzer, expand_patterns
from posbuild.workspace.config import Config, load_config
from posbuild.core.digest import Digest
from posbuild.store.epoch import read_epoch
from posbuild.workspace.envfp import checked_environment_hash, environment_key, passed_environment
from posbuild.errors import (ActionFailed, NonDeterminism, OrchError, PosbuildError,
                             ResourceOversubscription, UsageError)
from posbuild.load.graphcache import CachedGraph, GraphCache
from posbuild.core.label import TargetPattern, parse_pattern
from posbuild.core.layout import CONFIG_NAME, GRAPHS, LOCK_NAME, STORE_LOCK, WORKSPACE_LOCK
from posbuild.host.owned import STATE, STORE, claim, empty, is_store, remove_outputs
from posbuild.engine.pins import check_pins
from posbuild.engine.reporter import BuildSummary, Reporter
from posbuild.engine.resources import check_budget, fits
from posbuild.workspace.roles import ROLE_VARIABLE, authorize
from posbuild.workspace.secrets import SecretSource, SecretUnavailable, secret_source
from posbuild.store.upstate import BuildState, load_state, mark_tree, revalidate, tree_is_clean
from posbuild.engine.uptodate import clean_actions, settled


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


@dataclass(frozen=True, slots=True)
class Request:
    """The parsed patterns of one command, and where its per-request state lives."""

    patterns: tuple[TargetPattern, ...]
    state_stem: Path

    @property
    def state_path(self) -> Path:
        """Where the request's up-to-date state (uptodate.py) is saved."""
        return self.state_stem.with_suffix(".state")


def make_request(config: Config, patterns: Sequence[str], cwd_package: str = "") -> Request:
    parsed = tuple(parse_pattern(p, cwd_package) for p in patterns)
    canonical = sorted({str(p) for p in parsed})
    return Request(parsed, GraphCache(config.root, config.state_dir / GRAPHS).stem(canonical))


def resolve(root: Path, patterns: Sequence[str], cwd_package: str = "",
            config: Config | None = None) -> ActionGraph:
    """The ActionGraph for `patterns`, from the graph cache when nothing it depends on changed."""
    config = config or load_config(root)
    return _graph_entry(config, make_request(config, patterns, cwd_package)).graph()


def _graph_entry(config: Config, request: Request) -> CachedGraph:
    """The request's graph cache entry; BUILD files are evaluated and analysed only on a miss."""
    canonical = sorted({str(p) for p in request.patterns})
    cache = GraphCache(config.root, config.state_dir / GRAPHS)
    cached = cache.load(canonical)
    if cached is not None:
        return cached
    from posbuild.load.loader import Loader, discover_packages

    packages, dirs = discover_packages(config.root, config.build_file_names)
    loader = Loader(config, packages)
    roots = expand_patterns(request.patterns, packages, loader)
    analyzer = Analyzer(loader)
    graph = analyzer.analyze(roots)
    return cache.save(canonical, graph, dirs,
                      [*loader.files_read, *analyzer.files_read, CONFIG_NAME], loader.digests)


def _checks_need_no_actions(config: Config, facts: GraphFacts, options: BuildOptions,
                            local: bool) -> bool:
    """Whether the checks before a build can all be made from the graph's facts (`local`: the
    actions run here, so the `[resources]` budget is checked).

    Then a build that turns out to be a no-op never decodes the actions (uptodate.settled). Roles,
    pins and secrets that could clash with `[env] pass` need the actions themselves.
    """
    return (not options.verify and not config.roles and not facts.pinned
            and not (facts.secrets and config.env_pass)
            and (not local or fits(facts.resources, config.resources))
            and not (config.root / LOCK_NAME).exists())


_held: set[str] = set()  # the workspace locks this process holds


@contextmanager
def workspace_lock(config: Config, reporter: Reporter, collect: bool = False) -> Iterator[None]:
    """Hold `.posbuild/lock` exclusively for the duration of a command that writes outputs.

    The store is also locked: shared by every command, exclusively by those that remove rows
    (`collect`: gc, `fsck`), so they never remove what a build of another workspace using the
    same store is about to reference. A workspace's own store is locked too, once it exists:
    another workspace may name it as its `[cache] dir`. Taking the lock makes `.posbuild/` and a
    store with their marks (owned.py), or refuses a store folder posbuild did not make. Held
    already by this process (a build inside a command that locked), it is not taken again.
    """
    key = str(config.state_dir)
    if key in _held:
        yield
        return
    with _locked_file(config, reporter) as handle:
        _held.add(key)
        try:
            if not config.store_dir.is_dir() \
                    and (collect or config.store_dir.is_relative_to(config.state_dir)):
                yield  # no store yet: nothing to collect or guard, and none is made for the lock
                return
            claim(config.store_dir, STORE, is_store,
                  f" ([cache] dir of {config.root / CONFIG_NAME})")
            who = "another workspace is using" if collect else "posbuild gc or fsck is using"
            with open(config.store_dir / STORE_LOCK, "a+") as shared:
                _lock(shared, fcntl.LOCK_EX if collect else fcntl.LOCK_SH, reporter,
                      f"{who} the shared store {config.store_dir}")
                yield
        finally:
            _held.discard(key)
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _locked_file(config: Config, reporter: Reporter) -> Iterator[IO[str]]:
    """Open and flock `.posbuild/lock`; if the file was deleted or replaced while this process
    waited (an older posbuild's `clean --all`, or `rm -rf .posbuild`), lock the new one instead:
    a lock on a deleted file excludes nobody."""
    path = config.state_dir / WORKSPACE_LOCK
    while True:
        claim(config.state_dir, STATE, _not_a_link)
        with open(path, "a+") as handle:
            _lock(handle, fcntl.LOCK_EX, reporter,
                  "another posbuild command is running in this workspace")
            try:
                same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield handle
                return


def _not_a_link(folder: Path) -> bool:
    """`.posbuild/` made before marks existed is adopted (its name is posbuild's), unless it is a
    link: the folder it points to need not be posbuild's (`ln -s ~ .posbuild`)."""
    return not folder.is_symlink()


def _lock(handle: IO[str], kind: int, reporter: Reporter, why: str) -> None:
    """flock `handle`, saying why posbuild waits when it must."""
    try:
        fcntl.flock(handle, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        reporter.message(f"posbuild: {why}; waiting for it")
        fcntl.flock(handle, kind)


def run_build(root: Path, options: BuildOptions, reporter: Reporter,
              environ: Mapping[str, str] | None = None,
              on_graph: Callable[[ActionGraph], None] | None = None) -> BuildSummary:
    """Build the patterns of `options` in the workspace at `root`; a build that a critical error
    refuses before anything runs is recorded as refused (§12: every attempt leaves a record)."""
    checks: list[bool] = []  # `_run_build` appends once its checks passed
    started = time.time()
    config = load_config(root)
    with workspace_lock(config, reporter):  # from the start: loading writes the graph cache
        try:
            return _run_build(config, options, reporter, environ, on_graph, checks)
        except OrchError as error:
            if not checks and not options.dry_run:
                _record_refused(root, options, started, error)
            raise


def _record_refused(root: Path, options: BuildOptions, started: float, error: OrchError) -> None:
    from posbuild.store.journal import record_refused

    try:
        config = load_config(root)
        patterns = [str(p)
                    for p in make_request(config, options.patterns, options.cwd_package).patterns]
        record_refused(config.store_dir, config.workspace_tag, started, patterns, error.code,
                       error.render())
    except (PosbuildError, OSError):  # the refusal itself is what the user must see
        pass


def _run_build(config: Config, options: BuildOptions, reporter: Reporter,
               environ: Mapping[str, str] | None,
               on_graph: Callable[[ActionGraph], None] | None, checks: list[bool]) -> BuildSummary:
    """Build the patterns of `options` in the workspace of `config`, which the caller has locked.

    Actions the up-to-date check settles by stat alone count as cached; only if any remain does
    the build open the store and start the scheduler (runner.py, imported only then). When the
    checks before the build can be made from the graph's facts and the saved state settles the
    whole request, the actions are not even decoded: a no-op costs one `stat()` per file. Critical
    errors (ORCH-02 in analysis, ORCH-07 here, ORCH-03 for pins, ORCH-05 for a request beyond the
    `[resources]` budget) stop it before anything runs. `on_graph` is given the resolved graph
    before anything is checked or run (`posbuild watch` derives the files to watch from it).
    """
    started = time.monotonic()
    request = make_request(config, options.patterns, options.cwd_package)
    entry = _graph_entry(config, request)
    # on Dask, the workers' resources (runner.py)
    local = (options.executor or config.executor) == "local"
    decode = on_graph is not None \
        or not _checks_need_no_actions(config, entry.facts, options, local)
    graph = entry.graph() if decode else None
    if on_graph is not None:
        on_graph(entry.graph())
    environ = environ or {}
    actions = graph.actions if graph is not None else ()
    grant = authorize(config, request.patterns, actions, environ.get(ROLE_VARIABLE),
                      options.remote_upload)
    secrets = secret_source(config.root, config.secrets_file, environ)
    _check_secrets(config, actions, secrets, options.remote_upload)
    passed_env = passed_environment(config.env_pass, environ)
    # ORCH-07
    env_hash = checked_environment_hash(config, environ, options.allow_env_drift, reporter.message)
    env_key = environment_key(passed_env, env_hash)
    patterns = tuple(str(p) for p in request.patterns)
    with workspace_lock(config, reporter):  # held already (run_build): the block reads as before
        previous = load_state(request.state_path, env_key)
        # MISSING without a store: nothing the state names is there
        epoch = read_epoch(config.store_dir)
        # something was removed from the store since: check what the state trusts
        if previous.epoch != epoch:
            previous = revalidate(None if options.dry_run else request.state_path, previous,
                                  config.store_dir, epoch)
        tree_clean = tree_is_clean(config)
        if graph is None:
            # a no-op, the actions never decoded
            if tree_clean and settled(previous, entry.digest, config.root):
                return _settled_build(config, reporter, options, entry, previous, patterns,
                                      env_hash, started)
            graph = entry.graph()
            actions = graph.actions
        # ORCH-03 before anything runs, dry runs included
        check_pins(config.root, actions, previous)
        if local:
            check_budget(actions, config.resources)  # ORCH-05 likewise
        checks.append(True)
        clean = [False] * len(actions) if options.verify \
            else clean_actions(actions, previous, config.root)
        up_to_date = sum(clean)
        if up_to_date == len(actions) and tree_clean:  # a no-op all the same
            return _settled_build(config, reporter, options, entry, previous, patterns, env_hash,
                                  started)
        reporter.build_started(len(actions), up_to_date)
        from posbuild.store.journal import build_row

        info, blobs = build_row(time.time(), patterns, env_hash, (entry.digest, entry.raw),
                                previous.raw, clean,
                                allow_env_drift=options.allow_env_drift, verify=options.verify,
                                passed_env=[list(pair) for pair in passed_env])  # for `explain`
        from posbuild.exec.namespaces import writable_paths
        from posbuild.core.records import Outcome
        from posbuild.engine.runner import RunSettings, plan_dirty, run_dirty

        settings = RunSettings(options.jobs or config.jobs, options.keep_going, env_hash, env_key,
                               passed_env,
                               request.state_path, patterns, options.verify, info, tuple(blobs),
                               options.explain, secrets, grant=grant,
                               executor=options.executor, allow_env_drift=options.allow_env_drift,
                               sandbox_writable=writable_paths(environ), tree_clean=tree_clean,
                               graph=entry.digest)
        if options.dry_run:
            planned = plan_dirty(config, actions, clean, previous, settings)
            for index, reason in planned:
                if reason:
                    reporter.message(f"explain {actions[index].label}: {reason}")
                reporter.action_finished(actions[index].label, Outcome.PLANNED, "", b"")
            return _finish(reporter, BuildSummary(len(actions), len(planned),
                                                  len(actions) - len(planned), 0, 0,
                                                  time.monotonic() - started, (), dry_run=True))
        run = run_dirty(config, actions, clean, previous, settings, reporter)
    executed, cached, failed = (run.count(s)
                                for s in (Outcome.EXECUTED, Outcome.CACHED, Outcome.FAILED))
    return _finish(reporter, BuildSummary(
        total=len(actions), executed=executed, cached=up_to_date + cached, failed=failed,
        skipped=run.skipped,
        wall=time.monotonic() - started, failed_labels=run.failed_labels(actions),
        orch=run.failure_classes(),
    ))


def _settled_build(config: Config, reporter: Reporter, options: BuildOptions, entry: CachedGraph,
                   previous: BuildState, patterns: tuple[str, ...], env_hash: Digest,
                   started: float) -> BuildSummary:
    """Finish a build whose every action the saved state settled: one row in the store, nothing
    else."""
    from posbuild.store.journal import build_row, record_settled_build

    count = entry.facts.count
    reporter.build_started(count, count)
    if not options.dry_run:
        info, blobs = build_row(time.time(), patterns, env_hash, (entry.digest, entry.raw),
                                previous.raw,
                                [True] * count, allow_env_drift=options.allow_env_drift,
                                verify=options.verify)
        record_settled_build(config.store_dir, config.workspace_tag,
                             info.with_fields(counts={"cached": count}), blobs)
    return _finish(reporter, BuildSummary(count, 0, count, 0, 0, time.monotonic() - started, (),
                                          dry_run=options.dry_run))


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
        return NonDeterminism(f"{summary.failed} action(s) failed, some produced bytes that differ "
                              f"from their cached result: {labels}")
    if ResourceOversubscription in summary.orch:
        return ResourceOversubscription(f"{summary.failed} action(s) failed, some used more memory "
                                        f"than they declared: {labels}")
    if summary.failed:
        return ActionFailed(f"{summary.failed} action(s) failed: {labels}")
    return None


def _finish(reporter: Reporter, summary: BuildSummary) -> BuildSummary:
    reporter.build_finished(summary)
    return summary


def clean(root: Path, everything: bool, reporter: Reporter) -> list[Path]:
    """Remove `posbuild-out/` (and with `everything`, the store and the rest of `.posbuild/`);
    returns what was removed.

    It holds the workspace lock (a build would go on writing into what clean removes), and with
    `everything` the shared store's too. Only what posbuild made is touched (owned.py): the store
    and `.posbuild/` are emptied, keeping their marks and lock files, so that a command waiting
    for the lock finds a workspace as good as new; a folder without posbuild's mark is refused.
    """
    config = load_config(root)
    if not any(os.path.lexists(path)
               for path in (config.out_dir, config.state_dir, config.store_dir)):
        return []
    with workspace_lock(config, reporter, collect=everything):
        removed = [config.out_dir] if remove_outputs(config.out_dir) else []
        if not everything:
            # posbuild-out/ no longer matches the latest generation
            mark_tree(config, clean=False, withdrawn=())
            return removed
        if not config.store_dir.is_relative_to(config.state_dir) \
                and empty(config.store_dir, STORE, (STORE_LOCK,)):
            removed.append(config.store_dir)  # a shared store (`[cache] dir`)
        if empty(config.state_dir, STATE, (WORKSPACE_LOCK,)):
            removed.append(config.state_dir)
    return removed

"""Layer 8: one build, end to end — the only module that wires loader, analysis, scheduler,
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
from typing import Iterator, Mapping, Sequence

from posbuild.analysis import Action, ActionGraph, Analyzer, expand_patterns
from posbuild.config import Config, load_config
from posbuild.envfp import environment_hash
from posbuild.errors import PosbuildError
from posbuild.execute import ActionOutcome, Rebuilder, Status
from posbuild.filestate import FileStates
from posbuild.graphcache import GraphCache
from posbuild.label import parse_pattern
from posbuild.loader import Loader, discover_packages
from posbuild.reporter import BuildSummary, Reporter
from posbuild.sandbox import Sandboxes
from posbuild.scheduler import Scheduler, State
from posbuild.store import Store


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """What the command line decides about one build."""

    patterns: tuple[str, ...]
    jobs: int = 0  # 0: the workspace's [build] jobs, or one per CPU
    keep_going: bool = False
    dry_run: bool = False
    cwd_package: str = ""


def resolve(root: Path, patterns: Sequence[str], cwd_package: str = "", config: Config | None = None) -> ActionGraph:
    """The ActionGraph for `patterns`, from the graph cache when nothing it depends on changed."""
    config = config or load_config(root)
    parsed = [parse_pattern(p, cwd_package) for p in patterns]
    request = sorted({str(p) for p in parsed})
    cache = GraphCache(root, config.state_dir / "graphs")
    cached = cache.load(request)
    if cached is not None:
        return cached
    packages, dirs = discover_packages(root, config.build_file_names)
    loader = Loader(config, packages)
    roots = expand_patterns(parsed, packages, loader)
    graph = Analyzer(loader).analyze(roots)
    cache.save(request, graph, dirs, [*loader.files_read, "posbuild.toml"])
    return graph


@contextmanager
def workspace_lock(config: Config, reporter: Reporter) -> Iterator[None]:
    """Hold `.posbuild/lock` exclusively for the duration of a command that writes outputs."""
    config.state_dir.mkdir(exist_ok=True)
    with open(config.state_dir / "lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            reporter.message("posbuild: another posbuild command is running in this workspace; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Executor:
    """Adapts the Rebuilder to the scheduler's node numbers, and reports each finished action."""

    def __init__(self, actions: Sequence[Action], rebuilder: Rebuilder, reporter: Reporter) -> None:
        self._actions = actions
        self._rebuilder = rebuilder
        self._reporter = reporter
        self.outcomes: dict[int, ActionOutcome] = {}

    def prepare(self, node: int) -> ActionOutcome | None:
        return self._rebuilder.check(self._actions[node])

    def run(self, node: int) -> ActionOutcome:
        try:
            return self._rebuilder.run(self._actions[node])
        except OSError as error:
            return ActionOutcome(Status.FAILED, error=f"{error.strerror or error}: {error.filename or ''}".rstrip(": "))

    def succeeded(self, outcome: ActionOutcome) -> bool:
        return outcome.status is not Status.FAILED

    def finished(self, node: int, state: State, outcome: ActionOutcome | None) -> None:
        if outcome is None:
            return
        self.outcomes[node] = outcome
        self._reporter.action_finished(self._actions[node].label, outcome.status.value, outcome.error, outcome.stderr)

    def cancel(self) -> None:
        self._rebuilder.cancel()


def run_build(root: Path, options: BuildOptions, reporter: Reporter,
              environ: Mapping[str, str] | None = None) -> BuildSummary:
    """Build the patterns of `options` in the workspace at `root`."""
    started = time.monotonic()
    config = load_config(root)
    graph = resolve(root, options.patterns, options.cwd_package, config)
    with workspace_lock(config, reporter):
        store = Store(config.store_dir)
        try:
            return _execute(config, graph, options, reporter, store, environ or {}, started)
        finally:
            store.close()


def _execute(config: Config, graph: ActionGraph, options: BuildOptions, reporter: Reporter, store: Store,
             environ: Mapping[str, str], started: float) -> BuildSummary:
    passed_env = tuple((name, environ[name]) for name in config.env_pass if name in environ)
    files = FileStates(config.root, store)
    sandboxes = Sandboxes(config.root, config.state_dir / "sandbox")
    sandboxes.clear_stale()
    rebuilder = Rebuilder(config.root, store, files, sandboxes, environment_hash(), passed_env)
    actions = graph.actions
    reporter.build_started(len(actions))
    executor = _Executor(actions, rebuilder, reporter)
    scheduler: Scheduler[ActionOutcome] = Scheduler(
        [a.deps for a in actions], [a.label for a in actions], options.jobs or config.jobs, options.keep_going
    )
    try:
        states = scheduler.run(executor)
    finally:
        store.commit(memo=files.take_pending())
        store.flush()
    statuses = [o.status for o in executor.outcomes.values()]
    summary = BuildSummary(
        total=len(actions),
        executed=statuses.count(Status.EXECUTED),
        cached=statuses.count(Status.CACHED),
        failed=statuses.count(Status.FAILED),
        skipped=states.count(State.SKIPPED),
        wall=time.monotonic() - started,
        failed_labels=tuple(actions[n].label for n, o in sorted(executor.outcomes.items()) if o.status is Status.FAILED),
    )
    reporter.build_finished(summary)
    return summary


def clean(root: Path, everything: bool) -> list[Path]:
    """Remove `posbuild-out/` (and with `everything`, `.posbuild/` too); returns what was removed."""
    import shutil

    config = load_config(root)
    removed = []
    targets = [config.out_dir] + ([config.state_dir] if everything else [])
    if everything and config.store_dir.exists() and config.state_dir not in config.store_dir.parents:
        targets.append(config.store_dir)
    for path in targets:
        if path.exists():
            _make_writable(path)
            shutil.rmtree(path)
            removed.append(path)
    return removed


def _make_writable(folder: Path) -> None:
    """Outputs are read-only; their folders stay writable, so only the folders need fixing."""
    for dirpath, _, _ in os.walk(folder):
        os.chmod(dirpath, 0o755)


__all__ = ["BuildOptions", "resolve", "run_build", "clean", "PosbuildError"]

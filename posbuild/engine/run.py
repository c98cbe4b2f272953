"""Layer 5: run one action that missed the cache — start its command, wait, judge the run, commit.

The scheduler calls these on a worker thread, without its lock, in four steps: `start()` gives the
command to the spawner and returns at once (the executor asks the remote cache before, when the
decision said it might hold the result: network I/O belongs here, not under the lock); `wait()`
waits for the command; `conclude()` judges the finished run and commits it (commit.py), or says why
it failed; `tidy()` removes the sandbox and the files its outputs replaced in `posbuild-out/`. The
scheduler may start the worker's next action between `wait()` and `conclude()`, and starts it
before `tidy()` whenever it can: the clean-up then costs a dependent nothing. A result is
committed only when the command exited 0, every declared output exists as a regular file, no
source input changed while it ran, no output holds a secret, and every extra check of the build's
mode passes (modes.py: `--verify` compares with the cached result); otherwise nothing of it is
kept in the store or `posbuild-out/`: what it said and wrote goes to `.posbuild/failed/` for the
user (postmortem.py), with its command and a hint when the shell did not find a program the
sandbox hides (notfound.py), and `--keep-sandbox` leaves its sandbox in place.

`ActionExecutor` is the scheduler's view of all this: node numbers in, outcomes out, each finished
action reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from posbuild.core.action import Action
from posbuild.core.records import Outcome, RecordState
from posbuild.engine.commit import Committer
from posbuild.engine.filestate import FileStates
from posbuild.engine.folders import output_files, refused_folder
from posbuild.engine.outcome import ActionOutcome, Failure, own_failure
from posbuild.engine.notfound import Sandbox, hint, module_hint
from posbuild.engine.plan import BuildEnvironment
from posbuild.engine.postmortem import FailureKeeper
from posbuild.engine.rebuilder import Miss, Rebuilder
from posbuild.engine.reporter import Reporter
from posbuild.engine.resources import memory_overrun
from posbuild.engine.scheduler import State, current_slot
from posbuild.engine.sources import RemoteResults
from posbuild.errors import NonDeterminism
from posbuild.exec.spawner import Spawner, SpawnResult
from posbuild.store.journal import Journal
from posbuild.store.materialize import discard
from posbuild.workspace.secrets import SecretUnavailable, file_containing, redact, values_of

# one more judgement of a finished run that passed the usual ones (modes.py)
RunCheck = Callable[[Action, SpawnResult, Miss], Failure | None]
# `--keep-sandbox`: leaves a failed run's sandbox in place; returns lines saying where and how to
# run the command again in it (sandbox.LocalSpawner.keep)
KeepSandbox = Callable[[SpawnResult, Action, Sequence[tuple[str, str]]], tuple[str, ...]]


@dataclass(slots=True)
class Started:
    """An action `ActionRunner.start` took; `wait` and `conclude` fill in the rest."""

    action: Action
    miss: Miss
    started: float  # time.time() when it started
    secrets: tuple[tuple[str, str], ...]
    running: Any  # what the spawner's `start` returned, for its `wait`
    spawn: SpawnResult | None = None  # set by `wait`
    ended: float = 0.0  # time.time() when the command ended
    # set at once when the action ended before its command: a remote hit, or a failure
    outcome: ActionOutcome | None = None
    # set by `conclude`: the files its outputs replaced, set aside for `tidy` to delete
    # (materialize.py), and whether its sandbox stays (`--keep-sandbox`)
    replaced: list[str] = field(default_factory=list)
    kept: bool = False


class ActionRunner:
    """Start, wait for and conclude the runs of one build's actions."""

    def __init__(self, spawner: Spawner, files: FileStates, committer: Committer,
                 environment: BuildEnvironment, journal: Journal | None = None,
                 checks: Sequence[RunCheck] = (), keeper: FailureKeeper | None = None,
                 keep_sandbox: KeepSandbox | None = None, sandbox: Sandbox | None = None) -> None:
        self._spawner = spawner
        self._files = files
        self._committer = committer
        self._passed_env = environment.passed_env
        self._secrets = environment.secrets
        self._environments = environment.environments  # which Pythons an action runs
        self._journal = journal
        self._checks = tuple(checks)
        self._keeper = keeper
        self._keep_sandbox = keep_sandbox
        self._sandbox = sandbox  # what commands cannot see, for the "not found" hint
        self._cancelled = False  # a signal or an error elsewhere stopped the running commands

    def start(self, action: Action, miss: Miss) -> Started:
        """Stage `action`'s sandbox and start its command (worker thread); return at once."""
        started = time.time()
        if self._journal is not None:
            self._journal.started(action.label)
        try:
            secrets = values_of(self._secrets, action.secrets)
            running = self._spawner.start(action, self._passed_env + secrets)
        except SecretUnavailable as error:
            if self._journal is not None:
                self._journal.add(action, RecordState.FAILED, miss.key, started, time.time(),
                                  miss.inputs, (), None, None, "secret", current_slot())
            return Started(action, miss, started, (), None,
                           outcome=ActionOutcome(Outcome.FAILED, error=str(error),
                                                 reason=miss.reason))
        except OSError as error:
            return Started(action, miss, started, (), None, outcome=own_failure(error))
        return Started(action, miss, started, secrets, running)

    def wait(self, started: Started) -> bool:
        """Wait for the command `start` started; whether the action may still succeed (it may
        still fail `conclude`'s checks, but a command that failed has certainly failed)."""
        if started.outcome is not None:
            return started.outcome.key is not None
        try:
            started.spawn = self._spawner.wait(started.running)
        except OSError as error:
            started.outcome = own_failure(error)
            return False
        started.ended = time.time()
        return started.spawn.exit_code == 0 and not started.spawn.timed_out

    def conclude(self, started: Started) -> ActionOutcome:
        """Judge the finished run and commit its result, or say why it failed; the sandbox goes."""
        if started.outcome is not None:
            return started.outcome
        try:
            return self._conclude(started)
        except OSError as error:
            return own_failure(error)

    def _conclude(self, started: Started) -> ActionOutcome:
        action, miss, secrets, spawn = started.action, started.miss, started.secrets, started.spawn
        assert spawn is not None, "conclude() before wait()"
        if secrets:  # nothing below keeps or shows a secret value
            values = [value for _, value in secrets]
            spawn = replace(spawn, stdout=redact(spawn.stdout, values),
                            stderr=redact(spawn.stderr, values))
        failure = self._failure(action, spawn, miss, secrets)
        for check in self._checks:
            failure = failure or check(action, spawn, miss)
        if failure is not None:
            in_place: tuple[str, ...] = ()  # --keep-sandbox: where it stays, how to re-run
            if self._keep_sandbox is not None and not self._cancelled:
                in_place = self._keep_sandbox(spawn, action, self._passed_env)
                started.kept = True
            outcome = self._failed(started, spawn, failure)
            return replace(outcome, notes=outcome.notes + in_place)
        self._committer.commit(action, spawn, miss, started.started, started.ended,
                               started.replaced)
        if self._keeper is not None:
            self._keeper.passed(action.label)
        return ActionOutcome(Outcome.EXECUTED, miss.key, reason=miss.reason,
                             stderr=spawn.stderr, elapsed=spawn.elapsed, stdout=spawn.stdout)

    def tidy(self, started: Started) -> None:
        """Remove what a concluded run left (on its worker thread, once that started its next
        command): its sandbox, unless `--keep-sandbox` keeps it, and the files its outputs
        replaced."""
        if started.spawn is not None and not started.kept:
            self._spawner.remove(started.spawn)
        discard(started.replaced)

    def _failed(self, started: Started, spawn: SpawnResult, failure: Failure) -> ActionOutcome:
        """Record a run that cannot be committed, and say how it ended."""
        action, miss = started.action, started.miss
        if self._cancelled:  # stopped by posbuild: not a failure of its own
            failure = Failure(failure.message, "interrupted")
        if self._journal is not None:
            state = RecordState.INTERRUPTED if self._cancelled else RecordState.FAILED
            self._journal.add(action, state, miss.key, started.started, started.ended,
                              miss.inputs, (), spawn.usage, spawn.exit_code, failure.code,
                              current_slot(), remote=spawn.remote)
        orch = type(failure.orch) if failure.orch is not None else None
        # the decision settled it from the cached result
        kept = miss.key if orch is NonDeterminism else None
        notes = () if self._cancelled else self._post_mortem(started, spawn)
        return ActionOutcome(Outcome.FAILED, kept, error=failure.message, orch=orch,
                             reason=miss.reason, stderr=spawn.stderr, elapsed=spawn.elapsed,
                             stdout=spawn.stdout, notes=notes)

    def _post_mortem(self, started: Started, spawn: SpawnResult) -> tuple[str, ...]:
        """Keep what a failed run said and wrote (postmortem.py); the lines the failure shows.
        A command that held secrets may have written them: its files are not kept."""
        action = started.action
        notes: tuple[str, ...] = (f"command: {action.command}",)
        found = None if self._sandbox is None else hint(spawn.exit_code, spawn.stderr,
                                                         self._sandbox)
        if found is None and self._environments is not None:
            pythons = self._environments.pythons(action.programs)
            found = module_hint(spawn.stderr, pythons)
        if found is not None:
            notes += (found,)
        if self._keeper is None:
            return notes
        files = not started.secrets or action.allow_secret_in_output
        try:
            folder = self._keeper.keep(action, spawn.exec_root, spawn.stdout, spawn.stderr, files)
        except OSError as error:
            return (*notes, f"(its output could not be kept: {error})")
        what = "its output and the files it wrote" if files else "its output"
        return (*notes, f"{what}: {self._keeper.shown(folder)}")

    def _failure(self, action: Action, spawn: SpawnResult, miss: Miss,
                 secrets: tuple[tuple[str, str], ...] = ()) -> Failure | None:
        """Why a finished run cannot be committed; None if it can."""
        if spawn.timed_out:
            return Failure(f"timed out after {action.timeout} s", "timeout")
        if spawn.exit_code != 0:
            if spawn.exit_code < 0:
                return Failure(f"command failed (killed by signal {-spawn.exit_code})",
                               f"signal {-spawn.exit_code}")
            return Failure(f"command failed (exit code {spawn.exit_code})",
                           f"exit {spawn.exit_code}")
        overrun = memory_overrun(action, spawn.usage.max_rss_kb if spawn.usage else None)
        if overrun is not None:
            return Failure.of(overrun)
        if spawn.irregular and spawn.irregular[0] in action.out_dirs:
            return Failure(f"declared output folder '{spawn.irregular[0]}' {spawn.why}; nothing "
                           "was kept", "missing output")
        if spawn.irregular:
            return Failure(f"declared output '{spawn.irregular[0]}' {spawn.why}; outputs must be "
                           "regular files in folders of their own, and nothing was kept",
                           "missing output")
        if spawn.missing:
            missing = ", ".join(f"'{p}'" for p in spawn.missing)
            return Failure(f"declared output {missing} was not created", "missing output")
        refused = refused_folder(action, spawn)
        if refused is not None:
            return refused
        changed = [path for path, sig in miss.sources if not self._files.unchanged(path, sig)]
        if changed:
            return Failure(f"input '{changed[0]}' changed while the action ran; result not cached, "
                           "build again", "input changed")
        if secrets and not action.allow_secret_in_output:
            for path in action.outputs:
                with output_files(action, spawn, path) as files:
                    leak = file_containing(files, secrets)
                if leak is not None:
                    return Failure(f"output '{path}' contains the value of secret '{leak[1]}'; "
                                   "nothing was kept (declare allow_secret_in_output = True if "
                                   "that is intended)", "secret in output")
        return None

    def cancel(self) -> None:
        """Stop every running command; what they were doing is recorded as interrupted, not
        failed."""
        self._cancelled = True
        self._spawner.cancel()

    @property
    def stopped(self) -> int:
        """How many running commands a cancel killed."""
        return self._spawner.stopped


class ActionExecutor:
    """The scheduler's Executor: node numbers to the decision and the run, each finished action
    reported. A miss waits here, keyed by node, from `prepare` (under the lock) to `start`, which
    asks the remote cache first when the decision said it might hold the result."""

    def __init__(self, actions: Sequence[Action], rebuilder: Rebuilder, runner: ActionRunner,
                 reporter: Reporter, remote: RemoteResults | None = None) -> None:
        self._actions = actions
        self._rebuilder = rebuilder
        self._runner = runner
        self._reporter = reporter
        self._remote = remote
        self._misses: dict[int, Miss] = {}
        self.outcomes: dict[int, ActionOutcome] = {}

    def prepare(self, node: int) -> ActionOutcome | None:
        decided = self._rebuilder.check(self._actions[node])
        if isinstance(decided, Miss):
            self._misses[node] = decided
            return None
        return decided

    def start(self, node: int) -> Started:
        action, miss = self._actions[node], self._misses.pop(node)
        if miss.ask_remote and self._remote is not None:
            started = time.time()
            hit = self._remote.fetch(action, miss.key)
            if hit is not None:
                self._rebuilder.record_hit(action, hit, started, miss.inputs)
                return Started(action, miss, started, (), None, outcome=hit)
        self._reporter.action_started(action.label, action.message)
        return self._runner.start(action, miss)

    def wait(self, started: Started) -> bool:
        return self._runner.wait(started)

    def conclude(self, started: Started) -> ActionOutcome:
        return self._runner.conclude(started)

    def tidy(self, started: Started) -> None:
        self._runner.tidy(started)

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
        if outcome.notes:
            self._reporter.failure_notes(label, outcome.notes)
        if outcome.status is Outcome.EXECUTED:
            self._reporter.action_output(label, outcome.stdout, outcome.stderr)

    def cancel(self) -> None:
        self._runner.cancel()

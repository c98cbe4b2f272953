"""Layer 1: the rebuilder — for ONE action, compute its key, then reuse a result or run and commit.

`check()` runs under the scheduler's lock, never two at once: input digests (from the stat memo or
from the outputs of upstream actions finished in this build), the key, one store lookup, and a stat
per output to make sure `posbuild-out/` holds it. A hit ends there. Execution runs on a worker
thread, concurrently with other actions and with checks, in three steps: `start()` stages the
sandbox and starts the command, `wait()` waits for it, and `conclude()` checks the run, hashes the
outputs, commits result + blobs + record at once (to the store's write-ahead log: one `write()`,
replayed after a kill), and only then moves the outputs into `posbuild-out/`, so a kill at any
instant loses no accepted result whose outputs appeared there. The installed files' memo rows
ride along with the next commit (dependents read digests from memory). The scheduler may start the
worker's next action between `wait()` and `conclude()`. A result is committed only when
the command exited 0, every declared output exists and no source input changed while it ran;
otherwise nothing of it is kept.

Early cutoff falls out of keying on input *contents*: a re-run that reproduces byte-identical
outputs leaves its dependents' keys unchanged, so they hit the cache.

With a remote cache (remote.py), a local miss asks the remote next: a verified remote hit is put
into the local store and then settles like a local hit; an executed result is uploaded once it
is handed to the local store, when this process may upload. Neither can fail the action. An
action whose outputs may hold a secret (`carriers`, secrets.py) does neither, and its result is
flagged so that no export takes it either.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from posbuild.core.action import Action, is_generated
from posbuild.core.compare import first_file_difference, format_difference
from posbuild.core.digest import Digest, hash_bytes, hash_file
from posbuild.errors import NonDeterminism, OrchError
from posbuild.engine.filestate import FileStates
from posbuild.engine.keys import action_key
from posbuild.core.layout import NO_CACHE_TAG, STATE_DIR, TMP
from posbuild.store.materialize import INSTALLING, Materializer
from posbuild.host.nofollow import Opened, fd_path
from posbuild.core.reasons import differences, one_line
from posbuild.core.records import (ActionResult, FileState, Outcome, OutputFile, RecordState,
                                   Signature)
from posbuild.engine.resources import memory_overrun
from posbuild.exec.sandbox import read_small
from posbuild.exec.spawner import Spawner, SpawnResult
from posbuild.store.lmdbstore import INLINE_LIMIT, Commit, Store
from posbuild.store.journal import Journal, Row
from posbuild.engine.scheduler import current_slot
from posbuild.workspace.secrets import (SecretSource, SecretUnavailable, file_containing, redact,
                                        values_of)
from posbuild.store.upstate import EMPTY, ActionTrace, BuildState

if TYPE_CHECKING:
    # imported only where a remote is configured (runner.py)
    from posbuild.store.remote import RemoteCache


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """How one action ended in this build; `key` is set whenever the action ended with a result its
    dependents can use: it ended well, or `--verify` found a re-run that differs (ORCH-04) and kept
    the cached result, which `check` already put in `posbuild-out/`."""

    status: Outcome
    key: Digest | None = None
    error: str = ""
    orch: type[OrchError] | None = None  # the ORCH class of a failure, when it has one
    reason: str = ""  # under --explain: why it ran
    stderr: bytes = field(default=b"", repr=False, compare=False)
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


@dataclass(frozen=True, slots=True)
class _Prepared:
    key: Digest
    sources: tuple[tuple[str, Signature], ...]
    inputs: tuple[tuple[str, Digest], ...]
    cached: ActionResult | None = None  # under --verify: the result the new run must reproduce
    reason: str = ""


@dataclass(slots=True)
class Started:
    """An action `Rebuilder.start` started; `wait` and `conclude` fill in the rest."""

    action: Action
    prepared: _Prepared
    started: float  # time.time() when it started
    secrets: tuple[tuple[str, str], ...]
    running: Any  # what the sandboxes' `start` returned, for their `wait`
    spawn: SpawnResult | None = None  # set by `wait`
    ended: float = 0.0  # time.time() when the command ended
    outcome: ActionOutcome | None = None  # set at once when the action failed before its command


class Rebuilder:
    """Check-or-run for the actions of one build; upstream output digests are shared state."""

    def __init__(self, root: Path, store: Store, files: FileStates, sandboxes: Spawner,
                 env_hash: Digest, passed_env: Sequence[tuple[str, str]] = (),
                 previous: BuildState | None = None, dry_run: bool = False, verify: bool = False,
                 journal: Journal | None = None, explain: bool = False,
                 secrets: SecretSource | None = None, remote: RemoteCache | None = None,
                 carriers: frozenset[str] = frozenset()) -> None:
        self._root = root
        self._store = store
        self._files = files
        self._sandboxes = sandboxes
        self._materializer = Materializer(root, store, root / STATE_DIR / TMP)
        self._dry_run = dry_run
        self._verify = verify
        self._journal = journal
        self._explain = explain
        self._secrets = secrets
        # asked after a local miss; uploads executed results
        self._remote = None if dry_run or verify else remote
        self._carriers = carriers  # labels of actions whose outputs may hold a secret: never shared
        if not dry_run:
            self._materializer.clear_temp()
        self._env_hash = env_hash
        self._passed_env = tuple(passed_env)
        self._previous = previous or EMPTY
        self._produced: dict[str, FileState] = {}
        self._prepared: dict[str, _Prepared] = {}
        # --explain: `[env] pass` by build
        self._passed_by_build: dict[str, Sequence[Sequence[str]] | None] | None = None
        self.traces: dict[str, ActionTrace] = {}
        self.outputs: dict[str, OutputFile] = {}
        self.used: list[Digest] = []
        self._lock = threading.Lock()
        # memo rows of installed outputs, not yet committed
        self._installed: list[tuple[str, FileState]] = []
        self._cancelled = False  # a signal or an error elsewhere stopped the running commands

    def _output_state(self, path: str) -> FileState:
        """An upstream output: produced in this build, or recorded for an up-to-date action."""
        state = self._produced.get(path)
        if state is None:
            state = self._previous.file(path)
            assert state is not None, f"{path} has neither been produced nor recorded"
        return state

    def output_digest(self, path: str) -> Digest:
        """The digest of an output of this build's request: produced now, or as last recorded."""
        state = self._produced.get(path)
        return state.digest if state is not None else self._previous.digests[path]

    def check(self, action: Action) -> ActionOutcome | None:
        """Settle `action` from the cache if possible; None means it must run."""
        digests: list[Digest] = []
        sources: list[tuple[str, Signature]] = []
        for path in action.inputs:
            if is_generated(path):
                digests.append(self._output_state(path).digest)
            else:
                try:
                    state = self._files.state(path)
                except FileNotFoundError:
                    return ActionOutcome(Outcome.FAILED, error=f"source file '{path}' is missing")
                digests.append(state.digest)
                sources.append((path, state.signature))
        started = time.time()
        inputs = tuple(zip(action.inputs, digests))
        hit = self._reuse_trace(action, digests) if NO_CACHE_TAG not in action.tags else None
        if hit is not None:
            key = hit.key
        else:
            key = action_key(action, digests, self._env_hash, self._passed_env)
            if NO_CACHE_TAG not in action.tags:
                hit = self._lookup(action, key)
                if hit is None and self._remote is not None and action.label not in self._carriers:
                    hit = self._fetch(action, key)
        if hit is not None and not self._verify:
            if self._journal is not None:
                outputs = [(p, self._produced[p].digest) for p in action.outputs]
                self._journal.add(action, RecordState.CACHED, hit.key, started, time.time(), inputs,
                                  outputs)
            return hit
        assert key is not None
        cached = self._store.get_result(key) if self._verify else None
        self._prepared[action.label] = _Prepared(key, tuple(sources), inputs, cached,
                                                 self._why(action, inputs, key, cached is not None))
        return None

    def _why(self, action: Action, inputs: tuple[tuple[str, Digest], ...], key: Digest,
             verifying: bool) -> str:
        """Under --explain, the one-line reason this action must run."""
        if not self._explain:
            return ""
        previous = self._store.latest_record(action.label)
        # skipped last time: compare with the run before
        if previous is not None and previous.key is None:
            previous = next((r for r in reversed(self._store.records_of_label(action.label))
                             if r.key), None)
        passed_before = None
        if previous is not None:
            if self._passed_by_build is None:
                self._passed_by_build = {str(b.number): b.passed_env for b in self._store.builds()}
            passed_before = self._passed_by_build.get(previous.build_id)
        reasons = differences(previous, action.command, action.env, action.versions, inputs,
                              self._env_hash, self._passed_env, passed_before)
        return one_line(previous, reasons, key, verifying,
                        passed_before is None and bool(self._passed_env))

    def planned_reason(self, action: Action) -> str:
        """Under --explain, why `check` found that `action` must run (for `build -n --explain`)."""
        prepared = self._prepared.get(action.label)
        return prepared.reason if prepared is not None else ""

    def _reuse_trace(self, action: Action, digests: list[Digest]) -> ActionOutcome | None:
        """A hit without computing a key: the inputs and outputs are those of the last build."""
        trace = self._previous.trace_of(action)
        if trace is None:
            return None
        recorded_digests = self._previous.digests
        for path, digest in zip(action.inputs, digests):
            if recorded_digests.get(path) != digest:
                return None
        outputs = []
        for path in action.outputs:
            recorded = self._previous.file(path)
            if recorded is None or not self._files.unchanged(path, recorded.signature):
                return None
            outputs.append((path, recorded))
        self._produced.update(outputs)
        self.traces[action.label] = trace
        self.used.append(trace.key)
        return ActionOutcome(Outcome.CACHED, trace.key)

    def _lookup(self, action: Action, key: Digest) -> ActionOutcome | None:
        """A hit by key: restore any output that `posbuild-out/` lacks, from verified blobs."""
        result = self._store.get_result(key)
        if result is None or not _describes(result, action):
            return None
        restored: list[tuple[str, FileState]] = []
        for output in result.outputs:
            state = self._materializer.current(output)
            if state is None and self._dry_run:
                # would be restored; only the digest matters
                state = FileState((0, 0, 0, 0), output.digest)
            elif state is None:
                state = self._materializer.restore(output)
                restored.append((output.path, state))
            self._produced[output.path] = state
        if restored:  # their memo rows ride along with the next commit, as an executed action's do
            with self._lock:
                self._installed += restored
        self.traces[action.label] = ActionTrace(action.def_hash, key)
        self.outputs.update((o.path, o) for o in result.outputs)
        self.used.append(key)
        return ActionOutcome(Outcome.CACHED, key)

    def _fetch(self, action: Action, key: Digest) -> ActionOutcome | None:
        """A hit from the remote cache: its verified blobs and result go into the local store, then
        the action settles exactly like a local hit. Any rejected or missing piece is a miss."""
        assert self._remote is not None
        entry = self._remote.get_entry(key, action.label)
        if entry is None or not _describes(entry.result, action):
            return None
        blobs: list[tuple[Digest, bytes | None]] = []
        temps: list[Path] = []
        try:
            for digest, name, size in entry.blobs():
                if self._store.has_blob(digest):
                    continue
                got = self._remote.fetch_blob(digest, name, size, action.label,
                                              self._root / STATE_DIR / TMP)
                if got is None:
                    return None
                if isinstance(got, Path):
                    temps.append(got)
                    self._store.store_external(digest, got)
                blobs.append((digest, got if isinstance(got, bytes) else None))
        finally:
            for temp in temps:
                temp.unlink(missing_ok=True)
        self._store.log([Commit((key, entry.result), tuple(blobs))])
        self._remote.hit()
        return self._lookup(action, key)

    def state_for(self, actions: Sequence[Action], up_to_date: Sequence[bool], env_key: Digest,
                  graph: Digest) -> BuildState:
        """The up-to-date state to save: every action that ended well, and the files it saw.

        Actions found up to date before the build keep their recorded rows unchanged. The state
        is complete when every action ended well and no file it saw was too fresh to record.
        """
        previous = self._previous
        traces: dict[str, tuple[Digest, Digest]] = {}
        signatures: dict[str, Signature] = {}
        digests: dict[str, Digest] = {}
        complete = True
        for action, clean in zip(actions, up_to_date):
            if clean:
                traces[action.label] = previous.actions[action.label]
                for path in (*action.sources, *action.outputs):
                    signatures[path] = previous.signatures[path]
                    digests[path] = previous.digests[path]
                continue
            trace = self.traces.get(action.label)
            if trace is None:
                complete = False
                continue
            traces[action.label] = (trace.def_hash, trace.key)
            # a source hashed too soon after it was written is recorded only once it has settled
            # (filestate.py)
            states = [(p, self._files.stable(p) if p in action.sources else self._output_state(p))
                      for p in action.inputs]
            states += [(p, self._produced[p]) for p in action.outputs]
            for path, state in states:
                if state is not None:
                    signatures[path], digests[path] = state.signature, state.digest
            complete = complete and all(p in signatures for p in action.sources)
        return BuildState(env_key, traces, signatures, digests, graph=graph, complete=complete)

    def start(self, action: Action) -> Started:
        """Start executing `action` (worker thread): stage its sandbox and start its command, then
        return at once; `wait` for the command, and `conclude` to check and commit the result."""
        prepared = self._prepared.pop(action.label)
        if self._journal is not None:
            self._journal.started(action.label)
        started = time.time()
        try:
            secrets = values_of(self._secrets, action.secrets)
            running = self._sandboxes.start(action, self._passed_env + secrets)
        except SecretUnavailable as error:
            if self._journal is not None:
                self._journal.add(action, RecordState.FAILED, prepared.key, started, time.time(),
                                  prepared.inputs, (), None, None, "secret", current_slot())
            return Started(action, prepared, started, (), None,
                           outcome=ActionOutcome(Outcome.FAILED, error=str(error),
                                                 reason=prepared.reason))
        except OSError as error:
            return Started(action, prepared, started, (), None, outcome=_own_failure(error))
        return Started(action, prepared, started, secrets, running)

    def wait(self, started: Started) -> bool:
        """Wait for the command `start` started; whether it exited 0 (the action may still fail
        `conclude`'s checks, but a command that failed has certainly failed)."""
        if started.outcome is not None:
            return False
        try:
            started.spawn = self._sandboxes.wait(started.running)
        except OSError as error:
            started.outcome = _own_failure(error)
            return False
        started.ended = time.time()
        return started.spawn.exit_code == 0 and not started.spawn.timed_out

    def conclude(self, started: Started) -> ActionOutcome:
        """Check the finished run and commit its result, or say why it failed; the sandbox goes."""
        if started.outcome is not None:
            return started.outcome
        try:
            return self._conclude(started)
        except OSError as error:
            return _own_failure(error)

    def _conclude(self, started: Started) -> ActionOutcome:
        action, prepared, secrets = started.action, started.prepared, started.secrets
        spawn = started.spawn
        assert spawn is not None, "conclude() before wait()"
        if secrets:  # nothing below keeps or shows a secret value
            values = [value for _, value in secrets]
            spawn = replace(spawn, stdout=redact(spawn.stdout, values),
                            stderr=redact(spawn.stderr, values))
        try:
            failure = self._failure(action, spawn, prepared, secrets)
            if failure is None and prepared.cached is not None:
                difference = self._difference(spawn, prepared.cached)
                if difference:
                    failure = Failure.of(NonDeterminism(f"{difference}; the cached result is kept"))
            if failure is not None:
                if self._cancelled:  # stopped by posbuild: not a failure of its own
                    failure = Failure(failure.message, "interrupted")
                if self._journal is not None:
                    state = RecordState.INTERRUPTED if self._cancelled else RecordState.FAILED
                    self._journal.add(action, state, prepared.key, started.started, started.ended,
                                      prepared.inputs,
                                      (), spawn.usage, spawn.exit_code, failure.code,
                                      current_slot(), remote=spawn.remote)
                orch = type(failure.orch) if failure.orch is not None else None
                # `check` settled it from the cached result
                kept = prepared.key if orch is NonDeterminism else None
                return ActionOutcome(Outcome.FAILED, kept, error=failure.message, orch=orch,
                                     reason=prepared.reason,
                                     stderr=spawn.stderr, elapsed=spawn.elapsed)
            self._commit(action, spawn, prepared, started.started, started.ended)
        finally:
            self._sandboxes.remove(spawn)
        return ActionOutcome(Outcome.EXECUTED, prepared.key, reason=prepared.reason,
                             stderr=spawn.stderr, elapsed=spawn.elapsed)

    def _difference(self, spawn: SpawnResult, cached: ActionResult) -> str:
        """How a re-run's outputs differ from the cached result of the same key ("" if they
        don't)."""
        for output in cached.outputs:
            with spawn.output(output.path).reading() as fd:
                size_new, size_cached, offset = first_file_difference(
                    fd_path(fd), self._store.get_blob(output.digest))
            if offset is not None:
                return format_difference(output.path, "the cached result", size_cached, "this run",
                                         size_new, offset)
        return ""

    def _failure(self, action: Action, spawn: SpawnResult, prepared: _Prepared,
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
        if spawn.irregular:
            return Failure(f"declared output '{spawn.irregular[0]}' {spawn.why}; outputs must be "
                           "regular files in "
                           f"folders of their own, and nothing was kept", "missing output")
        if spawn.missing:
            missing = ", ".join(f"'{p}'" for p in spawn.missing)
            return Failure(f"declared output {missing} was not created", "missing output")
        changed = [path for path, sig in prepared.sources if not self._files.unchanged(path, sig)]
        if changed:
            return Failure(f"input '{changed[0]}' changed while the action ran; result not cached, "
                           "build again",
                           "input changed")
        if secrets and not action.allow_secret_in_output:
            for path in action.outputs:
                with spawn.output(path).reading() as fd:
                    leak = file_containing([Path(fd_path(fd))], secrets)
                if leak is not None:
                    return Failure(f"output '{path}' contains the value of secret '{leak[1]}'; "
                                   "nothing was kept "
                                   f"(declare allow_secret_in_output = True if that is intended)",
                                   "secret in output")
        return None

    def _commit(self, action: Action, spawn: SpawnResult, prepared: _Prepared, started: float,
                ended: float) -> ActionResult:
        """Hash and store the outputs, commit result, blobs and the execution record at once (the
        store's write-ahead log), and only then install the outputs: whatever `posbuild-out/` shows
        of an executed action, the store has (invariant 3; a kill just after the command loses
        nothing the next build would run again). The memo rows of the installed files follow with
        the next transaction, or at `flush()`; meanwhile a placeholder row names each path's
        digest."""
        key = prepared.key
        blobs: list[tuple[Digest, bytes | None]] = []
        produced: list[tuple[Opened, OutputFile, bytes | None]] = []
        for path in action.outputs:
            # found without following links; never reached by its path again
            file = spawn.output(path)
            with file.reading() as fd:
                stat, data = read_small(fd, INLINE_LIMIT)
                if data is not None:
                    digest = hash_bytes(data)
                    blobs.append((digest, data))
                else:
                    digest = hash_file(fd_path(fd))
                    self._store.store_external(digest, Path(fd_path(fd)))
                    blobs.append((digest, None))
            produced.append((file, OutputFile(path, digest, stat.st_size,
                                              bool(stat.st_mode & 0o111)), data))
        outputs = [output for _, output, _ in produced]
        stdout_digest, stderr_digest = hash_bytes(spawn.stdout), hash_bytes(spawn.stderr)
        blobs += [(stdout_digest, spawn.stdout), (stderr_digest, spawn.stderr)]
        result = ActionResult(tuple(outputs), spawn.exit_code, stdout_digest, stderr_digest,
                              action.label in self._carriers)
        cached = None if NO_CACHE_TAG in action.tags else (key, result)
        records: list[Row] = []
        if self._journal is not None:
            records.append(self._journal.row(action, RecordState.SUCCESS, key, started, ended,
                                             prepared.inputs,
                                             [(o.path, o.digest) for o in outputs], spawn.usage,
                                             spawn.exit_code, "", current_slot(),
                                             remote=spawn.remote))
        placeholders = tuple((o.path, FileState(INSTALLING, o.digest)) for o in outputs)
        with self._lock:
            memo, self._installed = self._installed, []
        self._store.log((Commit(cached, tuple(blobs), placeholders, (), tuple(records)),
                         Commit(memo=tuple(memo))))
        # its gc usage row comes with the build's last commit: one B-tree less per action
        self.used.append(key)
        try:
            installed = [(o.path, self._materializer.install(file, o, data)) for file, o,
                         data in produced]
        except OSError:  # the result stands (its key is true), but this build failed to show it
            if self._journal is not None:
                self._amend_record(records[0], action, prepared, started, ended, spawn)
            raise
        with self._lock:
            self._installed += installed
        if cached is not None and not result.secret and self._remote is not None \
                and self._remote.upload:
            self._remote.put_entry(key, result,
                                   {d: data if data is not None else self._store.external_path(d)
                                                 for d, data in blobs}, action.label)
        self._produced.update(installed)
        self.outputs.update((o.path, o) for o in outputs)
        if cached is not None:
            self.traces[action.label] = ActionTrace(action.def_hash, key)
        return result

    def _amend_record(self, committed: Row, action: Action, prepared: _Prepared, started: float,
                      ended: float, spawn: SpawnResult) -> None:
        """Turn an executed action's committed SUCCESS record into a FAILED one, under the same
        record key, when installing its outputs failed: the log must say what the build said."""
        assert self._journal is not None
        failed = self._journal.row(action, RecordState.FAILED, prepared.key, started, ended,
                                   prepared.inputs, (), spawn.usage,
                                   spawn.exit_code, "install failed", current_slot(),
                                   remote=spawn.remote)
        self._store.commit(records=[(committed[0], failed[1], failed[2])])

    def flush(self) -> None:
        """Commit the memo rows of the outputs installed since the last transaction (end of the
        build)."""
        with self._lock:
            memo, self._installed = self._installed, []
        if memo:
            self._store.commit(memo=memo)

    def cancel(self) -> None:
        """Stop every running command; what they were doing is recorded as interrupted, not
        failed."""
        self._cancelled = True
        self._sandboxes.cancel()

    @property
    def stopped(self) -> int:
        """How many running commands a cancel killed (0 where the sandboxes do not count them)."""
        return getattr(self._sandboxes, "stopped", 0)


def _describes(result: ActionResult, action: Action) -> bool:
    """Whether a cached result names exactly the action's declared outputs.

    A result whose key matches always does, unless it was forged or imported from elsewhere: one
    naming other paths (`posbuild-out/../x`) must never be written out, so it counts as a miss
    and the action runs.
    """
    paths = [output.path for output in result.outputs]
    return len(paths) == len(action.outputs) and set(paths) == set(action.outputs)


def _own_failure(error: OSError) -> ActionOutcome:
    """An action that failed on a file-system error of posbuild's own (staging, installing): the
    action fails with the path at fault, as its command failing would, and the build goes on."""
    return ActionOutcome(Outcome.FAILED,
                         error=f"{error.strerror or error}: {error.filename or ''}".rstrip(": "))

"""Layer 6: run actions on a Dask distributed cluster, behind the spawner's interface: the client
side.

`DaskSpawner` implements `spawner.Spawner` as `sandbox.LocalSpawner` does, so the engine cannot
tell where an action ran:
keys, cache lookups, output checks and the one-transaction commit stay on the client, exactly as
in a local build. Only the command moves. The scheduler still decides when an action starts (when
its inputs are ready, at most `-j` in flight); Dask decides on which worker (dask_cluster.py:
placement by declared resources).

What travels, and why a remote run is the local one
---------------------------------------------------
* Client → worker: the Action value itself, each declared input by digest — (path, BLAKE3
  digest, size, executable bit, and its SHA-256 name when the worker reads it from the remote
  cache) — and the passed env. The worker writes the inputs into a private folder at their
  workspace paths and runs the action with `sandbox.LocalSpawner` rooted there: the same staging,
  scrubbed env, timeout, process-group kill, `[sandbox] mode` (bubblewrap where the worker has
  it) and collection of declared outputs (opened without following links: nofollow.py).
* Input bytes, from the remote cache. When a usable `[cache] remote` is configured (`use_remote`),
  the client makes sure each input blob is in its CAS — uploading it when this build writes to the
  remote, else only when a HEAD finds it there — and the task carries the remote's URL and the
  blob's names, nothing else: no bytes, and never POSBUILD_CACHE_KEY (blobs need no key; they are
  checked by digest). The worker GETs `/cas/<sha256>` with remote.py's keyless client
  (`RemoteCache.blobs_only`), checking SHA-256 and BLAKE3 before use. A worker that cannot
  (remote unreachable from it, a blob missing or holding other bytes) runs nothing and says why;
  the client then warns once, ships inputs through Dask for the rest of the build, and submits
  that action once more. So the remote can slow a build, never make it wrong nor fail it.
* Input bytes, through Dask (no remote, or not usable): inputs up to `INLINE_INPUT` bytes ride in
  the task; larger ones are scattered under the key `posbuild-blob-<digest>-<random>`, once while
  actions in flight share them. The key is new for every scatter: the scheduler learns that a
  released key is released asynchronously, and a later scatter of the same bytes under the same
  key could be forgotten with it ("lost dependencies"). The worker re-hashes each input (a
  mismatch is ORCH-03; Dask retries the task first).
* Worker → client: exit code, stdout, stderr, resource usage, the declared outputs that exist (as
  bytes with the digests the worker computed), the worker's address and host name and its start
  and end times. The client re-hashes every output (ORCH-03 before anything is committed) and
  writes them into a local folder, the SpawnResult's `exec_root`.
* Secrets go through dask_cluster.SecretDesk, never through the task.
* The worker's environment: every reply carries the worker's h_E (computed once per worker
  process). Results are keyed with the client's h_E, so a worker whose environment differs would
  file wrong results under right keys; that is ORCH-07 naming the worker and the entries that
  differ (accepted under `--allow-env-drift`).

Failures
--------
A command that fails is an ordinary failed SpawnResult, as locally. A worker that dies while
running an action makes the scheduler run it again elsewhere, up to its
`distributed.scheduler.allowed-failures` (default 3); then the action fails as a command killed by
signal 9, with a stderr line naming the worker. An exception of the worker-side code is retried
`TASK_RETRIES` times, then fails the action (or the build, for ORCH errors). Losing the scheduler
cancels every future at once (Dask does); `run` raises ActionFailed, the scheduler stops the
build, and nothing of the actions in flight is committed. An action that waits while no worker
able to run it has been connected for `NO_WORKER_GRACE` seconds fails instead of waiting forever.

The cluster is contacted on the first action that must really run: a build settled by the cache
needs no cluster. Then, before that action runs, every dirty action must fit some worker (ORCH-05).
A cancel (Ctrl-C) asks every worker to kill the commands of this build; a command whose worker
process was SIGKILLed runs to its end unobserved, as a local one does when posbuild is SIGKILLed.
"""

from __future__ import annotations

import gc
import itertools
import os
import shutil
import signal
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from posbuild.core.action import Action
from posbuild.core.digest import Digest, hash_bytes
from posbuild.errors import (ActionFailed, ChecksumMismatch, EnvironmentDrift, PosbuildError,
                             UsageError)
from posbuild.exec.dask_cluster import (SecretDesk, WorkerInfo, check_fits, connect, dask_resources,
                                        declares_resources, describe, fits, workers_of)
from posbuild.exec.dask_wire import (InputFile, RemoteAction, RemoteReply, WorkerTerms,
                                     visible_paths, write_files)
from posbuild.exec.dask_worker import cancel_remote, execute_remote
from posbuild.exec.owners import OWNER_SUFFIX, hold_mark, release_mark, sweep_dead
from posbuild.exec.spawner import Perturbation, Spawner, SpawnResult
from posbuild.host.nofollow import open_outputs
from posbuild.host.owned import SANDBOXES, claim, holds_only_sandboxes
from posbuild.store.remote import RemoteCache, sha256_of
from posbuild.workspace.config import Config
from posbuild.workspace.envfp import Environments, differences, sandbox_path

# inputs up to this size travel inside the task; larger ones are scattered
INLINE_INPUT = 256 * 1024
INLINE_TOTAL = 4 * 1024 * 1024  # at most this much inline per task (Dask warns about large graphs)
TASK_RETRIES = 2  # re-runs of a task whose worker-side code raised (not of a failed command)
POLL = 2.0  # seconds between looks at the cluster while an action waits
NO_WORKER_GRACE = 60.0  # seconds a waiting action tolerates having no worker able to run it


# an action and its extra environment, not yet sent
_Deferred = tuple[Action, tuple[tuple[str, str], ...]]


class DaskSpawner:
    """The sandbox interface over a Dask cluster; one per build, used from the scheduler's
    threads."""

    def __init__(self, address: str, config: Config, actions: Sequence[Action],
                 check_env: bool) -> None:
        """`actions`: the build's dirty actions, each of which some worker must be able to run."""
        self.address = address
        self._config = config
        self._actions = tuple(actions)
        self._check_env = check_env
        self._root = config.root
        self._base = config.sandbox_dir
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._connecting = threading.Lock()
        self._client: Any = None
        self._failure: BaseException | None = None
        self._terms: WorkerTerms | None = None
        self._environments: Environments | None = None
        self._by_resources = False
        self._desk: SecretDesk | None = None
        self._cluster: tuple[WorkerInfo, ...] = ()
        self._cluster_checked = 0.0
        self._running: dict[str, Any] = {}  # task key → future
        # scattered input → (future, actions using it)
        self._blobs: dict[Digest, tuple[Any, int]] = {}
        self._cancelled = False
        self._claimed = False  # whether `clear_stale` holds this process's owner mark
        self.stopped = 0  # commands a cancel killed on the workers
        self._remote: RemoteCache | None = None  # where workers read inputs (use_remote)
        self._warn: Callable[[str], None] = lambda message: None
        # input digest → its SHA-256 name on the remote (b"": absent)
        self._names: dict[Digest, bytes] = {}
        # inputs that may hold a secret: never on the remote
        self._private: frozenset[str] = frozenset()

    def use_remote(self, remote: RemoteCache, warn: Callable[[str], None],
                   private: frozenset[str] = frozenset()) -> None:
        """Let workers read inputs from this remote cache's CAS instead of receiving their bytes
        through Dask, while it is usable; `warn` prints the one line a fallback costs. The files
        `private` (outputs that may hold a secret) never go there: they travel through Dask."""
        self._remote, self._warn, self._private = remote, warn, private

    def clear_stale(self) -> None:
        """Remove the local folders an interrupted earlier build left behind (only posbuild's),
        and mark this process's (`<pid>-<n>-dask`) as live, as the local sandboxes do."""
        claim(self._base, SANDBOXES, holds_only_sandboxes, " ([build] sandbox_base)")
        sweep_dead(self._base)
        if not self._claimed:
            hold_mark(f"{self._base}/{os.getpid()}{OWNER_SUFFIX}")
            self._claimed = True

    def run(self, action: Action, extra_env: Sequence[tuple[str, str]] = (),
            perturbation: Perturbation | None = None) -> SpawnResult:
        """Run `action` on a worker; its outputs end up in a local folder, as a local run leaves
        them.

        Raises ActionFailed when the scheduler is lost or unreachable, ResourceOversubscription
        (ORCH-05) when some dirty action fits no worker, ChecksumMismatch (ORCH-03) when bytes
        arrive damaged, EnvironmentDrift (ORCH-07) when the worker's h_E differs.
        """
        exec_root = f"{self._base}/{os.getpid()}-{next(self._counter)}-dask/exec"
        client = self._connection()
        if self._cancelled:
            return SpawnResult(-signal.SIGTERM, False, Path(exec_root), tuple(action.outputs), b"",
                               b"")
        secret_names = set(action.secrets)
        env = tuple((k, v) for k, v in extra_env if k not in secret_names)
        secret = tuple((k, v) for k, v in extra_env if k in secret_names)
        assert self._terms is not None and self._desk is not None
        token = self._desk.open(secret) if secret else ""
        assert self._environments is not None
        spec = RemoteAction(action, env, (), perturbation, self._terms,
                            self._desk.address if secret else "", token,
                            env_hash=self._environments.digest(action.programs))
        try:
            reply = self._attempt(client, spec, self._remote_usable())
            if isinstance(reply, RemoteReply) and reply.unfetched:  # once more, with the bytes
                self._stop_remote_inputs(reply)
                reply = self._attempt(client, spec, False)
        finally:
            self._desk.close(token)
        if isinstance(reply, tuple):  # cancelled, or no worker could finish it
            return SpawnResult(reply[0], False, Path(exec_root), tuple(action.outputs), b"",
                               reply[1])
        self._check_environment(action, reply)
        return self._spawn_result(reply, exec_root)

    def start(self, action: Action, extra_env: Sequence[tuple[str, str]] = ()) -> _Deferred:
        """`run` in the local sandboxes' two halves: a Dask run blocks its thread anyway, so this
        only notes what to run and `wait` runs it. A worker sends files back, not folders: an
        action with folder outputs (`out_dirs`) is refused before anything runs."""
        if action.out_dirs:
            raise UsageError(f"{action.label} declares out_dirs, which the Dask executor cannot "
                             "run yet; build it with the local executor")
        return action, tuple(extra_env)

    def wait(self, started: _Deferred) -> SpawnResult:
        """Run on a worker what `start` noted (see `run`)."""
        return self.run(*started)

    def remove(self, result: SpawnResult) -> None:
        """Delete the local folder that held a run's outputs (the rebuilder has installed them)."""
        if result.files is not None:
            result.files.close()
        shutil.rmtree(os.path.dirname(result.exec_root), ignore_errors=True)

    def cancel(self) -> None:
        """Cancel every action in flight and kill their commands on the workers (best effort);
        `stopped` counts the commands the workers killed."""
        with self._lock:
            self._cancelled = True
            futures = dict(self._running)
        if not futures or self._client is None or self._client.status != "running":
            return
        try:
            self._client.cancel(list(futures.values()))  # the waiting threads return at once
            # Dask cannot stop a running task
            killed = self._client.run(cancel_remote, list(futures), on_error="ignore")
        except Exception:
            return
        with self._lock:
            self.stopped += sum(killed.values())

    def close(self) -> None:
        """Release what this build holds on the cluster, disconnect, and drop the mark."""
        with self._lock:
            self._blobs.clear()
        if self._claimed:
            release_mark(f"{self._base}/{os.getpid()}{OWNER_SUFFIX}")
            self._claimed = False
        if self._desk is not None:
            self._desk.stop()
        if self._client is not None:
            try:
                self._client.close(timeout=2)
            except Exception:
                pass

    # -- the steps of run() --

    def _attempt(self, client: Any, spec: RemoteAction,
                 by_remote: bool) -> RemoteReply | tuple[int, bytes]:
        """Submit the action once, its inputs read from the remote (`by_remote`, where they are
        there) or shipped through Dask, and wait for how it ended."""
        action = spec.action
        remote = self._remote if by_remote else None
        inputs, blobs, scattered = self._inputs(client, action, remote)
        from_remote = sum(1 for i in inputs if i.name)
        if from_remote and remote is not None:
            spec = replace(spec, inputs=inputs, cas=remote.url, cas_timeout=remote.timeout)
        else:
            spec = replace(spec, inputs=inputs, cas="", cas_timeout=0.0)
        key = f"posbuild:{action.label}-{uuid.uuid4().hex[:16]}"
        try:
            reply = self._wait(client, action, self._submit(client, action, spec, blobs, key))
        finally:
            self._release(scattered)
            with self._lock:
                self._running.pop(key, None)
        if from_remote and remote is not None and isinstance(reply, RemoteReply) \
                and not reply.unfetched:
            with self._lock:
                remote.stats.worker_inputs += from_remote
        return reply

    def _remote_usable(self) -> bool:
        with self._lock:
            return self._remote is not None and not self._remote.down

    def _stop_remote_inputs(self, reply: RemoteReply) -> None:
        """A worker could not read inputs from the remote: ship them through Dask from now on, with
        one warning (none if the remote's own warning already said it is down)."""
        with self._lock:
            remote, self._remote = self._remote, None
        if remote is not None and not remote.down:
            self._warn(f"posbuild: warning: remote cache {remote.url}: Dask worker "
                       f"{reply.run.worker} could not read an action's inputs from it "
                       f"({reply.unfetched}); inputs travel through Dask from here on")

    def _connection(self) -> Any:
        """The client, connected on first use; the fit check (ORCH-05) runs once, then."""
        with self._connecting:
            if self._client is None and self._failure is None:
                gc.enable()  # a local build runs without the cyclic collector; the Dask client's
                # event loop makes reference cycles all the time, and a long build would keep them
                try:
                    client, workers = connect(self.address)
                except BaseException as error:
                    self._failure = error
                    raise
                try:
                    check_fits(self._actions, workers, self.address)
                    environments = Environments.of_workspace(self._config)
                except BaseException as error:
                    client.close(timeout=2)
                    self._failure = error
                    raise
                tools = self._config.env_tools
                self._terms = WorkerTerms(tools, sandbox_path(self._config),
                                          self._config.sandbox_mode, visible_paths(tools))
                self._environments = environments
                self._by_resources = declares_resources(workers)
                self._cluster, self._cluster_checked = tuple(workers), time.monotonic()
                self._desk, self._client = SecretDesk(client), client
            if self._failure is not None:
                raise self._failure
            return self._client

    def _inputs(self, client: Any, action: Action, remote: RemoteCache | None) -> tuple[
            tuple[InputFile, ...], list[Any], list[Digest]]:
        """Each input by digest; the bytes or scattered futures of those that do not come from the
        `remote` (None: all travel through Dask), in the same order; and the digests scattered."""
        inputs, blobs, scattered, inline = [], [], [], 0
        for path in action.inputs:
            with open(f"{self._root}/{path}", "rb") as handle:
                data = handle.read()
                executable = bool(os.fstat(handle.fileno()).st_mode & 0o111)
            digest = hash_bytes(data)
            shared = remote is not None and path not in self._private
            name = self._on_remote(remote, digest, data) if remote is not None and shared else b""
            inputs.append(InputFile(path, digest, len(data), executable, name))
            if name:
                continue
            if len(data) <= INLINE_INPUT and inline + len(data) <= INLINE_TOTAL:
                inline += len(data)
                blobs.append(data)
            else:
                blobs.append(self._scatter(client, digest, data))
                scattered.append(digest)
        return tuple(inputs), blobs, scattered

    def _on_remote(self, remote: RemoteCache, digest: Digest, data: bytes) -> bytes:
        """The SHA-256 name of this input blob if it is on the remote (uploaded first when this
        build writes there), else b"". Asked once per blob and build."""
        with self._lock:
            known = self._names.get(digest)
        if known is not None:
            return known
        name = sha256_of(data)
        present = remote.offer_blob(name, data)
        if not present and remote.down:
            return b""
        with self._lock:
            self._names[digest] = name if present else b""
        return name if present else b""

    def _scatter(self, client: Any, digest: Digest, data: bytes) -> Any:
        """The future of a large input on the cluster, sent once while actions in flight need it."""
        with self._lock:
            known = self._blobs.get(digest)
            if known is not None:
                self._blobs[digest] = (known[0], known[1] + 1)
                return known[0]
        key = f"posbuild-blob-{digest.hex()}-{uuid.uuid4().hex[:16]}"
        try:
            future = client.scatter({key: data}, hash=False)[key]
        except Exception as error:
            raise self._lost(error) from None
        with self._lock:
            known = self._blobs.get(digest)
            self._blobs[digest] = (future, 1) if known is None else (known[0], known[1] + 1)
            return self._blobs[digest][0]

    def _release(self, scattered: Sequence[Digest]) -> None:
        with self._lock:
            for digest in scattered:
                future, users = self._blobs.get(digest, (None, 0))
                if users <= 1:
                    self._blobs.pop(digest, None)
                else:
                    self._blobs[digest] = (future, users - 1)

    def _submit(self, client: Any, action: Action, spec: RemoteAction, blobs: list[Any],
                key: str) -> Any:
        try:
            future = client.submit(execute_remote, spec, blobs, key=key, pure=False,
                                   retries=TASK_RETRIES,
                                   resources=dask_resources(action.resources,
                                                            self._by_resources) or None)
        except Exception as error:
            raise self._lost(error) from None
        with self._lock:
            self._running[key] = future
            if self._cancelled:
                future.cancel()
        return future

    def _wait(self, client: Any, action: Action, future: Any) -> RemoteReply | tuple[int, bytes]:
        """The reply, or the (exit code, stderr) of a run that produced nothing (cancelled, worker
        lost too often, no worker left)."""
        alone_since: float | None = None
        while True:
            try:
                return future.result(timeout=POLL)
            except BaseException as error:
                status = future.status  # pending, or lost (its worker died; Dask runs it again) ...
                if isinstance(error, TimeoutError) \
                        and status not in ("finished", "error", "cancelled"):
                    alone_since = self._still_runnable(client, action, alone_since)
                    if alone_since is not None and time.monotonic() - alone_since > NO_WORKER_GRACE:
                        future.cancel()
                        return -signal.SIGKILL, (
                            f"posbuild: no worker of the Dask cluster at {self.address} able to "
                            "run this action has been connected for "
                            f"{NO_WORKER_GRACE:.0f} s\n").encode()
                    continue
                if self._cancelled:
                    return -signal.SIGTERM, b""
                if status == "error":
                    return self._remote_failure(error)
                raise self._lost(error) from None

    def _still_runnable(self, client: Any, action: Action,
                        alone_since: float | None) -> float | None:
        """Since when the cluster lacks a worker for `action` (None while it has one)."""
        now = time.monotonic()
        with self._lock:
            stale = now - self._cluster_checked > POLL
        if stale:
            if client.status != "running":
                raise self._lost(OSError("the client is not connected"))
            try:
                cluster = tuple(workers_of(client))
            except Exception as error:
                raise self._lost(error) from None
            with self._lock:
                self._cluster, self._cluster_checked = cluster, now
        if any(fits(action.resources, w, self._by_resources) for w in self._cluster):
            return None
        return alone_since if alone_since is not None else now

    def _remote_failure(self, error: BaseException) -> tuple[int, bytes]:
        """A task that ended in an exception: its worker kept dying, or posbuild's worker code
        failed (ORCH errors, such as an input that arrived damaged after every retry, stop the
        build)."""
        if isinstance(error, PosbuildError):
            raise error
        if type(error).__name__ == "KilledWorker":
            last = getattr(getattr(error, "last_worker", None), "address", "") or "a worker"
            return -signal.SIGKILL, (f"posbuild: the Dask worker running this action died ({last} "
                                     f"last); the scheduler gave up after its allowed failures "
                                     f"(distributed.scheduler.allowed-failures)\n").encode()
        raise OSError(f"the Dask worker could not run it ({describe(error)})")

    def _lost(self, error: BaseException) -> ActionFailed:
        return ActionFailed(f"lost the Dask scheduler at {self.address} ({describe(error)}); the "
                            "actions in flight were abandoned and nothing of them was kept; build "
                            "again, or with --executor local")

    def _check_environment(self, action: Action, reply: RemoteReply) -> None:
        """ORCH-07 when the worker's environment for `action` is not the client's (its results
        would be keyed wrongly)."""
        assert self._environments is not None
        mine = self._environments.digest(action.programs)
        if not self._check_env or reply.env_hash == mine:
            return
        where = f"Dask worker {reply.run.worker} ({reply.run.host})"
        if reply.env_error:
            raise EnvironmentDrift(f"{where}: {reply.env_error}")
        changes = differences(self._environments.table(action.programs).entries,
                              dict(reply.env_entries))
        shown = "; ".join(str(c) for c in changes[:5]) + (f"; and {len(changes) - 5} more"
                                                          if len(changes) > 5 else "")
        raise EnvironmentDrift(f"{where} has h_E {reply.env_hash.hex()[:12]}, not this machine's "
                               f"{mine.hex()[:12]} ({shown}); give the workers "
                               f"this environment, or pass --allow-env-drift")

    def _spawn_result(self, reply: RemoteReply, exec_root: str) -> SpawnResult:
        """Verify the returned outputs and lay them out locally, where a local sandbox holds
        them."""
        for path, data, digest, _ in reply.outputs:
            if hash_bytes(data) != digest:
                raise ChecksumMismatch(f"output {path} from Dask worker {reply.run.worker} hashes "
                                       f"to {hash_bytes(data).hex()}, not the {digest.hex()} the "
                                       "worker computed")
        write_files(exec_root,
                     [(path, data, executable) for path, data, _, executable in reply.outputs])
        os.makedirs(exec_root, exist_ok=True)
        files = open_outputs(exec_root, [path for path, _, _, _ in reply.outputs])
        return SpawnResult(reply.exit_code, reply.timed_out, Path(exec_root), reply.missing,
                           reply.stdout, reply.stderr, reply.elapsed, reply.usage, remote=reply.run,
                           # absent from an older worker's reply
                           irregular=getattr(reply, "irregular", ()),
                           why=getattr(reply, "why", ""), files=files)


_: type[Spawner[_Deferred]] = DaskSpawner  # mypy checks that it keeps the engine's contract

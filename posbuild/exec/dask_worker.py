"""Layer 5: the worker side of the Dask executor — run one action on a Dask worker exactly as a
local build runs it.

`execute_remote` is the task the client submits (dask_executor.py): it writes the action's inputs
into a private folder at their workspace paths (checked against their digests, or read from the
remote cache) and runs the action there with `sandbox.LocalSpawner`: the same staging, scrubbed
env, timeout, process-group kill, `[sandbox] mode` and collection of declared outputs. The
worker process keeps its state (scratch folder, processors in use, running sandboxes, memos) in
`Worker.extensions[EXTENSION]`.

Processors: LocalSpawner pins a command to processors of the thread that creates it, so the worker
side first restricts its thread to the `cpu` least used processors of the worker process, counted
across the actions that process runs at once; concurrent actions get disjoint sets, as locally.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from posbuild.core.digest import Digest, hash_bytes
from posbuild.core.records import RemoteRun
from posbuild.errors import ChecksumMismatch, PosbuildError
from posbuild.exec.dask_cluster import fetch_secrets
from posbuild.exec.dask_wire import (InputFile, RemoteAction, RemoteReply, WorkerTerms,
                                     visible_paths, write_files)
from posbuild.exec.namespaces import Isolation, choose
from posbuild.exec.landlock import Landlocked
from posbuild.exec.sandbox import LocalSpawner, find_libfaketime
from posbuild.exec.spawner import SpawnResult
from posbuild.host.nofollow import read_upto
from posbuild.store.remote import RemoteCache
from posbuild.workspace.envfp import Environments, parse_overrides, TEST_VARIABLE
from posbuild.workspace.secrets import redact

EXTENSION = "posbuild"  # the key of the worker-side state in `Worker.extensions`


class _WorkerState:
    """Per worker process: a scratch folder, processor accounting, running sandboxes, memos."""

    def __init__(self, worker: Any) -> None:
        self.address = worker.address
        self.host = socket.gethostname()
        self.scratch = worker.local_directory
        self.base = os.path.join(worker.local_directory, "posbuild")
        self._counter = itertools.count()
        self._lock = threading.Lock()
        try:
            self._processors: tuple[int, ...] = tuple(sorted(os.sched_getaffinity(0)))
        except AttributeError:
            self._processors = ()
        self._pinned = dict.fromkeys(self._processors, 0)
        self._running: dict[str, LocalSpawner] = {}
        self._memo: dict[tuple[object, ...], Any] = {}
        self._readers: dict[tuple[str, float], RemoteCache] = {}

    def folder(self) -> str:
        return f"{self.base}/{next(self._counter)}"

    @contextmanager
    def processors(self, cpu: int) -> Iterator[None]:
        """Restrict the calling thread to the `cpu` least used processors while an action runs."""
        if cpu < 1 or not self._processors:
            yield
            return
        with self._lock:
            chosen = tuple(sorted(sorted(self._processors,
                                         key=lambda p: (self._pinned[p], p))[:cpu]))
            for processor in chosen:
                self._pinned[processor] += 1
        previous = os.sched_getaffinity(0)
        os.sched_setaffinity(0, chosen)
        try:
            yield
        finally:
            os.sched_setaffinity(0, previous)
            with self._lock:
                for processor in chosen:
                    self._pinned[processor] -= 1

    @contextmanager
    def running(self, key: str, sandboxes: LocalSpawner) -> Iterator[None]:
        with self._lock:
            self._running[key] = sandboxes
        try:
            yield
        finally:
            with self._lock:
                self._running.pop(key, None)

    def cancel(self, keys: Sequence[str]) -> int:
        with self._lock:
            found = [self._running[k] for k in keys if k in self._running]
        for sandboxes in found:
            sandboxes.cancel()
        return len(found)

    def reader(self, url: str, timeout: float) -> RemoteCache:
        """A keyless CAS client of the remote at `url`, kept with its connections across actions;
        one that found the remote down is replaced, so that the next action tries again."""
        with self._lock:
            reader = self._readers.get((url, timeout))
            if reader is None or reader.down:
                if reader is not None:
                    reader.close()
                reader = self._readers[(url, timeout)] = RemoteCache.blobs_only(url, timeout)
            return reader

    def once(self, key: tuple[object, ...], compute: Callable[[], Any]) -> Any:
        """`compute()` the first time `key` is asked for, the same value ever after (this
        process)."""
        with self._lock:
            if key in self._memo:
                return self._memo[key]
        value = compute()
        with self._lock:
            return self._memo.setdefault(key, value)


def execute_remote(spec: RemoteAction, blobs: Sequence[bytes]) -> RemoteReply:
    """Run one action on this Dask worker exactly as `LocalSpawner.run` runs it locally (worker
    side)."""
    from distributed import get_worker

    worker = get_worker()
    state = worker.extensions.get(EXTENSION) \
        or worker.extensions.setdefault(EXTENSION, _WorkerState(worker))
    started = time.time()
    terms = spec.terms
    environments, env_error = state.once(("environments", terms.tools, terms.search_path),
                                         lambda: _environments(terms))
    entries = environments.table(spec.action.programs).entries if environments else {}
    env_hash = environments.digest(spec.action.programs) if environments else b""
    isolation = state.once(("isolation", terms.sandbox_mode, terms.visible),
                           lambda: _isolation(state.scratch, terms))
    folder = state.folder()
    try:
        root = f"{folder}/root"
        shipped = [i for i in spec.inputs if not i.name]
        write_files(root, [(i.path, data, i.executable)
                            for i, data in zip(shipped, _verified(shipped, blobs))])
        unfetched = _fetch_inputs(state, spec, root)
        if unfetched:
            return RemoteReply(-1, False, (), b"", b"", 0.0, None, (),
                               RemoteRun(state.address, state.host, started,
                               time.time()), env_hash, (), env_error, unfetched)
        secrets = fetch_secrets(worker, spec.desk, spec.token) if spec.desk else ()
        env = spec.env + secrets
        with state.processors(spec.action.resources[0]):
            sandboxes = LocalSpawner(Path(root), Path(f"{folder}/sandbox"), isolation,
                                     search_path=terms.search_path)
            with state.running(worker.get_current_task() or "", sandboxes):
                spawn = sandboxes.run(spec.action, env, spec.perturbation)
        try:
            if secrets:  # the reply stays in this worker's memory (and may be spilled): redact here
                values = [value for _, value in secrets]
                spawn = replace(spawn, stdout=redact(spawn.stdout, values),
                                stderr=redact(spawn.stderr, values))
            ok = spawn.exit_code == 0 and not spawn.timed_out
            outputs = tuple(_read_output(spawn, path) for path in spec.action.outputs
                            if path not in spawn.missing) if ok else ()
        finally:
            sandboxes.remove(spawn)  # its descriptors, and the sandbox
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    differ = env_hash != spec.env_hash
    return RemoteReply(spawn.exit_code, spawn.timed_out, spawn.missing, spawn.stdout, spawn.stderr,
                       spawn.elapsed,
                       spawn.usage, outputs,
                       RemoteRun(state.address, state.host, started, time.time()), env_hash,
                       tuple(sorted(entries.items())) if differ else (), env_error,
                       irregular=spawn.irregular, why=spawn.why)


def cancel_remote(keys: Sequence[str], dask_worker: Any = None) -> int:
    """Kill the commands of these tasks on this worker (run on every worker through
    `Client.run`)."""
    state = dask_worker.extensions.get(EXTENSION) if dask_worker is not None else None
    return state.cancel(keys) if state is not None else 0


def _environments(terms: WorkerTerms) -> tuple[Environments | None, str]:
    """The environments of actions on this worker (its own programs, the client's PATH), or why
    there are none. Overrides come from the worker's own process environment (tests only)."""
    try:
        return Environments(terms.search_path, terms.tools,
                            overrides=parse_overrides(os.environ.get(TEST_VARIABLE))), ""
    except PosbuildError as error:
        return None, error.render()


def _isolation(hidden: str, terms: WorkerTerms) -> Isolation | Landlocked | None:
    """This worker's choice for `[sandbox] mode`, made as `sandbox.choose_isolation` makes it
    locally: the worker's scratch folder hidden, the client's and the worker's interpreters
    shown."""
    visible = [*terms.visible, *visible_paths(())]
    faketime = find_libfaketime()
    if faketime is not None:
        visible.append(faketime)
    return choose(terms.sandbox_mode, (hidden,), visible)[0]


def _verified(inputs: Sequence[InputFile], blobs: Sequence[bytes]) -> Sequence[bytes]:
    """The input bytes, each checked against its digest (ORCH-03 if one arrived damaged)."""
    for file, data in zip(inputs, blobs, strict=True):
        if hash_bytes(data) != file.digest:
            raise ChecksumMismatch(f"input {file.path} reached the Dask worker with bytes that "
                                   f"hash to {hash_bytes(data).hex()}, not {file.digest.hex()}")
    return blobs


def _fetch_inputs(state: _WorkerState, spec: RemoteAction, root: str) -> str:
    """Read the inputs that have a SHA-256 name from the remote cache into `root`, each verified
    by both digests; "" when all are there, else why not (the client then ships them itself)."""
    fetched = [i for i in spec.inputs if i.name]
    if not fetched:
        return ""
    reader = state.reader(spec.cas, spec.cas_timeout)
    for file in fetched:
        target = Path(root, file.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        why = reader.read_blob(file.name, file.digest, target, file.size)
        if why:
            return f"input {file.path}: {why}"
        os.chmod(target, 0o755 if file.executable else 0o644)
    return ""


def _read_output(spawn: SpawnResult, path: str) -> tuple[str, bytes, Digest, bool]:
    """A declared output's bytes, read below the folder the sandbox found without following
    links."""
    with spawn.output(path).reading() as fd:
        info = os.fstat(fd)
        data = read_upto(fd, info.st_size)
    return path, data, hash_bytes(data), bool(info.st_mode & 0o111)

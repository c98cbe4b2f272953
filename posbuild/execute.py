"""Layer 6: the rebuilder — for ONE action, compute its key, then reuse a result or run and commit.

`check()` runs on the scheduling thread: input digests (from the stat memo or from the outputs of
upstream actions finished in this build), the key, one store lookup, and a stat per output to make
sure `posbuild-out/` holds it. A hit ends there. `run()` runs on a worker thread: sandbox, checks,
hash outputs, move them into `posbuild-out/`, and commit result + blobs + memo rows in one store
transaction. A result is committed only when the command exited 0, every declared output exists
and no source input changed while it ran; otherwise nothing of it is kept.

Early cutoff falls out of keying on input *contents*: a re-run that reproduces byte-identical
outputs leaves its dependents' keys unchanged, so they hit the cache.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from posbuild.analysis import Action, is_generated
from posbuild.digest import Digest, hash_bytes, hash_file
from posbuild.filestate import FileStates
from posbuild.keys import action_key
from posbuild.materialize import Materializer
from posbuild.records import ActionResult, FileState, OutputFile, Signature
from posbuild.sandbox import Sandboxes, SpawnResult
from posbuild.store import INLINE_LIMIT, Store

NO_CACHE_TAG = "no-cache"


class Status(enum.Enum):
    CACHED = "cached"
    EXECUTED = "executed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """How one action ended in this build."""

    status: Status
    result: ActionResult | None = None
    error: str = ""
    stderr: bytes = field(default=b"", repr=False, compare=False)
    elapsed: float = field(default=0.0, compare=False)


@dataclass(frozen=True, slots=True)
class _Prepared:
    key: Digest
    sources: tuple[tuple[str, Signature], ...]


class Rebuilder:
    """Check-or-run for the actions of one build; upstream output digests are shared state."""

    def __init__(self, root: Path, store: Store, files: FileStates, sandboxes: Sandboxes,
                 env_hash: Digest, passed_env: Sequence[tuple[str, str]] = ()) -> None:
        self._root = root
        self._store = store
        self._files = files
        self._sandboxes = sandboxes
        self._materializer = Materializer(root, store)
        self._env_hash = env_hash
        self._passed_env = tuple(passed_env)
        self._produced: dict[str, Digest] = {}
        self._prepared: dict[str, _Prepared] = {}
        self.restored = 0

    def check(self, action: Action) -> ActionOutcome | None:
        """Settle `action` from the cache if possible; None means it must run."""
        digests: list[Digest] = []
        sources: list[tuple[str, Signature]] = []
        for path in action.inputs:
            if is_generated(path):
                digests.append(self._produced[path])
            else:
                try:
                    state = self._files.state(path)
                except FileNotFoundError:
                    return ActionOutcome(Status.FAILED, error=f"source file '{path}' is missing")
                digests.append(state.digest)
                sources.append((path, state.signature))
        key = action_key(action, digests, self._env_hash, self._passed_env)
        if NO_CACHE_TAG not in action.tags:
            result = self._store.get_result(key)
            if result is not None:
                self._settle_hit(result)
                return ActionOutcome(Status.CACHED, result)
        self._prepared[action.label] = _Prepared(key, tuple(sources))
        return None

    def _settle_hit(self, result: ActionResult) -> None:
        memo: list[tuple[str, FileState]] = []
        for output in result.outputs:
            if not self._materializer.is_current(output):
                memo.append((output.path, self._materializer.restore(output)))
                self.restored += 1
            self._produced[output.path] = output.digest
        if memo:
            self._store.commit(memo=memo)

    def run(self, action: Action) -> ActionOutcome:
        """Execute `action` in a sandbox and commit its result (worker thread)."""
        prepared = self._prepared.pop(action.label)
        spawn = self._sandboxes.run(action, self._passed_env)
        try:
            failure = self._failure(action, spawn, prepared)
            if failure:
                return ActionOutcome(Status.FAILED, error=failure, stderr=spawn.stderr, elapsed=spawn.elapsed)
            result = self._commit(action, spawn, prepared.key)
        finally:
            self._sandboxes.remove(spawn)
        return ActionOutcome(Status.EXECUTED, result, stderr=spawn.stderr, elapsed=spawn.elapsed)

    def _failure(self, action: Action, spawn: SpawnResult, prepared: _Prepared) -> str:
        if spawn.timed_out:
            return f"timed out after {action.timeout} s"
        if spawn.exit_code != 0:
            how = f"killed by signal {-spawn.exit_code}" if spawn.exit_code < 0 else f"exit code {spawn.exit_code}"
            return f"command failed ({how})"
        if spawn.missing:
            return "declared output " + ", ".join(f"'{p}'" for p in spawn.missing) + " was not created"
        changed = [path for path, sig in prepared.sources if not self._files.unchanged(path, sig)]
        if changed:
            return f"input '{changed[0]}' changed while the action ran; result not cached, build again"
        return ""

    def _commit(self, action: Action, spawn: SpawnResult, key: Digest) -> ActionResult:
        blobs: list[tuple[Digest, bytes | None]] = []
        memo: list[tuple[str, FileState]] = []
        outputs: list[OutputFile] = []
        for path in action.outputs:
            produced = spawn.exec_root / path
            stat = os.stat(produced)
            if stat.st_size <= INLINE_LIMIT:
                data = produced.read_bytes()
                digest = hash_bytes(data)
                blobs.append((digest, data))
            else:
                digest = hash_file(produced)
                self._store.store_external(digest, produced)
                blobs.append((digest, None))
            output = OutputFile(path, digest, stat.st_size, bool(stat.st_mode & 0o111))
            memo.append((path, self._materializer.install(produced, output)))
            outputs.append(output)
        stdout_digest, stderr_digest = hash_bytes(spawn.stdout), hash_bytes(spawn.stderr)
        blobs += [(stdout_digest, spawn.stdout), (stderr_digest, spawn.stderr)]
        result = ActionResult(tuple(outputs), spawn.exit_code, stdout_digest, stderr_digest)
        cached = None if NO_CACHE_TAG in action.tags else (key, result)
        self._store.commit(cached, blobs, memo)
        for output in outputs:
            self._produced[output.path] = output.digest
        return result

    def cancel(self) -> None:
        self._sandboxes.cancel()


"""An in-memory store: every facet of posbuild/store/protocols.py over plain dicts, for tests.

Small enough to be obviously right, and as strict as the LMDB store where that is what makes a
test mean something: every blob read is verified against its digest (inline or file), a large
file is checked before it is kept, and so is every build payload read back. Large blobs are
files in a folder, as with the LMDB store, because callers open `external_path` themselves.

Handles made by `view` share one store's data, as LMDB handles share its folder; each sees its
own workspace's memo, builds and records. What a fake cannot do is outlive its process: no build
of another process can be running, so `settle_interrupted` finds none, and a kill loses it all.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from posbuild.core.digest import Digest, hash_bytes
from posbuild.core.records import (ActionResult, BuildRow, Commit, ExecutionRecord, FileState,
                                   Generation, utc)
from posbuild.errors import ChecksumMismatch


@dataclass
class _Data:
    """One store's rows; memo, build and latest rows are keyed by workspace tag first."""

    blobs: dict[Digest, bytes | None] = field(default_factory=dict)  # None: a file in cas/
    results: dict[Digest, ActionResult] = field(default_factory=dict)
    usage: dict[Digest, int] = field(default_factory=dict)
    memo: dict[tuple[str, str], FileState] = field(default_factory=dict)
    builds: dict[tuple[str, int], BuildRow] = field(default_factory=dict)
    started: dict[tuple[str, int], list[tuple[str, str]]] = field(default_factory=dict)
    records: dict[bytes, bytes] = field(default_factory=dict)  # record key → packed record
    latest: dict[tuple[str, str], bytes] = field(default_factory=dict)  # → record key
    payloads: dict[Digest, bytes] = field(default_factory=dict)
    generations: dict[int, Generation] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeStore:
    """The store of `folder` (which holds only the large blobs' files) as workspace `workspace`
    sees it."""

    def __init__(self, folder: Path, workspace: str = "", data: _Data | None = None) -> None:
        self.path = folder
        self.workspace = workspace
        self._prefix = f"{workspace}\0".encode() if workspace else b""
        self._data = data if data is not None else _Data()

    def view(self, workspace: str) -> FakeStore:
        """Another handle on the same rows, as workspace `workspace` sees them."""
        return FakeStore(self.path, workspace, self._data)

    def close(self) -> None:
        pass

    # -- Blobs

    def has_blob(self, digest: Digest) -> bool:
        return digest in self._data.blobs

    def get_blob(self, digest: Digest) -> bytes:
        if digest not in self._data.blobs:
            raise ChecksumMismatch(f"blob {digest.hex()} is missing from the store")
        data = self._data.blobs[digest]
        if data is None:
            try:
                data = self.external_path(digest).read_bytes()
            except FileNotFoundError:
                raise ChecksumMismatch(f"blob file {self.external_path(digest)} is missing") \
                    from None
        if hash_bytes(data) != digest:
            raise ChecksumMismatch(f"blob {digest.hex()} does not hash to its name")
        return data

    def blob_source(self, digest: Digest) -> bytes | Path | None:
        if digest not in self._data.blobs:
            return None
        data = self._data.blobs[digest]
        return self.external_path(digest) if data is None else data

    def blob_size(self, digest: Digest) -> int:
        source = self.blob_source(digest)
        if isinstance(source, Path):
            return source.stat().st_size if source.exists() else 0
        return 0 if source is None else len(source)

    def external_path(self, digest: Digest) -> Path:
        return self.path / "cas" / digest.hex()[:2] / digest.hex()

    def store_external(self, digest: Digest, source: Path, take: bool = False) -> None:
        data = source.read_bytes()
        if hash_bytes(data) != digest:
            raise ChecksumMismatch(f"{source} changed while it was stored")
        target = self.external_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.write_bytes(data)
            target.chmod(0o444)

    # -- ActionCache

    def get_result(self, key: Digest) -> ActionResult | None:
        return self._data.results.get(key)

    def add_results(self, results: Iterable[tuple[Digest, bytes]],
                    blobs: Iterable[tuple[Digest, bytes | None]], when: int) -> int:
        added = 0
        with self._data.lock:
            for digest, data in blobs:
                self._data.blobs.setdefault(digest, data)
            for key, packed in results:
                if key not in self._data.results:
                    self._data.results[key] = ActionResult.unpack(packed)
                    self._data.usage[key] = when
                    added += 1
        return added

    # -- StatMemo

    def get_memo(self, path: str) -> FileState | None:
        return self._data.memo.get((self.workspace, path))

    # -- Commits

    def commit(self, result: tuple[Digest, ActionResult] | None = None,
               blobs: Iterable[tuple[Digest, bytes | None]] = (),
               memo: Iterable[tuple[str, FileState]] = (),
               used: Iterable[tuple[Digest, int]] = (),
               records: Iterable[tuple[bytes, str, bytes]] = ()) -> None:
        self.log([Commit(result, tuple(blobs), tuple(memo), tuple(used), tuple(records))])

    def log(self, commits: Sequence[Commit]) -> None:
        data = self._data
        with data.lock:
            for commit in commits:
                if commit.result is not None:
                    data.results[commit.result[0]] = commit.result[1]
                for digest, blob in commit.blobs:
                    data.blobs.setdefault(digest, blob)
                data.memo.update(((self.workspace, path), state) for path, state in commit.memo)
                data.usage.update(commit.used)
                for key, label, packed in commit.records:
                    data.records[key] = packed
                    newest = data.latest.get((self.workspace, label))
                    if newest is None or newest <= key:
                        data.latest[(self.workspace, label)] = key

    def flush(self) -> None:
        pass

    # -- BuildLog

    def begin_build(self, info: BuildRow, blobs: Iterable[tuple[Digest, bytes]] = ()) -> int:
        with self._data.lock:
            number = max((n for tag, n in self._data.builds if tag == self.workspace),
                         default=0) + 1
            for digest, payload in blobs:
                self._data.payloads.setdefault(digest, payload)
            row = info.with_fields(number=number)
            if info.status == "running":
                row = row.with_fields(pid=os.getpid())
                self._data.started[(self.workspace, number)] = []
            self._data.builds[(self.workspace, number)] = row
        return number

    def start_log(self, number: int) -> Callable[[str], None]:
        started = self._data.started[(self.workspace, number)]  # KeyError: not running here
        return lambda label: started.append((label, utc(time.time())))

    def update_build(self, number: int, changes: dict[str, object],
                     blobs: Iterable[tuple[Digest, bytes]] = ()) -> None:
        with self._data.lock:
            for digest, payload in blobs:
                self._data.payloads.setdefault(digest, payload)
            row = self._data.builds[(self.workspace, number)]
            self._data.builds[(self.workspace, number)] = row.with_fields(
                **{**changes, "status": changes.get("status", "finished")})
            self._data.started.pop((self.workspace, number), None)

    def settle_interrupted(self) -> list[int]:
        return []  # no other process can have begun a build here

    def build_key(self, number: int) -> bytes:
        return self._prefix + number.to_bytes(8, "big")

    def builds(self) -> list[BuildRow]:
        return [row for (tag, _), row in sorted(self._data.builds.items(), key=lambda i: i[0])
                if tag == self.workspace]

    def _record_keys(self) -> list[bytes]:
        """This workspace's record keys (its prefix + 8-byte build + 4-byte sequence), in order."""
        size = len(self._prefix) + 12
        return sorted(key for key in self._data.records
                      if len(key) == size and key.startswith(self._prefix))

    def records_of(self, number: int) -> list[ExecutionRecord]:
        build = self.build_key(number)
        return [ExecutionRecord.unpack(self._data.records[key]) for key in self._record_keys()
                if key.startswith(build)]

    def latest_record(self, label: str) -> ExecutionRecord | None:
        key = self._data.latest.get((self.workspace, label))
        return None if key is None else ExecutionRecord.unpack(self._data.records[key])

    def records_of_label(self, label: str) -> list[ExecutionRecord]:
        records = (ExecutionRecord.unpack(self._data.records[key]) for key in self._record_keys())
        return [record for record in records if record.label == label]

    def journal_blob(self, digest: Digest) -> bytes | None:
        payload = self._data.payloads.get(digest)
        if payload is not None and hash_bytes(payload) != digest:
            raise ChecksumMismatch(f"build record payload {digest.hex()} is corrupt")
        return payload

    # -- Generations

    def add_generation(self, created: str, patterns: tuple[str, ...], manifest: bytes, files: int,
                       size: int, workspace: str = "") -> Generation:
        with self._data.lock:
            number = max(self._data.generations, default=0) + 1
            generation = Generation(number, created, patterns, hash_bytes(manifest), files, size,
                                    workspace)
            self._data.blobs.setdefault(generation.manifest, manifest)
            self._data.generations[number] = generation
        return generation

    def generations(self) -> list[Generation]:
        return [self._data.generations[number] for number in sorted(self._data.generations)]

    def latest_generation(self, workspace: str = "") -> Generation | None:
        return next((g for g in reversed(self.generations()) if g.workspace == workspace), None)

    # -- Sweep

    def iter_blobs(self) -> Iterator[tuple[Digest, bytes | None]]:
        yield from sorted(self._data.blobs.items())

    def iter_results(self) -> Iterator[tuple[Digest, ActionResult]]:
        yield from sorted(self._data.results.items(), key=lambda item: item[0])

    def usage(self) -> dict[Digest, int]:
        return dict(self._data.usage)

    def external_files(self) -> Iterator[Path]:
        cas = self.path / "cas"
        if cas.is_dir():
            for folder in sorted(cas.iterdir()):
                yield from sorted(folder.iterdir())

    def remove(self, results: Iterable[Digest] = (), blobs: Iterable[Digest] = (),
               memo: Iterable[str] = (), generations: Iterable[int] = ()) -> int:
        freed = 0
        files = []
        with self._data.lock:
            for key in results:
                self._data.results.pop(key, None)
                self._data.usage.pop(key, None)
            for digest in blobs:
                if digest in self._data.blobs:
                    data = self._data.blobs.pop(digest)
                    if data is None:
                        files.append(self.external_path(digest))
                    else:
                        freed += len(data)
            for path in memo:
                self._data.memo.pop((self.workspace, path), None)
            for number in generations:
                self._data.generations.pop(number, None)
        for file in files:  # after the rows, as with LMDB: never a row without its file
            if file.exists():
                freed += file.stat().st_size
                file.unlink()
        return freed


if TYPE_CHECKING:
    from posbuild.store.protocols import (ActionCache, Blobs, BuildLog, Commits, Generations,
                                          StatMemo, Sweep)

    def _implements_every_facet(store: FakeStore) -> tuple[Blobs, ActionCache, StatMemo, Commits,
                                                           BuildLog, Generations, Sweep]:
        """Never called: mypy fails here when the fake stops satisfying a facet."""
        return store, store, store, store, store, store, store

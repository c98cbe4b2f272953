"""Layer 0: `posbuild fsck` — find corruption and partial state in the store and `posbuild-out/`,
and with `repair`, remove it so that the next build recomputes whatever was lost.

What is checked, and how each finding is classed
------------------------------------------------
ORCH-03, checksum inconsistency: bytes that do not hash to the digest that names or records them.
* Every blob row is re-hashed: inline blobs from LMDB, large ones from their file under `cas/`.
  A blob row whose file is gone counts too: its bytes cannot be checked, nor served.
* Every file under `posbuild-out/` is hashed and compared with the digest posbuild recorded when it
  wrote the file: its stat-memo row (keyed by the workspace-relative path), else the entry of the
  workspace's latest generation's manifest (in a shared store, never another workspace's). A file
  that differs from its memo row while keeping the inode the row recorded was changed in place after
  posbuild wrote it (bit rot, an edit): ORCH-03.

ORCH-06, partial state: rows or files that an uninterrupted history would not have left behind.
* An action result whose output, stdout or stderr blob has no row: a *dangling* result, which
  promises bytes the store cannot give. The rows of one action are committed in one transaction,
  so this is never a torn write; it means part of a committed whole was lost afterwards. Nothing
  hashes wrong, so it is classed with partial state rather than with checksums (a build that
  needs the missing blob still stops with ORCH-03 when it reads it, see store.py).
* A generation whose manifest blob is gone.
* A file under `posbuild-out/` with no record at all (no memo row, not in the latest manifest, and
  no action result recording those bytes for that path), and one that differs from its memo row and
  sits on another inode than the one recorded. A build commits each result before it puts the
  outputs in place (to the store's write-ahead log, which opening the store replays), with a
  placeholder memo row (materialize.INSTALLING) naming the coming digest, and the real memo row
  after; so a file that a killed build installed or restored is always one a result records, and old
  bytes where a placeholder row stands are still bytes the store holds. A kill thus never reads as
  corruption, while a byte flipped in place does.

Leftovers of killed processes are swept, not reported (invariant 3): temp files in
`.posbuild/tmp/` (fsck holds the workspace lock, so no build writes there now), state temp files
whose writer's pid is gone, sandboxes whose owner mark no live process holds (owners.sweep_dead:
a running build's are left alone), and in the workspace's own store temp files and files under
`cas/` that no blob row names (written before a commit that never happened): fsck holds the
store's lock exclusively (build.workspace_lock), so no build of any workspace using the store is
writing them. `swept` counts them; one that cannot be removed is ORCH-06.

ORCH-03 also covers the workspace's execution records, which are sealed into a hash chain
(recordchain.py; each workspace sharing a store has its own):
* A build row or record changed after it was sealed (it no longer hashes to the build's seal), a
  build deleted from the chain (its successor, or the chain's head, names it), a sealed row whose
  seal was removed or a row that should be sealed and is not, a record left without its build
  row, and a graph or state payload that a build row names but that is gone or corrupt. Each is
  reported as `ORCH-03 build N`. Records are evidence: `--repair` never rewrites them, and reports
  them as not repaired. Builds recorded before the store had a chain are not checked; a build
  still running, or killed and not yet noticed by a later command, is not a problem.

Warnings carry no code and do not change the exit status: a blob that no action result and no
generation references (`posbuild gc` reclaims it), and a generation whose manifest lists a blob
the store no longer holds (rolling back to it cannot restore that file until a build produces
those bytes again).

Repair
------
`check(..., repair=True)` first finds everything, then fixes it in an order where a crash at any
point leaves a state that the next fsck or build handles:
1. The up-to-date state is invalidated (`.posbuild/graphs/*.state` deleted, the tree marker set
   dirty), so the next build looks every action up in the store again instead of trusting stat
   signatures recorded before the repair.
2. Corrupt and unknown files under `posbuild-out/` are deleted; the next build restores them from
   the store or executes their actions.
3. One store transaction removes corrupt blobs, every result that references a corrupt or missing
   blob, generations whose manifest is corrupt or missing, and the memo rows of deleted files
   (`Store.remove` deletes `cas/` files only after the transaction commits).
4. Leftovers are deleted.
Anything that cannot be fixed (a file that cannot be deleted) is reported as not repaired.

Scope
-----
fsck runs under the workspace lock and the store's exclusive lock, so nothing writes meanwhile.
Blobs, results and generations are checked store-wide (a shared `[cache] dir` serves them all, and
repair removes what is broken for everyone); `posbuild-out/`, the stat memo, the record chain and
the up-to-date state are this workspace's.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

from posbuild.core.words import quantity
from posbuild.host.atomic import TEMP_PREFIX
from posbuild.workspace.config import Config
from posbuild.core.digest import DIGEST_SIZE, Digest, hash_bytes, hash_file
from posbuild.errors import ChecksumMismatch, PartialState
from posbuild.core.layout import GRAPHS, SANDBOX, TMP
from posbuild.store.materialize import INSTALLING
from posbuild.host.owned import real_folder
from posbuild.core.records import ActionResult, FileState, Manifest, unpack_manifest
from posbuild.core.tree import Tree, tree_outputs
from posbuild.store.recordchain import CHAIN, GENESIS, records_digest, seal
from posbuild.exec.owners import sweep_dead
from posbuild.store.lmdbstore import Store
from posbuild.store.upstate import mark_tree

CHECKSUM, PARTIAL = ChecksumMismatch.code, PartialState.code
BLOB, RESULT, GENERATION, OUTPUT, LEFTOVER = "blob", "result", "generation", "output", "leftover"
BUILD = "build"


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: `code` is ORCH-03 or ORCH-06, or None for a warning."""

    code: str | None
    kind: str  # blob, result, generation, output or leftover
    subject: str  # a digest or key in hex, a generation id, or a path
    detail: str

    def __str__(self) -> str:
        head = f"{self.code or 'warning'} {self.kind} {self.subject}"
        return f"{head} ({self.detail})" if self.kind == LEFTOVER else f"{head}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Repairs:
    """What a repair removed, and the problems it could not fix (with the reason)."""

    blobs: int = 0
    results: int = 0
    generations: int = 0
    outputs: int = 0
    leftovers: int = 0
    state_files: int = 0
    failed: tuple[tuple[Problem, str], ...] = ()


@dataclass(frozen=True, slots=True)
class FsckReport:
    """Everything one fsck found (and, with repair, what it fixed)."""

    problems: tuple[Problem, ...]
    blobs_checked: int
    bytes_checked: int
    results_checked: int
    outputs_checked: int
    repaired: Repairs | None = None
    swept: int = 0  # leftovers of killed processes (temp files, sandboxes) removed: not problems

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.code is not None)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.code is None)

    @property
    def remaining(self) -> tuple[Problem, ...]:
        """The errors still there: all of them, or after a repair those it could not fix."""
        return self.errors if self.repaired is None else tuple(p for p, _ in self.repaired.failed)


@dataclass
class _Plan:
    """What a repair would do; filled in while checking."""

    blobs: set[Digest] = field(default_factory=set)
    results: set[Digest] = field(default_factory=set)
    generations: set[int] = field(default_factory=set)
    # (file, memo key, problem)
    outputs: list[tuple[Path, str, Problem]] = field(default_factory=list)
    leftovers: list[tuple[Path, Problem]] = field(default_factory=list)


def check(config: Config, store: Store | None, repair: bool) -> FsckReport:
    """Check the store (None: the workspace has none yet) and posbuild-out/; repair if asked.

    The caller holds the workspace lock.
    """
    checker = _Checker(config, store)
    report = checker.run()
    if repair:
        repaired = _repair(config, store, checker.plan) if report.errors else Repairs()
        kept = tuple((p, "records are evidence; posbuild never rewrites them")
                     for p in report.errors if p.kind == BUILD)
        report = replace(report, repaired=replace(repaired, failed=repaired.failed + kept))
    return report


class _Checker:
    """One pass over the store, posbuild-out/ and the places interrupted work leaves files."""

    def __init__(self, config: Config, store: Store | None) -> None:
        self._config = config
        self._store = store
        self._problems: list[Problem] = []
        self.plan = _Plan()
        self._blobs: set[Digest] = set()
        self._external: set[Digest] = set()
        self._referenced: set[Digest] = set()
        self._manifest: Manifest = {}
        # output path → the digests action results record for it
        self._recorded: dict[str, set[Digest]] = {}
        self._bytes = self._results = self._outputs = 0
        self._swept = 0  # leftovers of dead processes removed

    def _add(self, code: str | None, kind: str, subject: str, detail: str) -> Problem:
        problem = Problem(code, kind, subject, detail)
        self._problems.append(problem)
        return problem

    def run(self) -> FsckReport:
        if self._store is not None:
            self._check_blobs(self._store)
            self._check_results(self._store)
            self._check_generations(self._store)
            self._problems.extend(record_chain_problems(self._store))
            self._check_cas_files(self._store)
        self._check_outputs()
        self._check_leftovers()
        self._warn_unreferenced()
        return FsckReport(tuple(self._problems), len(self._blobs), self._bytes, self._results,
                          self._outputs, swept=self._swept)

    # -- the store ---------------------------------------------------------------------------

    def _check_blobs(self, store: Store) -> None:
        """Re-hash every blob; a mismatch or a missing blob file is ORCH-03."""
        for digest, data in store.iter_blobs():
            self._blobs.add(digest)
            if data is None:
                self._external.add(digest)
                actual, error = self._hash_external(store.external_path(digest))
            else:
                self._bytes += len(data)
                actual, error = hash_bytes(data), ""
            if error:
                self._add(CHECKSUM, BLOB, digest.hex(), error)
            elif actual != digest:
                self._add(CHECKSUM, BLOB, digest.hex(), f"stored bytes hash to {actual.hex()}"
                          + (_edited_through_link(store.external_path(digest)) if data is None
                             else ""))
            else:
                continue
            self.plan.blobs.add(digest)

    def _hash_external(self, path: Path) -> tuple[Digest, str]:
        try:
            size = path.stat().st_size
            actual = hash_file(path)
        except FileNotFoundError:
            return b"", f"its file {self._show(path)} is missing"
        except OSError as error:
            return b"", f"its file {self._show(path)} cannot be read: {error.strerror}"
        self._bytes += size
        return actual, ""

    def _check_results(self, store: Store) -> None:
        """Every result's blobs must exist; a result that uses a corrupt blob goes with it."""
        for key, result in store.iter_results():
            self._results += 1
            refs = _references(result)
            unsound = self._folder_references(result, refs)
            if unsound is not None:
                self._add(CHECKSUM, RESULT, key.hex(), unsound)
                self.plan.results.add(key)
                continue
            self._referenced.update(digest for digest, _ in refs)
            missing = [(digest, what) for digest, what in refs if digest not in self._blobs]
            if missing:
                digest, what = missing[0]
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                self._add(PARTIAL, RESULT, key.hex(),
                          f"references blob {digest.hex()} ({what}){more}, which is not in the "
                          "store")
            if missing or any(digest in self.plan.blobs for digest, _ in refs):
                self.plan.results.add(key)
                continue  # a result repair removes vouches for no file under posbuild-out/
            for output in result.outputs:
                self._recorded.setdefault(output.path, set()).add(output.digest)
            for digest, what in refs:  # the files of its folder outputs
                if what.startswith(_MEMBER):
                    self._recorded.setdefault(what[len(_MEMBER):], set()).add(digest)

    def _folder_references(self, result: ActionResult,
                           refs: list[tuple[Digest, str]]) -> str | None:
        """Add the files of the result's folder outputs to `refs`; what is wrong with a folder
        manifest that is no sound one (its bytes hash right: it was written so), else None."""
        assert self._store is not None
        for output in tree_outputs(result):
            if output.digest not in self._blobs or output.digest in self.plan.blobs:
                continue  # the missing or corrupt manifest is reported as such
            try:
                tree = Tree.unpack(self._store.get_blob(output.digest))
            except (ValueError, ChecksumMismatch) as error:
                return f"the manifest of its folder output {output.path} is unsound: {error}"
            refs += [(f.digest, f"{_MEMBER}{output.path}/{f.path}") for f in tree.files]
        return None
    def _check_generations(self, store: Store) -> None:
        """Every generation's manifest must exist; its entries should (a warning otherwise)."""
        generations = store.generations()
        latest = store.latest_generation(store.workspace)
        for generation in generations:
            self._referenced.add(generation.manifest)
            if generation.manifest not in self._blobs:
                self._add(PARTIAL, GENERATION, str(generation.id),
                          f"its manifest blob {generation.manifest.hex()} is not in the store")
                self.plan.generations.add(generation.id)
                continue
            if generation.manifest in self.plan.blobs:
                self.plan.generations.add(generation.id)  # the blob's problem covers it
                continue
            manifest = unpack_manifest(store.get_blob(generation.manifest))
            # this workspace's: a shared store holds others' (generations.py)
            if generation == latest:
                self._manifest = manifest
            self._check_manifest(generation.id, manifest)

    def _check_manifest(self, generation: int, manifest: Manifest) -> None:
        gone = sorted(path for path, (digest, _, _) in manifest.items()
                      if digest not in self._blobs or digest in self.plan.blobs)
        self._referenced.update(digest for digest, _, _ in manifest.values())
        if gone:
            more = f" and {quantity(len(gone) - 1, 'more file')}" if len(gone) > 1 else ""
            self._add(None, GENERATION, str(generation),
                      f"lists {gone[0]}{more} whose bytes are not in the store; rolling back to it "
                      f"cannot restore them until a build produces them again")

    def _check_cas_files(self, store: Store) -> None:
        """Files under cas/ must be the files of blob rows; temp files and orphans are leftovers."""
        # fsck has the store to itself (see the module docstring)
        for path in store.external_files():
            digest = _digest_of(path)
            if path.name.startswith(".tmp-"):
                self._sweep(path, "temp file of an interrupted blob write")
            elif digest is None or digest not in self._external \
                    or store.external_path(digest) != path:
                self._sweep(path,
                            "a file under cas/ that no blob row names: written before a commit "
                            "that never happened")

    # -- posbuild-out/ -----------------------------------------------------------------------

    def _check_outputs(self) -> None:
        """Hash every file under posbuild-out/ and compare it with what posbuild recorded."""
        root = self._config.root
        # a linked one is refused: --repair deletes there
        real_folder(self._config.out_dir, "output tree")
        for folder, dirs, files in os.walk(self._config.out_dir):
            dirs.sort()
            for name in sorted(files) + [d for d in dirs
                                         if os.path.islink(os.path.join(folder, d))]:
                path = Path(folder, name)
                rel = path.relative_to(root).as_posix()
                problem = self._check_output(path, rel)
                if problem is not None:
                    self.plan.outputs.append((path, rel, problem))

    def _check_output(self, path: Path, rel: str) -> Problem | None:
        try:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                return self._add(PARTIAL, OUTPUT, rel,
                                 "not a regular file; posbuild writes only regular files")
            actual = hash_file(path)
        except FileNotFoundError:
            return None
        self._outputs += 1
        memo = self._store.get_memo(rel) if self._store is not None else None
        if memo is not None and actual == memo.digest:
            return None
        if memo is not None and memo.signature[2] == info.st_ino:
            return self._add(CHECKSUM, OUTPUT, rel,
                             f"bytes hash to {actual.hex()}, recorded {memo.digest.hex()}")
        listed = self._manifest.get(rel)
        if listed is not None and actual == listed[0]:
            return None
        if self._interrupted_install(rel, actual, memo):
            return None
        if memo is not None:
            return self._add(PARTIAL, OUTPUT, rel,
                             f"replaced since posbuild wrote it, as by a build interrupted "
                                                    "before its commit (bytes hash to "
                                                    f"{actual.hex()}, recorded "
                                                    f"{memo.digest.hex()})")
        if listed is not None:
            return self._add(CHECKSUM, OUTPUT, rel,
                             f"bytes hash to {actual.hex()}, the latest generation records "
                             f"{listed[0].hex()}")
        return self._add(PARTIAL, OUTPUT, rel,
                         "not written by posbuild: the store has no record of it")

    def _interrupted_install(self, rel: str, actual: Digest, memo: FileState | None) -> bool:
        """Whether the file is what a killed build left, not corruption: bytes an action result
        records for this path (installed or restored, the memo row not yet written), or old bytes
        the store holds where a build had committed a result and not yet put its file in place
        (the memo row is a placeholder, materialize.INSTALLING)."""
        if actual in self._recorded.get(rel, ()):
            return True
        return memo is not None and memo.signature == INSTALLING and actual in self._blobs

    # -- leftovers of interrupted work -------------------------------------------------------

    def _check_leftovers(self) -> None:
        """What killed processes left is swept, not reported (invariant 3): fsck holds the workspace
        lock, so no build of this workspace is writing `.posbuild/tmp/`; a state temp file is
        swept once the process its name carries is gone; a sandbox once no live process holds its
        owner mark (owners.sweep_dead), so a running build's sandboxes are left alone. Only what
        cannot be removed is reported."""
        state = self._config.state_dir
        for path in _entries(state / TMP):
            self._sweep(path, "temp file of an interrupted build")
        for path in [*_entries(state / GRAPHS), *_entries(state)]:
            if path.name.startswith(TEMP_PREFIX) and not _writer_alive(path.name):
                self._sweep(path, "temp file of an interrupted state write")
        # the base, and the one on disk where actions too large for memory run (large-data.md)
        for base in dict.fromkeys((self._config.sandbox_dir, state / SANDBOX)):
            if not base.is_dir():
                continue
            try:
                removed, _ = sweep_dead(base)
            except OSError:
                removed = []
            stuck = [path for path in _entries(base) if path.name in removed]
            for path in stuck:  # it could not be removed
                self._leftover(path, "sandbox of an interrupted build")
            self._swept += max(0, len(removed) - len(stuck))

    def _sweep(self, path: Path, why: str) -> None:
        """Remove a leftover of a dead process; one that cannot be removed is reported."""
        failed: list[tuple[Problem, str]] = []
        if _delete(path, Problem(PARTIAL, LEFTOVER, self._show(path), why), failed):
            self._swept += 1
        else:
            self._leftover(path, why)

    def _leftover(self, path: Path, why: str) -> None:
        self.plan.leftovers.append((path, self._add(PARTIAL, LEFTOVER, self._show(path), why)))

    def _warn_unreferenced(self) -> None:
        for digest in sorted(self._blobs - self._referenced - self.plan.blobs):
            self._add(None, BLOB, digest.hex(), "unreferenced blob; `posbuild gc` reclaims it")

    def _show(self, path: Path) -> str:
        """A path as the user would type it: relative to the workspace when inside it."""
        try:
            return path.relative_to(self._config.root).as_posix()
        except ValueError:
            return str(path)


def record_chain_problems(store: Store) -> list[Problem]:
    """Check every sealed build row of the store's workspace and its records against its chain
    (one problem per build)."""
    import msgpack

    found: dict[int, str] = {}

    def add(number: int, detail: str) -> None:
        found.setdefault(number, detail)

    rows: dict[int, dict] = {}
    for number, value in store.raw_builds():
        try:
            rows[number] = msgpack.unpackb(value)
        except (ValueError, msgpack.UnpackException):
            add(number, "its row cannot be read: it was changed after it was recorded")
    records: dict[int, list[tuple[bytes, bytes]]] = {}
    for number, key, value in store.raw_records():
        records.setdefault(number, []).append((key, value))
    meta = store.chain_meta()
    sealed = {n: row for n, row in rows.items() if isinstance(row, dict) and CHAIN in row}
    first = min(sealed, default=None)
    for number, row in rows.items():
        if number in sealed:
            continue
        if isinstance(row, dict) and row.get("status") == "running" and number in meta["running"]:
            continue  # still running, or killed and not yet noticed by a later command
        if isinstance(row, dict) and "status" not in row and (first is None or number < first):
            continue  # recorded before this store had a chain
        add(number, "its row is not sealed into the record chain: its seal was removed or its row "
                    "rewritten")
    successors: dict[int, list[int]] = {}
    for number, row in sorted(sealed.items()):
        previous, digest = row[CHAIN]
        if previous and previous not in sealed:
            add(previous, f"deleted: build {number} chains from it" if previous not in rows
                else f"its seal was removed (build {number} chains from it)")
            continue
        successors.setdefault(previous, []).append(number)
        before = bytes(sealed[previous][CHAIN][1]) if previous else GENESIS
        if seal(before, row, records_digest(records.get(number, []))) != bytes(digest):
            add(number,
                "its row or records were changed after it was recorded: they no longer hash to its "
                "seal")
    for previous, following in successors.items():
        for number in following[1:]:
            add(number,
                f"chains from build {previous} like build {following[0]}: the chain was rewritten"
                if previous else "starts a second record chain: the chain's head was removed")
    head = meta["head"]
    if head is None and sealed:
        add(max(sealed), "the record chain's head (the last sealed build) is gone")
    elif head is not None:
        number, digest = head
        if number not in rows:
            add(number, "deleted: it was the last build sealed into the record chain")
        elif number not in sealed or bytes(sealed[number][CHAIN][1]) != bytes(digest) \
                or successors.get(number):
            add(number, "it no longer matches the record chain's head")
    for number in sorted(set(records) - set(rows)):
        remain = "remains" if len(records[number]) == 1 else "remain"
        add(number, f"deleted: {quantity(len(records[number]), 'record')} of it {remain} "
                    "without its row")
    checked: set[bytes] = set()
    for number, row in sorted(sealed.items()):
        for name in ("graph", "state"):
            digest = row.get(name)
            if not digest or digest in checked:
                continue
            checked.add(digest)
            try:
                if store.journal_blob(digest) is None:
                    add(number, f"its {name} payload {bytes(digest).hex()} is gone")
            except ChecksumMismatch:
                add(number,
                    f"its {name} payload {bytes(digest).hex()} was changed after it was recorded")
    return [Problem(CHECKSUM, BUILD, str(n), detail) for n, detail in sorted(found.items())]


_MEMBER = "file "  # how a folder output's file is named among a result's references


def _references(result: ActionResult) -> list[tuple[Digest, str]]:
    """The blobs a result needs, each with what it is for."""
    refs = [(o.digest, f"output {o.path}") for o in result.outputs]
    return refs + [(result.stdout_digest, "stdout"), (result.stderr_digest, "stderr")]


def _writer_alive(name: str) -> bool:
    """Whether the process that named a temp file `.tmp-<pid>-...` (atomic.py) still runs."""
    try:
        os.kill(int(name[len(TEMP_PREFIX):].split("-", 1)[0]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _digest_of(path: Path) -> Digest | None:
    """The digest a file under cas/ is named after, or None if its name is not one."""
    try:
        digest = bytes.fromhex(path.name)
    except ValueError:
        return None
    return digest if len(digest) == DIGEST_SIZE else None


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


# -- repair ----------------------------------------------------------------------------------


def _repair(config: Config, store: Store | None, plan: _Plan) -> Repairs:
    """Fix what the check found, in the order the module docstring explains."""
    failed: list[tuple[Problem, str]] = []
    state_files = _invalidate_state(config)
    deleted = [(rel, problem) for path, rel,
               problem in plan.outputs if _delete(path, problem, failed)]
    if store is not None:
        store.remove(results=sorted(plan.results), blobs=sorted(plan.blobs),
                     memo=[rel for rel, _ in deleted], generations=sorted(plan.generations))
        store.flush()
    leftovers = sum(_delete(path, problem, failed) for path, problem in plan.leftovers)
    return Repairs(len(plan.blobs), len(plan.results), len(plan.generations), len(deleted),
                   leftovers, state_files, tuple(failed))


def _invalidate_state(config: Config) -> int:
    """Delete the saved up-to-date state of every request and mark posbuild-out/ dirty."""
    removed = 0
    for path in _entries(config.state_dir / GRAPHS):
        if path.suffix == ".state":
            path.unlink(missing_ok=True)
            removed += 1
    if config.state_dir.is_dir():
        mark_tree(config, clean=False)
    return removed


def _delete(path: Path, problem: Problem, failed: list[tuple[Problem, str]]) -> bool:
    """Delete a file or a folder; on failure, record the problem as not repaired."""
    try:
        if path.is_dir() and not path.is_symlink():
            _make_writable(path)
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as error:
        failed.append((problem, f"cannot delete {path}: {error.strerror or error}"))
        return False
    return True


def _make_writable(folder: Path) -> None:
    """Sandboxes may hold read-only folders (an action's own chmod); rmtree needs them writable."""
    for dirpath, _, _ in os.walk(folder):
        os.chmod(dirpath, 0o755)


def summary(report: FsckReport) -> str:
    """The closing line: what was checked, and how many problems and warnings were found."""
    errors, warnings = len(report.errors), len(report.warnings)
    found = quantity(errors, 'problem') if errors else "no problems"
    if warnings:
        found += f", {quantity(warnings, 'warning')}"
    return (f"fsck: checked {quantity(report.blobs_checked, 'blob')} "
            f"({quantity(report.bytes_checked, 'byte')}), "
            f"{quantity(report.results_checked, 'action result')}, "
            f"{quantity(report.outputs_checked, 'output')}: {found}")


def swept_line(report: FsckReport) -> str:
    """The line on leftovers of killed processes fsck removed ("" if none)."""
    if not report.swept:
        return ""
    return (f"fsck: swept {quantity(report.swept, 'leftover')} of killed posbuild processes "
            "(temp files, sandboxes); not corruption")


def repaired_line(repairs: Repairs) -> str:
    """What a repair removed, as one line."""
    parts = [quantity(number, what, plural) for number, what, plural in (
        (repairs.blobs, "corrupt blob", ""), (repairs.results, "action result", ""),
        (repairs.generations, "generation", ""),
        (repairs.outputs, "file under posbuild-out/", "files under posbuild-out/"),
        (repairs.leftovers, "leftover", ""),
    ) if number]
    if not parts:
        return "repaired: nothing to repair"
    return (f"repaired: removed {', '.join(parts)}; the next build checks every action against the "
            f"store again and recreates what was removed")


def _edited_through_link(path: Path) -> str:
    """What fsck adds about a blob file that hashes wrong while it has other names: the file is
    shared with `posbuild-out/` (materialize.py), and an edit in place there changed it."""
    try:
        linked = path.stat().st_nlink > 1
    except OSError:
        return ""
    return ("; its file is shared with posbuild-out/ (a hard link), where an edit in place "
            "changed it") if linked else ""

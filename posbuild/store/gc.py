"""Layer 2: garbage collection of the store — drop old generations, then evict least recently
used action results and the blobs nothing else needs, in transactions a crash cannot tear.

Design memo
-----------
* **What is live.** The newest N generations of each workspace are kept (at least one: the latest
  generation is what the next build and `posbuild rollback` start from; a store shared by several
  workspaces holds each one's generations, generations.py). A kept generation *pins* its manifest
  blob and every blob its manifest lists, and every action result it *needs*: one whose outputs
  are all listed, with the same path and digest, in a kept manifest (a folder output by all of
  its files). A pinned result keeps its stdout/stderr blobs because it still references them.
  A result references the blobs of its folder outputs' files too (through their manifests).
  Nothing pinned is ever removed, whatever `--max-size` says, so `posbuild rollback` to a kept
  generation, and a build after `posbuild clean` of the sources a kept generation was built
  from, restore everything from the store without executing. Outputs a failed build left in
  `posbuild-out/` are in no generation: their results are not pinned (the next build executes
  them again if they were evicted).
* **Builds after gc.** Every `Store.remove()` first gives the store a new epoch (epoch.py), so a
  saved up-to-date state that trusted an evicted result is checked before the next build settles
  anything by stat (uptodate.revalidate).
* **Garbage** is always removed: the rows of dropped generations, and blobs that no remaining
  result and no kept manifest references (the manifests of dropped generations, outputs of
  evicted or no-cache actions, ...). Files under `cas/` without a blob row (left by a crash
  between writing the file and committing its row) go too. A result whose blobs are already
  missing is left alone: that is fsck's to report.
* **LRU order.** With a size bound, unpinned results are evicted oldest first by the store's
  `usage` rows (the last time each key was a hit or was executed, unix ns). Keys without a row
  count as oldest; ties are broken by key bytes, so the same store always yields the same plan.
  Each evicted result takes along the blobs whose last reference it was (and that no kept
  manifest lists); eviction stops as soon as the blob bytes are at or below the bound. If only
  pinned data is left and it is still above the bound, the report says so; that is not an error.
* **Plan, then act.** `plan_gc()` is a pure function of an `Inventory` (one read of the store),
  so it can be tested on its own and is deterministic. The plan is a list of `Batch`es, each
  one `Store.remove()` call, i.e. one LMDB write transaction that deletes `cas/` files only after
  it commits. A batch holds at most `batch_rows` rows, so a huge gc never holds one giant write
  transaction. Batches are ordered so that every prefix leaves a consistent store: generation rows
  go in the first batch, before or with the blobs only they referenced; a result goes in the same
  batch as the blobs it was the last reference of. A crash between batches (or inside one) leaves
  a store in which every remaining row's blobs are present; running gc again finishes the job.
* **Workspaces.** A store may be shared by several workspaces (`[cache] dir`). gc keeps the
  newest N generations of *each* (whichever workspace runs it), so what any workspace's newest
  generation lists is never evicted. Results and blobs are shared, so the LRU order is the
  store's, not a workspace's.
* **Locking.** The caller holds the workspace lock and the store's `gc.lock` exclusively
  (build.workspace_lock), which every command of every workspace using the store shares: no
  build is running anywhere between a cache lookup and its commit while gc plans and removes,
  so nothing it removes can be about to be referenced, and every file under `cas/` without a
  row is a true orphan. For a shared store, orphan files younger than `orphan_grace_ns` are
  kept all the same (a writer that does not take the lock, such as an older posbuild).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Sequence

from posbuild.core.digest import Digest
from posbuild.errors import ChecksumMismatch, UsageError
from posbuild.core.records import ActionResult, Generation, Manifest, OutputFile, unpack_manifest
from posbuild.core.tree import Tree, tree_outputs

if TYPE_CHECKING:
    from typing import Protocol

    from posbuild.store.protocols import Blobs, Commits, Generations, Sweep

    class GcStore(Blobs, Generations, Sweep, Commits, Protocol):
        """What gc reads and removes: generations and their manifests, every result, blob and usage
        row, the files under `cas/`; it flushes once the removals are done."""

DEFAULT_KEEP_GENERATIONS = 3
BATCH_ROWS = 1000  # rows (results + blobs + generations) per write transaction
SHARED_ORPHAN_GRACE_NS = 3600 * 10**9  # orphan files younger than this may be writes in progress


@dataclass(frozen=True, slots=True)
class Inventory:
    """What gc needs to know about a store, read once, before anything is removed."""

    kept: tuple[Generation, ...]
    dropped: tuple[Generation, ...]
    manifests: tuple[Manifest, ...] = field(repr=False)  # of the kept generations
    results: Mapping[Digest, ActionResult] = field(repr=False)
    usage: Mapping[Digest, int] = field(repr=False)  # action key → last use, unix ns
    blob_sizes: Mapping[Digest, int] = field(repr=False)
    external: frozenset[Digest] = field(repr=False)  # blobs whose bytes are files under cas/
    # the manifests of the results' folder outputs (core/tree.py), by digest
    trees: Mapping[Digest, Tree] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows removed in one write transaction; removing any prefix of the batches is consistent."""

    generations: tuple[int, ...] = ()
    results: tuple[Digest, ...] = ()
    blobs: tuple[Digest, ...] = ()

    def rows(self) -> int:
        return len(self.generations) + len(self.results) + len(self.blobs)


@dataclass(frozen=True, slots=True)
class GcPlan:
    """The batches to remove, and the store's blob bytes before and after them."""

    batches: tuple[Batch, ...]
    size_before: int
    size_after: int
    blobs_after: int
    pinned_size: int  # bytes no bound can free: blobs of kept manifests and of pinned results
    over_budget: bool

    @property
    def generations(self) -> int:
        return sum(len(batch.generations) for batch in self.batches)

    @property
    def results(self) -> int:
        return sum(len(batch.results) for batch in self.batches)

    @property
    def blobs(self) -> int:
        return sum(len(batch.blobs) for batch in self.batches)


@dataclass(frozen=True, slots=True)
class GcReport:
    """What one gc did, for the command line."""

    generations_removed: int
    generations_kept: int
    results_removed: int
    blobs_removed: int
    orphans_removed: int
    bytes_freed: int
    size_after: int
    blobs_after: int
    pinned_size: int
    over_budget: bool


def take_inventory(store: GcStore, keep_generations: int) -> Inventory:
    """Read generations, kept manifests, results, usage and blob sizes (ORCH-03 on a bad
    manifest)."""
    if keep_generations < 1:
        raise UsageError("--keep-generations must be at least 1 (the latest generation is always "
                         f"kept), got {keep_generations}")
    generations = store.generations()
    newest: Counter[str] = Counter()
    kept_ids = set()
    for generation in reversed(generations):  # the newest N of each workspace
        newest[generation.workspace] += 1
        if newest[generation.workspace] <= keep_generations:
            kept_ids.add(generation.id)
    kept = [g for g in generations if g.id in kept_ids]
    dropped = [g for g in generations if g.id not in kept_ids]
    manifests = tuple(_manifest(store, g) for g in kept)
    sizes: dict[Digest, int] = {}
    external: set[Digest] = set()
    for digest, data in store.iter_blobs():
        if data is None:
            external.add(digest)
            sizes[digest] = store.blob_size(digest)
        else:
            sizes[digest] = len(data)
    results = dict(store.iter_results())
    return Inventory(tuple(kept), tuple(dropped), manifests, results,
                     store.usage(), sizes, frozenset(external), _trees(store, results.values()))


def _trees(store: Blobs, results: Iterable[ActionResult]) -> dict[Digest, Tree]:
    """The manifest of every folder output the results name. One that is missing or unsound
    names no file (fsck reports it), so its members are kept only if something else needs them."""
    trees: dict[Digest, Tree] = {}
    for result in results:
        for output in tree_outputs(result):
            if output.digest in trees or not store.has_blob(output.digest):
                continue
            try:
                trees[output.digest] = Tree.unpack(store.get_blob(output.digest))
            except (ValueError, ChecksumMismatch):
                continue
    return trees


def _manifest(store: Blobs, generation: Generation) -> Manifest:
    try:
        return unpack_manifest(store.get_blob(generation.manifest))
    except ChecksumMismatch as error:
        raise ChecksumMismatch(f"manifest of generation {generation.id}: {error.detail}; gc "
                               f"removed nothing, run `posbuild fsck`") from None


def _references(result: ActionResult, trees: Mapping[Digest, Tree]) -> frozenset[Digest]:
    """Every blob a result needs: its own, and every file of its folder outputs."""
    blobs = set(result.blobs())
    for output in tree_outputs(result):
        tree = trees.get(output.digest)
        if tree is not None:
            blobs.update(f.digest for f in tree.files)
    return frozenset(blobs)


def _listed(output: OutputFile, needed: set[tuple[str, Digest]],
            trees: Mapping[Digest, Tree]) -> bool:
    """Whether a kept manifest lists an output: a file by its row, a folder by its files' rows
    (a generation lists a folder's files, not the folder)."""
    if not output.tree:
        return (output.path, output.digest) in needed
    tree = trees.get(output.digest)
    return tree is not None and all((f"{output.path}/{f.path}", f.digest) in needed
                                    for f in tree.files)


def plan_gc(inventory: Inventory, max_size: int | None, batch_rows: int = BATCH_ROWS) -> GcPlan:
    """Which rows to remove, in which transactions (see the memo above). Pure and deterministic."""
    pinned_blobs = {g.manifest for g in inventory.kept}
    needed: set[tuple[str, Digest]] = set()
    for manifest in inventory.manifests:
        for path, (digest, _, _) in manifest.items():
            pinned_blobs.add(digest)
            needed.add((path, digest))
    refs = {key: _references(result, inventory.trees)
            for key, result in inventory.results.items()}
    pinned_results = {
        key for key, result in inventory.results.items()
        if result.outputs and all(_listed(o, needed, inventory.trees) for o in result.outputs)
    }
    refcount: Counter[Digest] = Counter(d for digests in refs.values() for d in digests)
    sizes = inventory.blob_sizes
    size_before = sum(sizes.values())

    batcher = _Batcher(batch_rows)
    batcher.add(generations=sorted(g.id for g in inventory.dropped))
    garbage = sorted(d for d in sizes if d not in pinned_blobs and not refcount[d])
    for digest in garbage:
        batcher.add(blobs=[digest])
    size = size_before - sum(sizes[d] for d in garbage)

    if max_size is not None and size > max_size:
        unpinned = sorted((k for k in refs if k not in pinned_results),
                          key=lambda k: (inventory.usage.get(k, -1), k))
        for key in unpinned:
            if size <= max_size:
                break
            freed = []
            for digest in sorted(refs[key]):
                refcount[digest] -= 1
                if not refcount[digest] and digest in sizes and digest not in pinned_blobs:
                    freed.append(digest)
                    size -= sizes[digest]
            batcher.add(results=[key], blobs=freed)

    pinned = pinned_blobs.union(*(refs[k] for k in pinned_results))
    batches = batcher.done()
    blobs_after = len(sizes) - sum(len(b.blobs) for b in batches)
    return GcPlan(batches, size_before, size, blobs_after, sum(sizes.get(d, 0) for d in pinned),
                  max_size is not None and size > max_size)


class _Batcher:
    """Groups units of rows into batches of at most `limit` rows. A unit is never split (a result
    and the blobs it frees leave together), so a batch exceeds the limit only by one big unit."""

    def __init__(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._batches: list[Batch] = []
        self._current = Batch()

    def add(self, generations: Sequence[int] = (), results: Sequence[Digest] = (),
            blobs: Sequence[Digest] = ()) -> None:
        if not (generations or results or blobs):
            return
        unit = len(generations) + len(results) + len(blobs)
        if self._current.rows() and self._current.rows() + unit > self._limit:
            self._close()
        c = self._current
        self._current = Batch(c.generations + tuple(generations), c.results + tuple(results),
                              c.blobs + tuple(blobs))

    def _close(self) -> None:
        self._batches.append(self._current)
        self._current = Batch()

    def done(self) -> tuple[Batch, ...]:
        if self._current.rows():
            self._close()
        return tuple(self._batches)


def collect(store: GcStore, max_size: int | None, keep_generations: int, now_ns: int, *,
            orphan_grace_ns: int = 0, batch_rows: int = BATCH_ROWS) -> GcReport:
    """Run gc on `store`: plan from one inventory, remove batch by batch, then sweep orphan files.

    The caller holds the workspace lock and the store's exclusively. `now_ns` and `orphan_grace_ns`
    decide which files under `cas/` without a row are old enough to be orphans rather than writes in
    progress.
    """
    inventory = take_inventory(store, keep_generations)
    plan = plan_gc(inventory, max_size, batch_rows)
    freed = 0
    for batch in plan.batches:
        freed += store.remove(results=batch.results, blobs=batch.blobs,
                              generations=batch.generations)
    orphans = 0
    for path in _orphan_files(store.external_files(), inventory.external, now_ns - orphan_grace_ns):
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        orphans += 1
        freed += size
    store.flush()
    return GcReport(
        generations_removed=plan.generations, generations_kept=len(inventory.kept),
        results_removed=plan.results, blobs_removed=plan.blobs, orphans_removed=orphans,
        bytes_freed=freed, size_after=plan.size_after, blobs_after=plan.blobs_after,
        pinned_size=plan.pinned_size, over_budget=plan.over_budget,
    )


def _orphan_files(files: Iterable[Path], external: frozenset[Digest],
                  older_than_ns: int) -> Iterator[Path]:
    """Files under cas/ that no blob row names (temp files included), last written before the
    cutoff."""
    for path in files:
        try:
            if bytes.fromhex(path.name) in external:
                continue
        except ValueError:
            pass  # a temp file of an interrupted write
        try:
            if path.stat().st_mtime_ns < older_than_ns:
                yield path
        except FileNotFoundError:
            continue

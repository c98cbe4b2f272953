"""Layer 3: generations (§8) — record the output tree after each fully successful build, and
roll `posbuild-out/` back to one.

A generation belongs to the workspace, not to a request: its manifest maps every output file of
`posbuild-out/` to (digest, size, executable), each at its last successful content. It starts
from the previous generation's manifest (a request rarely covers the whole workspace), takes
this build's outputs from their action results, and drops files that are no longer there, except
those a failed build withdrew (uptodate.withdrawn_outputs): their rows stay, so that after a
failed build of one target and a successful build of another, rollback still restores what the
failure removed. An unchanged tree records no new generation, so a rebuild with nothing changed
leaves the store exactly as it was (§11).

Rollback restores the tree byte for byte from the store without executing anything: every file
of the manifest that is not already current is rewritten from its verified blob (ORCH-03 if a
blob is corrupt), and every other file under `posbuild-out/` is removed. Rolling back to an older
generation records it again as the latest, so that the next build starts from the tree rollback
left and not from the newer generation it replaced.

A store shared by several workspaces (`[cache] dir`) holds the generations of each: they are
tagged with their workspace's path, and each workspace records, lists and rolls back to its own
(ids are the store's, so one workspace's may skip numbers). The stat-memo rows rollback writes
are its own too (the store keys them by the tag).

uptodate.py's tree marker says whether `posbuild-out/` is known to match the latest generation,
so a no-op build can skip all of this with one small read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from posbuild.workspace.config import Config
from posbuild.errors import UsageError
from posbuild.core.digest import Digest
from posbuild.core.layout import OUT_DIR, TMP
from posbuild.store.materialize import Materializer
from posbuild.host.owned import no_links_on_the_way, real_folder
from posbuild.core.records import (FileState, Generation, Manifest, OutputFile, pack_manifest,
                              unpack_manifest)
from posbuild.store.upstate import mark_tree

if TYPE_CHECKING:
    from typing import Protocol

    from posbuild.store.materialize import OutputStore
    from posbuild.store.protocols import Blobs, Commits, Generations

    class GenerationStore(Generations, Blobs, Protocol):
        """Generations and the manifest blobs they name."""

    class RollbackStore(GenerationStore, OutputStore, Commits, Protocol):
        """What rollback needs as well: the output tree's memo rows, and a commit of new ones."""


def workspace_tag(config: Config) -> str:
    """What the workspace's generations are tagged with: "" in its own store, else its path."""
    return config.workspace_tag


# The manifest this process last read or recorded, by its digest (manifests are content-addressed):
# a build server records generation after generation without decoding 10,000 rows each time.
_last_manifest: tuple[Digest, Manifest] | None = None


def current_manifest(store: GenerationStore,
                     workspace: str = "") -> tuple[Generation | None, Manifest]:
    """The latest generation of the workspace tagged `workspace`, and its manifest (shared with
    the next caller: read it, never change it)."""
    global _last_manifest
    latest = store.latest_generation(workspace)
    if latest is None:
        return None, {}
    if _last_manifest is None or _last_manifest[0] != latest.manifest:
        _last_manifest = (latest.manifest, unpack_manifest(store.get_blob(latest.manifest)))
    return latest, _last_manifest[1]


def generations_of(config: Config, store: Generations) -> list[Generation]:
    """The workspace's generations, oldest first (a shared store holds others' too)."""
    tag = workspace_tag(config)
    return [g for g in store.generations() if g.workspace == tag]


def record_generation(config: Config, store: GenerationStore, patterns: Sequence[str],
                      rows: Manifest,
                      current: tuple[Generation | None, Manifest] | None = None,
                      withdrawn: frozenset[str] = frozenset()) -> Generation | None:
    """Record the tree after a fully successful build; None when it equals the latest generation.

    `rows` describes every output of the request; `current` is `current_manifest(store)` when the
    caller has read it already; `withdrawn` lists the outputs failed builds removed, whose rows
    are kept although their files are gone.
    """
    latest, previous = current if current is not None \
        else current_manifest(store, workspace_tag(config))
    manifest: Manifest = dict(previous)
    base = f"{config.root}/"  # str concatenation: a Path per file costs more than the stat itself
    # rows of other requests: dropped if the file is gone
    for path in previous.keys() - rows.keys():
        if path not in withdrawn and not os.path.isfile(base + path):
            del manifest[path]
    manifest.update(rows)
    if latest is not None and manifest == previous:
        return None
    created = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    size = sum(size for _, size, _ in manifest.values())
    generation = store.add_generation(created, tuple(patterns), pack_manifest(manifest),
                                      len(manifest), size, workspace_tag(config))
    global _last_manifest
    _last_manifest = (generation.manifest, manifest)
    return generation


@dataclass(frozen=True, slots=True)
class RollbackReport:
    generation: Generation
    restored: int
    removed: int
    unchanged: int


def rollback(config: Config, store: RollbackStore,
             generation_id: int | None = None) -> RollbackReport:
    """Make posbuild-out/ byte-identical to a generation (the latest by default)."""
    generations = generations_of(config, store)
    if not generations:
        raise UsageError(
            "no generation recorded yet: rollback needs one fully successful build first")
    chosen = generations[-1] if generation_id is None else next(
        (g for g in generations if g.id == generation_id), None)
    if chosen is None:
        known = ", ".join(str(g.id) for g in generations)
        raise UsageError(f"no generation {generation_id} (known: {known})")
    manifest = unpack_manifest(store.get_blob(chosen.manifest))
    real_folder(config.out_dir, "output tree")  # rollback deletes files in it: never through a link
    no_links_on_the_way(config.root, {os.path.dirname(path) for path in manifest})
    mark_tree(config, clean=False)  # a kill from here on leaves a tree no generation describes
    materializer = Materializer(config.root, store, config.state_dir / TMP)
    materializer.clear_temp()
    memo: list[tuple[str, FileState]] = []
    unchanged = 0
    for path, (digest, size, executable) in sorted(manifest.items()):
        output = OutputFile(path, digest, size, executable)
        if materializer.current(output) is not None:
            unchanged += 1
        else:
            memo.append((path, materializer.restore(output)))
    removed = _remove_others(config.root, set(manifest))
    store.commit(memo=memo)
    # the next build starts from this tree, not the newer one
    if chosen.manifest != generations[-1].manifest:
        created = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        store.add_generation(created, (f"rollback --to {chosen.id}",),
                             store.get_blob(chosen.manifest),
                             chosen.files, chosen.size, workspace_tag(config))
    store.flush()
    mark_tree(config, clean=True)  # nothing is missing any more
    return RollbackReport(chosen, len(memo), removed, unchanged)


def _remove_others(root: Path, keep: set[str]) -> int:
    """Delete every file under posbuild-out/ that the manifest does not list."""
    removed = 0
    out = root / OUT_DIR
    for folder, _, files in os.walk(out):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), root)
            if rel not in keep:
                os.unlink(os.path.join(folder, name))
                removed += 1
    return removed

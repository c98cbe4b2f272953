"""Layer 1: `posbuild watch` — build, then rebuild each time a file the request depends on changes.

Three parts, in the order a change flows through them:

* `_Watcher` turns watchdog (inotify) events into `Change`s on a queue. It watches the workspace
  root and each top-level folder except posbuild's own (`posbuild-out/`, `.posbuild/`, a store or
  sandbox folder configured inside the workspace), `.git/` and other hidden folders, which the
  loader never looks into either. A rename arrives as the disappearance of its source and the
  appearance of its destination, so an editor's atomic save (write a temp file, rename it over
  the original) is a change of the original. A top-level folder replaced by another under the
  same name (`mv data old; mv new data`) gets a watch of its own (watches follow inodes).
* `WatchSet` is what the last build depended on, taken from its ActionGraph: every source file
  (inputs and tools that no action produces), the requirements and srcs of its py_envs, the BUILD,
  `.bzl` and Python files the graph was analysed from (the graph cache stamps them),
  `posbuild.toml` and `posbuild.lock`, and the loaded packages, in whose folders a file that
  appears may match a `glob`. It decides which changes matter.
* `watch()` is the loop: wait for a relevant change, let the burst settle (no relevant change for
  the quiet period), build once, report one `Cycle`, repeat. A build that fails, or cannot even
  load its BUILD files, is reported like any other and watching goes on (so does an unexpected
  exception, as an internal error of that cycle); until a graph loads again, any BUILD, `.bzl` or
  Python file and any new file counts as relevant.

The build itself is passed in (`BuildFn`), so this module needs nothing above it: the command
line wires it to `session.BuildSession.build`, whose graph hook hands back each build's
ActionGraph. Each build is an ordinary, complete build in this process: it takes the workspace
lock, keeps the no-partial-state guarantees, and on Ctrl-C its own interruption handling stops
the running actions before the KeyboardInterrupt leaves `watch()`, which then stops the observer.
"""

from __future__ import annotations

import os
import queue
import stat
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, cast

from posbuild.core.action import ActionGraph, is_generated
from posbuild.workspace.config import Config
from posbuild.errors import PosbuildError
from posbuild.load.graphcache import files_of_entry
from posbuild.core.layout import CONFIG_NAME, LOCK_NAME, OUT_DIR, STATE_DIR
from posbuild.engine.reporter import BuildSummary

if TYPE_CHECKING:  # _Handler has the one method watchdog calls, without importing it at start-up
    from watchdog.events import FileSystemEventHandler

CODE_SUFFIXES = (".bzl", ".py")  # files the loader or the import scan may read
# Names editors give their swap, backup and lock files. Such a file appearing in a package does not
# start a build by itself (it could only matter through a glob that matches it); the next build sees
# it.
_ARTIFACT_SUFFIXES = ("~", ".swp", ".swx", ".swo", ".kate-swp")
_ARTIFACT_PREFIXES = (".#", "#", ".goutputstream-")

GraphHook = Callable[[ActionGraph], None]
# one full build; calls the hook with its graph once resolved
BuildFn = Callable[[GraphHook], BuildSummary]


@dataclass(frozen=True, slots=True)
class Change:
    """One file-system event, relative to the workspace root.

    `entry` is True when the path appeared or disappeared (created, deleted, renamed), False when
    only its content or attributes changed.
    """

    path: str
    is_dir: bool
    entry: bool


@dataclass(frozen=True, slots=True)
class Cycle:
    """One build of the watch loop: what triggered it and how it ended."""

    changed: tuple[str, ...]  # sorted; empty for the first build
    summary: BuildSummary | None  # None when the build stopped with an error
    error: PosbuildError | None
    elapsed: float  # seconds the build took
    watched: int  # files in the watch set afterwards


@dataclass(frozen=True, slots=True)
class WatchSet:
    """What the last build depended on, and so which changes call for a new build."""

    files: frozenset[str] = frozenset((CONFIG_NAME, LOCK_NAME))
    packages: frozenset[str] = frozenset()
    build_names: tuple[str, ...] = ("BUILD",)
    broken: bool = True  # no graph loaded: BUILD/.bzl/.py files and new files anywhere count
    raw: bytes = field(default=b"", repr=False, compare=False)  # the graph cache entry it came from

    def candidate(self, change: Change) -> bool:
        """Whether a change may matter, before knowing how its burst ends (cheap: no I/O)."""
        if change.path in self.files:
            return True
        name = os.path.basename(change.path)
        if change.entry:
            if _in_skipped_folder(change.path, change.is_dir):
                return False
            return change.is_dir or name in self.build_names or not _is_artifact(name)
        return self.broken and _is_code(name, self.build_names)

    def relevant(self, root: Path, burst: dict[str, Change]) -> list[str]:
        """The changed paths of a finished burst that call for a build, sorted.

        A path that appeared and vanished within the burst (an editor's temp file) is dropped,
        as is a new file in a package the request does not load.
        """
        return [path for path, change in sorted(burst.items()) if self._matters(root, change)]

    def _matters(self, root: Path, change: Change) -> bool:
        path = change.path
        if path in self.files:
            return True
        name = os.path.basename(path)
        if not change.entry:
            return self.broken and _is_code(name, self.build_names)
        if _in_skipped_folder(path, change.is_dir):
            return False
        if name in self.build_names:
            return True  # a package appears or disappears, or splits the globs of the one above
        full = root / path
        if not os.path.lexists(full):
            prefix = path + "/"
            return change.is_dir \
                and any(p.startswith(prefix) for p in (*self.files, *self.packages))
        if change.is_dir:
            return self.broken or self._loaded_owner(root, path) \
                or _holds_build_file(full, self.build_names)
        return not _is_artifact(name) and (self.broken or self._loaded_owner(root, path))

    def _loaded_owner(self, root: Path, path: str) -> bool:
        """Whether the package a new file belongs to (its nearest folder with a BUILD file) is
        loaded."""
        folder = os.path.dirname(path)
        while True:
            if folder in self.packages:
                return True
            if any(os.path.isfile(root / folder / name) for name in self.build_names):
                return False
            if not folder:
                return False
            folder = os.path.dirname(folder)


def watch_set(graph: ActionGraph, build_names: tuple[str, ...],
              previous: WatchSet | None = None) -> WatchSet:
    """The WatchSet of a resolved graph (reused as is when the graph cache entry is unchanged)."""
    if previous is not None and not previous.broken and previous.raw == graph.raw and graph.raw:
        return previous
    files = {path for action in graph.actions for path in action.sources}
    files.update(path for path in graph.requested if not is_generated(path))
    # a change makes a new environment
    files.update(path for spec in graph.py_envs for path in (spec.requirements, *spec.srcs))
    read = files_of_entry(graph.raw)
    files.update(read)
    files.update((CONFIG_NAME, LOCK_NAME))
    packages = {os.path.dirname(path) for path in read if os.path.basename(path) in build_names}
    return WatchSet(frozenset(files), frozenset(packages), build_names, broken=False, raw=graph.raw)


def _is_code(name: str, build_names: tuple[str, ...]) -> bool:
    return name in build_names or name == CONFIG_NAME or name.endswith(CODE_SUFFIXES)


def _is_artifact(name: str) -> bool:
    # Before a save, vim creates and at once deletes a file named 4913 (5036, 5159, ... if that name
    # is
    # taken) to learn whether it may create files in the folder: the editor at work, not a source.
    return name.endswith(_ARTIFACT_SUFFIXES) or name.startswith(_ARTIFACT_PREFIXES) \
        or name == "4913"


def _in_skipped_folder(path: str, is_dir: bool) -> bool:
    """Whether a path is, or lies in, a folder the loader never looks into (hidden, __pycache__),
    so that no package, glob or new source can come from it."""
    folders = path.split("/") if is_dir else path.split("/")[:-1]
    return any(part.startswith(".") or part == "__pycache__" for part in folders)


def _holds_build_file(folder: Path, build_names: tuple[str, ...], limit: int = 10_000) -> bool:
    """Whether a folder that appeared contains a package (bounded: a huge tree counts as one)."""
    seen = 0
    for _, dirs, files in os.walk(folder):
        if any(name in build_names for name in files):
            return True
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        seen += len(files) + len(dirs)
        if seen > limit:
            return True
    return False


class _Watcher:
    """A watchdog Observer over the workspace minus the folders posbuild and git write to."""

    def __init__(self, config: Config, changes: queue.SimpleQueue[Change]) -> None:
        from watchdog import events as ev
        from watchdog.observers import Observer

        self._root = str(config.root)
        self._changes = changes
        inside = [os.path.relpath(p, config.root) for p in (config.store_dir, config.sandbox_dir)
                  if Path(p).is_relative_to(config.root)]
        self._ignored = (OUT_DIR, STATE_DIR, *inside)
        # Opening or reading a file is no change; leaving those events out keeps the kernel from
        # sending them.
        self._filter = [ev.FileCreatedEvent, ev.DirCreatedEvent, ev.FileDeletedEvent,
                        ev.DirDeletedEvent,
                        ev.FileMovedEvent, ev.DirMovedEvent, ev.FileModifiedEvent,
                        ev.FileAttribEvent, ev.FileClosedEvent]
        self._handler = _Handler(self._root, self._ignored, changes)
        self._observer = Observer()
        self._watches: dict[str, _FolderWatch] = {}  # by top-level folder name

    def start(self) -> None:
        self._observer.schedule(cast("FileSystemEventHandler", self._handler), self._root,
                                recursive=False, event_filter=self._filter)
        for entry in sorted(os.scandir(self._root), key=lambda e: e.name):
            if self._watchable(entry.name):
                identity = _folder_identity(entry.path)
                if identity is not None:
                    self._add(entry.name, identity)
        self._observer.start()

    def stop(self) -> None:
        """Stop the observer; its threads are daemons, so a slow one never delays exit."""
        self._observer.stop()

    def _watchable(self, name: str) -> bool:
        return not name.startswith(".") and name not in self._ignored

    def _add(self, name: str, identity: tuple[int, int]) -> bool:
        """Watch a top-level folder recursively; False if it went away before the watch was set.

        The identity is taken before the watch is set, so a folder swapped in between is caught by
        the event its swap sends, which finds an identity that differs from the one recorded.
        """
        path = os.path.join(self._root, name)
        handler = _Handler(self._root, self._ignored, self._changes, own=path)
        try:
            watch = self._observer.schedule(cast("FileSystemEventHandler", handler), path,
                                            recursive=True, event_filter=self._filter)
        except OSError as error:
            if _folder_identity(path) is None:
                return False  # gone again (or replaced by a file): its own event says so
            # e.g. the inotify watch limit
            raise PosbuildError(f"cannot watch {name}/: {error}") from None
        self._watches[name] = _FolderWatch(watch, identity, handler)
        return True

    def _drop(self, name: str) -> None:
        try:
            self._observer.unschedule(self._watches.pop(name).watch)  # type: ignore[arg-type]
        except KeyError:
            pass

    def top_level(self, change: Change) -> None:
        """Follow a top-level folder appearing, disappearing or being swapped (called on the main
        thread).

        Events are handled some time after they happened, when the folder may already have been
        replaced (`mv data old; mv new data`). So the name alone says nothing: the folder there now
        is compared, by device and inode, with the one the watch was put on; and since a folder
        deleted and made again may get the inode number it had, a watch whose folder was deleted
        (its handler saw that) counts as replaced too. An inotify watch follows its inode wherever
        it moves, so a watch on a folder that has been replaced is dropped (it would miss the new
        folder's changes and report the old one's under the wrong name), and the folder there now
        gets a watch of its own; whatever it already held when the watch began (a folder moved in,
        `mkdir -p a/b && touch a/b/c`) is reported as created.
        """
        if not change.entry or "/" in change.path or not self._watchable(change.path):
            return
        full = os.path.join(self._root, change.path)
        identity = _folder_identity(full)
        known = self._watches.get(change.path)
        if known is not None:
            if known.identity == identity and not known.handler.deleted:
                return
            self._drop(change.path)
        if identity is None or not self._add(change.path, identity):
            return
        for folder, dirs, files in os.walk(full):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = os.path.relpath(folder, self._root)
            for name in dirs:
                self._changes.put(Change(f"{rel}/{name}", True, True))
            for name in files:
                self._changes.put(Change(f"{rel}/{name}", False, True))


def _folder_identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a real folder (not a symbolic link to one), or None when there is
    none."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


@dataclass(frozen=True, slots=True)
class _FolderWatch:
    """The recursive watch of one top-level folder, and which folder it was put on."""

    watch: object  # watchdog's ObservedWatch
    identity: tuple[int, int]  # (st_dev, st_ino) of the folder, taken just before the watch was set
    handler: _Handler  # its own, to learn that the folder itself was deleted


class _Handler:
    """Runs on watchdog's thread: events → relative Changes, posbuild's own folders dropped.

    The handler of a top-level folder's watch (`own`, its absolute path) also notes when that
    folder itself is deleted, before queueing the change that says so: the main thread, handling
    that change, then knows the watch is dead even if a new folder there has the same inode number.
    """

    def __init__(self, root: str, ignored: tuple[str, ...], changes: queue.SimpleQueue[Change],
                 own: str | None = None) -> None:
        self._prefix = root.rstrip("/") + "/"
        self._ignored = ignored
        self._changes = changes
        self._own = own
        self.deleted = False

    def dispatch(self, event: object) -> None:  # watchdog's FileSystemEventHandler protocol
        kind = getattr(event, "event_type")
        is_dir = bool(getattr(event, "is_directory"))
        if kind == "deleted" and self._own is not None \
                and os.fsdecode(getattr(event, "src_path")) == self._own:
            self.deleted = True
        if kind == "moved":
            self._put(getattr(event, "src_path"), is_dir, True)
            self._put(getattr(event, "dest_path"), is_dir, True)
        elif kind in ("created", "deleted"):
            self._put(getattr(event, "src_path"), is_dir, True)
        elif not is_dir:
            self._put(getattr(event, "src_path"), False, False)

    def _put(self, path: str | bytes, is_dir: bool, entry: bool) -> None:
        text = os.fsdecode(path)
        if not text.startswith(self._prefix):
            return
        rel = text[len(self._prefix):]
        for ignored in self._ignored:
            if rel == ignored or rel.startswith(ignored + "/"):
                return
        self._changes.put(Change(rel, is_dir, entry))


def _next_burst(changes: queue.SimpleQueue[Change], current: WatchSet, quiet: float,
                on_change: Callable[[Change], None]) -> dict[str, Change]:
    """Block until a change that may matter, then collect until `quiet` seconds pass without one.

    Waits are timed so that Ctrl-C is seen at once on every platform.
    """
    burst: dict[str, Change] = {}
    deadline = None
    while True:
        timeout = 0.5 if deadline is None else deadline - time.monotonic()
        if deadline is not None and timeout <= 0:
            return burst
        try:
            change = changes.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            continue
        on_change(change)
        if current.candidate(change):
            seen = burst.get(change.path)
            burst[change.path] = change if seen is None else replace(
                change, is_dir=change.is_dir or seen.is_dir, entry=change.entry or seen.entry)
            deadline = time.monotonic() + quiet


def _build(build: BuildFn, current: WatchSet, build_names: tuple[str, ...],
           changed: Iterable[str]) -> tuple[Cycle, WatchSet]:
    """One build; an error is part of the Cycle, never raised (the loop must go on).

    Any other exception than a PosbuildError is a defect or an unforeseen condition (a file that
    vanished at the wrong moment) that a later cycle may well not meet: it becomes the one-line
    error of this cycle instead of ending the watch. The exception itself is kept as the error's
    `__cause__`. KeyboardInterrupt is no Exception and still ends the loop.
    """
    graphs: list[ActionGraph] = []
    started = time.monotonic()
    summary: BuildSummary | None = None
    error: PosbuildError | None = None
    try:
        summary = build(graphs.append)
    except PosbuildError as caught:
        error = caught
    except Exception as caught:  # noqa: BLE001 - reported as this cycle's error; watching goes on
        error = internal_error(caught)
    elapsed = time.monotonic() - started
    after = watch_set(graphs[-1], build_names, current) if graphs else replace(current, broken=True)
    return Cycle(tuple(sorted(changed)), summary, error, elapsed, len(after.files)), after


def internal_error(caught: Exception) -> PosbuildError:
    """`internal error in this cycle: <type>: <message>` on one line, `caught` as its cause."""
    message = " ".join(str(caught).split("\n")).strip()
    error = PosbuildError(f"internal error in this cycle: {type(caught).__name__}"
                          + (f": {message}" if message else ""))
    error.__cause__ = caught
    return error


def watch(config: Config, build: BuildFn, report: Callable[[Cycle], None],
          quiet: float = 0.05) -> None:
    """Build, then rebuild after every burst of relevant changes, until interrupted (Ctrl-C).

    Returns only by an exception: KeyboardInterrupt, or a PosbuildError when the workspace cannot
    be watched at all (e.g. the inotify watch limit, at start or for a top-level folder that appears
    later). The observer starts before the first build, so nothing that changes while that build
    runs is missed.
    """
    changes: queue.SimpleQueue[Change] = queue.SimpleQueue()
    watcher = _Watcher(config, changes)
    try:
        watcher.start()
    except OSError as error:  # e.g. the inotify watch limit, fs.inotify.max_user_watches
        watcher.stop()
        raise PosbuildError(f"cannot watch the workspace: {error}") from None
    try:
        cycle, current = _build(build, WatchSet(build_names=config.build_file_names),
                                config.build_file_names, ())
        report(cycle)
        while True:
            burst = _next_burst(changes, current, quiet, watcher.top_level)
            changed = current.relevant(config.root, burst)
            if changed:
                cycle, current = _build(build, current, config.build_file_names, changed)
                report(cycle)
    finally:
        watcher.stop()

"""Layer 1: what the build server knows of the workspace between two builds, from inotify.

A no-op build in a fresh process proves that nothing changed with one `stat()` per source and
output (uptodate.settled): 17,000 calls for 10,000 actions. The build server (cli/server.py)
instead watches every folder of the workspace with inotify, through watchdog's inotify
descriptor: one descriptor, so the events of all folders arrive in the order they happened.
After a build it checks, once, that the files its saved up-to-date state names still have the
recorded signatures, and *vouches* for that state at the current event count. Only the files in
the folders the build wrote (not watched while it did, `writing`) need a `stat()`: a file in a
folder watched all along that changed after the build took its signature has an event since
the build began (`starting`), and is vouched for as changed. The next build of
the same request needs no `stat()` of those files when no event arrived since, and the state file
is the one vouched for; when events named only some files, only those are looked at (`changes`).
A source the build hashed too soon after it was written (its signature UNSETTLED, filestate.py)
is vouched for as changed since, so the next build looks at it again and at nothing else.

"Since" must include every change made before the build was asked for. The kernel queues an
event before the system call that caused it returns, but watchdog reads and dispatches them on
threads of its own; so each check first *syncs*: it creates a cookie file in `.posbuild/`
(watched for that alone) and waits until its event comes through. Everything queued before it
has then been counted (the approach of Watchman's cookies).

Any event counts, wherever it happens in the watched folders (a change in a file no build reads
costs one `stat()` pass, never a wrong result). A state is never vouched for when one of its
files may change with no event in the workspace: a symbolic link (its target may be anywhere),
or a source with a second hard link. Not watched: `.posbuild/` (posbuild's own state;
the state file is checked by its signature instead), hidden folders and `__pycache__`. A state
naming a file in a folder that is not watched is never vouched for. What inotify cannot see makes
the watch untrustworthy (`trouble`): a queue overflow, the watch limit, a watch that does not
answer; the server then checks by `stat()` and stops. Writes through a memory mapping and files
on network file systems changed by another machine are not seen at all (docs/server.md).
"""

from __future__ import annotations

import os
import stat
import struct
import threading
from pathlib import Path
from typing import Any, Iterable

from posbuild.core.layout import OUT_DIR, STATE_DIR, SYNC_COOKIE
from posbuild.core.records import UNSETTLED, Signature, signature
from posbuild.engine.uptodate import signature_changes, stat_signature
from posbuild.store.upstate import BuildState, read_state
from posbuild.workspace.config import Config

SYNC_S = 1.0  # a cookie that takes longer than this means the watch cannot be trusted
LIMIT_VARIABLE = "POSBUILD_TEST_MAX_WATCHES"  # tests lower the watch limit through it


def _skipped(name: str) -> bool:
    """Folders no source or output can come from that are worth watching."""
    return name.startswith(".") or name == "__pycache__"


def _subfolders(folder: str) -> list[str]:
    """The folders in `folder` worth watching (not links: a link's target may be anywhere)."""
    try:
        with os.scandir(folder) as entries:
            return [entry.name for entry in entries
                    if entry.is_dir(follow_symlinks=False) and not _skipped(entry.name)]
    except OSError:
        return []  # gone already: its parent's event said so


class ChangeFeed:
    """Counts the changes in a workspace and vouches for up-to-date states that no change
    touched. Its event methods run on watchdog's dispatch thread; the rest on the server's main
    thread."""

    def __init__(self, root: Path, ignored: tuple[str, ...] = (),
                 environ: dict[str, str] | None = None) -> None:
        from watchdog.observers.inotify_c import InotifyConstants as C

        self.root = root
        self._ignored = frozenset(ignored)  # folders posbuild writes to (a store, sandboxes)
        self.generation = 0
        self.trouble = ""  # why the watch cannot be trusted any more ("" while it can)
        self.limit_reached = False
        limit = (environ or {}).get(LIMIT_VARIABLE, "")
        self._limit = int(limit) if limit.isdigit() else None
        self._mask = (C.IN_MODIFY | C.IN_ATTRIB | C.IN_CLOSE_WRITE | C.IN_MOVED_FROM
                      | C.IN_MOVED_TO | C.IN_CREATE | C.IN_DELETE | C.IN_DELETE_SELF
                      | C.IN_MOVE_SELF | C.IN_ONLYDIR | C.IN_DONT_FOLLOW)
        self._fd: Any = None
        self._folders: dict[int, str] = {}  # watch descriptor -> folder, relative ("" the root)
        self._watches: dict[str, int] = {}  # and back
        self._state_wd = -1
        self._rescan = False
        self._paused = False  # posbuild-out/ is not watched while a build writes it
        # the folders of posbuild-out/ the last build paused, when it paused only those
        self._paused_folders: set[str] = set()
        self._begun: int | None = None  # the generation when the last build began
        self._vouched: dict[str, tuple[int, Signature]] = {}
        self._pending: set[str] = set()
        self._log: list[tuple[int, str | None]] = []  # (generation, the file an event named)
        self._cookies: set[str] = set()
        self._seen = threading.Condition()
        self._count = 0
        self._lock = threading.Lock()  # the folders, walked from both threads

    @classmethod
    def of(cls, config: Config, environ: dict[str, str] | None = None) -> ChangeFeed:
        """The feed of a configured workspace: the store and sandbox folders posbuild writes
        into, when they are inside it, are not watched."""
        root = config.root
        inside = tuple(os.path.relpath(folder, root) for folder in
                       (config.store_dir, config.sandbox_dir) if folder.is_relative_to(root))
        return cls(root, inside, environ)

    @property
    def started(self) -> bool:
        """Whether `start` was called (and inotify was there)."""
        return self._fd is not None

    def start(self) -> None:
        """Watch the workspace (raises nothing: a watch that cannot be set is `trouble`)."""
        from watchdog.observers.inotify_c import InotifyFD

        try:
            self._fd = InotifyFD()
        except OSError as error:
            self.trouble = f"inotify is not available ({error.strerror or error})"
            return
        self._fd.start()
        # a build that began before the watch did may have missed changes: looked at whole
        self._begun = None
        state = self.root / STATE_DIR
        try:
            self._state_wd = self._fd.add_callback(os.fsencode(state), self._mask, self, "state")
        except OSError as error:
            self._refuse(error)
            return
        with self._lock:
            self._watch_tree()

    def stop(self) -> None:
        """Stop watching (the descriptor's thread is a daemon: it never delays exit)."""
        if self._fd is not None:
            self._fd.stop()

    # ---- the server's side ------------------------------------------------------------------

    def changes(self, state_path: Path) -> frozenset[str] | None:
        """The files that changed since the state saved at `state_path` was vouched for (every
        other file it names has the signature it records); None when that is not known: no
        vouch, another state file since, a folder created, moved or deleted, a build's writes."""
        vouched = self._vouched.get(str(state_path))
        if vouched is None or self.trouble or not self.sync():
            return None
        generation, vouched_signature = vouched
        if stat_signature(state_path) != vouched_signature:
            return None
        with self._lock:
            since = [path for at, path in self._log if at > generation]
        if None in since:
            return None
        return frozenset(path for path in since if path is not None)

    def built(self, state_path: Path) -> None:
        """A build saved (or found) the state at `state_path`: check it once the client has its
        answer (`confirm`), unless it stays vouched for (a no-op changes nothing)."""
        self._pending.add(str(state_path))

    def starting(self) -> None:
        """A build begins: every change from now on is counted past this generation, so
        `confirm` can take the files it did not write on the word of the events."""
        self._begun = self.generation

    def writing(self, folders: Iterable[str] | None = None) -> None:
        """A build is about to write `posbuild-out/`: stop watching what it writes until
        `confirm`.

        Thousands of events for the build's own outputs would each cost the build a slice of
        the interpreter lock (a cold build of 10,000 actions took 30% longer). Nothing is lost:
        every vouch is withdrawn now, and `confirm` watches again before it checks the files of
        the state in what was not watched, a user's edit during the build included. `folders`:
        the folders the build writes into (its actions' outputs'), when each is watched now:
        only they are paused, and only their files checked; else all of `posbuild-out/`, and
        every file.
        """
        if self._fd is None:  # nothing is watched yet (`start` watches every folder once)
            return
        with self._lock:
            watched = {wd: rel for wd, rel in self._folders.items()
                       if rel == OUT_DIR or rel.startswith(OUT_DIR + "/")}
            outputs = set(watched.values())
            wanted = None if folders is None else set(folders)
            if wanted is None or not wanted <= outputs:
                self._changed(None)
                wanted = outputs
                self._paused = True
            self._vouched.clear()
            self._paused_folders |= wanted
            paused = [(wd, "workspace") for wd, rel in watched.items() if rel in wanted]
            for wd, _ in paused:
                self._watches.pop(self._folders.pop(wd), None)
        if paused and self._fd is not None:
            self._fd.remove_callbacks(paused)

    def confirm(self) -> None:
        """Vouch for the states of the last builds whose files all still match, after a sync
        (so an event after it withdraws the vouch): by a `stat()` of the files in the folders
        the build wrote, the events since it began standing for the rest; by a `stat()` of
        every file when the build paused all of `posbuild-out/` or a folder came or went."""
        pending, self._pending = self._pending, set()
        paused, self._paused_folders = self._paused_folders, set()
        begun, self._begun = self._begun, None
        # all of posbuild-out/ was paused, or folders were moved: every file is looked at
        whole = self._paused or self._rescan or begun is None or len(pending) > 1
        if (self._rescan or self._paused or paused) and not self.trouble:
            with self._lock:
                if self._rescan:
                    self._watch_tree()
                elif self._paused:
                    if os.path.isdir(self.root / OUT_DIR):
                        self._watch_tree(OUT_DIR)
                else:
                    for folder in sorted(paused):
                        self._watch_tree(folder)
                self._paused = False
        if self.trouble or not pending or not self.sync():
            return
        generation = self.generation
        for path in pending:
            if self._vouched.get(path) == (generation, stat_signature(path)):
                continue  # nothing changed since it was vouched for: the build was a no-op
            # what happened since the build began (or since the vouch it started from: a
            # no-op's state is the one vouched for before), unless it paused all of
            # posbuild-out/; None: a folder came or went, of unknown reach
            earlier = self._vouched.pop(path, None)
            since: list[str | None] = []
            if not whole and begun is not None:
                start = begun if earlier is None else min(begun, earlier[0])
                with self._lock:
                    since = [at_path for at, at_path in self._log if at > start]
            everything = whole or None in since
            # its stat before its bytes: a file replaced between the two is vouched for under
            # the old signature, which `changes` then finds moved
            saved_signature = stat_signature(path)
            # read through the process's memo, where the next build finds it decoded
            state = read_state(path)
            if saved_signature is None or not state.raw:
                continue
            _ = state.raw_digest  # and hashed, off the next build's path (its build row)
            with self._lock:
                folders = set(self._watches)
            if not state.complete or not all(os.path.dirname(p) in folders for p in state.paths):
                continue
            # Without a look at every file: one in a folder watched all through the build that
            # changed after the build took its signature has an event since the build began,
            # and is vouched for as changed; the files in the paused folders are looked at.
            changed = self._changed_files(state, None if everything else paused)
            # a file hashed too soon after it was written is to be looked at again: vouched
            # for as changed since (filestate.py)
            if changed is None or any(state.signatures[p] != UNSETTLED for p in changed):
                continue
            named = state.signatures  # the state's files (decoded above, or for the next build)
            with self._lock:
                for again in sorted(changed | {p for p in since if p is not None and p in named}):
                    self._changed(again)
            self._vouched[path] = (generation, saved_signature)
        oldest = min((at for at, _ in self._vouched.values()), default=self.generation)
        with self._lock:  # what no vouch can ask about any more
            self._log = [entry for entry in self._log if entry[0] > oldest]

    def _changed_files(self, state: BuildState,
                       folders: set[str] | None = None) -> frozenset[str] | None:
        """The files of `state` whose signature changed, from one `lstat()` pass (over those in
        `folders` alone, when given); None when one is gone or may change with no event in the
        workspace: a symbolic link (to a file anywhere), or a source with another hard link
        (which may be written through). An output of 1 MiB or more is a hard link into the
        store, which nothing writes through."""
        base, outputs = f"{self.root}/", OUT_DIR + "/"
        paths = state.paths if folders is None \
            else [path for path in state.paths if os.path.dirname(path) in folders]
        try:
            infos = list(map(os.lstat, [base + path for path in paths]))
            if any(stat.S_ISLNK(info.st_mode) or info.st_nlink > 1 and not path.startswith(outputs)
                   for path, info in zip(paths, infos)):
                return None
            if folders is None:
                return signature_changes(state, infos)
            recorded = state.signatures
            return frozenset(path for path, info in zip(paths, infos)
                             if signature(info) != recorded[path])
        except (OSError, struct.error):
            return None

    def sync(self) -> bool:
        """Wait until every event queued before this call has been counted."""
        if self._fd is None:
            return False
        self._count += 1
        name = f"{SYNC_COOKIE}{os.getpid()}-{self._count}"
        cookie = self.root / STATE_DIR / name
        try:
            os.close(os.open(cookie, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            os.unlink(cookie)
        except OSError as error:
            self.trouble = f"cannot write {cookie.parent} ({error.strerror})"
            return False
        with self._seen:
            if not self._seen.wait_for(lambda: name in self._cookies, SYNC_S):
                self.trouble = f"the inotify watch did not answer within {SYNC_S:g} s"
                return False
            self._cookies.discard(name)
        return True

    # ---- watchdog's side (its WatchCallback protocol) ---------------------------------------

    def on_event(self, event: Any) -> None:
        if event.wd == self._state_wd:
            name = os.fsdecode(event.name)
            if event.is_create and name.startswith(SYNC_COOKIE):
                with self._seen:
                    self._cookies.add(name)
                    self._seen.notify_all()
            return
        folder = self._folders.get(event.wd)
        name = os.fsdecode(event.name)
        with self._lock:
            # a file's own event names it; anything about folders is a change of unknown reach
            self._changed(None if event.is_directory or folder is None or not name
                          else os.path.join(folder, name))
            if event.is_directory and (event.is_create or event.is_moved_to) \
                    and folder is not None and not _skipped(name) \
                    and not (self._paused and folder == "" and name == OUT_DIR):
                self._watch_tree(os.path.join(folder, name))
        if event.is_directory and (event.is_moved_from or event.is_delete):
            self._rescan = True  # the folder names of moved watches are stale: walk again

    def on_watch_deleted(self, wd: int) -> None:
        with self._lock:
            rel = self._folders.pop(wd, None)
            if rel is not None and self._watches.get(rel) == wd:
                del self._watches[rel]
            self._changed(None)

    def on_queue_overflow(self) -> None:
        self.trouble = "the inotify event queue overflowed"
        with self._lock:
            self._changed(None)

    def _changed(self, path: str | None) -> None:
        """Count one event, and log which file it names (None: not one file); holding the
        lock."""
        self.generation += 1
        self._log.append((self.generation, path))

    def on_events_lost(self) -> None:
        self.on_queue_overflow()

    # ---- watches ------------------------------------------------------------------------------

    def _watch_tree(self, top: str = "") -> None:
        """Watch `top` (relative; "" the root: all anew) and every folder below it but skipped
        ones and those watched already (called holding the lock)."""
        if top == "":
            self._folders, self._watches = {}, {}
            self._rescan = False
        # each folder is watched before it is listed: a subfolder made after the watch has an
        # event, one made before is in the listing
        waiting = [top]
        while waiting:
            rel = waiting.pop()
            if rel in self._ignored:
                continue
            folder = os.path.join(self.root, rel) if rel else str(self.root)
            if rel not in self._watches:
                if self._limit is not None and len(self._folders) >= self._limit:
                    self._refuse(OSError(28, "inotify watch limit reached"))
                    return
                try:
                    wd = self._fd.add_callback(os.fsencode(folder), self._mask, self,
                                               "workspace")
                except OSError as error:
                    if os.path.isdir(folder):
                        self._refuse(error)
                        return
                    continue  # gone already: its parent's event said so
                self._folders[wd] = rel
                self._watches[rel] = wd
            waiting.extend(os.path.join(rel, name) for name in _subfolders(folder))

    def _refuse(self, error: OSError) -> None:
        self.limit_reached = error.errno == 28  # ENOSPC: fs.inotify.max_user_watches
        self.trouble = ("the inotify watch limit was reached (raise fs.inotify.max_user_watches)"
                        if self.limit_reached else f"cannot watch the workspace ({error})")

"""watch.py below the command line: the watch set of a graph, which changes matter, debouncing, the
watcher's tracking of top-level folders, and a build that raises something unexpected."""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import pytest

from posbuild.engine.resolve import resolve
from posbuild.workspace.config import load_config
from posbuild.errors import PosbuildError
from posbuild.engine.reporter import BuildSummary
from posbuild.load.graphcache import files_of_entry
from posbuild.engine.watch import (Change, Cycle, WatchSet, _build, _next_burst, _Watcher, watch,
                                   watch_set)

WAIT = 20.0  # bound of every wait for an inotify event

FILES = {
    "posbuild.toml": "",
    "defs/rules.bzl": 'def upper(name, src):\n    genrule(name = name, srcs = [src], outs = [name '
                      '+ ".txt"], cmd = "tr a-z A-Z < $< > $@")\n',
    "defs/BUILD": "",
    "pkg/BUILD": 'load("//defs:rules.bzl", "upper")\n'
                 'upper(name = "up", src = "a.txt")\n'
                 'genrule(name = "cat", srcs = [":up", "b.txt"], tools = ["tool.sh"], outs = '
                 '["cat.txt"], cmd = "sh $(location tool.sh) $(SRCS) > $@")\n',
    "pkg/a.txt": "a\n",
    "pkg/b.txt": "b\n",
    "pkg/tool.sh": "cat \"$@\"\n",
    "pkg/unused.txt": "\n",
    "lib/BUILD": 'genrule(name = "other", srcs = ["c.txt"], outs = ["c.out"], cmd = "cp $< $@")\n',
    "lib/c.txt": "c\n",
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for rel, text in FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


@pytest.fixture
def watched(root: Path) -> WatchSet:
    return watch_set(resolve(root, ["//pkg:cat"]), ("BUILD",))


def entry(path: str, is_dir: bool = False) -> Change:
    return Change(path, is_dir, True)


def content(path: str) -> Change:
    return Change(path, False, False)


def relevant(ws: WatchSet, root: Path, *changes: Change) -> list[str]:
    return ws.relevant(root, {c.path: c for c in changes})


def test_files_of_entry_reads_what_the_graph_cache_stamped(root: Path) -> None:
    graph = resolve(root, ["//pkg:cat"])
    assert set(files_of_entry(graph.raw)) == {"pkg/BUILD", "defs/rules.bzl", "posbuild.toml"}
    assert files_of_entry(b"") == files_of_entry(b"not msgpack") == ()


def test_the_watch_set_holds_sources_tools_and_build_files_not_outputs(watched: WatchSet) -> None:
    assert {"pkg/a.txt", "pkg/b.txt", "pkg/tool.sh", "pkg/BUILD", "defs/rules.bzl", "posbuild.toml",
            "posbuild.lock"} == set(watched.files)
    assert watched.packages == {"pkg"}
    assert not watched.broken


def test_an_unchanged_graph_keeps_its_watch_set(root: Path, watched: WatchSet) -> None:
    assert watch_set(resolve(root, ["//pkg:cat"]), ("BUILD",), watched) is watched


def test_content_changes_matter_only_for_watched_files(root: Path, watched: WatchSet) -> None:
    changes = [content("pkg/a.txt"), content("pkg/unused.txt"), content("lib/c.txt"),
               content("defs/rules.bzl")]
    assert [c.path for c in changes if watched.candidate(c)] == ["pkg/a.txt", "defs/rules.bzl"]
    assert relevant(watched, root, *changes) == ["defs/rules.bzl", "pkg/a.txt"]


def test_a_temp_file_that_came_and_went_is_dropped(root: Path, watched: WatchSet) -> None:
    assert watched.candidate(entry("pkg/.a.txt.tmp"))
    assert relevant(watched, root, entry("pkg/.a.txt.tmp"), entry("pkg/a.txt")) == ["pkg/a.txt"]


def test_a_new_file_matters_only_in_a_loaded_package(root: Path, watched: WatchSet) -> None:
    for rel in ("pkg/new.txt", "pkg/deeper/new.txt", "lib/new.txt", "top.txt"):
        (root / rel).parent.mkdir(exist_ok=True)
        (root / rel).write_text("new\n")
    assert relevant(watched, root,
                    *map(entry, ("pkg/new.txt", "pkg/deeper/new.txt", "lib/new.txt", "top.txt"))) \
        == ["pkg/deeper/new.txt", "pkg/new.txt"]


def test_editor_artifacts_and_unwatched_deletions_do_not_matter(root: Path,
                                                                watched: WatchSet) -> None:
    for name in ("pkg/.a.txt.swp", "pkg/a.txt~", "pkg/4913", "pkg/#a.txt#"):
        (root / name).write_text("")
        assert not watched.candidate(entry(name))
        assert relevant(watched, root, entry(name)) == []
    (root / "pkg/unused.txt").unlink()
    assert relevant(watched, root, entry("pkg/unused.txt")) == []
    # the loader and glob() never look inside these
    for folder in ("pkg/__pycache__", "pkg/.cache"):
        (root / folder).mkdir()
        (root / folder / "x.pyc").write_text("")
        assert not watched.candidate(entry(folder, True)) \
                and not watched.candidate(entry(f"{folder}/x.pyc"))
        assert relevant(watched, root, entry(folder, True), entry(f"{folder}/x.pyc")) == []


def test_build_files_appearing_anywhere_and_folders_holding_watched_files_matter(
        root: Path, watched: WatchSet) -> None:
    (root / "newpkg").mkdir()
    (root / "newpkg/BUILD").write_text("")
    (root / "empty").mkdir()
    assert relevant(watched, root, entry("newpkg", True), entry("newpkg/BUILD"),
                    entry("empty", True)) == [
        "newpkg", "newpkg/BUILD"]
    (root / "docs").mkdir()
    # no package in either
    assert relevant(watched, root, entry("gone", True), entry("docs", True)) == []
    # does not exist, held nothing watched
    assert relevant(watched, root, entry("pkg/sub", True)) == []
    # a prefix of a folder, not the folder
    assert relevant(watched, root, Change("pk", True, True)) == []


def test_a_deleted_folder_matters_when_it_held_watched_files(tmp_path: Path,
                                                             watched: WatchSet) -> None:
    elsewhere = tmp_path / "elsewhere"  # where neither folder exists any more
    assert relevant(watched, elsewhere, entry("defs", True), entry("lib", True)) == ["defs"]


def test_after_a_failed_load_code_files_and_new_files_anywhere_matter(root: Path) -> None:
    broken = WatchSet()
    (root / "lib/new.txt").write_text("")
    assert broken.candidate(content("lib/any.bzl")) and broken.candidate(content("x/BUILD"))
    assert not broken.candidate(content("lib/c.txt"))
    assert relevant(broken, root, content("lib/any.bzl"), content("lib/c.txt"),
                    entry("lib/new.txt")) == [
        "lib/any.bzl", "lib/new.txt"]


def test_a_burst_ends_after_the_quiet_period_and_ignores_irrelevant_changes(
    watched: WatchSet) -> None:
    changes: queue.SimpleQueue[Change] = queue.SimpleQueue()
    seen: list[Change] = []
    last_relevant: list[float] = []

    def feed() -> None:
        for n in range(5):
            changes.put(content("pkg/a.txt" if n % 2 else "pkg/b.txt"))
            last_relevant.append(time.monotonic())
            changes.put(content("pkg/unused.txt"))
            time.sleep(0.02)
        time.sleep(0.8)
        changes.put(content("pkg/unused.txt"))  # irrelevant: must not extend the burst to 1.8 s

    quiet = 1.0  # far above the feeder's 20 ms gaps, even on a loaded machine
    thread = threading.Thread(target=feed)
    thread.start()
    burst = _next_burst(changes, watched, quiet, seen.append)
    ended = time.monotonic()
    thread.join()
    assert sorted(burst) == ["pkg/a.txt", "pkg/b.txt"]
    # the quiet period counts from the last relevant change
    assert ended >= last_relevant[-1] + quiet
    assert ended < last_relevant[-1] + quiet + 0.6
    assert len(seen) == 11  # every change was offered to the top-level folder tracking
    changes.put(content("pkg/a.txt"))
    changes.put(entry("pkg/a.txt"))
    assert _next_burst(changes, watched, 0.01, seen.append) == {"pkg/a.txt": entry("pkg/a.txt")}


def _changes_until(changes: queue.SimpleQueue[Change], want: Change,
                   watcher: _Watcher | None = None) -> list[Change]:
    """Every change up to `want` (bounded wait), each first offered to the watcher as the loop
    does."""
    seen: list[Change] = []
    deadline = time.monotonic() + WAIT
    while want not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {want} within {WAIT} s; got {seen}"
        try:
            change = changes.get(timeout=left)
        except queue.Empty:
            continue
        if watcher is not None:
            watcher.top_level(change)
        seen.append(change)
    return seen


def _pending(changes: queue.SimpleQueue[Change], watcher: _Watcher) -> list[Change]:
    """The changes queued now, each offered to the watcher."""
    seen: list[Change] = []
    while True:
        try:
            change = changes.get_nowait()
        except queue.Empty:
            return seen
        watcher.top_level(change)
        seen.append(change)


def _settle(root: Path, changes: queue.SimpleQueue[Change], watcher: _Watcher,
            name: str) -> list[Change]:
    """Make a marker file in the workspace root and process every change up to its event."""
    (root / name).write_text("")
    return _changes_until(changes, Change(name, False, True), watcher)


@pytest.mark.parametrize("away", ["inside", "outside"])
def test_a_top_level_folder_swapped_before_its_events_are_handled_gets_a_new_watch(
        tmp_path: Path, away: str) -> None:
    root = tmp_path / "ws"
    (root / "data").mkdir(parents=True)
    (root / "posbuild.toml").write_text("")
    (root / "data/raw.csv").write_text("old\n")
    (tmp_path / "new").mkdir()
    (tmp_path / "new/raw.csv").write_text("new\n")
    old = root / "data.old" if away == "inside" else tmp_path / "data.old"
    changes: queue.SimpleQueue[Change] = queue.SimpleQueue()
    watcher = _Watcher(load_config(root), changes)
    watcher.start()
    try:
        # both renames happen before the watcher handles the first of their events, as on a busy
        # machine
        os.rename(root / "data", old)
        os.rename(tmp_path / "new", root / "data")
        seen = _settle(root, changes, watcher, "marker1") + _pending(changes, watcher)
        assert Change("data", True, True) in seen
        # what the new folder held, reported as created
        assert Change("data/raw.csv", False, True) in seen
        (root / "data/raw.csv").write_text("edited\n")
        _changes_until(changes, Change("data/raw.csv", False, False), watcher)
        # no watch follows the old folder under its old name any more
        (old / "late.txt").write_text("")
        seen = _settle(root, changes, watcher, "marker2") + _pending(changes, watcher)
        if away == "inside":  # the old folder has a watch of its own, under its new name
            # whose events come on a thread of their own, in no order with the root's marker
            late = Change("data.old/late.txt", False, True)
            seen += [] if late in seen else _changes_until(changes, late, watcher)
        assert not [c for c in seen if c.path == "data/late.txt"], seen
        # a folder removed and made again under the same name is watched too
        (root / "data/raw.csv").unlink()
        (root / "data").rmdir()
        (root / "data").mkdir()
        (root / "data/again.csv").write_text("")
        # ext4 gives the new folder the inode number of the one just deleted: the old watch's own
        # "deleted" event is what tells them apart, and it may come after the root's events
        _changes_until(changes, Change("data/again.csv", False, True), watcher)
        (root / "data/again.csv").write_text("edited\n")
        _changes_until(changes, Change("data/again.csv", False, False), watcher)
        # a folder that is gone, or is now a file, loses its watch
        (root / "data/again.csv").unlink()
        (root / "data").rmdir()
        (root / "data").write_text("")
        _settle(root, changes, watcher, "marker3")
        assert set(watcher._watches) == ({"data.old"} if away == "inside" else set())
    finally:
        watcher.stop()


def _summary() -> BuildSummary:
    return BuildSummary(total=1, executed=1, cached=0, failed=0, skipped=0, wall=0.0,
                        failed_labels=())


def test_an_unexpected_exception_in_a_build_is_that_cycle_s_one_line_error() -> None:
    def vanished(hook: object) -> BuildSummary:
        raise FileNotFoundError(2, "No such file or directory", "pkg/a.txt")

    cycle, after = _build(vanished, WatchSet(broken=False), ("BUILD",), ["pkg/a.txt"])
    assert cycle.summary is None and isinstance(cycle.error, PosbuildError)
    assert cycle.error.render() == ("internal error in this cycle: FileNotFoundError: "
                                    "[Errno 2] No such file or directory: 'pkg/a.txt'")
    assert isinstance(cycle.error.__cause__, FileNotFoundError)  # kept, with its traceback
    assert after.broken  # no graph came back: any BUILD or new file may be the fix

    def multi_line(hook: object) -> BuildSummary:
        raise ValueError("first\nsecond")

    cycle, _ = _build(multi_line, WatchSet(), ("BUILD",), ())
    assert cycle.error is not None \
            and cycle.error.render() == ("internal error in this cycle: ValueError: first second")

    def interrupted(hook: object) -> BuildSummary:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _build(interrupted, WatchSet(), ("BUILD",), ())


class _Stop(Exception):
    pass


def test_the_watch_loop_goes_on_after_an_unexpected_exception(tmp_path: Path) -> None:
    (tmp_path / "posbuild.toml").write_text("")
    (tmp_path / "pkg").mkdir()
    calls: list[int] = []
    cycles: list[Cycle] = []

    def build(hook: object) -> BuildSummary:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        return _summary()

    def report(cycle: Cycle) -> None:
        cycles.append(cycle)
        if len(cycles) == 1:
            # after a failed load, a new file anywhere counts
            (tmp_path / "pkg/new.txt").write_text("")
        else:
            raise _Stop

    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            watch(load_config(tmp_path), build, report, quiet=0.01)
        except _Stop:
            pass
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            failure.append(error)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(WAIT), f"the loop did not build again within {WAIT} s: {cycles}"
    assert not failure, failure
    assert cycles[0].error is not None
    assert cycles[0].error.render() == (
        "internal error in this cycle: OSError: [Errno 5] Input/output error")
    assert cycles[1].error is None and cycles[1].summary == _summary() \
            and cycles[1].changed == ("pkg/new.txt",)


def test_a_py_envs_requirements_file_is_watched(root: Path) -> None:
    (root / "env").mkdir()
    (root / "env" / "BUILD").write_text(
        'py_env(name = "e", requirements = "requirements.txt", srcs = ["w.whl"])\n'
        'py_task(name = "t", script = "t.py", outs = ["t.txt"], python = ":e")\n')
    (root / "env" / "requirements.txt").write_text("\n")
    (root / "env" / "w.whl").write_text("")
    (root / "env" / "t.py").write_text("")
    watched = watch_set(resolve(root, ["//env:t"]), ("BUILD",))
    assert {"env/requirements.txt", "env/w.whl"} <= watched.files

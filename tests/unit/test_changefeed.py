"""The build server's watch (engine/changefeed.py) on a real folder with real inotify: it vouches
for a saved state only while no event arrived since it checked every file the state names."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from posbuild.core.records import signature
from posbuild.engine.changefeed import ChangeFeed
from posbuild.store.upstate import BuildState, save_state


def _workspace(root: Path, files: dict[str, str]) -> Path:
    """A workspace holding `files`, and a complete saved state naming them all."""
    (root / ".posbuild").mkdir(parents=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return _save(root, files)


def _save(root: Path, files: dict[str, str]) -> Path:
    signatures = {rel: signature(os.stat(root / rel)) for rel in files}
    state = BuildState(b"env", {}, signatures, {rel: b"d" for rel in files}, graph=b"graph",
                       complete=True)
    path = root / ".posbuild" / "state"
    save_state(path, state)
    return path


@pytest.fixture
def feed(tmp_path: Path):  # type: ignore[no-untyped-def]
    watch = ChangeFeed(tmp_path)
    yield watch
    watch.stop()


def _vouched(feed: ChangeFeed, state: Path) -> bool:
    feed.built(state)
    feed.confirm()
    return feed.changes(state) == set()


def test_a_state_is_vouched_for_until_a_file_changes(tmp_path, feed):
    state = _workspace(tmp_path, {"pkg/a.txt": "a", "b.txt": "b", "posbuild-out/pkg/o": "o"})
    feed.start()
    assert feed.changes(state) != set()  # nothing checked yet
    assert _vouched(feed, state)
    assert feed.changes(state) == set()  # and again: nothing happened
    (tmp_path / "pkg/a.txt").write_text("A")
    assert feed.changes(state) != set()
    assert feed.changes(state) == {"pkg/a.txt"}  # only it needs a look
    (tmp_path / "notes.txt").write_text("no file of the state")
    assert feed.changes(state) == {"pkg/a.txt", "notes.txt"}
    (tmp_path / "pkg/sub").mkdir()  # a folder: what changed is no longer known file by file
    assert feed.changes(state) is None
    state = _save(tmp_path, {"pkg/a.txt": "A", "b.txt": "b", "posbuild-out/pkg/o": "o"})
    assert _vouched(feed, state)
    (tmp_path / "posbuild-out/pkg/o").unlink()  # outputs are watched too
    assert feed.changes(state) != set()
    assert feed.trouble == ""


def test_a_file_whose_signature_differs_is_not_vouched_for(tmp_path, feed):
    state = _workspace(tmp_path, {"a.txt": "a"})
    (tmp_path / "a.txt").write_text("changed before the server started")
    feed.start()
    assert not _vouched(feed, state)


def test_a_change_in_a_folder_made_after_the_start_is_seen(tmp_path, feed):
    state = _workspace(tmp_path, {"a.txt": "a"})
    feed.start()
    (tmp_path / "new/deeper").mkdir(parents=True)
    (tmp_path / "new/deeper/x.txt").write_text("x")
    state = _save(tmp_path, {"a.txt": "a", "new/deeper/x.txt": "x"})
    assert _vouched(feed, state)
    (tmp_path / "new/deeper/x.txt").write_text("y")
    assert feed.changes(state) != set()


def test_a_folder_made_while_its_parent_is_being_watched_is_watched_too(tmp_path, feed):
    """The race of a folder made just after its parent: the subfolder appears after the watcher
    saw the parent's event but before the parent's own watch is in place, so no event names it."""
    _workspace(tmp_path, {"a.txt": "a"})
    feed.start()
    add_callback = feed._fd.add_callback

    def add_late(path: bytes, *rest: object) -> int:
        if path.endswith(b"/new"):  # the watcher thread stalls here; meanwhile:
            (tmp_path / "new/deeper").mkdir()
            (tmp_path / "new/deeper/x.txt").write_text("x")
        return add_callback(path, *rest)

    feed._fd.add_callback = add_late
    (tmp_path / "new").mkdir()
    assert feed.sync()  # the event of new/ was handled, and the stall with it
    state = _save(tmp_path, {"a.txt": "a", "new/deeper/x.txt": "x"})
    assert _vouched(feed, state)
    (tmp_path / "new/deeper/x.txt").write_text("y")
    assert feed.changes(state) == {"new/deeper/x.txt"}


def test_a_replaced_state_file_is_not_the_one_vouched_for(tmp_path, feed):
    state = _workspace(tmp_path, {"a.txt": "a"})
    feed.start()
    assert _vouched(feed, state)
    _save(tmp_path, {"a.txt": "a"})  # another state, written by another posbuild process
    assert feed.changes(state) != set()


def test_a_state_naming_a_file_in_a_hidden_folder_is_never_vouched_for(tmp_path, feed):
    state = _workspace(tmp_path, {"a.txt": "a", ".hidden/b.txt": "b"})
    feed.start()
    assert not _vouched(feed, state)


def test_posbuilds_own_folder_and_cookies_are_no_change(tmp_path, feed):
    state = _workspace(tmp_path, {"a.txt": "a"})
    feed.start()
    assert _vouched(feed, state)
    generation = feed.generation
    (tmp_path / ".posbuild/store").mkdir()
    (tmp_path / ".posbuild/store/x").write_text("x")
    for _ in range(3):
        assert feed.sync()
    assert feed.changes(state) == set() and feed.generation == generation


def test_the_watch_limit_makes_the_watch_untrustworthy(tmp_path):
    state = _workspace(tmp_path, {"a/x": "1", "b/y": "2", "c/z": "3"})
    feed = ChangeFeed(tmp_path, environ={"POSBUILD_TEST_MAX_WATCHES": "2"})
    try:
        feed.start()
        assert feed.limit_reached and "watch limit" in feed.trouble
        assert not _vouched(feed, state)
    finally:
        feed.stop()


def test_a_source_that_can_change_from_outside_is_never_vouched_for(tmp_path, feed):
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "data.csv").write_text("1\n")
    state = _workspace(tmp_path / "ws", {"a.txt": "a"})
    root = tmp_path / "ws"
    (root / "linked.csv").symlink_to(outside / "data.csv")
    os.link(outside / "data.csv", root / "hard.csv")
    watch = ChangeFeed(root)
    try:
        watch.start()
        assert _vouched(watch, state)
        for name in ("linked.csv", "hard.csv"):
            state = _save(root, {"a.txt": "a", name: "1\n"})
            assert not _vouched(watch, state), name
    finally:
        watch.stop()


def test_outputs_written_by_a_build_are_not_watched_yet_checked_after_it(tmp_path, feed):
    state = _workspace(tmp_path, {"a.txt": "a", "posbuild-out/pkg/o": "o"})
    feed.start()
    assert _vouched(feed, state)
    feed.writing()  # a build begins to write posbuild-out/
    assert feed.changes(state) != set()
    generation = feed.generation
    for n in range(50):
        (tmp_path / f"posbuild-out/pkg/new{n}").write_text("x")
    assert feed.sync() and feed.generation == generation  # its own writes: no events
    (tmp_path / "posbuild-out/pkg/o").write_text("edited during the build")
    feed.built(state)
    feed.confirm()  # watched again, and every file checked: the edit is found
    assert feed.changes(state) != set()
    state = _save(tmp_path, {"a.txt": "a", "posbuild-out/pkg/o": "edited during the build"})
    assert _vouched(feed, state)
    (tmp_path / "posbuild-out/pkg/o").unlink()  # watched again after the build
    assert feed.changes(state) != set()


def test_a_file_too_fresh_to_record_is_vouched_for_as_changed(tmp_path, feed):
    """A source the build hashed just after it was written is recorded UNSETTLED: the state is
    vouched for all the same, with that one file to be looked at again by the next build."""
    from posbuild.core.records import UNSETTLED

    _workspace(tmp_path, {"a.txt": "a", "b.txt": "b"})
    signatures = {"a.txt": signature(os.stat(tmp_path / "a.txt")), "b.txt": UNSETTLED}
    state = tmp_path / ".posbuild" / "state"
    save_state(state, BuildState(b"env", {}, signatures, {"a.txt": b"d", "b.txt": b"d"},
                                 graph=b"graph", complete=True))
    feed.start()
    feed.built(state)
    feed.confirm()
    assert feed.changes(state) == {"b.txt"}
    (tmp_path / "a.txt").write_text("A")
    assert feed.changes(state) == {"a.txt", "b.txt"}
    signatures["a.txt"] = (1, 1, 1, 1)  # and a file changed as no build recorded it: no vouch
    save_state(state, BuildState(b"env", {}, signatures, {"a.txt": b"d", "b.txt": b"d"},
                                 graph=b"graph", complete=True))
    feed.built(state)
    feed.confirm()
    assert feed.changes(state) is None


def test_a_build_that_writes_some_folders_has_only_their_files_looked_at(tmp_path, feed,
                                                                        monkeypatch):
    """An edit build pauses the folders it writes alone (`writing(folders)`): after it, only
    their files are looked at; a file elsewhere that changed during the build, after the build
    took its signature, is vouched for as changed (its event came after the build began)."""
    files = {"src/a.txt": "a", "src/b.txt": "b", "posbuild-out/one/o": "o",
             "posbuild-out/two/p": "p"}
    state = _workspace(tmp_path, files)
    feed.start()
    assert _vouched(feed, state)
    feed.starting()
    (tmp_path / "src/b.txt").write_text("B, while the build ran")  # after it was looked at
    feed.writing({"posbuild-out/one"})
    assert feed.sync()
    generation = feed.generation
    (tmp_path / "posbuild-out/one/o").write_text("rebuilt")  # the build's own write: no event
    assert feed.sync() and feed.generation == generation
    state = _save(tmp_path, {**files, "src/b.txt": "b", "posbuild-out/one/o": "rebuilt"})
    # (the state records b.txt as the build saw it, before the edit)
    state_signature = os.stat(state)
    looked: list[str] = []
    real = os.lstat
    monkeypatch.setattr(os, "lstat", lambda path: looked.append(str(path)) or real(path))
    feed.built(state)
    feed.confirm()
    monkeypatch.undo()
    assert looked == [f"{tmp_path}/posbuild-out/one/o"]
    assert os.stat(state) == state_signature
    assert feed.changes(state) == {"src/b.txt"}
    (tmp_path / "posbuild-out/one/o").write_text("by hand")  # watched again
    assert feed.changes(state) == {"src/b.txt", "posbuild-out/one/o"}


def test_an_edit_in_a_paused_folder_during_the_build_is_found_by_the_look_after_it(tmp_path,
                                                                                   feed):
    files = {"src/a.txt": "a", "posbuild-out/one/o": "o", "posbuild-out/one/q": "q"}
    state = _workspace(tmp_path, files)
    feed.start()
    assert _vouched(feed, state)
    feed.starting()
    feed.writing({"posbuild-out/one"})
    (tmp_path / "posbuild-out/one/o").write_text("rebuilt")
    state = _save(tmp_path, {**files, "posbuild-out/one/o": "rebuilt"})
    (tmp_path / "posbuild-out/one/q").write_text("edited by hand while it ran")  # no event
    feed.built(state)
    feed.confirm()
    assert feed.changes(state) is None  # not vouched for: the next build looks at every file


def test_a_folder_made_during_the_build_makes_every_file_looked_at(tmp_path, feed):
    files = {"src/a.txt": "a", "posbuild-out/one/o": "o"}
    state = _workspace(tmp_path, files)
    feed.start()
    assert _vouched(feed, state)
    feed.starting()
    feed.writing({"posbuild-out/one", "posbuild-out/new"})  # not watched yet: all is paused
    (tmp_path / "posbuild-out/new").mkdir()
    (tmp_path / "posbuild-out/new/n").write_text("n")
    state = _save(tmp_path, {**files, "posbuild-out/new/n": "n"})
    (tmp_path / "src/a.txt").write_text("A")  # after the build looked at it
    feed.built(state)
    feed.confirm()  # every file looked at: a.txt differs from what the state records
    assert feed.changes(state) is None
    state = _save(tmp_path, {**files, "src/a.txt": "A", "posbuild-out/new/n": "n"})
    assert _vouched(feed, state)
    (tmp_path / "posbuild-out/new/n").write_text("by hand")  # the new folder is watched
    assert feed.changes(state) == {"posbuild-out/new/n"}


def test_a_build_that_wrote_nothing_keeps_what_changed_before_it_to_be_looked_at(tmp_path, feed):
    """A no-op's state is the one vouched for before it: what changed since that vouch, not only
    since the no-op began, is still to be looked at after it."""
    state = _workspace(tmp_path, {"a.txt": "a", "b.txt": "b"})
    feed.start()
    assert _vouched(feed, state)
    (tmp_path / "a.txt").write_text("A")
    assert feed.changes(state) == {"a.txt"}
    feed.starting()  # a build that, say, found a.txt's action up to date and saved nothing
    feed.built(state)
    feed.confirm()
    assert feed.changes(state) == {"a.txt"}
    (tmp_path / "notes.txt").write_text("in no state")
    feed.starting()
    feed.built(state)
    feed.confirm()
    assert feed.changes(state) == {"a.txt"}


def test_a_build_that_began_before_the_watch_has_every_file_looked_at(tmp_path):
    """`posbuild watch` starts its feed after its first build: what changed before the feed
    watched cannot be known from events, so that build's state is checked file by file."""
    state = _workspace(tmp_path, {"a.txt": "a", "b.txt": "b"})
    feed = ChangeFeed(tmp_path)
    try:
        feed.starting()  # the first build, a no-op: it writes nothing
        feed.built(state)
        (tmp_path / "a.txt").write_text("A")  # before the watch began
        feed.start()
        feed.confirm()
        assert feed.changes(state) is None  # not vouched for: a.txt differs from the state
    finally:
        feed.stop()


def test_a_build_that_wrote_before_the_watch_began_leaves_no_folder_watched_twice(tmp_path):
    """`posbuild watch`'s first build writes `posbuild-out/` before its feed starts: there was
    nothing to pause then, and the feed watches every folder once when it starts (watchdog warns
    of a folder given a second callback, on the user's terminal)."""
    state = _workspace(tmp_path, {"a.txt": "a", "posbuild-out/pkg/out.txt": "o"})
    feed = ChangeFeed(tmp_path)
    try:
        feed.starting()
        feed.writing({"posbuild-out/pkg"})  # before start(): nothing watched yet
        feed.built(state)
        feed.start()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            feed.confirm()  # every file looked at: all as the state says
        assert feed.changes(state) == frozenset()
        feed.starting()  # the next build pauses the folder it writes, once
        feed.writing({"posbuild-out/pkg"})
        (tmp_path / "posbuild-out/pkg/out.txt").write_text("other")
        feed.built(state)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            feed.confirm()
        assert feed.changes(state) is None  # the paused folder's file was looked at
    finally:
        feed.stop()

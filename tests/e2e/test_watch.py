"""`posbuild watch` end to end: a real `python -m posbuild watch` on a temp workspace, real inotify
events.

Each test reads the watcher's output lines through reader threads with bounded waits. To show
that a change did *not* start a build, a test then makes a relevant change (a "sentinel") and
checks that the next cycle line names only the sentinel: had the first change started a build,
its line would have come first. No test sleeps to wait for something to (not) happen.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import POSBUILD, Workspace

WAIT = 30.0  # bound of every wait; generous for a loaded two-core machine
CYCLE = re.compile(r"^\[watch\] (?:initial build|(\d+) files? changed \((.*)\)): "
                   r"(?:(\d+) executed, (\d+) cached, (\d+) failed(?:, (\d+) skipped)?|error "
                   r"\(exit (\d+)\)) in [0-9.]+ s")

BASE = {
    "pkg/a.txt": "alpha\n",
    "pkg/b.txt": "beta\n",
    "pkg/unused.txt": "nobody reads this\n",
    "pkg/BUILD": """
        genrule(name = "up", srcs = ["a.txt"], outs = ["up.txt"], cmd = "tr a-z A-Z < $< > $@")
        genrule(name = "both", srcs = [":up", "b.txt"], outs = ["both.txt"], cmd = "cat $(SRCS) > $@")
    """,  # noqa: E501
    "other/BUILD": """
        genrule(name = "sentinel", srcs = ["s.txt"], outs = ["s.out"], cmd = "cp $< $@")
    """,
    "other/s.txt": "0\n",
}


class Watch:
    """A running `posbuild watch`, its stdout and stderr read line by line into queues."""

    def __init__(self, ws: Workspace, *args: str) -> None:
        self.ws = ws
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([*POSBUILD, "watch", *args], cwd=ws.root, env=env,
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: queue.Queue[str | None] = queue.Queue()
        self.err_lines: list[str] = []
        self.sentinels = 0
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _pump(stream, sink: queue.Queue[str | None]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            sink.put(line.rstrip("\n"))
        sink.put(None)

    def _next(self, sink: queue.Queue[str | None], what: str) -> str:
        deadline = time.monotonic() + WAIT
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = sink.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"watch exited ({self.proc.wait()}) while waiting for {what}; "
                                     f"stderr: {self.drain_err()}")
            return line
        raise AssertionError(f"no {what} within {WAIT} s; stderr: {self.drain_err()}")

    def cycle(self) -> re.Match[str]:
        """The next cycle line (stdout holds nothing else when piped)."""
        line = self._next(self.out, "cycle line")
        match = CYCLE.match(line)
        assert match, f"not a cycle line: {line!r}"
        return match

    def changed(self) -> tuple[str, int, int, int]:
        """The next cycle after a change: (changed paths, executed, cached, failed)."""
        match = self.cycle()
        assert match.group(2) is not None, match.group(0)
        assert match.group(3) is not None, (
            f"the build failed to load: {match.group(0)}; {self.drain_err()}")
        assert match.group(6) is None, match.group(0)
        return match.group(2), int(match.group(3)), int(match.group(4)), int(match.group(5))

    def err_line(self, pattern: str) -> str:
        """The next stderr line matching `pattern` (other stderr lines are kept for messages)."""
        while True:
            line = self._next(self.err, f"stderr line matching {pattern!r}")
            self.err_lines.append(line)
            if re.search(pattern, line):
                return line

    def drain_err(self) -> list[str]:
        while True:
            try:
                line = self.err.get_nowait()
            except queue.Empty:
                return self.err_lines
            if line is None:
                return self.err_lines
            self.err_lines.append(line)

    def no_build_since_last_cycle(self) -> None:
        """Prove that nothing has started a build since the last cycle line, with a sentinel
        edit."""
        self.sentinels += 1
        (self.ws.root / "other/s.txt").write_text(f"{self.sentinels}\n")
        paths, executed, _, failed = self.changed()
        assert (paths, executed, failed) == ("other/s.txt", 1, 0)

    def stop(self) -> int:
        """Ctrl-C; the exit status, which must come promptly."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=WAIT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def watch(ws: Workspace):  # type: ignore[no-untyped-def]
    """Start `posbuild watch ARGS` in `ws` once its files are written; waits for the first build."""
    started: list[Watch] = []

    def start(*args: str, files: dict[str, str] | None = None) -> Watch:
        ws.write(BASE if files is None else files)
        w = Watch(ws, *args)
        started.append(w)
        first = w.cycle()
        assert first.group(0).startswith("[watch] initial build"), first.group(0)
        return w

    yield start
    for w in started:
        w.kill()


def test_editing_a_source_rebuilds_its_dependents(ws, watch):
    w = watch()
    assert ws.out("pkg/both.txt") == "ALPHA\nbeta\n"
    (ws.root / "pkg/a.txt").write_text("gamma\n")
    assert w.changed() == ("pkg/a.txt", 2, 1, 0)
    assert ws.out("pkg/both.txt") == "GAMMA\nbeta\n"
    (ws.root / "pkg/b.txt").write_text("delta\n")
    assert w.changed() == ("pkg/b.txt", 1, 2, 0)
    assert ws.out("pkg/both.txt") == "GAMMA\ndelta\n"


def test_what_changed_between_cycles_is_found_without_a_look_at_every_file(ws, watch):
    """Each rebuild looks only at what the watch saw change since the state it confirmed
    (changefeed.py, as the build server does): an output edited by hand between two cycles is
    among it, and the next cycle puts it back; a source edited twice is rebuilt twice."""
    w = watch()
    time.sleep(0.5)  # the first build's state is confirmed while watch waits
    up = ws.root / "posbuild-out/pkg/up.txt"
    up.chmod(0o644)
    up.write_text("edited by hand\n")
    w.no_build_since_last_cycle()  # the sentinel's own rebuild: up.txt restored by it
    assert ws.out("pkg/up.txt") == "ALPHA\n"
    for text in ("one\n", "two\n"):
        (ws.root / "pkg/a.txt").write_text(text)
        assert w.changed() == ("pkg/a.txt", 2, 1, 0)
        assert ws.out("pkg/both.txt") == f"{text.upper()}beta\n"


def test_an_atomic_save_is_a_change_of_the_file_it_replaces(ws, watch):
    w = watch()
    temp = ws.root / "pkg/.a.txt.tmp1234"
    temp.write_text("written whole\n")
    os.replace(temp, ws.root / "pkg/a.txt")
    assert w.changed() == ("pkg/a.txt", 2, 1, 0)
    assert ws.out("pkg/up.txt") == "WRITTEN WHOLE\n"
    # the way vim saves: the original renamed to a backup, the new bytes written, the backup removed
    os.rename(ws.root / "pkg/b.txt", ws.root / "pkg/b.txt~")
    (ws.root / "pkg/b.txt").write_text("saved by an editor\n")
    os.unlink(ws.root / "pkg/b.txt~")
    assert w.changed() == ("pkg/b.txt", 1, 2, 0)
    assert ws.out("pkg/both.txt") == "WRITTEN WHOLE\nsaved by an editor\n"


def test_a_burst_of_writes_builds_once(ws, watch):
    w = watch("--debounce", "300")
    for n in range(20):
        (ws.root / "pkg/a.txt").write_text(f"version {n}\n")
        (ws.root / "pkg/b.txt").write_text(f"other {n}\n")
    assert w.changed() == ("pkg/a.txt, pkg/b.txt", 2, 1, 0)
    assert ws.out("pkg/both.txt") == "VERSION 19\nother 19\n"
    w.no_build_since_last_cycle()


def test_changes_to_unwatched_files_start_no_build(ws, watch):
    w = watch()
    (ws.root / "pkg/unused.txt").write_text("still unused\n")  # exists, but no action reads it
    (ws.root / ".posbuild/scratch").write_text("posbuild's own state\n")
    (ws.root / "posbuild-out/pkg/stray.txt").write_text("not a source\n")
    (ws.root / ".git").mkdir()
    (ws.root / ".git/HEAD").write_text("ref: refs/heads/main\n")
    (ws.root / "pkg/.a.txt.swp").write_text("editor swap file\n")
    w.no_build_since_last_cycle()


def test_a_new_target_in_a_build_file_is_built_and_watched(ws, watch):
    w = watch()
    (ws.root / "pkg/c.txt").write_text("charlie\n")
    assert w.changed() == ("pkg/c.txt", 0, 3, 0)  # a new file in a loaded package may match a glob
    with open(ws.root / "pkg/BUILD", "a") as build:
        build.write(
            'genrule(name = "new", srcs = ["c.txt"], outs = ["new.txt"], cmd = "rev $< > $@")\n')
    assert w.changed() == ("pkg/BUILD", 1, 3, 0)
    assert ws.out("pkg/new.txt") == "eilrahc\n"
    (ws.root / "pkg/c.txt").write_text("echo\n")
    assert w.changed() == ("pkg/c.txt", 1, 3, 0)
    assert ws.out("pkg/new.txt") == "ohce\n"


def test_a_removed_target_drops_its_sources_from_the_watch(ws, watch):
    w = watch()
    (ws.root / "pkg/BUILD").write_text(
        'genrule(name = "up", srcs = ["a.txt"], outs = ["up.txt"], cmd = "tr a-z A-Z < $< > $@")\n')
    assert w.changed() == ("pkg/BUILD", 0, 2, 0)
    (ws.root / "pkg/b.txt").write_text("only //pkg:both read this\n")
    w.no_build_since_last_cycle()
    (ws.root / "pkg/a.txt").write_text("still watched\n")
    assert w.changed() == ("pkg/a.txt", 1, 1, 0)


def test_a_build_file_syntax_error_is_reported_and_watching_goes_on(ws, watch):
    w = watch()
    build = ws.root / "pkg/BUILD"
    good = build.read_text()
    build.write_text(good + "genrule(name = \n")
    match = w.cycle()
    assert (match.group(2), match.group(7)) == ("pkg/BUILD", "3"), match.group(0)
    assert w.err_line(r"^posbuild: pkg/BUILD:\d+")
    build.write_text(good.replace("tr a-z A-Z < $< > $@", "rev < $< | tr a-z A-Z > $@"))
    assert w.changed() == ("pkg/BUILD", 2, 1, 0)
    assert ws.out("pkg/up.txt") == "AHPLA\n"


def test_a_failing_action_is_reported_and_watching_goes_on(ws, watch):
    w = watch()
    build = ws.root / "pkg/BUILD"
    good = build.read_text()
    build.write_text(good.replace("tr a-z A-Z < $< > $@", "exit 7"))
    match = w.cycle()
    assert (match.group(2), match.group(3), match.group(5),
            match.group(6)) == ("pkg/BUILD", "0", "1", "1"), \
        match.group(0)
    assert w.err_line(r"^posbuild: 1 action failed: //pkg:up$")
    # stale outputs of the failure are removed
    assert not (ws.root / "posbuild-out/pkg/both.txt").exists()
    build.write_text(good)
    assert w.changed() == ("pkg/BUILD", 0, 3, 0)  # both results are still in the cache
    assert ws.out("pkg/both.txt") == "ALPHA\nbeta\n"


def _running(token: str) -> bool:
    """Whether some process has `token` in its command line (its words joined by blanks)."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if token.encode() in Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" "):
                    return True
            except OSError:
                pass
    return False


def test_ctrl_c_stops_at_once_and_leaves_nothing_partial(ws, watch):
    w = watch()
    (ws.root / "pkg/BUILD").write_text(
        'genrule(name = "slow", srcs = ["a.txt"], outs = ["slow.txt"], cmd = "sleep 61.25; cp $< '
        '$@")\n')
    deadline = time.monotonic() + WAIT
    while not _running("sleep 61.25"):  # the action runs: Ctrl-C must stop it, not wait for it
        assert time.monotonic() < deadline, f"the slow action never started: {w.drain_err()}"
        time.sleep(0.02)
    began = time.monotonic()
    assert w.stop() == 130
    assert time.monotonic() - began < 10
    assert "posbuild: interrupted by SIGINT; 1 running action stopped, nothing partial kept" \
            in w.drain_err()
    deadline = time.monotonic() + 5  # killed, it may take the loaded machine a moment to go
    while _running("sleep 61.25"):
        assert time.monotonic() < deadline, "the action's command outlived posbuild watch"
        time.sleep(0.05)
    fsck = ws.run("fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert not (ws.root / "posbuild-out/pkg/slow.txt").exists()


def test_ctrl_c_while_idle_exits_130(ws, watch):
    w = watch()
    assert w.stop() == 130
    assert ws.run("fsck").returncode == 0


def test_a_broken_first_load_is_watched_until_it_is_fixed(ws, watch):
    files = {**BASE, "pkg/BUILD": "genrule(name = \n"}
    ws.write(files)
    w = Watch(ws)
    try:
        first = w.cycle()
        assert first.group(7) == "3", first.group(0)
        ws.write({"pkg/BUILD": BASE["pkg/BUILD"]})
        assert w.changed() == ("pkg/BUILD", 3, 0, 0)
        assert ws.out("pkg/both.txt") == "ALPHA\nbeta\n"
    finally:
        w.kill()


def test_a_new_top_level_package_is_picked_up(ws, watch, tmp_path):
    w = watch()
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "x.txt").write_text("x\n")
    (staging / "BUILD").write_text(
        'genrule(name = "x", srcs = ["x.txt"], outs = ["x.out"], cmd = "cp $< $@")\n')
    os.rename(staging, ws.root / "fresh")  # the whole package appears at once
    assert w.changed() == ("fresh, fresh/BUILD", 1, 3, 0)
    assert ws.out("fresh/x.out") == "x\n"
    (ws.root / "fresh/x.txt").write_text("y\n")  # the new folder is watched too
    assert w.changed() == ("fresh/x.txt", 1, 3, 0)
    assert ws.out("fresh/x.out") == "y\n"


DATA = {
    "data/BUILD": 'genrule(name = "rows", srcs = ["raw.csv"], outs = ["rows.txt"], cmd = "wc -l < '
                  '$< > $@")\n',
    "data/raw.csv": "a,1\n",
}


@pytest.mark.parametrize("inside", [False, True],
                         ids=["with-a-folder-outside", "with-a-sibling-folder"])
def test_a_top_level_folder_swapped_by_rename_stays_watched(ws, watch, tmp_path, inside):
    """`mv data data.old; mv data.new data`, as a deploy or a sync tool replaces a folder at once.

    The watcher handles both renames once the new folder is in place: it must see that `data` is
    another folder now, watch it, and stop watching the old one, which its watch follows.
    """
    staged = {"data.new/BUILD": DATA["data/BUILD"], "data.new/raw.csv": "b,1\nb,2\n"}
    if inside:  # a package of its own before the swap, built by the first build
        w = watch(files={**BASE, **DATA, **staged})
        old, new = ws.root / "data.old", ws.root / "data.new"
    else:
        w = watch(files={**BASE, **DATA})
        Workspace(tmp_path).write(staged)
        old, new = tmp_path / "data.old", tmp_path / "data.new"
    assert ws.out("data/rows.txt").strip() == "1"
    os.rename(ws.root / "data", old)
    os.rename(new, ws.root / "data")
    paths, executed, cached, failed = w.changed()
    if inside:
        assert "data" in paths.split(", ") and failed == 0, paths
    else:
        assert (paths, executed, cached, failed) == ("data, data/BUILD, data/raw.csv", 1, 3, 0)
    assert ws.out("data/rows.txt").strip() == "2"
    # the folder now named data/ is watched: an edit in it rebuilds, and the output is right
    (ws.root / "data/raw.csv").write_text("c,1\nc,2\nc,3\n")
    assert w.changed() == ("data/raw.csv", 1, 3 + inside, 0)
    assert ws.out("data/rows.txt").strip() == "3"
    if not inside:  # the folder moved out is not watched any more, nor reported as data/
        (old / "raw.csv").write_text("stale\n")
        (old / "late.txt").write_text("new in the old folder\n")
        w.no_build_since_last_cycle()
    (ws.root / "data/raw.csv").write_text("d,1\n")
    assert w.changed() == ("data/raw.csv", 1, 3 + inside, 0)
    assert ws.out("data/rows.txt").strip() == "1"

"""Incrementality end to end: what a rebuild executes after each kind of change, and nothing more.

Every test drives the real CLI on a temp workspace and checks the exact set of executed actions
(from the plain `[n/total] label` lines), so a rebuild that does too much or too little fails;
and after every build that says OK, the correctness oracle recomputes each action's key from the
files on disk and checks what the store and `posbuild-out/` hold for it (tests/oracle.py).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

from conftest import Result, Workspace, counts, executed_labels
from posbuild.workspace.config import load_config
from oracle import assert_correct_build

# A diamond plus an independent branch:
#
#   a.txt ──> left ──┐
#                    ├──> join
#   b.txt ──> right ─┘
#   b.txt ──> other
DIAMOND = {
    "pkg/a.txt": "alpha\n",
    "pkg/b.txt": "beta\n",
    "pkg/BUILD": """
        genrule(name = "left", srcs = ["a.txt"], outs = ["left.txt"], cmd = "cat $< > $@")
        genrule(name = "right", srcs = ["b.txt"], outs = ["right.txt"], cmd = "cat $< > $@")
        genrule(name = "join", srcs = [":left", ":right"], outs = ["join.txt"], cmd = "cat $(SRCS) > $@")
        genrule(name = "other", srcs = ["b.txt"], outs = ["other.txt"], cmd = "tr a-z A-Z < $< > $@")
    """,  # noqa: E501
}
DIAMOND_LABELS = ["//pkg:join", "//pkg:left", "//pkg:other", "//pkg:right"]


def _ok(ws: Workspace, pattern: str = "//...") -> Result:
    """A build of `pattern` that must succeed, and be correct by the oracle."""
    result = ws.ok(pattern)
    assert_correct_build(ws, (pattern,))
    return result


def _later(path: os.PathLike[str] | str, seconds: float = 10.0) -> None:
    """Move a file's mtime (and so its ctime) forward without changing its bytes."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + int(seconds * 1e9)))


# ---- no-op rebuilds ---------------------------------------------------------------------------

def test_rebuild_with_nothing_changed_executes_nothing(ws):
    ws.write(DIAMOND)
    first = _ok(ws)
    assert executed_labels(first) == DIAMOND_LABELS
    second = _ok(ws)
    assert executed_labels(second) == []
    assert counts(second) == {"executed": 0, "cached": 4, "failed": 0}
    assert ws.out("pkg/join.txt") == "alpha\nbeta\n"


def test_touching_a_source_without_changing_its_bytes_executes_nothing(ws):
    ws.write(DIAMOND)
    _ok(ws)
    _later(ws.root / "pkg/a.txt")
    _later(ws.root / "pkg/b.txt")
    result = _ok(ws)
    assert executed_labels(result) == []
    assert counts(result)["cached"] == 4


def test_touching_a_build_file_without_changing_it_executes_nothing(ws):
    ws.write(DIAMOND)
    _ok(ws)
    _later(ws.root / "pkg/BUILD")
    result = _ok(ws)
    assert executed_labels(result) == []


# ---- a changed source re-executes exactly what is downstream of it ----------------------------

def test_changing_one_source_reexecutes_exactly_its_downstream_actions(ws):
    ws.write(DIAMOND)
    _ok(ws)
    ws.write({"pkg/a.txt": "ALPHA changed\n"})
    result = _ok(ws)
    assert executed_labels(result) == ["//pkg:join", "//pkg:left"]
    assert ws.out("pkg/join.txt") == "ALPHA changed\nbeta\n"


def test_changing_a_shared_source_reexecutes_every_consumer(ws):
    ws.write(DIAMOND)
    _ok(ws)
    ws.write({"pkg/b.txt": "gamma\n"})
    result = _ok(ws)
    assert executed_labels(result) == ["//pkg:join", "//pkg:other", "//pkg:right"]
    assert ws.out("pkg/other.txt") == "GAMMA\n"
    assert ws.out("pkg/join.txt") == "alpha\ngamma\n"


def test_changing_a_source_of_the_same_size_is_detected(ws):
    """Same length, same inode, rewritten right after the build: the content still counts."""
    ws.write(DIAMOND)
    _ok(ws)
    (ws.root / "pkg/a.txt").write_text("omega\n")  # same size as "alpha\n"
    result = _ok(ws)
    assert executed_labels(result) == ["//pkg:join", "//pkg:left"]
    assert ws.out("pkg/left.txt") == "omega\n"


def test_reverting_a_source_is_a_cache_hit_for_the_old_content(ws):
    ws.write(DIAMOND)
    _ok(ws)
    ws.write({"pkg/a.txt": "something else\n"})
    _ok(ws)
    ws.write({"pkg/a.txt": "alpha\n"})
    result = _ok(ws)
    assert executed_labels(result) == []
    assert ws.out("pkg/join.txt") == "alpha\nbeta\n"


# ---- early cutoff -----------------------------------------------------------------------------

EARLY_CUTOFF = {
    "pkg/raw.txt": "b\na\n",
    "pkg/BUILD": """
        genrule(name = "uniq", srcs = ["raw.txt"], outs = ["uniq.txt"], cmd = "sort -u $< > $@")
        genrule(name = "count", srcs = [":uniq"], outs = ["count.txt"], cmd = "wc -l < $< > $@")
        genrule(name = "report", srcs = [":count"], outs = ["report.txt"], cmd = "cat $< $< > $@")
    """,
}


def test_early_cutoff_identical_output_stops_reexecution(ws):
    ws.write(EARLY_CUTOFF)
    _ok(ws)
    ws.write({"pkg/raw.txt": "a\nb\na\nb\n"})  # sort -u still gives "a\nb\n"
    result = _ok(ws)
    assert executed_labels(result) == ["//pkg:uniq"]
    assert counts(result) == {"executed": 1, "cached": 2, "failed": 0}
    assert ws.out("pkg/uniq.txt") == "a\nb\n"


def test_early_cutoff_in_the_middle_of_a_chain(ws):
    ws.write(EARLY_CUTOFF)
    _ok(ws)
    ws.write({"pkg/raw.txt": "x\ny\n"})  # uniq changes, but wc -l is still 2
    result = _ok(ws)
    assert executed_labels(result) == ["//pkg:count", "//pkg:uniq"]
    assert ws.out("pkg/uniq.txt") == "x\ny\n"
    assert ws.out("pkg/count.txt").strip() == "2"


# ---- changes to an action's declaration -------------------------------------------------------

def _declared(cmd: str = "cat $< > $@", env: str = '{"A": "1"}',
              version: str = '{"schema": "1"}') -> dict[str, str]:
    """src -> mid (the action under test) -> last; `side` is independent of mid."""
    return {
        "pkg/src.txt": "data\n",
        "pkg/tool.sh": "echo tool-v1\n",
        "pkg/BUILD": f"""
genrule(name = "mid", srcs = ["src.txt"], outs = ["mid.txt"], tools = ["tool.sh"],
        env = {env}, version = {version}, cmd = "{cmd}")
genrule(name = "last", srcs = [":mid"], outs = ["last.txt"], cmd = "cat $< > $@")
genrule(name = "side", srcs = ["src.txt"], outs = ["side.txt"], cmd = "cat $< > $@")
""",
    }


MID_CMD = "sh $(location tool.sh) > $@; echo A=$$A >> $@; cat $< >> $@"


def test_changing_cmd_reexecutes_the_action_and_what_it_feeds(ws):
    ws.write(_declared(cmd=MID_CMD))
    _ok(ws)
    ws.write(_declared(cmd=MID_CMD + "; echo extra >> $@"))
    result = _ok(ws)
    assert executed_labels(result) == ["//pkg:last", "//pkg:mid"]
    assert ws.out("pkg/last.txt") == "tool-v1\nA=1\ndata\nextra\n"


def test_changing_cmd_with_identical_output_reexecutes_only_that_action(ws):
    ws.write(_declared(cmd=MID_CMD))
    _ok(ws)
    ws.write(_declared(cmd=MID_CMD + "; true"))
    result = _ok(ws)
    assert executed_labels(result) == ["//pkg:mid"]


def test_changing_an_env_entry_reexecutes_the_action(ws):
    ws.write(_declared(cmd=MID_CMD))
    _ok(ws)
    ws.write(_declared(cmd=MID_CMD, env='{"A": "2"}'))
    result = _ok(ws)
    assert executed_labels(result) == ["//pkg:last", "//pkg:mid"]
    assert ws.out("pkg/mid.txt") == "tool-v1\nA=2\ndata\n"


def test_adding_an_env_entry_the_command_ignores_reexecutes_only_that_action(ws):
    ws.write(_declared(cmd=MID_CMD))
    _ok(ws)
    ws.write(_declared(cmd=MID_CMD, env='{"A": "1", "B": "unused"}'))
    result = _ok(ws)
    assert executed_labels(result) == ["//pkg:mid"]


def test_changing_a_tools_file_reexecutes_the_action(ws):
    ws.write(_declared(cmd=MID_CMD))
    _ok(ws)
    ws.write({"pkg/tool.sh": "echo tool-v2\n"})
    result = _ok(ws)
    assert executed_labels(result) == ["//pkg:last", "//pkg:mid"]
    assert ws.out("pkg/last.txt") == "tool-v2\nA=1\ndata\n"


def test_changing_a_tools_file_the_command_never_runs_still_reexecutes(ws):
    """h_C is the digest of the tools, whether or not the command happens to read them."""
    ws.write(_declared())
    _ok(ws)
    ws.write({"pkg/tool.sh": "echo tool-v2 # not run by cmd\n"})
    result = _ok(ws)
    assert executed_labels(result) == ["//pkg:mid"]


def test_changing_a_version_entry_reexecutes_the_action(ws):
    ws.write(_declared(cmd=MID_CMD))
    _ok(ws)
    ws.write(_declared(cmd=MID_CMD, version='{"schema": "2"}'))
    result = _ok(ws)
    # the command does not read the version, so its output is identical: early cutoff for `last`
    assert executed_labels(result) == ["//pkg:mid"]
    assert counts(result) == {"executed": 1, "cached": 2, "failed": 0}


# ---- only what the request needs --------------------------------------------------------------

def test_only_what_the_requested_pattern_needs_is_built(ws):
    ws.write({
        "a/in.txt": "a\n",
        "a/BUILD": """
            genrule(name = "a1", srcs = ["in.txt"], outs = ["a1.txt"], cmd = "cat $< > $@")
            genrule(name = "a2", srcs = [":a1"], outs = ["a2.txt"], cmd = "cat $< $< > $@")
            genrule(name = "unrelated", srcs = ["in.txt"], outs = ["u.txt"], cmd = "cat $< > $@")
        """,
        "b/BUILD": """
            genrule(name = "b1", srcs = ["//a:a2"], outs = ["b1.txt"], cmd = "cat $< > $@")
        """,
        "c/BUILD": """
            genrule(name = "c1", outs = ["c1.txt"], cmd = "echo c > $@")
        """,
    })
    result = _ok(ws, "//b:b1")
    assert executed_labels(result) == ["//a:a1", "//a:a2", "//b:b1"]
    assert ws.out("b/b1.txt") == "a\na\n"
    assert not (ws.root / "posbuild-out/a/u.txt").exists()
    assert not (ws.root / "posbuild-out/c").exists()
    # the rest is built later, and what was already built is reused
    rest = _ok(ws)
    assert executed_labels(rest) == ["//a:unrelated", "//c:c1"]


# ---- posbuild-out is restored from the store --------------------------------------------------

def test_clean_then_build_restores_outputs_without_executing(ws):
    ws.write(DIAMOND)
    _ok(ws)
    cleaned = ws.run("clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not (ws.root / "posbuild-out").exists()
    result = _ok(ws)
    assert executed_labels(result) == []
    assert counts(result) == {"executed": 0, "cached": 4, "failed": 0}
    assert ws.out("pkg/left.txt") == "alpha\n"
    assert ws.out("pkg/right.txt") == "beta\n"
    assert ws.out("pkg/join.txt") == "alpha\nbeta\n"
    assert ws.out("pkg/other.txt") == "BETA\n"


def test_deleted_output_is_restored_without_executing(ws):
    ws.write(DIAMOND)
    _ok(ws)
    (ws.root / "posbuild-out/pkg/left.txt").unlink()
    result = _ok(ws)
    assert executed_labels(result) == []
    assert ws.out("pkg/left.txt") == "alpha\n"


def test_hand_edited_output_is_repaired_from_the_store(ws):
    ws.write(DIAMOND)
    _ok(ws)
    edited = ws.root / "posbuild-out/pkg/join.txt"
    original = edited.read_bytes()
    os.chmod(edited, stat.S_IMODE(edited.stat().st_mode) | stat.S_IWUSR)
    with open(edited, "wb") as handle:
        handle.write(b"hand edit\n")
    result = _ok(ws)
    assert executed_labels(result) == []
    assert edited.read_bytes() == original
    assert stat.S_IMODE(edited.stat().st_mode) & 0o222 == 0
    # the edit did not reach the store: restoring again gives the original bytes too
    ws.run("clean")
    again = _ok(ws)
    assert executed_labels(again) == []
    assert edited.read_bytes() == original


def test_hand_edited_output_of_the_same_size_is_repaired(ws):
    ws.write(DIAMOND)
    _ok(ws)
    edited = ws.root / "posbuild-out/pkg/left.txt"
    os.chmod(edited, 0o644)
    edited.write_text("ALPHA\n")
    result = _ok(ws)
    assert executed_labels(result) == []
    assert ws.out("pkg/left.txt") == "alpha\n"


def test_outputs_are_read_only(ws):
    ws.write({
        "pkg/BUILD": """
            genrule(name = "plain", outs = ["plain.txt"], cmd = "echo x > $@")
            genrule(name = "script", outs = ["run.sh"], cmd = "echo 'echo hi' > $@; chmod 755 $@")
        """,
    })
    _ok(ws)
    for rel in ("pkg/plain.txt", "pkg/run.sh"):
        mode = stat.S_IMODE((ws.root / "posbuild-out" / rel).stat().st_mode)
        assert mode & 0o222 == 0, f"{rel} has mode {oct(mode)}"
    assert stat.S_IMODE((ws.root / "posbuild-out/pkg/run.sh").stat().st_mode) & 0o111
    # and they stay read-only after a restore from the store
    ws.run("clean")
    _ok(ws)
    for rel in ("pkg/plain.txt", "pkg/run.sh"):
        mode = stat.S_IMODE((ws.root / "posbuild-out" / rel).stat().st_mode)
        assert mode & 0o222 == 0, f"restored {rel} has mode {oct(mode)}"
    assert stat.S_IMODE((ws.root / "posbuild-out/pkg/run.sh").stat().st_mode) & 0o111


# ---- the no-op shortcut (uptodate.settled) -------------------------------------------------------

REFUSE_DECODING = """
import sys
import posbuild.load.graphcache

def refuse(self):
    sys.exit("the actions were decoded")

posbuild.load.graphcache.CachedGraph.graph = refuse
from posbuild.cli import main
sys.argv = ["posbuild", "build", "//..."]
main()
"""


def test_a_noop_build_never_decodes_the_actions(ws):
    ws.write(DIAMOND)
    _ok(ws)
    _ok(ws)  # the first rebuild saves the state for the cached graph entry
    run = subprocess.run([sys.executable, "-c", REFUSE_DECODING], cwd=ws.root, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert counts(run) == {"executed": 0, "cached": 4, "failed": 0}
    assert_correct_build(ws)

    # touched: the signatures no longer settle the request by themselves
    _later(ws.root / "pkg/b.txt")
    run = subprocess.run([sys.executable, "-c", REFUSE_DECODING], cwd=ws.root, capture_output=True,
                         text=True)
    assert "the actions were decoded" in run.stderr
    assert executed_labels(_ok(ws)) == []  # and the full check still finds nothing to run
    records = [json.loads(line) for line in ws.run("log", "--json").stdout.splitlines()]
    assert sorted((r["label"], r["state"]) for r in records) == [(label, "CACHED")
                                                                 for label in DIAMOND_LABELS]


def test_a_pin_written_after_the_last_build_is_checked_on_a_noop_build(ws):
    ws.write(DIAMOND)
    _ok(ws)
    _ok(ws)
    wrong = "0" * 64
    (ws.root / "posbuild.lock").write_text(json.dumps({"format": 1,
                                                       "sources": {"pkg/a.txt": wrong}}))
    result = ws.build("//...")
    assert result.returncode == 13, result
    assert f"pkg/a.txt is pinned in posbuild.lock to {wrong}" in result.stderr


def test_a_noop_after_a_failed_build_runs_the_failed_action_again(ws):
    ws.write({**DIAMOND, "pkg/BUILD": DIAMOND["pkg/BUILD"] + """
        genrule(name = "flaky", srcs = ["b.txt"], outs = ["flaky.txt"],
                cmd = "test -e /nonexistent-for-posbuild && cat $< > $@")
    """})
    first = ws.build("-k", "//...")
    assert first.returncode != 0 and counts(first)["failed"] == 1
    second = ws.build("-k", "//...")
    # tried again, not settled from the state
    assert counts(second) == {"executed": 0, "cached": 4, "failed": 1}


def test_a_source_too_fresh_when_read_is_recorded_once_it_has_settled(ws):
    # modified "just now" as the build reads it (its mtime a little ahead), the source is hashed
    # within
    # the racy window; by the end of the build it has aged and hashes the same, so the state is
    # complete
    ws.write(
        {"pkg/BUILD": 'genrule(name = "slow", srcs = ["a.txt"], outs = ["a.out"], cmd = "sleep '
                      '0.8; cat $< > $@")\n'})
    ws.write({"pkg/a.txt": "alpha\n"})
    soon = time.time_ns() + 400_000_000
    os.utime(ws.root / "pkg/a.txt", ns=(soon, soon))
    assert executed_labels(_ok(ws)) == ["//pkg:slow"]
    run = subprocess.run([sys.executable, "-c", REFUSE_DECODING], cwd=ws.root, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert counts(run) == {"executed": 0, "cached": 1, "failed": 0}
    assert_correct_build(ws)


def test_a_noop_after_the_graph_entry_was_remade_settles_by_signatures_again(ws):
    """A new file beside the packages re-makes the graph cache entry (another digest, the same
    actions): the no-op that checks every action saves the state for the new entry, so the next
    no-op settles by the signatures alone instead of decoding the actions every time."""
    ws.write(DIAMOND)
    _ok(ws)
    _ok(ws)
    (ws.root / "notes.txt").write_text("not a source\n")
    assert executed_labels(_ok(ws)) == []  # checks every action against the new entry
    run = subprocess.run([sys.executable, "-c", REFUSE_DECODING], cwd=ws.root, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert counts(run) == {"executed": 0, "cached": 4, "failed": 0}
    assert_correct_build(ws)
    (ws.root / "pkg/a.txt").write_text("alpha, edited\n")  # and an edit is still seen
    assert executed_labels(_ok(ws)) == ["//pkg:join", "//pkg:left"]


def test_a_rebuild_leaves_no_sandbox_and_no_replaced_output_behind(ws: Workspace) -> None:
    # the files a rebuild replaces in posbuild-out/ are set aside and deleted once the next
    # command runs, as the sandboxes are: when the build says OK, none is left
    ws.write(DIAMOND)
    _ok(ws)
    ws.write({"pkg/a.txt": "changed\n", "pkg/b.txt": "changed too\n"})
    result = _ok(ws)
    assert executed_labels(result) == DIAMOND_LABELS
    assert os.listdir(ws.root / ".posbuild/tmp") == []
    base = load_config(ws.root).sandbox_dir
    assert [name for name in os.listdir(base)
            if not name.endswith(".owner") and name != "CACHEDIR.TAG"] == []
    assert (ws.root / "posbuild-out/pkg/join.txt").read_text() == "changed\nchanged too\n"

"""After `posbuild gc` evicted a result, no build settles that action by stat alone: it executes
again (and says so), no generation names bytes the store no longer holds, rollback and
`cache export` keep working, and a gc that waits for a running build changes none of this."""

from __future__ import annotations

import os
import subprocess
import time

from conftest import POSBUILD, Workspace, counts, executed_labels

# //a:ok succeeds, //a:bad fails until bad.txt says "fixed"
FLAKY = {
    "a/in.txt": "hello\n",
    "a/bad.txt": "broken\n",
    "a/BUILD": """
        genrule(name = "ok", srcs = ["in.txt"], outs = ["ok.txt"], cmd = "tr a-z A-Z < $< > $@")
        genrule(name = "bad", srcs = ["bad.txt"], outs = ["bad.out"],
                cmd = "grep -q fixed $< || exit 3; cp $< $@")
    """,
}


def assert_fsck_passes(ws: Workspace) -> None:
    result = ws.run("fsck")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_rebuild_after_gc_executes_what_gc_evicted_instead_of_calling_it_cached(ws):
    ws.write(FLAKY)
    failed = ws.build("-k", "//...")
    assert failed.returncode == 1 and counts(failed)["executed"] == 1
    gc = ws.run("gc", "--max-size", "1")
    assert gc.returncode == 0, gc.stderr
    assert "1 action result" in gc.stdout  # the failed build's partial result is not protected

    state = sorted((ws.root / ".posbuild/graphs").glob("*.state"))
    saved = [path.read_bytes() for path in state]
    planned = ws.build("-n", "-k", "//...")
    would = sorted(line.split()[-1] for line in planned.stdout.splitlines()
                   if line.startswith("would execute "))
    assert would == ["//a:bad", "//a:ok"], planned.stdout
    # a dry run writes nothing, not even the check
    assert [path.read_bytes() for path in state] == saved

    again = ws.build("-k", "//...")
    assert again.returncode == 1
    assert counts(again) == {"executed": 1, "cached": 0, "failed": 1}, again.stdout
    assert executed_labels(again) == ["//a:ok"]

    ws.write({"a/bad.txt": "fixed\n"})
    fixed = ws.ok("//...")
    assert counts(fixed)["executed"] == 1  # only //a:bad: //a:ok's result is in the store again
    (ws.root / "posbuild-out/a/ok.txt").chmod(0o644)
    (ws.root / "posbuild-out/a/ok.txt").unlink()
    rollback = ws.run("rollback")
    assert rollback.returncode == 0, rollback.stderr
    assert ws.out("a/ok.txt") == "HELLO\n"
    export = ws.run("cache", "export", str(ws.root.parent / "c.tar"), "//...")
    assert export.returncode == 0, export.stderr
    assert "2 action results" in export.stdout and "left out" not in export.stdout
    assert_fsck_passes(ws)


def test_a_gc_that_evicts_nothing_a_build_needs_keeps_the_rebuild_a_no_op(ws):
    ws.write({**FLAKY, "a/bad.txt": "fixed\n"})
    ws.ok("//...")
    ws.write({"a/in.txt": "second\n"})
    ws.ok("//...")
    gc = ws.run("gc", "--max-size", "1", "--keep-generations", "1")
    assert gc.returncode == 0 and "1 action result" in gc.stdout  # the first //a:ok result
    assert counts(ws.ok("//...")) == {"executed": 0, "cached": 2, "failed": 0}
    assert counts(ws.ok("//...")) == {"executed": 0, "cached": 2, "failed": 0}


def test_a_generation_never_names_a_result_gc_evicted_before_it_was_recorded(ws):
    """The issue's sequence, ending in rollback to the generation recorded after the gc."""
    ws.write(FLAKY)
    ws.build("-k", "//...")
    assert ws.run("gc", "--max-size", "1").returncode == 0
    ws.write({"a/bad.txt": "fixed\n"})
    ws.ok("//...")
    for name in ("ok.txt", "bad.out"):
        (ws.root / "posbuild-out/a" / name).chmod(0o644)
        (ws.root / "posbuild-out/a" / name).write_text("edited by hand\n")
    rollback = ws.run("rollback")
    assert rollback.returncode == 0, rollback.stderr
    assert (ws.out("a/ok.txt"), ws.out("a/bad.out")) == ("HELLO\n", "fixed\n")
    assert_fsck_passes(ws)


def test_cache_export_refuses_to_leave_out_a_result_gc_evicted(ws):
    ws.write({**FLAKY, "a/bad.txt": "fixed\n",
              "b/BUILD": 'genrule(name = "b", outs = ["b.txt"], cmd = "echo b > $@")'})
    ws.ok("//a:ok")
    ws.run("clean")
    ws.ok("//b:b")  # the latest generation no longer lists a/ok.txt: nothing pins its result
    assert "1 action result" in ws.run("gc", "--max-size", "1", "--keep-generations", "1").stdout
    target = ws.root.parent / "a.tar"
    export = ws.run("cache", "export", str(target), "//a:ok")
    assert export.returncode == 2, export.stdout + export.stderr
    assert "//a:ok" in export.stderr and "posbuild build //a:ok" in export.stderr
    assert not target.exists()
    ws.ok("//a:ok")  # executes it again, so the next export is whole
    export = ws.run("cache", "export", str(target), "//a:ok")
    assert export.returncode == 0 and "1 action result" in export.stdout, export.stderr


def slow_command(probe) -> str:
    """A command that says it started, then waits until the test lets it go on."""
    return f"touch {probe / 'started'}; while [ ! -e {probe / 'go'} ]; do sleep 0.05; done"


def gc_during_build(build_root, build_args, gc_root, gc_args, probe):
    """Run gc while a build's slow action runs; the action goes on once gc has said that it waits
    (or has finished without waiting). Returns (returncode, stdout, stderr) of build and gc."""
    build = subprocess.Popen([*POSBUILD, *build_args], cwd=build_root, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (probe / "started").exists():
            assert time.monotonic() < deadline \
                    and build.poll() is None, ("the slow action never started")
            time.sleep(0.05)
        gc = subprocess.Popen([*POSBUILD, *gc_args], cwd=gc_root, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        # "... waiting for it", or "" once gc ended without waiting
        first_line = gc.stderr.readline()
        (probe / "go").touch()
        gc_out, gc_err = gc.communicate(timeout=120)
    finally:
        (probe / "go").touch()
        build_out, build_err = build.communicate(timeout=120)
    return (build.returncode, build_out, build_err), (gc.returncode, gc_out, first_line + gc_err)


def test_gc_waits_for_a_running_build_of_the_workspace_and_the_next_build_tells_the_truth(
    ws, tmp_path):
    ws.write({**FLAKY, "a/BUILD": f"""
        genrule(name = "ok", srcs = ["in.txt"], outs = ["ok.txt"], cmd = "{slow_command(tmp_path)}; tr a-z A-Z < $< > $@")
        genrule(name = "bad", srcs = ["bad.txt"], outs = ["bad.out"], cmd = "exit 3")
    """})  # noqa: E501
    build, gc = gc_during_build(ws.root, ["build", "-k", "//..."], ws.root,
                                ["gc", "--max-size", "1"], tmp_path)
    assert build[0] == 1
    # it held off until the build released the workspace
    assert gc[0] == 0 and "waiting" in gc[2], gc
    assert "1 action result" in gc[1]  # the build's //a:ok, evicted after the build ended
    (tmp_path / "started").unlink()
    again = ws.build("-k", "//...")
    assert executed_labels(again) == ["//a:ok"] and (tmp_path / "started").exists()
    assert_fsck_passes(ws)


def test_gc_in_one_workspace_waits_for_a_build_in_another_that_shares_the_store(tmp_path):
    """The build restores an unpinned result from the shared store, then runs a slow action; a gc
    that evicted that result meanwhile would leave the build's generation naming lost bytes."""
    store = tmp_path / "shared-store"
    first, second = Workspace(tmp_path / "one"), Workspace(tmp_path / "two")
    toml = f'[cache]\ndir = "{store}"\n'
    build = f"""
        genrule(name = "t", srcs = ["t.txt"], outs = ["t.out"], cmd = "cat $< > $@")
        genrule(name = "slow", srcs = [":t"], outs = ["slow.out"], cmd = "{slow_command(tmp_path)}; cat $< $< > $@")
    """  # noqa: E501
    first.write({"posbuild.toml": toml, "p/t.txt": "old\n", "p/BUILD": build})
    first.ok("//p:t")
    first.write({"p/t.txt": "new\n"})
    # the result for "old" is now pinned by no generation of this workspace's newest one
    first.ok("//p:t")
    second.write({"posbuild.toml": toml, "p/t.txt": "old\n", "p/BUILD": build})
    built, gc = gc_during_build(second.root, ["build", "//..."], first.root,
                                ["gc", "--max-size", "1", "--keep-generations", "1"], tmp_path)
    assert built[0] == 0, built
    assert gc[0] == 0 and "waiting" in gc[2], gc
    for ws in (second, first):
        (ws.root / "posbuild-out/p/t.out").chmod(0o644)
        (ws.root / "posbuild-out/p/t.out").unlink()
        rollback = ws.run("rollback")
        assert rollback.returncode == 0, rollback.stderr
    assert (second.out("p/t.out"), first.out("p/t.out")) == ("old\n", "new\n")
    assert_fsck_passes(second)


def test_a_build_after_its_shared_store_was_deleted_executes_instead_of_calling_it_cached(tmp_path):
    """`posbuild clean --all` in one workspace removes the store it shares with another (or a
    user wipes the cache folder): the other's next build must not settle its actions by stat
    and report them cached with nothing in the store."""
    store = tmp_path / "shared-store"
    first, second = Workspace(tmp_path / "one"), Workspace(tmp_path / "two")
    for ws in (first, second):
        ws.write({"posbuild.toml": f'[cache]\ndir = "{store}"\n',
                  "p/BUILD": 'genrule(name = "x", outs = ["x.txt"], cmd = "echo x > $@")\n'})
        ws.ok("//...")
    assert first.run("clean", "--all").returncode == 0
    # emptied; the mark and the lock stay
    assert sorted(os.listdir(store)) == ["CACHEDIR.TAG", "gc.lock"]
    rebuilt = second.ok("//...")
    assert counts(rebuilt)["executed"] == 1, rebuilt.stdout
    assert second.run("fsck").returncode == 0
    assert second.run("rollback").returncode == 0


def test_clean_waits_for_a_running_build_so_that_what_it_removed_stays_removed(ws, tmp_path):
    """`posbuild clean` during a build: without waiting, the build went on installing outputs into
    the posbuild-out/ that clean said it removed, and marked that partial tree as complete."""
    ws.write({"a/BUILD": f"""
        genrule(name = "fast", outs = ["fast.txt"], cmd = "echo fast > $@")
        genrule(name = "slow", srcs = [":fast"], outs = ["slow.txt"], cmd = "{slow_command(tmp_path)}; cat $< > $@")
    """})  # noqa: E501
    build, clean = gc_during_build(ws.root, ["build", "//..."], ws.root, ["clean"], tmp_path)
    assert build[0] == 0, build
    assert clean[0] == 0 and "waiting" in clean[2], clean
    assert not (ws.root / "posbuild-out").exists()
    rebuilt = ws.ok("//...")
    assert counts(rebuilt)["executed"] == 0 and ws.out("a/slow.txt") == "fast\n"
    assert_fsck_passes(ws)


def test_fsck_of_a_shared_store_waits_for_a_build_in_another_workspace(tmp_path):
    """fsck reads the store in several passes; a build in another workspace committing between
    them made it report results whose blobs, or generations whose manifest, were not there yet."""
    store = tmp_path / "shared-store"
    first, second = Workspace(tmp_path / "one"), Workspace(tmp_path / "two")
    toml = f'[cache]\ndir = "{store}"\n'
    first.write({"posbuild.toml": toml, "p/BUILD": f"""
        genrule(name = "slow", outs = ["slow.out"], cmd = "{slow_command(tmp_path)}; echo slow > $@")
    """})  # noqa: E501
    second.write({"posbuild.toml": toml,
                  "p/BUILD": 'genrule(name = "x", outs = ["x"], cmd = "echo x > $@")\n'})
    second.ok("//...")
    built, fsck = gc_during_build(first.root, ["build", "//..."], second.root, ["fsck"], tmp_path)
    assert built[0] == 0, built
    assert fsck[0] == 0 and "waiting" in fsck[2], fsck

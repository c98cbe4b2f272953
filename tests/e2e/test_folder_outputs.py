"""Folder outputs (`out_dirs`), end to end through the real CLI: stored by content, staged
whole into dependents, restored whole, checked file by file by the up-to-date check and verify,
kept by gc, carried by cache archives, and refused when they hold a link, FIFO or device."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import Workspace, bwrap_problem, counts, executed_labels
from oracle import assert_correct_build

INDEX = "posbuild-out/g/index"

# an "index" of the input (its first line only, so a change of the second is an early cutoff),
# a sub-folder, an executable and an empty folder; `use` lists it from its sandbox
BUILD = """
    genrule(
        name = "idx",
        srcs = ["in.txt"],
        out_dirs = ["index"],
        cmd = "mkdir -p $@/sub $@/empty && head -n1 $(location in.txt) > $@/first.txt && "
              + "echo two > $@/sub/b.txt && printf '#!/bin/sh\\\\necho run\\\\n' > $@/run.sh && "
              + "chmod +x $@/run.sh",
    )
    genrule(
        name = "use",
        srcs = [":idx"],
        outs = ["list.txt"],
        cmd = "(cd $(location :idx) && find . | LC_ALL=C sort && cat first.txt sub/b.txt) > $@",
    )
"""


@pytest.fixture
def folder_ws(ws: Workspace) -> Workspace:
    ws.write({"g/BUILD": BUILD, "g/in.txt": "alpha\nbeta\n"})
    return ws


def _listing(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry below `root`: relative path → (content or "<dir>", permission bits)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix()
            mode = stat.S_IMODE(path.lstat().st_mode)
            found[rel] = ("<dir>" if path.is_dir() else path.read_text(), mode)
    return found


EXPECTED = {
    "empty": ("<dir>", 0o755), "sub": ("<dir>", 0o755), "first.txt": ("alpha\n", 0o444),
    "sub/b.txt": ("two\n", 0o444), "run.sh": ("#!/bin/sh\necho run\n", 0o555),
}


def test_a_folder_output_is_stored_staged_whole_and_cached(folder_ws: Workspace) -> None:
    ws = folder_ws
    first = ws.ok("//...")
    assert counts(first) == {"executed": 2, "cached": 0, "failed": 0}
    assert _listing(ws.root / INDEX) == EXPECTED
    assert ws.out("g/list.txt") == (".\n./empty\n./first.txt\n./run.sh\n./sub\n./sub/b.txt\n"
                                    "alpha\ntwo\n")
    assert_correct_build(ws)
    assert counts(ws.ok("//...")) == {"executed": 0, "cached": 2, "failed": 0}
    # from the store alone: a clean output tree is restored without running anything
    assert ws.run("clean").returncode == 0
    assert counts(ws.ok("//...")) == {"executed": 0, "cached": 2, "failed": 0}
    assert _listing(ws.root / INDEX) == EXPECTED
    assert_correct_build(ws)
    check = ws.run("fsck")
    assert check.returncode == 0 and "no problems" in check.stdout, check.stdout + check.stderr


@pytest.mark.parametrize("change", ["edit", "add", "add-deep", "remove", "remove-folder",
                                    "remove-all"])
def test_a_changed_file_inside_an_output_folder_is_noticed_and_restored(
        folder_ws: Workspace, change: str) -> None:
    ws = folder_ws
    ws.ok("//...")
    index = ws.root / INDEX
    if change == "edit":
        (index / "first.txt").chmod(0o644)
        (index / "first.txt").write_text("edited\n")
    elif change == "add":
        (index / "stray.txt").write_text("x")
    elif change == "add-deep":
        (index / "sub" / "stray.txt").write_text("x")
    elif change == "remove":
        (index / "sub" / "b.txt").unlink()
    elif change == "remove-folder":
        (index / "empty").rmdir()
    else:
        for path in sorted(index.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        index.rmdir()
    again = ws.ok("//...")
    assert counts(again) == {"executed": 0, "cached": 2, "failed": 0}
    assert _listing(index) == EXPECTED
    assert_correct_build(ws)
    # and the state saved after the restore settles the next build by stat alone
    assert counts(ws.ok("//...")) == {"executed": 0, "cached": 2, "failed": 0}


def test_an_unchanged_folder_lets_dependents_hit_the_cache(folder_ws: Workspace) -> None:
    ws = folder_ws
    ws.ok("//...")
    ws.write({"g/in.txt": "alpha\ngamma\n"})  # the folder keeps the first line only
    cutoff = ws.ok("//...")
    assert executed_labels(cutoff) == ["//g:idx"]
    assert counts(cutoff) == {"executed": 1, "cached": 1, "failed": 0}
    ws.write({"g/in.txt": "omega\ngamma\n"})
    changed = ws.ok("//...")
    assert executed_labels(changed) == ["//g:idx", "//g:use"]
    assert ws.out("g/list.txt").endswith("omega\ntwo\n")
    assert_correct_build(ws)


def test_out_dirs_names_the_folder_in_location_and_outs_beside_files(ws: Workspace) -> None:
    ws.write({"p/BUILD": """
        genrule(name = "both", outs = ["log.txt"], out_dirs = ["d"],
                cmd = "mkdir $(location d) && echo x > $(location d)/x && echo $(OUTS) > "
                      + "$(location log.txt)")
        py_task(name = "py", script = "mk.py", out_dirs = ["pd"], args = ["$@"])
        """, "p/mk.py": "import os, sys\nos.mkdir(sys.argv[1])\n"
                        "open(os.path.join(sys.argv[1], 'f'), 'w').write('py')\n"})
    ws.ok("//...")
    assert ws.out("p/log.txt") == "posbuild-out/p/log.txt posbuild-out/p/d\n"
    assert ws.out("p/d/x") == "x\n"
    assert ws.out("p/pd/f") == "py"
    assert_correct_build(ws)


@pytest.mark.parametrize("cmd, message", [
    ("true", "declared output 'posbuild-out/p/d' was not created"),
    ("echo x > $@", "declared output folder 'posbuild-out/p/d' is a file, not a folder"),
    ("mkdir $@ && ln -s /etc/passwd $@/pw",
     "declared output folder 'posbuild-out/p/d' holds a symbolic link 'pw'"),
    ("mkdir -p $@/s && ln -s ../x $@/s/rel",
     "declared output folder 'posbuild-out/p/d' holds a symbolic link 's/rel'"),
    ("mkdir $@ && mkfifo $@/pipe",
     "declared output folder 'posbuild-out/p/d' holds a FIFO 'pipe'"),
    ("ln -s /tmp $@", "declared output folder 'posbuild-out/p/d' is a symbolic link"),
])
def test_a_bad_folder_output_fails_clearly_and_keeps_nothing(ws: Workspace, cmd: str,
                                                             message: str) -> None:
    ws.write({"p/BUILD": f'genrule(name = "t", out_dirs = ["d"], cmd = "{cmd}")\n'})
    failed = ws.build("//...")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert message in failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (ws.root / "posbuild-out/p/d").exists()
    assert ws.run("fsck").returncode == 0


@pytest.mark.parametrize("attrs, message", [
    ('outs = ["d"], out_dirs = ["d"]', "'d' is both in outs and in out_dirs"),
    ('outs = ["d/x"], out_dirs = ["d"]', "'d/x' lies inside out_dirs entry 'd'"),
    ('out_dirs = ["../d"]', "out_dirs entry '../d' is not a folder name inside the package"),
    ('out_dirs = "d"', "attribute 'out_dirs' must be a list"),
])
def test_a_bad_out_dirs_attribute_is_a_build_file_error(ws: Workspace, attrs: str,
                                                         message: str) -> None:
    ws.write({"p/BUILD": f'genrule(name = "t", {attrs}, cmd = "true")\n'})
    failed = ws.build("//...")
    assert failed.returncode == 3, failed.stdout + failed.stderr
    assert message in failed.stderr and "p/BUILD:1" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_verify_names_the_first_differing_file_of_a_folder(ws: Workspace) -> None:
    ws.write({"p/BUILD": """
        genrule(name = "same", out_dirs = ["s"], cmd = "mkdir -p $@/a && echo 1 > $@/a/x")
        genrule(name = "nd", out_dirs = ["d"],
                cmd = "mkdir -p $@/a $@/b && echo same > $@/a/x && date +%N > $@/b/t")
        """})
    ws.ok("//...")
    verified = ws.run("verify", "//p:same")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    failed = ws.run("verify", "//...")
    assert failed.returncode == 14, failed.stdout + failed.stderr
    assert "ORCH-04 //p:nd: posbuild-out/p/d/b/t: run 1 has" in failed.stdout
    assert "//p:same" not in failed.stdout


def test_verify_exempts_a_folder_tagged_nondeterministic(ws: Workspace) -> None:
    ws.write({"p/BUILD": """
        genrule(name = "nd", out_dirs = ["d"], tags = ["nondeterministic-output:d"],
                cmd = "mkdir $@ && date +%N > $@/t")
        """})
    ws.ok("//...")
    verified = ws.run("verify", "//...")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_gc_keeps_the_files_of_a_live_folder(folder_ws: Workspace) -> None:
    ws = folder_ws
    ws.ok("//...")
    ws.write({"g/in.txt": "other\n"})
    ws.ok("//...")
    collected = ws.run("gc", "--keep-generations", "1")
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert ws.run("clean").returncode == 0
    rebuilt = ws.ok("//...")
    assert counts(rebuilt) == {"executed": 0, "cached": 2, "failed": 0}
    assert ws.out("g/index/first.txt") == "other\n"
    assert_correct_build(ws)
    # the first version's result is in no kept generation, but live: its folder's files too
    ws.write({"g/in.txt": "alpha\nbeta\n"})
    assert counts(ws.ok("//...")) == {"executed": 0, "cached": 2, "failed": 0}
    assert _listing(ws.root / INDEX) == EXPECTED
    assert_correct_build(ws)
    check = ws.run("fsck")
    assert check.returncode == 0 and "no problems" in check.stdout, check.stdout


def test_rollback_restores_the_files_of_a_folder(folder_ws: Workspace) -> None:
    ws = folder_ws
    ws.ok("//...")
    ws.write({"g/in.txt": "other\n"})
    ws.ok("//...")
    back = ws.run("rollback", "--to", "1")
    assert back.returncode == 0, back.stdout + back.stderr
    assert ws.out("g/index/first.txt") == "alpha\n"
    assert ws.out("g/index/sub/b.txt") == "two\n"
    assert ws.run("fsck").returncode == 0


def test_fsck_reports_a_missing_file_blob_of_a_folder(folder_ws: Workspace) -> None:
    ws = folder_ws
    ws.ok("//...")
    from posbuild.core.digest import hash_bytes
    from posbuild.store.lmdbstore import Store

    store = Store(ws.root / ".posbuild/store")
    try:
        store.remove(blobs=[hash_bytes(b"two\n")])
    finally:
        store.close()
    check = ws.run("fsck")
    assert check.returncode != 0
    assert f"(file {INDEX}/sub/b.txt), which is not in the store" in check.stdout
    assert ws.run("fsck", "--repair").returncode == 0
    assert ws.run("clean").returncode == 0
    rebuilt = ws.ok("//...")
    assert executed_labels(rebuilt) == ["//g:idx"]  # the same folder again: `use` stays cached
    assert_correct_build(ws)


def test_a_cache_archive_carries_the_files_of_a_folder(folder_ws: Workspace,
                                                       tmp_path: Path) -> None:
    ws = folder_ws
    ws.ok("//...")
    archive = tmp_path / "cache.tar"
    key = {"POSBUILD_CACHE_KEY": "k" * 32}
    exported = ws.run("cache", "export", str(archive), env=key)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    fresh = Workspace(tmp_path / "fresh")
    fresh.root.mkdir()
    fresh.write({"posbuild.toml": "", "g/BUILD": BUILD, "g/in.txt": "alpha\nbeta\n"})
    imported = fresh.run("cache", "import", str(archive), env=key)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    built = fresh.ok("//...")
    assert counts(built) == {"executed": 0, "cached": 2, "failed": 0}
    assert _listing(fresh.root / INDEX) == EXPECTED
    assert_correct_build(fresh)


@pytest.mark.skipif(bwrap_problem() is not None, reason=f"namespace sandbox: {bwrap_problem()}")
def test_the_namespace_sandbox_stages_a_folder_read_only(folder_ws: Workspace) -> None:
    ws = folder_ws
    ws.write({"posbuild.toml": '[sandbox]\nmode = "namespace"\n', "g/BUILD": BUILD + """
    genrule(name = "writer", srcs = [":idx"], outs = ["w.txt"],
            cmd = "(echo x > $(location :idx)/new.txt && echo wrote || echo refused) > $@")
    """})
    ws.ok("//...")
    assert ws.out("g/w.txt") == "refused\n"
    assert ws.out("g/list.txt").endswith("alpha\ntwo\n")
    assert_correct_build(ws)


def test_build_verify_compares_a_folder_with_the_cached_one_file_by_file(ws: Workspace) -> None:
    ws.write({"p/BUILD": """
        genrule(name = "same", out_dirs = ["s"], cmd = "mkdir -p $@/a && echo 1 > $@/a/x")
        genrule(name = "nd", out_dirs = ["d"],
                cmd = "mkdir -p $@/a $@/b && echo same > $@/a/x && date +%N > $@/b/t")
        """})
    ws.ok("//...")
    steady = ws.build("--verify", "//p:same")
    assert steady.returncode == 0, steady.stdout + steady.stderr
    failed = ws.build("--verify", "//p:nd")
    assert failed.returncode == 14, failed.stdout + failed.stderr
    assert ("FAILED //p:nd: ORCH-04 non-deterministic execution: posbuild-out/p/d/b/t: the cached "
            "result has") in failed.stdout + failed.stderr


def test_fsck_reports_an_unsound_folder_manifest(folder_ws: Workspace) -> None:
    ws = folder_ws
    ws.ok("//...")
    from posbuild.core.digest import hash_bytes
    from posbuild.core.records import ActionResult, OutputFile
    from posbuild.store.lmdbstore import Store

    junk = b"not a manifest"
    result = ActionResult((OutputFile(INDEX, hash_bytes(junk), 1, False, tree=True),), 0,
                          hash_bytes(b""), hash_bytes(b""))
    store = Store(ws.root / ".posbuild/store")
    try:
        store.commit(result=(b"k" * 32, result), blobs=[(hash_bytes(junk), junk),
                                                        (hash_bytes(b""), b"")])
        store.flush()
    finally:
        store.close()
    check = ws.run("fsck")
    assert check.returncode == 13, check.stdout + check.stderr
    assert f"the manifest of its folder output {INDEX} is unsound" in check.stdout
    assert ws.run("fsck", "--repair").returncode == 0
    assert ws.run("fsck").returncode == 0


def test_a_failure_withdraws_a_stale_folder_whole_and_rollback_restores_it(
        folder_ws: Workspace) -> None:
    ws = folder_ws
    ws.ok("//...")
    ws.write({"g/in.txt": ""})  # `head` of nothing is fine; make the command fail instead
    ws.write({"g/BUILD": BUILD.replace("mkdir -p $@/sub", "false && mkdir -p $@/sub")})
    failed = ws.build("//...")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr
    assert "removed 2 stale outputs" in failed.stderr
    assert "`posbuild rollback` restores the last successful build" in failed.stderr
    assert not (ws.root / INDEX).exists() and not (ws.root / "posbuild-out/g/list.txt").exists()
    assert ws.run("fsck").returncode == 0
    back = ws.run("rollback")
    assert back.returncode == 0, back.stdout + back.stderr
    assert {k: v[0] for k, v in _listing(ws.root / INDEX).items() if v[0] != "<dir>"} == {
        k: v[0] for k, v in EXPECTED.items() if v[0] != "<dir>"}


def test_a_failed_dependent_keeps_what_it_wrote_not_its_folder_input(folder_ws: Workspace) -> None:
    ws = folder_ws
    ws.write({"g/BUILD": BUILD + """
    genrule(name = "bad", srcs = [":idx"], outs = ["bad.txt"],
            cmd = "echo partial > $@ && exit 3")
    """})
    failed = ws.build("//g:bad")
    assert failed.returncode == 1
    kept = ws.root / ".posbuild/failed/g/bad/files"
    assert sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file()) == [
        "posbuild-out/g/bad.txt"]


def test_an_output_may_turn_from_a_file_into_a_folder_and_back(ws: Workspace) -> None:
    as_file = 'genrule(name = "t", outs = ["o"], cmd = "echo file > $@")\n'
    as_folder = 'genrule(name = "t", out_dirs = ["o"], cmd = "mkdir $@ && echo in > $@/x")\n'
    for build, executed in ((as_file, 1), (as_folder, 1), (as_file, 0), (as_folder, 0)):
        ws.write({"p/BUILD": build})
        built = ws.ok("//...")
        assert counts(built)["executed"] == executed
        out = ws.root / "posbuild-out/p/o"
        assert (out / "x").read_text() == "in\n" if build == as_folder \
            else out.read_text() == "file\n"
        assert list((ws.root / ".posbuild/tmp").iterdir()) == []
        assert_correct_build(ws)
        assert ws.run("fsck").returncode == 0

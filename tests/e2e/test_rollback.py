"""Generations and rollback (§8): a failed build leaves no stale output, rollback restores the
last fully successful tree byte for byte, from the store, executing nothing."""

import os
from pathlib import Path

from conftest import counts

PIPELINE = {
    "pkg/raw.txt": "3\n1\n2\n",
    "pkg/BUILD": """
        genrule(name = "upstream", srcs = ["raw.txt"], outs = ["sorted.txt"], cmd = "sort $< > $@")
        genrule(name = "middle", srcs = [":upstream"], outs = ["checked.txt"],
                cmd = "if grep -q bad $<; then echo 'bad row' >&2; exit 7; fi; cat $< > $@")
        genrule(name = "downstream", srcs = [":middle"], outs = ["report.txt"], cmd = "wc -l < $< > $@")
        genrule(name = "side", srcs = ["raw.txt"], outs = ["side.txt"], cmd = "tac $< > $@")
    """,  # noqa: E501
}


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under posbuild-out/ with its bytes and mode bits."""
    out = root / "posbuild-out"
    return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mode & 0o777)
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_failed_build_removes_downstream_outputs_and_rollback_restores_the_first_tree(ws):
    ws.write(PIPELINE)
    ws.ok("//...")
    first = tree(ws.root)
    ws.write({"pkg/raw.txt": "3\nbad\n1\n"})
    failed = ws.build("-k", "//...")
    assert failed.returncode == 1
    assert "FAILED //pkg:middle: command failed (exit code 7)" in failed.stderr
    assert "removed 2 stale outputs" in failed.stderr
    after = tree(ws.root)
    assert "pkg/checked.txt" not in after and "pkg/report.txt" not in after
    assert after["pkg/sorted.txt"][0] == b"1\n3\nbad\n"  # upstream was updated
    assert after["pkg/side.txt"][0] == b"1\nbad\n3\n"  # the independent branch too (-k)

    result = ws.run("rollback")
    assert result.returncode == 0, result.stderr
    assert "rolled back posbuild-out/ to generation 1" in result.stdout
    assert tree(ws.root) == first


def test_rollback_executes_nothing_even_with_sources_gone(ws):
    ws.write(PIPELINE)
    ws.ok("//...")
    first = tree(ws.root)
    ws.write({"pkg/raw.txt": "bad\n"})
    ws.build("//...")
    os.unlink(ws.root / "pkg/raw.txt")  # nothing could be rebuilt now: rollback must not need to
    assert ws.run("rollback").returncode == 0
    assert tree(ws.root) == first


def test_every_successful_build_with_a_new_tree_records_one_generation(ws):
    ws.write(PIPELINE)
    ws.ok("//...")
    ws.ok("//...")  # nothing changed: no new generation
    ws.write({"pkg/raw.txt": "9\n8\n"})
    ws.ok("//...")
    listing = ws.run("rollback", "--list")
    assert listing.returncode == 0
    rows = [line for line in listing.stdout.splitlines()[1:] if line.strip()]
    assert [row.lstrip("* ").split()[0] for row in rows] == ["1", "2"]
    assert rows[-1].startswith("*")
    assert rows[-1].split()[-1] == "//..."


def test_rollback_to_an_older_generation_and_back(ws):
    ws.write(PIPELINE)
    ws.ok("//...")
    first = tree(ws.root)
    ws.write({"pkg/raw.txt": "9\n8\n"})
    ws.ok("//...")
    second = tree(ws.root)
    assert ws.run("rollback", "--to", "1").returncode == 0
    assert tree(ws.root) == first
    rebuilt = ws.ok("//...")  # the sources are the second version: restored from the store
    assert counts(rebuilt)["executed"] == 0
    assert tree(ws.root) == second


def test_rollback_removes_files_the_generation_does_not_list(ws):
    ws.write(PIPELINE)
    ws.ok("//pkg:side")
    ws.write({"pkg/raw.txt": "bad\n"})
    assert ws.build("//...").returncode == 1
    assert ws.run("rollback").returncode == 0
    assert sorted(tree(ws.root)) == ["pkg/side.txt"]


def test_rollback_without_any_generation_is_a_clear_error(ws):
    ws.write({"pkg/BUILD": 'genrule(name = "x", outs = ["x"], cmd = "exit 1")\n'})
    ws.build("//...")
    result = ws.run("rollback")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "posbuild: no generation recorded yet: rollback needs one fully successful build first")


def test_rollback_to_an_unknown_generation_names_the_known_ones(ws):
    ws.write(PIPELINE)
    ws.ok("//...")
    result = ws.run("rollback", "--to", "7")
    assert result.returncode == 2
    assert result.stderr.strip() == "posbuild: no generation 7 (known: 1)"


OTHER = {
    "other/in.txt": "x\n",
    "other/BUILD": 'genrule(name = "copy", srcs = ["in.txt"], outs = ["copy.txt"], cmd = "cat $< '
                   '$< > $@")\n',
}


def test_rollback_restores_what_a_failure_removed_even_after_a_successful_build_of_other_targets(
    ws):
    ws.write({**PIPELINE, **OTHER})
    ws.ok("//...")
    first = tree(ws.root)
    ws.write({"pkg/raw.txt": "3\nbad\n1\n"})
    failed = ws.build("//pkg/...")
    assert failed.returncode == 1 and "removed 2 stale outputs" in failed.stderr
    ws.write({"other/in.txt": "y\n"})
    assert counts(ws.ok("//other/..."))["executed"] == 1
    assert "pkg/checked.txt" not in tree(ws.root)
    # the latest generation must pin pkg/'s bytes
    gc = ws.run("gc", "--max-size", "1", "--keep-generations", "1")
    assert gc.returncode == 0, gc.stderr

    result = ws.run("rollback")
    assert result.returncode == 0, result.stderr
    expected = {**first, "other/copy.txt": (b"y\ny\n", first["other/copy.txt"][1])}
    # pkg/ as its last successful build left it, other/ as just built
    assert tree(ws.root) == expected
    fsck = ws.run("fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    ws.write({"pkg/raw.txt": "3\n1\n2\n"})
    assert counts(ws.ok("//..."))["executed"] == 0  # every result is still in the store
    assert tree(ws.root) == expected


def test_a_successful_build_after_a_failure_keeps_the_tree_marked_dirty_until_the_removed_outputs_return(  # noqa: E501
        ws):
    ws.write({**PIPELINE, **OTHER})
    ws.ok("//...")
    ws.write({"pkg/raw.txt": "bad\n"})
    ws.build("//pkg/...")
    ws.ok("//other/...")
    ws.ok("//other/...")  # a no-op records no generation, and forgets nothing
    listing = ws.run("rollback", "--list").stdout
    assert len([line for line in listing.splitlines()[1:] if line.strip()]) == 1
    assert ws.run("rollback").returncode == 0
    assert ws.out("pkg/report.txt") == "3\n"
    ws.write({"pkg/raw.txt": "3\n1\n2\n"})
    ws.ok("//pkg/...")
    assert (ws.root / ".posbuild/tree").read_bytes() == b"clean\n"


def test_clean_forgets_what_failures_removed(ws):
    ws.write({**PIPELINE, **OTHER})
    ws.ok("//...")
    ws.write({"pkg/raw.txt": "bad\n"})
    ws.build("//pkg/...")
    assert ws.run("clean").returncode == 0
    ws.ok("//other/...")
    assert ws.run("rollback").returncode == 0
    # the latest generation lists what the build left
    assert sorted(tree(ws.root)) == ["other/copy.txt"]


def test_a_build_of_every_target_forgets_what_a_failure_removed_from_a_target_since_deleted(ws):
    ws.write({**PIPELINE, **OTHER})
    ws.ok("//...")
    ws.write({"pkg/raw.txt": "bad\n"})
    ws.build("//pkg/...")
    ws.write({"pkg/raw.txt": "3\n1\n2\n", "pkg/BUILD": PIPELINE["pkg/BUILD"].replace(
        'genrule(name = "downstream", srcs = [":middle"], outs = ["report.txt"], cmd = "wc -l < $< '
        '> $@")', "")})
    ws.ok("//other/...")
    # pkg/report.txt may still come back
    assert (ws.root / ".posbuild/tree").read_bytes() != b"clean\n"
    ws.ok("//...")
    assert (ws.root / ".posbuild/tree").read_bytes() == b"clean\n"  # no target makes it any more
    assert ws.run("rollback").returncode == 0
    assert "pkg/report.txt" not in tree(ws.root)


def test_a_failure_promises_rollback_only_when_a_generation_holds_what_it_removed(ws):
    ws.write({**PIPELINE, "pkg/BUILD": PIPELINE["pkg/BUILD"].replace("wc -l < $< > $@", "exit 1")})
    assert ws.build("//...").returncode == 1  # no generation: //pkg:downstream never succeeded
    ws.write({"pkg/raw.txt": "bad\n"})
    failed = ws.build("//...")
    # pkg/checked.txt, in no generation
    assert "removed 1 stale output" in failed.stderr, failed.stderr
    assert "nothing to restore" in failed.stderr \
            and "`posbuild rollback` restores" not in failed.stderr
    ws.write(PIPELINE)
    ws.ok("//...")
    ws.write({"pkg/raw.txt": "bad\n"})
    failed = ws.build("//...")
    assert "`posbuild rollback` restores the last successful build" in failed.stderr, failed.stderr


def test_workspaces_sharing_a_store_each_roll_back_to_their_own_generations(tmp_path):
    from conftest import Workspace

    store = tmp_path / "shared-store"
    first, second = Workspace(tmp_path / "one"), Workspace(tmp_path / "two")
    for ws, name in ((first, "one"), (second, "two")):
        ws.write({"posbuild.toml": f'[cache]\ndir = "{store}"\n',
                  "p/BUILD": f'genrule(name = "x", outs = ["{name}.txt"], cmd = "echo {name} > '
                             '$@")\n'})
        ws.ok("//...")
    result = first.run("rollback")
    assert result.returncode == 0, result.stderr
    assert tree(first.root) == {"p/one.txt": (b"one\n", 0o444)}
    listing = first.run("rollback", "--list").stdout.splitlines()[1:]
    assert len(listing) == 1 and listing[0].startswith("*") and listing[0].split()[-1] == "//..."
    assert second.run("gc", "--keep-generations", "1").returncode == 0
    assert first.run("rollback").returncode == 0  # each workspace keeps its newest generation
    assert tree(first.root) == {"p/one.txt": (b"one\n", 0o444)}


def test_a_build_after_rolling_back_to_an_older_generation_records_the_tree_it_leaves(ws):
    """The next generation starts from the tree rollback left, not from the newer generation:
    an output the build did not touch keeps the content rollback gave it."""
    ws.write(PIPELINE)
    ws.ok("//...")
    ws.write({"pkg/raw.txt": "9\n8\n"})
    ws.ok("//...")
    assert ws.run("rollback", "--to", "1").returncode == 0
    ws.write({"pkg/raw.txt": "5\n4\n"})
    ws.ok("//pkg:side")  # only side.txt changes; the others stay as generation 1 had them
    left = tree(ws.root)
    assert left["pkg/sorted.txt"][0] == b"1\n2\n3\n"
    result = ws.run("rollback")
    assert result.returncode == 0, result.stderr
    assert "0 restored" in result.stdout
    assert tree(ws.root) == left
    assert ws.run("fsck").returncode == 0

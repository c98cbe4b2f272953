"""`posbuild fsck [--repair]` through the real CLI: the report, the exit codes, and what repair does
about partial state (ORCH-06) — leftovers of interrupted builds and dangling action results."""

from __future__ import annotations

import re

import lmdb

from conftest import counts, executed_labels
from posbuild.core.digest import hash_bytes
from posbuild.store.lmdbstore import MAP_SIZE

PIPELINE = {
    "posbuild.toml": '[build]\nsandbox_base = ".sandboxes"\n',
    "pkg/raw.txt": "3\n1\n2\n",
    "pkg/BUILD": """
        genrule(name = "sorted", srcs = ["raw.txt"], outs = ["sorted.txt"], cmd = "sort $< > $@")
        genrule(name = "count", srcs = [":sorted"], outs = ["count.txt"], cmd = "wc -l < $< > $@")
    """,
}
SUMMARY = re.compile(
    r"^fsck: checked (\d+) blobs? \((\d+) bytes?\), (\d+) action results?, (\d+) outputs?: (.*)$",
    re.M)


def summary(stdout: str) -> tuple[int, int, int, int, str]:
    match = SUMMARY.search(stdout)
    assert match, stdout
    blobs, size, results, outs, found = match.groups()
    return int(blobs), int(size), int(results), int(outs), found


def test_fsck_after_a_clean_build_finds_no_problems(ws):
    ws.write(PIPELINE)
    ws.ok("//...")
    result = ws.run("fsck")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    blobs, size, results, outs, found = summary(result.stdout)
    assert found == "no problems"
    assert blobs >= 3 and size > 0 and results == 2 and outs == 2
    assert result.stdout.count("\n") == 1  # the summary line only


def test_fsck_in_a_workspace_never_built_checks_nothing_and_creates_no_store(ws):
    result = ws.run("fsck")
    assert result.returncode == 0
    assert result.stdout == (
        "fsck: checked 0 blobs (0 bytes), 0 action results, 0 outputs: no problems\n")
    assert not (ws.root / ".posbuild/store").exists()


def test_fsck_help_names_the_exit_codes(ws):
    result = ws.run("fsck", "--help")
    assert result.returncode == 0
    assert "--repair" in result.stdout and "13 ORCH-03" in result.stdout \
            and "16 only ORCH-06" in result.stdout


def test_leftovers_of_killed_builds_are_swept_without_repair_and_a_stray_output_is_orch06(ws):
    """Invariant 3: what a killed posbuild left (temp files, orphan blob files, sandboxes of a dead
    process) is swept by fsck itself, never reported; a file in posbuild-out/ that no build
    wrote still is ORCH-06, and --repair removes it."""
    ws.write(PIPELINE)
    ws.ok("//...")
    orphan_digest = hash_bytes(b"a blob whose commit never happened").hex()
    leftovers = [".posbuild/tmp/sorted.txt.1402",
                 f".posbuild/store/cas/{orphan_digest[:2]}/{orphan_digest}",
                 ".posbuild/store/cas/ab/.tmp-k2j4", ".sandboxes/4242-0", ".sandboxes/4242.owner"]
    for path in leftovers:
        target = ws.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith("-0"):
            (target / "exec").mkdir(parents=True)
        else:
            target.write_text("half")
    ws.write({"posbuild-out/pkg/stray.txt": "not from posbuild\n"})

    found = ws.run("fsck")
    assert found.returncode == 16, found.stdout + found.stderr
    assert "ORCH-06 leftover" not in found.stdout
    assert (
        "fsck: swept 5 leftovers of killed posbuild processes (temp files, sandboxes); not "
        "corruption\n") \
        in found.stdout
    for path in leftovers:
        assert not (ws.root / path).exists(), path
    assert (
        "ORCH-06 output posbuild-out/pkg/stray.txt: not written by posbuild: the store has no "
        "record of it\n") \
        in found.stdout
    assert summary(found.stdout)[4] == "1 problem"
    assert found.stderr == ("posbuild: ORCH-06 partial state persistence: fsck found 1 problem, "
                            "listed above; run `posbuild fsck --repair`\n")

    repaired = ws.run("fsck", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired: removed 1 file under posbuild-out/;" in repaired.stdout
    assert not (ws.root / "posbuild-out/pkg/stray.txt").exists()
    again = ws.run("fsck")
    assert again.returncode == 0 and summary(again.stdout)[4] == "no problems"
    assert counts(ws.ok("//..."))["executed"] == 0


def test_a_result_whose_blob_is_gone_is_dangling_and_repair_removes_it(ws):
    """ORCH-06, not ORCH-03: nothing hashes wrong; a piece of a committed action is missing."""
    ws.write(PIPELINE)
    ws.ok("//...")
    digest = hash_bytes(b"1\n2\n3\n")
    env = lmdb.open(str(ws.root / ".posbuild/store/db"), map_size=MAP_SIZE, max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            assert txn.delete(digest, db=env.open_db(b"blobs", txn=txn))
    finally:
        env.close()

    found = ws.run("fsck")
    assert found.returncode == 16, found.stdout + found.stderr
    assert re.search(rf"^ORCH-06 result [0-9a-f]{{64}}: references blob {digest.hex()} "
                     rf"\(output posbuild-out/pkg/sorted.txt\), which is not in the store$",
                     found.stdout, re.M)
    assert re.search(r"^warning generation 1: lists posbuild-out/pkg/sorted.txt whose bytes are "
                     r"not in the store",
                     found.stdout, re.M)
    assert summary(found.stdout)[4] == "1 problem, 1 warning"

    repaired = ws.run("fsck", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired: removed 1 action result;" in repaired.stdout
    assert ws.run("fsck").returncode == 0
    rebuilt = ws.ok("//...")
    assert executed_labels(rebuilt) == ["//pkg:sorted"]
    assert ws.out("pkg/sorted.txt") == "1\n2\n3\n"
    final = ws.run("fsck")
    assert final.returncode == 0 and summary(final.stdout)[4] == "no problems"


def test_an_unreferenced_blob_is_a_warning_that_keeps_exit_code_0(ws):
    ws.write({**PIPELINE, "pkg/BUILD": """
        genrule(name = "loud", srcs = ["raw.txt"], outs = ["loud.txt"], cmd = "echo progress; cat $< > $@",
                tags = ["no-cache"])
    """})  # noqa: E501
    ws.ok("//...")
    result = ws.run("fsck")
    assert result.returncode == 0, result.stdout + result.stderr
    line = (
        f"warning blob {hash_bytes(b'progress' + bytes([10])).hex()}: unreferenced blob; `posbuild "
        "gc` reclaims it")
    assert line in result.stdout.splitlines()
    assert summary(result.stdout)[4].startswith("no problems, ")


def test_checksum_problems_decide_the_exit_code_over_partial_state(ws):
    ws.write(PIPELINE)
    ws.ok("//...")
    output = ws.root / "posbuild-out/pkg/count.txt"
    output.chmod(0o644)
    with open(output, "r+b") as handle:
        handle.write(b"4")
    ws.write({"posbuild-out/pkg/stray.txt": "not from posbuild\n"})
    found = ws.run("fsck")
    assert found.returncode == 13
    assert found.stderr == ("posbuild: ORCH-03 checksum inconsistency: fsck found 2 problems (1 "
                            "ORCH-03, 1 ORCH-06), listed above; run `posbuild fsck --repair`\n")
    repaired = ws.run("fsck", "--repair")
    assert repaired.returncode == 0
    assert summary(repaired.stdout)[4] == "2 problems"
    assert "repaired: removed 2 files under posbuild-out/;" in repaired.stdout
    assert ws.run("fsck").returncode == 0


def test_workspaces_sharing_a_store_keep_their_own_record_of_the_outputs_they_wrote(tmp_path):
    """Two checkouts of one repository share `[cache] dir`: one's builds must not overwrite what
    the store knows of the other's posbuild-out/, or fsck there calls its outputs replaced."""
    from conftest import Workspace

    store = tmp_path / "shared-store"
    first, second = Workspace(tmp_path / "one"), Workspace(tmp_path / "two")
    for ws in (first, second):
        ws.write({"posbuild.toml": f'[cache]\ndir = "{store}"\n', "p/in.txt": "2\n",
                  "p/BUILD": 'genrule(name = "x", srcs = ["in.txt"], outs = ["x.txt"], cmd = "cat '
                             '$< > $@")\ngenrule(name = "bad", srcs = ["in.txt"], outs = '
                             '["bad.txt"], cmd = "grep -q 2 $<; cp $< $@")\n'})
        ws.ok("//...")
    second.write({"p/in.txt": "3\n"})
    assert second.build("-k", "//...").returncode == 1  # x.txt is new, and in no generation
    first.write({"p/in.txt": "42\n"})
    first.ok("//...")
    assert first.run("gc", "--max-size", "1", "--keep-generations", "1").returncode == 0
    assert second.out("p/x.txt") == "3\n"
    result = second.run("fsck")
    assert result.returncode == 0, result.stdout + result.stderr

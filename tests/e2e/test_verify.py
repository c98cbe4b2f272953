"""`posbuild verify` end to end: two perturbed runs per action, byte-compared, ORCH-04 on a
difference.

Each test writes one small workspace whose action depends (or does not) on one thing a hermetic
action must not depend on, and checks the exact report line: output path, both sizes, first
differing byte.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from posbuild.engine.resolve import resolve
from posbuild.workspace.config import load_config
from posbuild.core.digest import hash_bytes
from posbuild.core.records import ActionResult, OutputFile
from posbuild.exec.sandbox import listing_follows_creation
from posbuild.store.lmdbstore import Store

CLEAN = re.compile(
    r"^verify: (\d+) actions?, (\d+) outputs?, (\d+) bytes? compared: all deterministic", re.M)


def _verify(ws, *args: str):
    return ws.run("verify", *args)


def _findings(result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("ORCH-04 ")]


def _assert_one_finding(result, label: str, path: str) -> re.Match[str]:
    assert result.returncode == 14, f"{result.returncode}\n{result.stdout}\n{result.stderr}"
    findings = _findings(result)
    assert len(findings) == 1, findings
    match = re.fullmatch(
        rf"ORCH-04 {re.escape(label)}: {re.escape(path)}: run 1 has (\d+) bytes?, run 2 has (\d+) "
        rf'bytes?, first difference at byte (\d+): run 1 "(.*)", run 2 "(.*)"',  # and what differs
        findings[0],
    )
    assert match, findings[0]
    assert "posbuild: ORCH-04 non-deterministic execution: 1 of " in result.stderr
    return match


def _tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def _results(root: Path) -> dict[bytes, ActionResult]:
    store = Store(load_config(root).store_dir)
    try:
        return dict(store.iter_results())
    finally:
        store.close()


# ---- deterministic actions pass ---------------------------------------------------------------

def test_verify_deterministic_actions_pass_and_count_what_was_compared(ws):
    ws.write({
        "pkg/in.txt": "some input\n",
        "pkg/BUILD": """
            genrule(name = "upper", srcs = ["in.txt"], outs = ["upper.txt"], cmd = "tr a-z A-Z < $< > $@")
            genrule(name = "both", srcs = [":upper"], outs = ["a.txt", "b.txt"],
                    cmd = "cp $(location :upper) $(location a.txt); printf xyz > $(location b.txt)")
        """,  # noqa: E501
    })
    result = _verify(ws)
    assert result.returncode == 0, result.stderr
    assert _findings(result) == []
    match = CLEAN.search(result.stdout)
    assert match, result.stdout
    assert match.groups() == ("2", "3", str(11 + 11 + 3))
    assert ("verify: run 2 differs from run 1 in sandbox path and its length, environment order, "
            "TZ") in result.stdout


def test_verify_builds_first_when_nothing_was_built(ws):
    ws.write(
        {"pkg/BUILD": 'genrule(name = "hello", outs = ["hello.txt"], cmd = "echo hello > $@")'})
    result = _verify(ws, "//pkg:hello")
    assert result.returncode == 0, result.stderr
    assert ws.out("pkg/hello.txt") == "hello\n"
    assert CLEAN.search(result.stdout).groups() == ("1", "1", "6")


def test_verify_quiet_prints_nothing_when_deterministic(ws):
    ws.write({"pkg/BUILD": 'genrule(name = "quiet", outs = ["quiet.txt"], cmd = "echo q > $@")'})
    result = _verify(ws, "-q")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


# ---- what verify catches ------------------------------------------------------------------------

def test_verify_reports_an_output_that_embeds_the_time(ws):
    ws.write(
        {"pkg/BUILD": 'genrule(name = "stamp", outs = ["stamp.txt"], cmd = "date +%s%N > $@")'})
    ws.ok()
    match = _assert_one_finding(_verify(ws), "//pkg:stamp", "posbuild-out/pkg/stamp.txt")
    assert int(match.group(1)) >= 19 and int(match.group(3)) < int(match.group(1))


def test_verify_reports_an_output_that_embeds_the_time_to_the_second(ws):
    """Run 2 sees another second: a shifted clock, or a wait into the next wall-clock second."""
    ws.write(
        {"pkg/BUILD": 'genrule(name = "seconds", outs = ["seconds.txt"], cmd = "date +%s > $@")'})
    _assert_one_finding(_verify(ws), "//pkg:seconds", "posbuild-out/pkg/seconds.txt")


def test_verify_reports_a_random_output(ws):
    ws.write({"pkg/BUILD": """
        genrule(name = "dice", outs = ["dice.txt"],
                cmd = "od -An -N16 -tx1 /dev/urandom > $@")
    """})
    match = _assert_one_finding(_verify(ws), "//pkg:dice", "posbuild-out/pkg/dice.txt")
    assert match.group(1) == match.group(2)


def test_verify_reports_an_output_that_depends_on_tz(ws):
    ws.write({"pkg/BUILD": 'genrule(name = "zone", outs = ["zone.txt"], cmd = "date +%Z > $@")'})
    result = _verify(ws)
    assert _findings(result) == [
        "ORCH-04 //pkg:zone: posbuild-out/pkg/zone.txt: run 1 has 4 bytes, run 2 has 6 bytes, "
        'first difference at byte 0: run 1 "UTC\\n", run 2 "+1345\\n"'
    ]
    assert result.returncode == 14


def test_verify_keeps_a_tz_the_action_declares(ws):
    ws.write({"pkg/BUILD": """
        genrule(name = "declared_zone", outs = ["declared_zone.txt"], env = {"TZ": "XYZ+3"},
                cmd = "date +%Z > $@")
    """})
    result = _verify(ws)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ws.out("pkg/declared_zone.txt") == "XYZ\n"


def test_verify_reports_an_output_that_depends_on_the_umask(ws):
    ws.write(
        {"pkg/BUILD": 'genrule(name = "mask", outs = ["mask.txt"], cmd = "touch f; stat -c %a f > '
                      '$@")'})
    result = _verify(ws)
    assert _findings(result) == [
        "ORCH-04 //pkg:mask: posbuild-out/pkg/mask.txt: run 1 has 4 bytes, run 2 has 4 bytes, "
        'first difference at byte 1: run 1 "644\\n", run 2 "600\\n"'
    ]
    assert result.returncode == 14


def test_verify_reports_an_unsorted_directory_listing(ws):
    if not listing_follows_creation(load_config(ws.root).sandbox_dir):
        pytest.skip("the sandbox file system lists a folder in its own order (e.g. ext4 hash "
                    "order), whatever the order entries are created in, so verify cannot vary it "
                    "here")
    ws.write({
        **{f"pkg/data/{name}.csv": f"{name}\n" for name in "abcde"},
        "pkg/BUILD": """
            genrule(name = "listing", srcs = glob(["data/*.csv"]), outs = ["listing.txt"], cmd = "ls -f pkg/data > $@")
        """,  # noqa: E501
    })
    match = _assert_one_finding(_verify(ws), "//pkg:listing", "posbuild-out/pkg/listing.txt")
    assert match.group(1) == match.group(2)


def test_verify_accepts_a_sorted_directory_listing(ws):
    ws.write({
        **{f"pkg/rows/{name}.csv": f"{name}\n" for name in "abcde"},
        "pkg/BUILD": """
            genrule(name = "sorted_listing", srcs = glob(["rows/*.csv"]), outs = ["sorted.txt"], cmd = "ls pkg/rows > $@")
        """,  # noqa: E501
    })
    assert _verify(ws).returncode == 0


def test_verify_reports_an_output_holding_the_sandbox_path(ws):
    ws.write({"pkg/BUILD": 'genrule(name = "where", outs = ["where.txt"], cmd = "pwd > $@")'})
    match = _assert_one_finding(_verify(ws), "//pkg:where", "posbuild-out/pkg/where.txt")
    assert int(match.group(2)) > int(match.group(1))  # run 2's sandbox path is longer


def test_verify_reports_an_output_that_depends_on_the_environment_order(ws):
    """The shell's own initial environment (/proc/$$/environ) keeps the order posbuild passed."""
    ws.write({"pkg/BUILD": """
        genrule(name = "envorder", outs = ["envorder.txt"], env = {"AAA": "1", "BBB": "2"},
                cmd = "tr '\\\\0' '\\\\n' < /proc/$$$$/environ | grep -E '^(AAA|BBB)=' > $@")
    """})
    result = _verify(ws)
    assert _findings(result) == [
        "ORCH-04 //pkg:envorder: posbuild-out/pkg/envorder.txt: run 1 has 12 bytes, run 2 has 12 "
        'bytes, first difference at byte 0: run 1 "AAA=1\\nBBB=2\\n", run 2 "BBB=2\\nAAA=1\\n"'
    ], result.stdout + result.stderr
    assert ws.out("pkg/envorder.txt") == "AAA=1\nBBB=2\n"


def test_verify_reports_a_run_that_fails_under_perturbation(ws):
    ws.write({"pkg/BUILD": """
        genrule(name = "picky", outs = ["picky.txt"], cmd = "test $$TZ = UTC || { echo wrong zone >&2; exit 3; }; echo ok > $@")
    """})  # noqa: E501
    result = _verify(ws)
    assert _findings(result) == ["ORCH-04 //pkg:picky: run 2 failed (exit code 3): wrong zone"]
    assert result.returncode == 14


def test_verify_reports_an_output_missing_from_one_run(ws):
    ws.write({"pkg/BUILD": """
        genrule(name = "sometimes", outs = ["sometimes.txt"], cmd = "if test $$TZ = UTC; then echo x > $@; fi")
    """})  # noqa: E501
    result = _verify(ws)
    assert _findings(result) == [
        "ORCH-04 //pkg:sometimes: posbuild-out/pkg/sometimes.txt: run 2 did not create it"]
    assert result.returncode == 14


def test_verify_reports_only_the_nondeterministic_actions_in_dependency_order(ws):
    ws.write({"pkg/BUILD": """
        genrule(name = "z_base", outs = ["z_base.txt"], cmd = "echo base > $@")
        genrule(name = "a_late", srcs = [":z_base"], outs = ["a_late.txt"], cmd = "cat $< > $@; date +%s%N >> $@")
        genrule(name = "m_fine", srcs = [":z_base"], outs = ["m_fine.txt"], cmd = "cat $< $< > $@")
        genrule(name = "b_first", outs = ["b_first.txt"], cmd = "od -An -N8 -tx1 /dev/urandom > $@")
    """})  # noqa: E501
    result = _verify(ws, "-j", "3")
    labels = ["//pkg:" + line.split(":")[1] for line in _findings(result)]
    in_graph_order = [a.label for a in resolve(ws.root, ["//..."]).actions if a.label in labels]
    assert sorted(labels) == ["//pkg:a_late", "//pkg:b_first"]
    assert labels == in_graph_order
    assert result.returncode == 14
    assert "2 of 4 actions are not deterministic" in result.stderr


# ---- the cached result ---------------------------------------------------------------------------

def test_verify_compares_against_the_cached_result(ws):
    """Both runs agree, but the store holds other bytes for the action's key: that is ORCH-04
    too."""
    ws.write(
        {"pkg/BUILD": 'genrule(name = "cached", outs = ["cached.txt"], cmd = "echo hello > $@")'})
    ws.ok()
    store = Store(load_config(ws.root).store_dir)
    try:
        [(key, result)] = [(k, r) for k, r in store.iter_results()
                           if r.outputs[0].path == "posbuild-out/pkg/cached.txt"]
        other = b"hellO, world\n"
        tampered = ActionResult((OutputFile(result.outputs[0].path, hash_bytes(other), len(other),
                                            False),),
                                result.exit_code, result.stdout_digest, result.stderr_digest)
        store.commit((key, tampered), [(hash_bytes(other), other)])
    finally:
        store.close()
    result = _verify(ws)
    assert _findings(result) == [
        "ORCH-04 //pkg:cached: posbuild-out/pkg/cached.txt: cached result has 13 bytes, run 1 has "
        '6 bytes, first difference at byte 4: cached result "hellO, world\\n", run 1 "hello\\n"'
    ]
    assert result.returncode == 14


# ---- verify writes nothing -----------------------------------------------------------------------

def test_verify_leaves_outputs_store_and_sandboxes_as_they_were(ws):
    ws.write({
        "pkg/in.txt": "x\n",
        "pkg/BUILD": """
            genrule(name = "keep", srcs = ["in.txt"], outs = ["keep.txt"], cmd = "cat $< $< > $@")
            genrule(name = "drift", outs = ["drift.txt"], cmd = "date +%s%N > $@")
        """,
    })
    ws.ok()
    out_before, results_before = _tree(ws.root / "posbuild-out"), _results(ws.root)
    assert _verify(ws).returncode == 14
    assert _tree(ws.root / "posbuild-out") == out_before
    assert _results(ws.root) == results_before
    sandbox_dir = load_config(ws.root).sandbox_dir
    assert not sandbox_dir.exists() or os.listdir(sandbox_dir) in ([], ["CACHEDIR.TAG"])
    rebuild = ws.ok()
    assert "(0 executed, 2 cached, 0 failed)" in rebuild.stdout


def test_verify_skips_no_cache_actions_and_says_so(ws):
    ws.write({"pkg/BUILD": """
        genrule(name = "when", outs = ["when.txt"], cmd = "date +%s%N > $@", tags = ["no-cache"])
        genrule(name = "what", outs = ["what.txt"], cmd = "echo what > $@")
    """})
    result = _verify(ws)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "verify: 1 action, 1 output, 5 bytes compared: all deterministic (1 no-cache action "
        "not verified)") \
        in result.stdout


def test_verify_does_not_start_when_the_build_fails(ws):
    ws.write({"pkg/BUILD": 'genrule(name = "broken", outs = ["broken.txt"], cmd = "exit 1")'})
    result = _verify(ws)
    assert result.returncode == 1
    assert "posbuild: cannot verify: 1 action failed to build: //pkg:broken" in result.stderr
    assert _findings(result) == []


def test_verify_help_names_the_perturbations(ws):
    result = ws.run("verify", "--help")
    assert result.returncode == 0
    for words in ("sandbox path", "TZ", "umask", "directory listing order", "libfaketime",
                  "ORCH-04"):
        assert words in result.stdout


def test_the_clock_shift_reaches_commands_in_the_namespace_sandbox(ws):
    """libfaketime is preloaded into the command, not into bwrap: preloaded into bwrap it made its
    semaphore in the host's /dev/shm, and every command of run 2 under the sandbox's fresh /dev
    failed with 'libfaketime: sem_name was ...' instead of running with the shifted clock."""
    from conftest import bwrap_problem

    from posbuild.exec.sandbox import find_libfaketime

    problem = bwrap_problem()
    if problem is not None or find_libfaketime() is None:
        pytest.skip(problem or "libfaketime is not installed")
    ws.write({
        "posbuild.toml": '[sandbox]\nmode = "namespace"\n',
        "pkg/in.txt": "data\n",
        "pkg/BUILD": """
            genrule(name = "copy", srcs = ["in.txt"], outs = ["copy.txt"], cmd = "cp $< $@")
            genrule(name = "day", outs = ["day.txt"], cmd = "date -u +%Y-%m-%d > $@")
        """,
    })
    result = _verify(ws)
    assert "failed" not in result.stdout, result.stdout
    assert _findings(result) == [line for line in _findings(result) if "//pkg:day:" in line]
    assert len(_findings(result)) == 1  # a year later, the day differs; the copy does not

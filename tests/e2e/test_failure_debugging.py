"""Failures you can debug, end to end: the expanded command, what the run wrote kept in
`.posbuild/failed/<package>/<name>/`, `--keep-sandbox`, and a hint for a program the sandbox
hides."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess

import pytest

from conftest import bwrap_problem, counts

WRITES_A_LOG = """
    genrule(name = "step", srcs = ["in.txt"], outs = ["out.txt", "step.log"],
            cmd = "echo working on $(location in.txt) > $(location step.log); "
                  + "cat $(location in.txt) > scratch.txt; echo no good >&2; exit 3")
"""


def test_failed_action_shows_its_expanded_command(ws):
    ws.write({"pkg/in.txt": "data\n", "pkg/BUILD": WRITES_A_LOG})
    result = ws.build("//pkg:step")
    assert result.returncode == 1
    assert "FAILED //pkg:step: command failed (exit code 3)\n  no good\n" in result.stderr
    assert ("  command: echo working on pkg/in.txt > posbuild-out/pkg/step.log; "
            "cat pkg/in.txt > scratch.txt; echo no good >&2; exit 3\n") in result.stderr


def test_failed_run_keeps_what_it_wrote_outside_posbuild_out(ws):
    ws.write({"pkg/in.txt": "data\n", "pkg/BUILD": WRITES_A_LOG})
    result = ws.build("//pkg:step")
    assert "  its output and the files it wrote: .posbuild/failed/pkg/step/\n" in result.stderr
    kept = ws.root / ".posbuild/failed/pkg/step"
    assert (kept / "files/posbuild-out/pkg/step.log").read_text() == "working on pkg/in.txt\n"
    assert (kept / "files/scratch.txt").read_text() == "data\n"
    assert not (kept / "files/pkg/in.txt").exists()  # an input, not something it wrote
    assert (kept / "stderr").read_text() == "no good\n"
    assert "exit 3" in (kept / "command").read_text()
    assert not (ws.root / "posbuild-out/pkg/step.log").exists()
    # never cached: the next build runs it again
    assert counts(ws.build("//pkg:step"))["failed"] == 1


def test_next_failure_replaces_kept_files_and_success_removes_them(ws):
    ws.write({"pkg/BUILD": 'genrule(name = "s", outs = ["o.txt"], '
                           'cmd = "echo first > first.txt; exit 1")\n'})
    ws.build("//pkg:s")
    kept = ws.root / ".posbuild/failed/pkg/s"
    assert (kept / "files/first.txt").exists()
    ws.write({"pkg/BUILD": 'genrule(name = "s", outs = ["o.txt"], '
                           'cmd = "echo second > second.txt; exit 1")\n'})
    ws.build("//pkg:s")
    assert sorted(p.name for p in (kept / "files").iterdir()) == ["second.txt"]
    ws.write({"pkg/BUILD": 'genrule(name = "s", outs = ["o.txt"], cmd = "echo ok > $@")\n'})
    ws.ok("//pkg:s")
    assert not kept.exists()


def test_clean_removes_kept_failures(ws):
    ws.write({"pkg/BUILD": 'genrule(name = "s", outs = ["o.txt"], cmd = "exit 1")\n'})
    ws.build("//pkg:s")
    assert (ws.root / ".posbuild/failed/pkg/s").is_dir()
    assert ws.run("clean").returncode == 0
    assert not (ws.root / ".posbuild/failed").exists()


def test_keep_sandbox_keeps_the_failed_sandbox_and_says_how_to_run_it_again(ws):
    ws.write({"pkg/in.txt": "data\n", "pkg/BUILD": WRITES_A_LOG})
    result = ws.build("--keep-sandbox", "//pkg:step")
    assert result.returncode == 1
    sandbox = re.search(r"^  sandbox kept \(until the next build\): (\S+)$", result.stderr,
                        re.M).group(1)
    assert os.path.isfile(f"{sandbox}/exec/pkg/in.txt")
    assert open(f"{sandbox}/exec/posbuild-out/pkg/step.log").read() == "working on pkg/in.txt\n"
    again = re.search(r"^  run it again: (.+)$", result.stderr, re.M).group(1)
    assert again.startswith(f"cd {shlex.quote(sandbox + '/exec')} && env -i ")
    rerun = subprocess.run(["/bin/sh", "-c", again], capture_output=True, text=True)
    assert (rerun.returncode, rerun.stderr) == (3, "no good\n")
    shutil.rmtree(sandbox)  # the next build would sweep it; this test leaves none behind


def test_a_kept_sandbox_is_swept_by_the_next_build(ws):
    ws.write({"pkg/in.txt": "data\n", "pkg/BUILD": WRITES_A_LOG})
    result = ws.build("--keep-sandbox", "//pkg:step")
    sandbox = re.search(r"^  sandbox kept \(until the next build\): (\S+)$", result.stderr,
                        re.M).group(1)
    assert os.path.isdir(sandbox)
    ws.build("//pkg:step")
    assert not os.path.exists(sandbox)


def test_without_keep_sandbox_the_failed_sandbox_goes(ws):
    ws.write({"pkg/in.txt": "data\n", "pkg/BUILD": WRITES_A_LOG})
    result = ws.build("//pkg:step")
    assert "sandbox kept" not in result.stderr and "run it again" not in result.stderr


def test_program_missing_from_the_actions_path_gets_a_hint(ws, tmp_path):
    tools = tmp_path / "mytools"
    tools.mkdir()
    (tools / "frobnicate").write_text("#!/bin/sh\necho frob\n")
    (tools / "frobnicate").chmod(0o755)
    ws.write({"pkg/BUILD": 'genrule(name = "f", outs = ["f.txt"], cmd = "frobnicate > $@")\n'})
    result = ws.build("//pkg:f", env={"PATH": f"{tools}:{os.environ['PATH']}"})
    assert result.returncode == 1
    assert "command failed (exit code 127)" in result.stderr
    from posbuild.workspace.config import load_config
    from posbuild.workspace.envfp import sandbox_path

    assert (f"  hint: 'frobnicate' is {tools}/frobnicate on this machine, but actions run with "
            f"PATH={sandbox_path(load_config(ws.root))}; call it by that path (the action's key "
            "then holds it, and the sandbox shows it)") in result.stderr
    # as the hint says
    ws.write({"pkg/BUILD":
              f'genrule(name = "f", outs = ["f.txt"], cmd = "{tools}/frobnicate > $@")\n'})
    assert ws.build("//pkg:f").returncode == 0 and ws.out("pkg/f.txt") == "frob\n"


def test_program_missing_everywhere_gets_no_hint(ws):
    ws.write({"pkg/BUILD": 'genrule(name = "f", outs = ["f.txt"], '
                           'cmd = "no-such-program-here > $@")\n'})
    result = ws.build("//pkg:f")
    assert "command failed (exit code 127)" in result.stderr and "hint:" not in result.stderr


@pytest.mark.skipif(bwrap_problem() is not None, reason=f"namespace sandbox: {bwrap_problem()}")
def test_program_the_namespace_sandbox_hides_gets_a_hint(ws):
    ws.write({"posbuild.toml": '[sandbox]\nmode = "namespace"\n',
              "tools/run.sh": "#!/bin/sh\necho ran\n",
              "pkg/BUILD": f'genrule(name = "f", outs = ["f.txt"], '
                           f'cmd = "{ws.root}/tools/run.sh > $@")\n'})
    (ws.root / "tools/run.sh").chmod(0o755)
    result = ws.build("//pkg:f")
    assert result.returncode == 1
    assert (f"  hint: {ws.root}/tools/run.sh exists on this machine, but the namespace sandbox "
            f"hides the workspace ({ws.root}); declare it") in result.stderr

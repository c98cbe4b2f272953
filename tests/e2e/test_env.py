"""The environment model end to end (§14): each action's key holds the environment it runs in
(the platform, `[env] tools`, the programs it runs and, for a Python, its packages); `posbuild env
show|approve|check`, ORCH-07 in builds, `--allow-env-drift`, `[python] interpreter`, a py_task's
`python`, `host_tools`.

Software changes are real where they can be (a virtual environment made by the test, whose
site-packages gets distributions added, removed or changed; a tool whose bytes change); platform
changes are faked through POSBUILD_TEST_FINGERPRINT (a JSON object of entries to add or replace,
null to remove), which the CLI applies on top of the real fingerprint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import counts, executed_labels
from oracle import assert_correct_build

ONE = {
    "pkg/a.txt": "alpha\n",
    "pkg/BUILD": """
        genrule(name = "copy", srcs = ["a.txt"], outs = ["copy.txt"], cmd = "cat $< > $@")
    """,
}
# one step that never runs Python, two that do: a genrule's python3 and a py_task
PIPELINE = {
    "pkg/a.txt": "alpha\n",
    "pkg/plot.py": "import importlib.metadata as m, sys\n"
                   "open(sys.argv[1], 'w').write(m.version('plotlib') + '\\n')\n",
    "pkg/BUILD": """
        genrule(name = "align", srcs = ["a.txt"], outs = ["aligned.txt"],
                cmd = "sort $< | tr a-z A-Z > $@")
        genrule(name = "plot", srcs = ["plot.py"], outs = ["plot.txt"],
                cmd = "python3 $(location plot.py) $@")
        py_task(name = "report", script = "plot.py", outs = ["report.txt"], args = ["$@"])
    """,
}


def inject(entries: dict[str, str | None]) -> dict[str, str]:
    return {"POSBUILD_TEST_FINGERPRINT": json.dumps(entries)}


def h_e(result) -> str:  # type: ignore[no-untyped-def]
    match = re.search(r"^h_E ([0-9a-f]{64})$", result.stdout, re.M)
    assert match, result.stdout + result.stderr
    return match.group(1)


def entries(result) -> dict[str, str]:  # type: ignore[no-untyped-def]
    rows = {}
    for line in result.stdout.splitlines():
        if not line.startswith("h_E "):
            name, value = line.split(None, 1)
            rows[name] = value
    return rows


def make_venv(where: Path) -> Path:
    """A virtual environment without pip (it is quick to make) of the Python running the tests."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    return where / "bin" / "python"


def set_dist(python: Path, name: str, version: str | None) -> None:
    """Install (a metadata-only distribution), change or, with None, remove `name` in the
    environment of `python`, as pip would leave its site-packages."""
    site = next((python.parent.parent / "lib").glob("python3*/site-packages"))
    for old in site.glob(f"{name}-*.dist-info"):
        shutil.rmtree(old)
    if version is not None:
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    python = make_venv(tmp_path / "venv")
    set_dist(python, "plotlib", "3.8.0")
    return python


def pipeline(ws, python: Path):  # type: ignore[no-untyped-def]
    ws.write({**PIPELINE, "posbuild.toml": f'[python]\ninterpreter = "{python}"\n'})
    return ws


# ---- what each action's key covers
# -----------------------------------------------------------------------


def test_a_package_change_re_runs_the_python_steps_only(ws, venv):
    pipeline(ws, venv)
    assert executed_labels(ws.ok("//...")) == ["//pkg:align", "//pkg:plot", "//pkg:report"]
    assert ws.out("pkg/plot.txt") == ws.out("pkg/report.txt") == "3.8.0\n"
    set_dist(venv, "plotlib", "3.7.1")  # a downgrade in the interpreter the steps run
    rebuilt = ws.ok("//...")
    assert executed_labels(rebuilt) == ["//pkg:plot", "//pkg:report"]
    assert ws.out("pkg/plot.txt") == ws.out("pkg/report.txt") == "3.7.1\n"
    assert_correct_build(ws)
    set_dist(venv, "unrelated", "1.0")  # a package added: it could be imported
    assert executed_labels(ws.ok("//...")) == ["//pkg:plot", "//pkg:report"]
    assert executed_labels(ws.ok("//...")) == []


def test_the_steps_that_run_no_python_ignore_posbuilds_own_packages(ws, tmp_path):
    ws.write(ONE)
    ws.ok("//...")
    # one more distribution on the path posbuild itself runs with
    extra = tmp_path / "extra" / "extra_pkg-1.0.dist-info"
    extra.mkdir(parents=True)
    (extra / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-pkg\nVersion: 1.0\n")
    path = os.pathsep.join(filter(None, [str(extra.parent), os.environ.get("PYTHONPATH")]))
    result = ws.build("//...", env={"PYTHONPATH": path})
    assert result.returncode == 0, result.stderr
    assert executed_labels(result) == []


def test_a_genrule_and_a_py_task_run_the_same_python(ws, venv):
    pipeline(ws, venv)
    ws.write({"pkg/which.py": "import sys\nopen(sys.argv[1], 'w').write(sys.prefix)\n",
              "pkg/BUILD": """
        genrule(name = "shell", srcs = ["which.py"], outs = ["shell.txt"],
                cmd = "python3 $(location which.py) $@")
        py_task(name = "task", script = "which.py", outs = ["task.txt"], args = ["$@"])
    """})
    ws.ok("//...")
    assert ws.out("pkg/shell.txt") == ws.out("pkg/task.txt") == str(venv.parent.parent)


def test_a_py_task_may_name_its_own_interpreter(ws, venv, tmp_path):
    other = make_venv(tmp_path / "other")
    set_dist(other, "plotlib", "1.0")
    pipeline(ws, venv)
    ws.write({"pkg/BUILD": PIPELINE["pkg/BUILD"].replace(
        'args = ["$@"])', f'args = ["$@"], python = "{other}")')})
    ws.ok("//...")
    assert ws.out("pkg/plot.txt") == "3.8.0\n" and ws.out("pkg/report.txt") == "1.0\n"
    set_dist(other, "plotlib", "1.1")
    assert executed_labels(ws.ok("//...")) == ["//pkg:report"]
    assert ws.out("pkg/report.txt") == "1.1\n"


def test_a_host_program_that_changes_re_runs_the_steps_that_run_it(ws, tmp_path):
    tool = tmp_path / "bin" / "shout"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\ntr a-z A-Z\n")
    tool.chmod(0o755)
    ws.write({
        "pkg/a.txt": "alpha\n",
        "pkg/run.sh": f"{tool} < \"$1\" > \"$2\"\n",
        "pkg/BUILD": f"""
            genrule(name = "direct", srcs = ["a.txt"], outs = ["direct.txt"],
                    cmd = "{tool} < $< > $@")
            genrule(name = "script", srcs = ["a.txt", "run.sh"], outs = ["script.txt"],
                    cmd = "sh $(location run.sh) $(location a.txt) $@",
                    host_tools = ["{tool}"])
            genrule(name = "other", srcs = ["a.txt"], outs = ["other.txt"], cmd = "cat $< > $@")
        """,
        "posbuild.toml": "[sandbox]\nmode = \"folder\"\n",
    })
    ws.ok("//...")
    assert ws.out("pkg/direct.txt") == ws.out("pkg/script.txt") == "ALPHA\n"
    tool.write_text("#!/bin/sh\ntr a-z A-Z | rev\n")
    assert executed_labels(ws.ok("//...")) == ["//pkg:direct", "//pkg:script"]
    assert ws.out("pkg/direct.txt") == ws.out("pkg/script.txt") == "AHPLA\n"
    assert_correct_build(ws)


def test_a_platform_change_re_executes_every_action(ws):
    ws.write(ONE)
    assert executed_labels(ws.ok("//...")) == ["//pkg:copy"]
    other = inject({"os.release": "99.0"})
    changed = ws.build("//...", env=other)
    assert counts(changed) == {"executed": 1, "cached": 0, "failed": 0}
    assert counts(ws.build("//...", env=other)) == {"executed": 0, "cached": 1, "failed": 0}
    hardware = ws.build("//...", env=inject({"os.release": "99.0", "cpu.model": "Other"}))
    assert counts(hardware) == {"executed": 0, "cached": 1, "failed": 0}


def test_explain_says_the_environment_changed(ws, venv):
    pipeline(ws, venv)
    ws.ok("//...")
    set_dist(venv, "plotlib", "4.0")
    result = ws.ok("--explain", "//pkg:plot")
    assert "environment" in result.stdout + result.stderr


# ---- [python] interpreter
# ---------------------------------------------------------------------------------


def test_a_bad_interpreter_is_a_clear_error(ws):
    ws.write({**ONE, "posbuild.toml": '[python]\ninterpreter = "/no/such/python"\n'})
    result = ws.build("//...")
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip() == (f"posbuild: {ws.root}/posbuild.toml: [python] interpreter: "
                                     "'/no/such/python' is not an executable file")
    ws.write({"posbuild.toml": '[python]\ninterpreter = "bin/python"\n'})
    result = ws.build("//...")
    assert result.returncode == 3 and "must be an absolute path or a bare name" in result.stderr
    assert not (ws.root / "posbuild-out").exists()


def test_the_workspace_python_runs_in_the_namespace_sandbox(ws):
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    # inside the workspace, which the sandbox hides: shown again for the actions that run it
    venv = make_venv(ws.root / ".venv")
    set_dist(venv, "plotlib", "3.8.0")
    pipeline(ws, venv)
    ws.write({"posbuild.toml":
              f'[python]\ninterpreter = "{venv}"\n[sandbox]\nmode = "namespace"\n'})
    result = ws.ok("//...")
    assert executed_labels(result) == ["//pkg:align", "//pkg:plot", "//pkg:report"]
    assert ws.out("pkg/plot.txt") == ws.out("pkg/report.txt") == "3.8.0\n"


# ---- env show, approve and check
# ----------------------------------------------------------------------------


def test_env_show_lists_what_the_workspaces_actions_run(ws, venv):
    pipeline(ws, venv)
    ws.write({"posbuild.toml": f'[python]\ninterpreter = "{venv}"\n[env]\ntools = ["sh"]\n'})
    result = ws.run("env", "show")
    assert result.returncode == 0, result.stderr
    rows = entries(result)
    for name in ("os.system", "os.release", "os.kernel", "libc", "cpu.arch"):
        assert rows[name], name
    for name in ("cpu.model", "host.name", "posbuild.version"):
        assert rows[name].endswith("(recorded, not hashed)")
    for word in ("sort", "tr", "python3", "sh", str(venv)):
        path, digest = rows[f"tool.{word}"].split()
        assert os.path.isabs(path) and re.fullmatch(r"[0-9a-f]{64}", digest), word
    pythons = [name for name in rows if name.startswith("python[") and "]." not in name]
    assert len(pythons) == 1 and pythons[0].startswith(f"python[{venv.parent}/")
    assert rows[f"{pythons[0]}.dist.plotlib"] == "3.8.0"
    assert not any(name.startswith("dist.") for name in rows)  # not posbuild's own packages
    names = [line.split()[0] for line in result.stdout.splitlines()[:-1]]
    assert names == sorted(names)
    data = json.loads(ws.run("env", "show", "--json").stdout)
    assert data["hash"] == h_e(result) and "posbuild.version" in data["not_hashed"]


def test_env_show_on_a_workspace_whose_build_files_fail_shows_the_platform(ws):
    ws.write({"pkg/BUILD": "genrule(\n"})
    result = ws.run("env", "show")
    assert result.returncode == 0, result.stderr
    assert "warning: the BUILD files do not load" in result.stderr
    assert "os.system" in entries(result)


def test_approve_then_check_then_drift_in_what_the_actions_use(ws, venv):
    pipeline(ws, venv)
    (ws.root / "posbuild.lock").write_text(json.dumps({"format": 1,
                                                       "sources": {"pkg/a.txt": "ab" * 32}}))
    approved = ws.run("env", "approve")
    assert approved.returncode == 0, approved.stderr
    lock = json.loads((ws.root / "posbuild.lock").read_text())
    assert lock["sources"] == {"pkg/a.txt": "ab" * 32}
    assert lock["environment"]["hash"] == h_e(ws.run("env", "show"))
    assert "environment matches the approved hash" in ws.run("env", "check").stdout
    (ws.root / "posbuild.lock").write_text(json.dumps({"format": 1,
                                                       "environment": lock["environment"]}))
    assert executed_labels(ws.ok("//...")) == ["//pkg:align", "//pkg:plot", "//pkg:report"]
    set_dist(venv, "plotlib", "3.9.0")
    check = ws.run("env", "check")
    assert check.returncode == 17
    assert re.search(r"changed python\[\S+\]\.dist\.plotlib 3\.8\.0 -> 3\.9\.0", check.stderr)
    # a build of the step that runs no Python is not concerned
    assert executed_labels(ws.ok("//pkg:align")) == []
    refused = ws.build("//pkg:plot")
    assert refused.returncode == 17, refused.stderr
    first, *rest = refused.stderr.splitlines()
    assert first.startswith("posbuild: ORCH-07 environment drift: the environment these actions "
                            "run in is not the one approved in posbuild.lock (1 entry differs;")
    assert len(rest) == 1 and "dist.plotlib 3.8.0 -> 3.9.0" in rest[0]
    assert executed_labels(refused) == []
    allowed = ws.build("--allow-env-drift", "//pkg:plot")
    assert allowed.returncode == 0 and "warning: --allow-env-drift" in allowed.stderr
    assert executed_labels(allowed) == ["//pkg:plot"]
    assert "(environment drift allowed)" in ws.run("log").stdout
    assert ws.run("env", "approve").returncode == 0
    assert executed_labels(ws.ok("//...")) == ["//pkg:report"]


def test_check_without_approval_is_an_error(ws):
    result = ws.run("env", "check")
    assert result.returncode == 1
    assert "posbuild env approve" in result.stderr


def test_hardware_only_change_is_a_note_not_drift(ws):
    ws.write(ONE)
    ws.run("env", "approve")
    other = inject({"cpu.model": "Some Other CPU @ 1 GHz", "host.name": "elsewhere"})
    check = ws.run("env", "check", env=other)
    assert check.returncode == 0, check.stderr
    assert "note: changed cpu.model" in check.stderr and "Some Other CPU @ 1 GHz" in check.stderr
    built = ws.build("//...", env=other)
    assert built.returncode == 0, built.stderr
    assert "ORCH-07" not in built.stderr


def test_a_platform_drift_stops_a_build_before_anything_runs(ws):
    ws.write(ONE)
    ws.run("env", "approve")
    result = ws.build("//...", env=inject({"os.release": "99.1"}))
    assert result.returncode == 17, result.stdout + result.stderr
    assert result.stderr.splitlines()[-1].strip().endswith("-> 99.1")
    assert executed_labels(result) == []
    assert not (ws.root / "posbuild-out" / "pkg" / "copy.txt").exists()


# ---- [env] tools
# -----------------------------------------------------------------------------------------


def test_a_tool_whose_bytes_change_is_drift_and_re_executes(ws, tmp_path):
    tool = tmp_path / "bin" / "mytool"
    tool.parent.mkdir()
    shutil.copy("/bin/true", tool)
    ws.write({**ONE, "posbuild.toml": f'[env]\ntools = ["{tool}"]\n'})
    before = ws.run("env", "show")
    assert entries(before)[f"tool.{tool}"].startswith(f"{tool} ")
    assert executed_labels(ws.ok("//...")) == ["//pkg:copy"]
    assert executed_labels(ws.ok("//...")) == []
    ws.run("env", "approve")
    with open(tool, "ab") as handle:
        handle.write(b"\0")
    after = ws.run("env", "show")
    assert h_e(after) != h_e(before)
    drift = ws.build("//...")
    assert drift.returncode == 17
    assert f"changed tool.{tool} {tool} " in drift.stderr
    rebuilt = ws.build("--allow-env-drift", "//...")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert executed_labels(rebuilt) == ["//pkg:copy"]


def test_a_missing_tool_is_a_clear_error(ws):
    ws.write({**ONE, "posbuild.toml": '[env]\ntools = ["no-such-tool-xyz"]\n'})
    for result in (ws.run("env", "show"), ws.build("//...")):
        assert result.returncode == 3
        assert "no-such-tool-xyz" in result.stderr and "sandbox PATH" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_relative_tool_path_is_rejected(ws):
    ws.write({"posbuild.toml": '[env]\ntools = ["bin/tool"]\n'})
    result = ws.run("env", "show")
    assert result.returncode == 3
    assert "[env] tools" in result.stderr and "bin/tool" in result.stderr


def test_host_tools_must_be_names_or_absolute_paths(ws):
    ws.write({"pkg/BUILD": 'genrule(name = "x", outs = ["x"], cmd = "touch $@", '
                           'host_tools = ["bin/tool"])\n'})
    result = ws.build("//...")
    assert result.returncode == 3, result.stderr
    assert "pkg/BUILD:1" in result.stderr and "host_tools" in result.stderr


def test_a_missing_module_names_the_python_that_ran(ws, venv):
    pipeline(ws, venv)
    ws.write({"pkg/plot.py": "import no_such_module_xyz\n"})
    result = ws.build("//pkg:report")
    assert result.returncode == 1
    assert re.search(r"hint: module 'no_such_module_xyz' is not installed in the Python this "
                     rf"action ran \({re.escape(str(venv.parent))}/python3?[.0-9]*\); install it "
                     r"there, or choose the Python: \[python\] interpreter in posbuild.toml",
                     result.stderr), result.stderr

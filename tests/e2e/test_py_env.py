"""py_env end to end: a content-addressed virtual environment made from a requirements file,
which a py_task names; changing the requirements re-runs the steps that run it, and only those.

The requirements install wheels the test makes (`--no-index --find-links`), so nothing needs the
network; making each environment still takes seconds (venv + pip), so the tests share them where
they can.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

from conftest import POSBUILD, bwrap_problem, executed_labels
from oracle import assert_correct_build

BUILD = """
    py_env(name = "plot_env", requirements = "requirements.txt", srcs = glob(["wheels/*.whl"]))
    py_task(name = "plot", script = "plot.py", outs = ["plot.txt"], args = ["$@"],
            python = ":plot_env")
    genrule(name = "align", srcs = ["a.txt"], outs = ["aligned.txt"], cmd = "sort $< > $@")
"""
PLOT = "import sys, plotlib\nopen(sys.argv[1], 'w').write(plotlib.__version__ + '\\n')\n"


def wheel(folder: Path, name: str, version: str) -> None:
    """A pure-Python wheel that pip installs offline."""
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"__version__ = '{version}'\n".encode(),
             f"{info}/METADATA":
                 f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n"}

    def line(path: str, data: bytes) -> str:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        return f"{path},sha256={digest},{len(data)}\n"

    record = "".join(line(p, d) for p, d in files.items()) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{info}/RECORD", record)


def requirements(version: str) -> str:
    return f"--no-index\n--find-links wheels\nplotlib=={version}\n"


def pipeline(ws, mode: str = "auto"):  # type: ignore[no-untyped-def]
    (ws.root / "p" / "wheels").mkdir(parents=True)
    for version in ("1.0", "2.0"):
        wheel(ws.root / "p" / "wheels", "plotlib", version)
    ws.write({"p/BUILD": BUILD, "p/plot.py": PLOT, "p/a.txt": "b\na\n",
              "p/requirements.txt": requirements("1.0"),
              "posbuild.toml": f'[sandbox]\nmode = "{mode}"\n'})
    return ws


def making(result) -> bool:  # type: ignore[no-untyped-def]
    return "making the Python environment of //p:plot_env" in result.stderr


def test_changing_the_requirements_re_runs_the_steps_that_run_the_environment(ws):
    pipeline(ws, "namespace" if bwrap_problem() is None else "folder")
    first = ws.ok("//...")
    assert making(first) and executed_labels(first) == ["//p:align", "//p:plot"]
    assert ws.out("p/plot.txt") == "1.0\n"
    again = ws.ok("//...")
    assert not making(again) and executed_labels(again) == []
    ws.write({"p/requirements.txt": requirements("2.0")})
    upgraded = ws.ok("//...")
    assert making(upgraded) and executed_labels(upgraded) == ["//p:plot"]
    assert ws.out("p/plot.txt") == "2.0\n"
    assert_correct_build(ws)
    # going back finds the environment made before, and the result made with it
    ws.write({"p/requirements.txt": requirements("1.0")})
    back = ws.ok("//...")
    assert not making(back) and executed_labels(back) == []
    assert ws.out("p/plot.txt") == "1.0\n"
    # its packages are what `env show` describes for the step that runs it
    shown = ws.run("env", "show").stdout
    assert any(line.startswith("python[") and ".dist.plotlib " in line and line.endswith(" 1.0")
               for line in shown.splitlines()), shown
    assert ws.run("fsck").returncode == 0


def test_pip_runs_in_the_sandbox_and_sees_only_the_declared_files(ws):
    pipeline(ws, "namespace" if bwrap_problem() is None else "folder")
    # the wheels are in the workspace, but not declared: the sandbox does not hold them
    ws.write({"p/BUILD": BUILD.replace(', srcs = glob(["wheels/*.whl"])', "")})
    result = ws.build("//p:plot")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "making its Python environment failed" in result.stderr
    assert "plotlib==1.0" in result.stderr  # pip found no distribution: no wheels folder there
    ws.write({"p/BUILD": BUILD})
    assert executed_labels(ws.ok("//p:plot")) == ["//p:plot"]


def test_a_requirement_pip_cannot_install_fails_the_build_with_its_output(ws):
    pipeline(ws, "folder")
    ws.write({"p/requirements.txt": requirements("9.9")})
    result = ws.build("//...")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "posbuild: //p:plot_env: making its Python environment failed:" in result.stderr
    assert "plotlib==9.9" in result.stderr  # pip's own words, in the tail shown
    assert "Traceback" not in result.stderr.split("failed:")[0]
    assert not (ws.root / "posbuild-out" / "p" / "plot.txt").exists()
    ws.write({"p/requirements.txt": requirements("1.0")})
    assert executed_labels(ws.ok("//...")) == ["//p:align", "//p:plot"]


def test_a_build_killed_while_making_an_environment_makes_it_again(ws):
    pipeline(ws, "folder")
    build = subprocess.Popen([*POSBUILD, "build", "//..."], cwd=ws.root, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True, env=dict(os.environ))
    envs = ws.root / ".posbuild" / "envs"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(envs.glob("*/bin/python")):
        time.sleep(0.05)
    os.killpg(build.pid, signal.SIGKILL)
    build.communicate(timeout=30)
    assert not any(envs.glob("*/.complete"))  # killed before the environment was whole
    fsck = ws.run("fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    again = ws.ok("//...")
    assert making(again) and ws.out("p/plot.txt") == "1.0\n"
    assert_correct_build(ws)


def test_bad_py_env_declarations_are_build_errors(ws):
    ws.write({"p/BUILD": """
        py_env(name = "env", requirements = "missing.txt")
        py_task(name = "t", script = "t.py", outs = ["t.txt"], python = ":env")
    """, "p/t.py": ""})
    result = ws.build("//...")
    assert result.returncode == 3
    assert "requirements entry 'missing.txt': no such target or source file" in result.stderr
    ws.write({"p/BUILD": """
        genrule(name = "g", outs = ["g.txt"], cmd = "touch $@")
        py_task(name = "t", script = "t.py", outs = ["t.txt"], python = ":g")
    """})
    result = ws.build("//...")
    assert result.returncode == 3
    assert "//p:t: python ':g': //p:g is a genrule, not a py_env" in result.stderr
    ws.write({"p/BUILD": """
        genrule(name = "g", outs = ["req.txt"], cmd = "touch $@")
        py_env(name = "env", requirements = ":req.txt")
        py_task(name = "t", script = "t.py", outs = ["t.txt"], python = ":env")
    """})
    result = ws.build("//...")
    assert result.returncode == 3
    assert "must be a source file" in result.stderr


def test_gc_removes_the_environments_no_py_env_uses_any_more(ws):
    # as builds leave them: the current environment of //p:env, and one made for requirements
    # since changed (whole, with its marker); the folders hold a file each
    envs = ws.root / ".posbuild" / "envs"
    for name in ("a" * 32, "b" * 32):
        (envs / name / "bin").mkdir(parents=True)
        (envs / name / "bin" / "python").write_bytes(b"x" * 1000)
        (envs / name / ".complete").write_bytes(b"")
    (envs / "by-label" / "p").mkdir(parents=True)
    (envs / "by-label" / "p" / "env").symlink_to(Path("..") / ".." / ("a" * 32))
    result = ws.run("gc")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == ("gc: removed 1 Python environment no py_env uses "
                                             "any more; freed 1000 B")
    assert sorted(p.name for p in envs.iterdir()) == ["a" * 32, "by-label"]
    assert "Python environment" not in ws.run("gc").stdout  # nothing more to remove

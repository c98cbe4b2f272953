"""How the `posbuild` command leaves after a build in its own process (client.py): without
Python's shutdown, but with the exit code the command chose, its output flushed, and the handlers
registered with `atexit` run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# what the `posbuild` script runs, after something registered an exit handler
SCRIPT = """
import atexit, sys
atexit.register(lambda: print("exit handler ran", flush=True))
sys.argv = ["posbuild", *sys.argv[1:]]
from posbuild.client import main
main()
"""


def _posbuild(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def _workspace(root: Path) -> Path:
    (root / "posbuild.toml").write_text('[sandbox]\nmode = "folder"\n')
    (root / "pkg").mkdir()
    (root / "pkg/a.txt").write_text("a\n")
    (root / "pkg/BUILD").write_text(
        'genrule(name = "copy", srcs = ["a.txt"], outs = ["b.txt"], cmd = "cat $< > $@")\n')
    return root


def test_a_successful_build_exits_0_with_its_output_and_the_exit_handlers(tmp_path):
    root = _workspace(tmp_path)
    done = _posbuild(root, "build", "--no-server", "//pkg:copy")
    assert done.returncode == 0, done.stderr
    assert "OK: 1 action (1 executed" in done.stdout
    assert done.stdout.rstrip().endswith("exit handler ran")
    assert (root / "posbuild-out/pkg/b.txt").read_text() == "a\n"


def test_a_failing_command_keeps_its_exit_code(tmp_path):
    root = _workspace(tmp_path)
    done = _posbuild(root, "build", "--no-server", "//nowhere:x")
    assert done.returncode == 3
    assert "no such package '//nowhere'" in done.stderr
    assert "exit handler ran" in done.stdout
    assert "Traceback" not in done.stderr

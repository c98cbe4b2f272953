"""The benchmark scripts run as docs/benchmarks.md shows them: from the repository root, with
`--posbuild .venv/bin/posbuild`, a path relative to where they were started (each build runs in
a generated workspace elsewhere). Tiny sizes: these check that the scripts work, not how fast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "posbuild"  # the command pip installed beside python

pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="no posbuild command beside python")


def _bench(*argv: str) -> subprocess.CompletedProcess[str]:
    relative = os.path.relpath(SCRIPT, REPO)
    return subprocess.run([sys.executable, *argv, "--posbuild", relative], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "POSBUILD_NO_SERVER": "1"})


def test_the_chain_benchmark_takes_posbuild_by_a_relative_path():
    run = _bench("bench/bench_chain.py", "--length", "3", "--sleep", "0", "--repeat", "1")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "posbuild" in run.stdout and "make" in run.stdout


def test_the_budgets_benchmark_takes_posbuild_by_a_relative_path():
    run = _bench("bench/bench_budgets.py", "--repeat", "1")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "x the optimum" in run.stdout


def test_a_posbuild_that_is_not_there_is_one_line():
    run = subprocess.run([sys.executable, "bench/bench_chain.py", "--posbuild", "no/such/posbuild"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "posbuild executable not found: no/such/posbuild" in run.stderr
    assert "Traceback" not in run.stderr

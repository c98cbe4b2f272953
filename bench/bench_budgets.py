#!/usr/bin/env python3
"""Mixed resource budgets: how close a cold build comes to the best schedule.

Why this exists: a budget (`[resources]` in posbuild.toml) must be used, not only respected.
The workspace has `cpu = 2, mem_mb = 1000` and nine equally urgent `sleep 0.6` actions: four
need 600 MB, four 100 MB and one both processors. Two 600 MB actions never fit together, so
the best schedule pairs each with a 100 MB one and runs the two-processor action alone: five
waves, 3.0 s. Running the 100 MB ones two by two first leaves the 600 MB ones to run alone
afterwards, a processor idle: seven waves or more. The labels sort the 100 MB ones first, so
label order alone gives that schedule.

Each build is cold (its `.posbuild` and `posbuild-out` removed first); the executables given
run alternately on the same workspace, so the machine's drift spreads evenly. Prints the median
wall time of each against the optimum. Only the Python standard library is used.

    python3 bench/bench_budgets.py --posbuild main=/work/main/.venv/bin/posbuild \\
        --posbuild "branch=env PYTHONPATH=$PWD /work/main/.venv/bin/python -m posbuild"
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLEEP = 0.6
OPTIMUM = 5 * SLEEP  # four 600 MB + 100 MB pairs, then the two-processor action
ACTIONS = ([(f"a{n}", 1, 100) for n in range(4)] + [(f"b{n}", 1, 600) for n in range(4)]
           + [("c", 2, 0)])


def write_workspace(root: Path) -> None:
    """The mixed-budget workspace: nine independent actions in package `p`."""
    (root / "p").mkdir(parents=True)
    (root / "posbuild.toml").write_text('[resources]\ncpu = 2\nmem_mb = 1000\n')
    (root / "p" / "BUILD").write_text("".join(
        f'genrule(name = "{name}", outs = ["{name}.txt"], '
        f'resources = {{"cpu": {cpu}, "mem_mb": {mem}}},\n'
        f'        cmd = "sleep {SLEEP}; echo {name} > $@")\n'
        for name, cpu, mem in ACTIONS))


def cold_build(command: list[str], root: Path, jobs: int) -> float:
    """Wall seconds of one cold build."""
    for name in (".posbuild", "posbuild-out"):
        shutil.rmtree(root / name, ignore_errors=True)
    started = time.perf_counter()
    result = subprocess.run([*command, "build", f"-j{jobs}", "-q", "//..."], cwd=root,
                            capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"bench_budgets: {shlex.join(command)} failed:\n{result.stderr}")
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--posbuild", action="append", metavar="[NAME=]COMMAND",
                   help="a posbuild executable or command line; repeat to compare "
                        "(default: posbuild on PATH)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    tools: dict[str, list[str]] = {}
    for given in args.posbuild or [shutil.which("posbuild") or "posbuild"]:
        name, _, command = given.partition("=") if "=" in given.split()[0] else ("", "", given)
        argv = shlex.split(command)
        found = shutil.which(argv[0])
        if found is None:
            p.error(f"posbuild executable not found: {argv[0]}")
        tools[name or command] = [os.path.abspath(found), *argv[1:]]  # run in the workspace
    times: dict[str, list[float]] = {name: [] for name in tools}
    with tempfile.TemporaryDirectory(prefix="bench-budgets-") as temp:
        root = Path(temp)
        write_workspace(root)
        for _ in range(args.repeat):
            for name, command in tools.items():
                times[name].append(cold_build(command, root, args.jobs))
    print(f"mixed budgets, cpu=2 mem_mb=1000, -j{args.jobs}: optimum {OPTIMUM:.1f} s "
          "(plus posbuild's own start-up)")
    for name, found in times.items():
        median = statistics.median(found)
        print(f"  {name}: median {median:.2f} s of {len(found)} cold builds "
              f"(min {min(found):.2f}), {median / OPTIMUM:.2f}x the optimum")


if __name__ == "__main__":
    main()

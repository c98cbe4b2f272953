#!/usr/bin/env python3
"""How long a dependent action waits after the action it depends on ends: a chain, timed.

Why this exists: in a pipeline whose steps run one after another (align → sort → call), every
link pays the build tool's latency between "the command ended" and "the next command started":
collecting and hashing the outputs, committing them, deciding the next action is ready, staging
its sandbox, starting its process. Spec §15 allows under 5% of the run time for orchestration.
This builds a chain of `--length` actions, each sleeping `--sleep` seconds and then copying the
previous one's output (the first one copies `seed.txt`), with posbuild, make and ninja on the same
commands. Each tool builds its chain once untimed (posbuild's build server starts, its graph is
analysed), then, per repetition, `seed.txt` is edited and the whole chain rebuilt and timed: the
daily "one edit, the pipeline re-runs" case. It prints, per tool:

* wall time against the ideal (length × sleep), and the overhead per link, of the stamped
  chain below, and **plain s**: the wall time of the same chain without the stamps (the
  commands as a user writes them, `sleep S && cat $< > $@`), built beside it (in the other
  sandboxes, which take no stamps, the one chain is the plain one);
* the **gap**: the median time from one command's last instruction to the next command's first
  (each command appends `date +%s%N` to a file outside the workspace as it begins and ends), the
  latency a dependent really waits, shell start-up included, which all three tools pay;
* the **fixed** cost: wall time minus the span from the first command's start to the last one's
  end (starting the tool, loading the graph, checking what changed, saving state);
* the **shell**: how long the tool's shell takes, alone, from being spawned to its first stamp
  (median of `SHELL_RUNS` runs of `date +%s%N` under it), and **own**: the gap less that, the
  tool's own latency from a command's end to the next command's start.

posbuild runs every command under `/bin/bash -euo pipefail` (its contract, as Bazel's genrule
and Snakemake do); make and ninja run theirs under `/bin/sh`, dash on Debian, which starts in
about half the time. The `make-bash` row runs the same Makefile with `SHELL := /bin/bash` and
`.SHELLFLAGS := -euo pipefail -c`: the tools compared on the same shell.

The gap needs the commands to write outside their sandbox, which only the folder sandbox allows:
with `--sandbox namespace` or `auto`, only wall times are printed.

    .venv/bin/python bench/bench_chain.py --length 20 --sleep 0.25 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def stamped(command: str, sleep: float, stamps: Path | None) -> str:
    """`command` after `sleep`, between two time stamps appended to `stamps` (if any)."""
    if stamps is None:
        return f"sleep {sleep} && {command}"
    return f"date +%s%N >> {stamps}; sleep {sleep} && {command}; date +%s%N >> {stamps}"


def write_posbuild(root: Path, length: int, sleep: float, mode: str,
                   stamps: Path | None) -> None:
    (root / "posbuild.toml").write_text(f'[sandbox]\nmode = "{mode}"\n')
    rules = []
    for i in range(length):
        srcs = f'srcs = [":s{i - 1}"], ' if i else ""
        srcs = f'srcs = [":s{i - 1}"], ' if i else 'srcs = ["seed.txt"], '
        command = stamped("cat $< > $@", sleep, stamps)
        rules.append(f'genrule(name = "s{i}", {srcs}outs = ["s{i}.txt"], cmd = "{command}")\n')
    (root / "BUILD").write_text("".join(rules))


def write_make(root: Path, length: int, sleep: float, stamps: Path | None,
               bash: bool = False) -> None:
    """`bash`: the recipes run under `/bin/bash -euo pipefail`, as posbuild runs its commands,
    instead of make's `/bin/sh` (dash here, which starts in half the time)."""
    lines = [f"all: out/s{length - 1}.txt\n"]
    if bash:
        lines.insert(0, "SHELL := /bin/bash\n.SHELLFLAGS := -euo pipefail -c\n")
    for i in range(length):
        prev = f"out/s{i - 1}.txt" if i else "seed.txt"
        command = stamped(f"cat {prev} > $@", sleep, stamps)
        lines.append(f"out/s{i}.txt: {prev}\n\t@mkdir -p out; {command}\n")
    (root / "Makefile").write_text("".join(lines))


def write_ninja(root: Path, length: int, sleep: float, stamps: Path | None) -> None:
    lines = ["rule step\n  command = $cmd\n"]
    for i in range(length):
        prev = f"out/s{i - 1}.txt" if i else "seed.txt"
        out = f"out/s{i}.txt"
        command = stamped(f"cat {prev} > {out}", sleep, stamps)
        lines.append(f"build {out}: step {prev}\n  cmd = {command}\n")
    (root / "build.ninja").write_text("".join(lines))


def read_stamps(stamps: Path) -> tuple[list[float], float]:
    """(gaps between one command's end and the next one's start, span first start → last end),
    in seconds."""
    values = [int(word) / 1e9 for word in stamps.read_text().split()]
    starts, ends = values[0::2], values[1::2]
    return [b - a for a, b in zip(ends, starts[1:])], ends[-1] - starts[0]


SHELL_RUNS = 50
SHELLS = {"posbuild": ["/bin/bash", "-euo", "pipefail", "-c"], "make": ["/bin/sh", "-c"],
          "ninja": ["/bin/sh", "-c"], "make-bash": ["/bin/bash", "-euo", "pipefail", "-c"]}


def shell_start(shell: list[str]) -> float:
    """Seconds from spawning `shell` to its first time stamp, the median of `SHELL_RUNS`."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "TZ": "UTC"}
    starts = []
    for _ in range(SHELL_RUNS):
        read, write = os.pipe()
        begun = time.time_ns()
        pid = os.posix_spawn(shell[0], [*shell, "date +%s%N"], env,
                             file_actions=[(os.POSIX_SPAWN_DUP2, write, 1)])
        os.close(write)
        with os.fdopen(read, "rb") as out:
            stamp = int(out.read())
        os.waitpid(pid, 0)
        starts.append((stamp - begun) / 1e9)
    return statistics.median(starts)


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--sleep", type=float, default=0.25)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--posbuild", default="posbuild", help="the posbuild executable")
    parser.add_argument("--sandbox", default="folder", choices=("folder", "namespace", "auto"))
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    found = shutil.which(args.posbuild)
    if found is None:
        parser.error(f"posbuild executable not found: {args.posbuild}")
    posbuild = [os.path.abspath(found)]  # the builds run in the generated workspace
    tools = {"posbuild": [*posbuild, "build", "-q", "-j2", "//..."],
             "make": ["make", "-s", "-j2"], "ninja": ["ninja", "-j2"],
             "make-bash": ["make", "-s", "-j2"]}
    available = {name: argv for name, argv in tools.items() if shutil.which(argv[0])}
    walls: dict[str, list[float]] = {name: [] for name in available}
    plain: dict[str, list[float]] = {name: [] for name in available}
    gaps: dict[str, list[float]] = {name: [] for name in available}
    fixed: dict[str, list[float]] = {name: [] for name in available}
    measure_gaps = args.sandbox == "folder"
    with tempfile.TemporaryDirectory(prefix="posbuild-chain-") as temp:
        for name, argv in available.items():  # each chain built once, untimed
            # without stamps (namespace sandboxes) the one chain is already the plain one
            for stamped_chain in (True, False) if measure_gaps else (True,):
                root = Path(temp) / (name if stamped_chain else f"{name}-plain")
                root.mkdir()
                (root / "seed.txt").write_text("seed 0\n")
                stamps = Path(temp) / f"{name}.stamps" if measure_gaps and stamped_chain \
                    else None
                if name == "posbuild":
                    write_posbuild(root, args.length, args.sleep, args.sandbox, stamps)
                elif name.startswith("make"):
                    write_make(root, args.length, args.sleep, stamps, bash=name == "make-bash")
                else:
                    write_ninja(root, args.length, args.sleep, stamps)
                timed(argv, root, env)
        for rep in range(1, args.repeat + 1):
            for name, argv in available.items():
                root = Path(temp) / name
                stamps = Path(temp) / f"{name}.stamps" if measure_gaps else None
                if stamps is not None:
                    stamps.unlink(missing_ok=True)
                (root / "seed.txt").write_text(f"seed {rep}\n")
                wall = timed(argv, root, env)
                walls[name].append(wall)
                if not measure_gaps:
                    plain[name].append(wall)
                    continue
                (Path(temp) / f"{name}-plain" / "seed.txt").write_text(f"seed {rep}\n")
                plain[name].append(timed(argv, Path(temp) / f"{name}-plain", env))
                link_gaps, span = read_stamps(Path(temp) / f"{name}.stamps")
                gaps[name].extend(link_gaps)
                fixed[name].append(wall - span)
        for root in ("posbuild", "posbuild-plain") if measure_gaps else ("posbuild",):
            subprocess.run([*posbuild, "shutdown"], cwd=Path(temp) / root, env=env,
                           capture_output=True)
    ideal = args.length * args.sleep
    shells = {" ".join(shell): shell_start(shell) for shell in SHELLS.values()} \
        if measure_gaps else {}
    print(f"chain of {args.length} actions sleeping {args.sleep} s (ideal {ideal:.2f} s), -j2, "
          f"median of {args.repeat}; posbuild [sandbox] mode = {args.sandbox}")
    print(f"  {'tool':<10}{'wall s':>8}{'wall/ideal':>12}{'per link ms':>13}{'gap ms':>9}"
          f"{'fixed ms':>10}{'shell ms':>10}{'own ms':>8}{'plain s':>9}")
    for name, values in walls.items():
        wall = statistics.median(values)
        gap, cost, shell, own = (f"{'-':>9}", f"{'-':>10}", f"{'-':>10}", f"{'-':>8}")
        if gaps[name]:
            median_gap, start = statistics.median(gaps[name]), shells[" ".join(SHELLS[name])]
            gap, shell = f"{median_gap * 1000:>9.1f}", f"{start * 1000:>10.1f}"
            own = f"{(median_gap - start) * 1000:>8.1f}"
            cost = f"{statistics.median(fixed[name]) * 1000:>10.0f}"
        against = f"{wall / ideal:>12.3f}" if ideal else f"{'-':>12}"
        print(f"  {name:<10}{wall:>8.3f}{against}"
              f"{(wall - ideal) / args.length * 1000:>13.1f}{gap}{cost}{shell}{own}"
              f"{statistics.median(plain[name]):>9.3f}")


if __name__ == "__main__":
    sys.exit(main())

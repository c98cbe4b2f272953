#!/usr/bin/env python3
"""Measure posbuild on a pipeline with one large intermediate file.

Why this exists: a real pipeline moves gigabytes (a BAM, an index), and a build tool that keeps
two copies of every output, stages them in memory, or reads a blob into memory to restore it
fails there while it looks fine on small files. This script builds a three-step pipeline —
produce N bytes (`head -c N /dev/urandom`), transform them (`tr`, N bytes again), summarise
(`cksum`) — and reports for each step of a scenario the wall time and peak resident memory of
the posbuild process (`/usr/bin/time -v`: the largest of posbuild and the commands it waited
for, which stay small here), and the disk the store and `posbuild-out/` use together, counting
a file with two names once (`du -s`) and twice (`du -sl`), and `/dev/shm` while the build runs
(its peak, sampled every 50 ms).

Scenarios, in order, in one workspace: `cold` (empty store), `noop`, `restore` (after
`rm -rf posbuild-out`: every output comes back from the store). Only the Python standard
library is used. Run `large_data.py --help`; `--pythonpath` picks the posbuild checkout to run
(compare two checkouts by running it twice). `--snakemake PATH` runs the same pipeline with that
Snakemake instead (a Snakefile of the same three rules, `-c1`); it keeps no store, so its
`restore` runs the steps again.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

BUILD = """\
genrule(name = "produce", outs = ["big.bin"], cmd = "head -c {size} /dev/urandom > $@")
genrule(name = "transform", srcs = [":produce"], outs = ["upper.bin"],
        cmd = "tr 'a-z' 'A-Z' < $< > $@")
genrule(name = "summarise", srcs = [":transform"], outs = ["summary.txt"], cmd = "cksum < $< > $@")
"""


SNAKEFILE = """\
rule all:
    input: "summary.txt"
rule produce:
    output: "big.bin"
    shell: "head -c {size} /dev/urandom > {{output}}"
rule transform:
    input: "big.bin"
    output: "upper.bin"
    shell: "tr 'a-z' 'A-Z' < {{input}} > {{output}}"
rule summarise:
    input: "upper.bin"
    output: "summary.txt"
    shell: "cksum < {{input}} > {{output}}"
"""


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    match = re.fullmatch(r"(\d+)([KMG]?)", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2G, 500M)")
    return int(match.group(1)) * units[match.group(2)]


def du_kib(paths: list[Path], count_links: bool) -> int:
    """KiB `du` reports for `paths` together (`-l`: a file with several names counts each)."""
    args = ["du", "-sk", "-c"] + (["-l"] if count_links else []) + [str(p) for p in paths
                                                                     if p.exists()]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


class ShmPeak:
    """The peak of /dev/shm's used space while a command runs, sampled every 50 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._base = self._used()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _used() -> int:
        try:
            info = os.statvfs("/dev/shm")
        except OSError:
            return 0
        return (info.f_blocks - info.f_bfree) * info.f_frsize

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._used() - self._base)

    def __enter__(self) -> "ShmPeak":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def timed_build(root: Path, command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run one build under /usr/bin/time -v."""
    with ShmPeak() as shm:
        proc = subprocess.run(["/usr/bin/time", "-v", *command], cwd=root, env=env,
                              capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"build failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    text = proc.stderr
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1)
    seconds = 0.0
    for part in wall.split(":"):
        seconds = seconds * 60 + float(part)
    return {"wall_s": seconds, "rss_mib": rss / 1024, "shm_peak_mib": shm.peak / (1 << 20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("2G"),
                        help="bytes of the intermediate files (default 2G)")
    parser.add_argument("--pythonpath", default="",
                        help="the posbuild checkout to run (PYTHONPATH; default: as installed)")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs posbuild")
    parser.add_argument("--workdir", type=Path, help="where the workspace goes (kept)")
    parser.add_argument("--sandbox", default="folder", choices=("folder", "namespace", "auto"),
                        help="[sandbox] mode (default folder)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra variable for posbuild (repeatable)")
    parser.add_argument("--snakemake", help="run this snakemake instead of posbuild")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="posbuild-large-"))
    root = work / "ws"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    if args.snakemake:
        (root / "Snakefile").write_text(SNAKEFILE.format(size=args.size))
        command = [args.snakemake, "-c1", "-q"]
        stored, outputs = [root], root  # its outputs are all it keeps (and .snakemake/)
        tool = args.snakemake
    else:
        (root / "posbuild.toml").write_text(f'[sandbox]\nmode = "{args.sandbox}"\n')
        (root / "BUILD").write_text(BUILD.format(size=args.size))
        command = [args.python, "-m", "posbuild", "build", "-q", "//..."]
        stored = [root / ".posbuild" / "store", root / "posbuild-out"]
        outputs = root / "posbuild-out"
        tool = f"posbuild from {args.pythonpath or 'the installed package'}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    for item in args.env:
        name, _, value = item.partition("=")
        env[name] = value
    print(f"size {args.size} bytes; {tool}")
    print(f"{'scenario':<9} {'wall s':>7} {'peak RSS MiB':>13} {'/dev/shm peak MiB':>18} "
          f"{'disk MiB':>9} {'disk MiB, links twice':>22}")
    try:
        for scenario in ("cold", "noop", "restore"):
            if scenario == "restore":
                if args.snakemake:
                    for name in ("big.bin", "upper.bin", "summary.txt"):
                        (outputs / name).unlink()
                else:
                    shutil.rmtree(outputs)
            figures = timed_build(root, command, env)
            once, twice = du_kib(stored, False) / 1024, du_kib(stored, True) / 1024
            print(f"{scenario:<9} {figures['wall_s']:>7.1f} {figures['rss_mib']:>13.0f} "
                  f"{figures['shm_peak_mib']:>18.0f} {once:>9.0f} {twice:>22.0f}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

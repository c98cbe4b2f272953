#!/usr/bin/env python3
"""Time `posbuild watch` from a one-file edit to the end of the rebuild it triggers.

Why this exists: a watch loop is only useful if an edit shows up in the outputs about as fast as
one can look at them; the target is under 0.5 s in a workspace of 10,000 actions. This script
generates the same layered DAG of ``cat`` tasks as ``bench.py`` (it imports its generator),
starts ``posbuild watch -jJ //...``, waits for the first build, then edits leaf sources one at a
time: it appends a line to the file and measures from just before the write until the watcher
prints the cycle line for that file (the rebuild is over when that line is written). After each
edit, the outputs of the edited leaf's downstream cone are compared with the expected bytes, and
after the last edit every output is.

Two kinds of edits are measured, and both are reported:

* **small cone**: leaves read by exactly ``--small-cone`` tasks (default 1, all downstream
  included) — the typical "I fixed one file" edit;
* **large cone**: the leaves ``bench.py`` edits (2-25 % of the graph downstream), where the time
  is dominated by running hundreds of ``cat`` actions, not by the watcher.

With ``--server``, no watch runs: after each edit, ``posbuild build //...`` is timed through the
workspace's build server (its inotify watch plays the watcher's part), from just before the
write to the command's exit.

Only the Python 3.11 standard library is used. Run ``bench_watch.py --help``.
"""

from __future__ import annotations

import argparse
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the generator of the workspace, shared with bench.py)

CYCLE = re.compile(r"^\[watch\] (?:initial build|\d+ files? changed \((?P<paths>.*)\)): "
                   r"(?P<executed>\d+) executed, (?P<cached>\d+) cached, (?P<failed>\d+) failed.* "
                   r"in (?P<build>[0-9.]+) s")


@dataclass
class Sample:
    leaf: int
    cone: int
    latency: float  # seconds from before the write to the cycle line
    build: float  # the build's own time, as the cycle line says
    executed: int


class Watcher:
    """`posbuild watch` as a subprocess; its stdout lines arrive on a queue."""

    def __init__(self, posbuild: str, root: Path, jobs: int, debounce: int) -> None:
        self.proc = subprocess.Popen(
            [posbuild, "watch", f"-j{jobs}", "--debounce", str(debounce), "//..."], cwd=root,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=bench.TOOL_ENV,
        )
        self.lines: queue.Queue[tuple[float, str | None]] = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_errors, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.perf_counter(), line.rstrip("\n")))
        self.lines.put((time.perf_counter(), None))

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        self.errors.extend(line.rstrip("\n") for line in self.proc.stderr)

    def cycle(self, timeout: float) -> tuple[float, re.Match[str]]:
        """The next cycle line and when it was read; exits loudly on anything else."""
        try:
            when, line = self.lines.get(timeout=timeout)
        except queue.Empty:
            sys.exit(f"error: no cycle line within {timeout:.0f} s; stderr: {self.errors[-5:]}")
        if line is None:
            sys.exit(
                f"error: posbuild watch exited ({self.proc.wait()}); stderr: {self.errors[-5:]}")
        match = CYCLE.match(line)
        if match is None or match["failed"] != "0":
            sys.exit(f"error: unexpected watch output: {line!r}; stderr: {self.errors[-5:]}")
        return when, match

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=60)


def small_cone_leaves(graph: bench.Graph, cone: int, count: int) -> list[int]:
    """`count` leaves whose downstream cone has exactly `cone` tasks, spread over the workspace."""
    found = [leaf for leaf in range(graph.size) if len(bench.downstream_cone(graph, leaf)) == cone]
    if not found:
        sys.exit(f"error: no leaf with a downstream cone of exactly {cone} task(s)")
    step = max(1, len(found) // count)
    return [found[(k * step) % len(found)] for k in range(count)]


def restore_sources(root: Path, graph: bench.Graph) -> None:
    """Bring a workspace of an earlier run back to the generated sources (edits undone)."""
    for i, data in enumerate(graph.leaves):
        path = root / bench.leaf_rel(i)
        if path.read_bytes() != data:
            path.write_bytes(data)


def check_outputs(root: Path, graph: bench.Graph, tasks: set[int] | None = None) -> None:
    expected = bench.expected_outputs(graph)
    for i in sorted(tasks) if tasks is not None else range(graph.size):
        got = (root / "posbuild-out" / bench.out_rel(i)).read_bytes()
        if got != expected[i]:
            sys.exit(f"error: posbuild-out/{bench.out_rel(i)} differs from the expected bytes")


def edit(watcher: Watcher, root: Path, graph: bench.Graph, leaf: int, n: int,
         timeout: float) -> Sample:
    """Append a line to one leaf; time until the watcher reports the rebuild it caused."""
    bench.settle()
    # new bytes: no cache hit
    data = graph.leaves[leaf] + f"watch edit {n} at {time.time_ns()}\n".encode()
    graph.leaves[leaf] = data
    path = root / bench.leaf_rel(leaf)
    started = time.perf_counter()
    path.write_bytes(data)
    when, match = watcher.cycle(timeout)
    if match["paths"] != bench.leaf_rel(leaf):
        sys.exit(f"error: the cycle names {match['paths']!r}, not {bench.leaf_rel(leaf)}")
    cone = bench.downstream_cone(graph, leaf)
    check_outputs(root, graph, cone)
    return Sample(leaf, len(cone), when - started, float(match["build"]), int(match["executed"]))


SUMMARY = re.compile(r"\((?P<executed>\d+) executed, \d+ cached, 0 failed\) "
                     r"in (?P<build>[0-9.]+) s")


def build_through_server(posbuild: str, root: Path, jobs: int) -> tuple[float, re.Match[str]]:
    """One `posbuild build` (through the build server): its exit time and summary line."""
    done = subprocess.run([posbuild, "build", f"-j{jobs}", "//..."], cwd=root, env=bench.TOOL_ENV,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    when = time.perf_counter()
    match = SUMMARY.search(done.stdout)
    if done.returncode != 0 or match is None:
        sys.exit(f"error: posbuild build failed ({done.returncode}): {done.stderr[-500:]}")
    return when, match


def edit_through_server(args: argparse.Namespace, root: Path, graph: bench.Graph, leaf: int,
                        n: int) -> Sample:
    """Append a line to one leaf; time until `posbuild build` has rebuilt what it feeds."""
    bench.settle()
    data = graph.leaves[leaf] + f"server edit {n} at {time.time_ns()}\n".encode()
    graph.leaves[leaf] = data
    started = time.perf_counter()
    (root / bench.leaf_rel(leaf)).write_bytes(data)
    when, match = build_through_server(args.posbuild, root, args.jobs)
    cone = bench.downstream_cone(graph, leaf)
    check_outputs(root, graph, cone)
    return Sample(leaf, len(cone), when - started, float(match["build"]), int(match["executed"]))


def run_through_server(args: argparse.Namespace, root: Path, graph: bench.Graph,
                       small: list[int], large: list[int]) -> None:
    started = time.perf_counter()
    build_through_server(args.posbuild, root, args.jobs)
    print(f"  first build (through the build server): {time.perf_counter() - started:.1f} s",
          flush=True)
    build_through_server(args.posbuild, root, args.jobs)  # the server checks, once, after a build
    check_outputs(root, graph)
    try:
        samples = [edit_through_server(args, root, graph, leaf, n) for n, leaf in enumerate(small)]
        report(f"small cone (e.g. {bench.leaf_rel(small[0])})", samples, 0.15)
        if large:
            samples = [edit_through_server(args, root, graph, leaf, n)
                       for n, leaf in enumerate(large)]
            report(f"large cone (e.g. {bench.leaf_rel(large[0])})", samples, None)
        check_outputs(root, graph)
    finally:
        subprocess.run([args.posbuild, "shutdown"], cwd=root, env=bench.TOOL_ENV,
                       capture_output=True)


def report(name: str, samples: list[Sample], target: float | None) -> None:
    latencies = [s.latency for s in samples]
    median = statistics.median(latencies)
    cones = "/".join(str(c) for c in sorted({s.cone for s in samples}))
    verdict = "" if target is None \
        else (f"  (target < {target * 1000:.0f} ms: {'met' if median < target else 'MISSED'})")
    print(f"  {name}: cone {cones} task(s), {len(samples)} edits")
    print(f"    edit -> rebuilt: median {median * 1000:.0f} ms, min {min(latencies) * 1000:.0f} "
          f"ms, max {max(latencies) * 1000:.0f} ms{verdict}")
    print("    of which the build: median "
          f"{statistics.median(s.build for s in samples) * 1000:.0f} ms; "
          f"executed per edit: {'/'.join(str(s.executed) for s in samples)}")


def run(args: argparse.Namespace, workdir: Path) -> None:
    graph = bench.generate_graph(args.size, args.seed)
    root = workdir / f"watch{args.size}"
    if args.reuse and (root / "posbuild.toml").exists():
        restore_sources(root, graph)
    else:
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        bench.write_posbuild(root, graph)
    small = small_cone_leaves(graph, args.small_cone, args.edits)
    large = bench.edit_leaves(graph, args.large_edits) if args.large_edits else []
    print(f"N={args.size}: {graph.size} tasks, {graph.layers} layers; workspace {root}", flush=True)
    if args.server:
        run_through_server(args, root, graph, small, large)
        return
    started = time.perf_counter()
    watcher = Watcher(args.posbuild, root, args.jobs, args.debounce)
    try:
        _, first = watcher.cycle(args.timeout)
        kind = "incremental" if args.reuse else "cold"
        print(f"  first build ({kind}, inside watch): {time.perf_counter() - started:.1f} s, "
              f"{first['executed']} executed", flush=True)
        check_outputs(root, graph)
        samples = [edit(watcher, root, graph, leaf, n, args.timeout)
                   for n, leaf in enumerate(small)]
        report(f"small cone (e.g. {bench.leaf_rel(small[0])})", samples, 0.5)
        if large:
            samples = [edit(watcher, root, graph, leaf, n, args.timeout)
                       for n, leaf in enumerate(large)]
            report(f"large cone (e.g. {bench.leaf_rel(large[0])})", samples, None)
        check_outputs(root, graph)
    finally:
        code = watcher.stop()
    if code != 130:
        sys.exit(f"error: posbuild watch exited {code} on SIGINT, not 130")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=10000, help="number of tasks (default: 10000)")
    p.add_argument("--edits", type=int, default=7, help="small-cone edits (default: 7)")
    p.add_argument("--small-cone", type=int, default=1,
                   help="downstream tasks of a small-cone leaf (default: 1)")
    p.add_argument("--large-edits", type=int, default=3,
                   help="large-cone edits, 0 for none (default: 3)")
    p.add_argument("--posbuild", default=shutil.which("posbuild"),
                   help="path of the posbuild executable (default: from PATH)")
    p.add_argument("--jobs", type=int, default=2, help="parallel jobs (default: 2)")
    p.add_argument("--debounce", type=int, default=50, help="watch --debounce in ms (default: 50)")
    p.add_argument("--timeout", type=float, default=900,
                   help="bound of every wait, in s (default: 900)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    p.add_argument("--workdir", type=Path,
                   help="where to generate the workspace (default: a temp dir)")
    p.add_argument("--server", action="store_true",
                   help="time `posbuild build` through the build server after each edit, instead "
                        "of `posbuild watch`")
    p.add_argument("--reuse", action="store_true",
                   help="reuse the workspace an earlier run left in --workdir (its edits undone), "
                        "so the first build is not a cold one")
    args = p.parse_args(argv)
    if not args.posbuild or not Path(args.posbuild).is_file():
        p.error(
            f"posbuild executable not found ({args.posbuild or 'not on PATH'}); pass --posbuild "
            "PATH")
    if args.size < 1 or args.edits < 1:
        p.error("--size and --edits must be positive")
    if args.reuse and args.workdir is None:
        p.error("--reuse needs --workdir")
    args.posbuild = str(Path(args.posbuild).absolute())
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="posbuild-bench-watch-")) if temporary \
        else args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run(args, workdir)
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

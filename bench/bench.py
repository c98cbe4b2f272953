#!/usr/bin/env python3
"""Compare posbuild with make and ninja on identical generated workspaces.

Why this exists: posbuild aims to be a practical replacement for make and
ninja on large task graphs, so its overhead has to be measured against them
on exactly the same work.  This script generates a deterministic layered DAG
of ``cat`` tasks (leaf text files concatenated into outputs), writes it out
three times -- as posbuild BUILD files, as a Makefile and as a build.ninja --
and times, for every tool, a cold build, a no-op rebuild, a rebuild after a
leaf source changes, and a rebuild after a leaf source is only touched.

The tools are run alternately (posbuild, make, ninja for each repetition and
scenario) so that machine noise spreads evenly, and every output is checked
byte for byte against the expected contents after each build, so a tool that
skips work it should do is caught instead of looking fast.

Only the Python 3.11 standard library is used.  Run ``bench.py --help``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# posbuild: through its build server (the default); posbuild-1shot: --no-server, a process per
# build; posbuild-ns: through the server, in the default sandbox (`auto`: namespaces when they
# work here). The first two use --sandbox (default: folder, like make and ninja).
TOOLS = ("posbuild", "posbuild-1shot", "posbuild-ns", "make", "ninja")
POSBUILDS = ("posbuild", "posbuild-1shot", "posbuild-ns")
# Tools run as from a user's shell: without PYTHONDONTWRITEBYTECODE (some CI images set it), which
# would make every posbuild invocation recompile its modules instead of loading cached bytecode.
TOOL_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
SCENARIOS = ("cold", "noop", "edit", "touch")
PACKAGE_SIZE = 100
LAYERS = 32  # DAG depth: every task past layer 0 reads an output of the layer before
# Concatenating outputs of outputs grows with the number of DAG paths; an extra
# output input is only added while the result stays under this many bytes, so
# outputs stay a few KB and the timings measure the tools rather than disk I/O.
OUTPUT_CAP = 2048
WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
)

# --------------------------------------------------------------------------
# Graph model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """One task input: a leaf source (``src``) or another task's output (``out``)."""

    kind: str  # "src" or "out"
    index: int


@dataclass
class Task:
    index: int
    layer: int
    inputs: list[Ref]


@dataclass
class Graph:
    """A generated workspace: tasks plus the bytes of every leaf source."""

    tasks: list[Task]
    leaves: list[bytes]
    layers: int
    leaf_readers: list[list[int]] = field(default_factory=list)
    out_readers: list[list[int]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.tasks)


def package(i: int) -> str:
    return f"p{i // PACKAGE_SIZE:03d}"


def task_name(i: int) -> str:
    return f"t{i:05d}"


def leaf_rel(i: int) -> str:
    return f"{package(i)}/s{i:05d}.txt"


def out_rel(i: int) -> str:
    return f"{package(i)}/{task_name(i)}.txt"


def package_range(i: int, n: int) -> range:
    start = (i // PACKAGE_SIZE) * PACKAGE_SIZE
    return range(start, min(start + PACKAGE_SIZE, n))


def leaf_text(rng: random.Random, i: int) -> bytes:
    lines = [
        f"s{i:05d} line {k}: {rng.choice(WORDS)} {rng.randrange(10**6)}\n"
        for k in range(rng.randint(2, 4))
    ]
    return "".join(lines).encode()


def layer_bounds(n: int, layers: int) -> list[int]:
    """Start index of every layer, plus ``n`` as a sentinel."""
    return [(layer * n + layers - 1) // layers for layer in range(layers)] + [n]


def pick_layer_task(rng: random.Random, bounds: list[int], layer: int) -> int:
    return rng.randrange(bounds[layer], bounds[layer + 1])


def pick_leaf(rng: random.Random, i: int, n: int, used: set[Ref]) -> Ref | None:
    own = Ref("src", i)
    if own not in used:
        return own
    for _ in range(4):
        ref = Ref("src", rng.choice(package_range(i, n)))
        if ref not in used:
            return ref
    return None


def pick_older_output(rng: random.Random, bounds: list[int], layer: int) -> Ref:
    """An output from an earlier layer, geometrically biased to recent layers."""
    back = 1
    while back < layer and rng.random() < 0.5:
        back += 1
    return Ref("out", pick_layer_task(rng, bounds, layer - back))


def choose_inputs(
    rng: random.Random, i: int, layer: int, bounds: list[int],
    n: int, sizes: list[int], leaves: list[bytes],
) -> list[Ref]:
    """Pick 1-3 distinct inputs for task ``i`` (deterministic given ``rng``).

    Layer-0 tasks read only leaves of their package.  Later tasks read one
    output of the previous layer (any package) plus leaves of their package
    and, now and then, outputs of older layers; the order is shuffled.
    """
    count = rng.choices((1, 2, 3), weights=(3, 4, 3))[0]
    chosen: list[Ref] = []
    if layer > 0:
        chosen.append(Ref("out", pick_layer_task(rng, bounds, layer - 1)))
    while len(chosen) < count:
        size = sum(ref_size(r, sizes, leaves) for r in chosen)
        ref: Ref | None = None
        if layer > 0 and rng.random() < 0.4:
            ref = pick_older_output(rng, bounds, layer)
            if ref in chosen or size + sizes[ref.index] > OUTPUT_CAP:
                ref = None
        if ref is None:
            ref = pick_leaf(rng, i, n, set(chosen))
        if ref is None:
            break
        chosen.append(ref)
    rng.shuffle(chosen)
    return chosen


def ref_size(ref: Ref, sizes: list[int], leaves: list[bytes]) -> int:
    return len(leaves[ref.index]) if ref.kind == "src" else sizes[ref.index]


def generate_graph(n: int, seed: int, layers: int = LAYERS) -> Graph:
    """Build the layered DAG for ``n`` tasks; same ``(n, seed)`` -> same graph."""
    rng = random.Random(seed)
    layers = max(1, min(layers, n))
    bounds = layer_bounds(n, layers)
    leaves = [leaf_text(rng, i) for i in range(n)]
    tasks: list[Task] = []
    sizes: list[int] = []
    for layer in range(layers):
        for i in range(bounds[layer], bounds[layer + 1]):
            inputs = choose_inputs(rng, i, layer, bounds, n, sizes, leaves)
            tasks.append(Task(i, layer, inputs))
            sizes.append(sum(ref_size(r, sizes, leaves) for r in inputs))
    graph = Graph(tasks, leaves, layers)
    graph.leaf_readers = readers_of(graph, "src")
    graph.out_readers = readers_of(graph, "out")
    return graph


def readers_of(graph: Graph, kind: str) -> list[list[int]]:
    """For every index ``j``: the tasks reading leaf (or output) ``j``."""
    readers: list[list[int]] = [[] for _ in graph.tasks]
    for task in graph.tasks:
        for ref in task.inputs:
            if ref.kind == kind:
                readers[ref.index].append(task.index)
    return readers


def downstream_cone(graph: Graph, leaf: int) -> set[int]:
    """Tasks that transitively read leaf source ``leaf``."""
    cone = set(graph.leaf_readers[leaf])
    stack = list(cone)
    while stack:
        for reader in graph.out_readers[stack.pop()]:
            if reader not in cone:
                cone.add(reader)
                stack.append(reader)
    return cone


def expected_outputs(graph: Graph) -> list[bytes]:
    outs: list[bytes] = []
    for task in graph.tasks:
        outs.append(b"".join(
            graph.leaves[r.index] if r.kind == "src" else outs[r.index]
            for r in task.inputs
        ))
    return outs


def edit_leaves(graph: Graph, count: int) -> list[int]:
    """``count`` leaves near the start of the DAG whose change rebuilds a real cone.

    Scans the leaves read by the first quarter of the layers, in index order,
    and keeps those whose downstream cone covers 2-25% of the graph, so the
    edit scenario is neither trivial nor a disguised cold build.
    """
    n = graph.size
    early = [t for t in graph.tasks if t.layer < max(1, graph.layers // 4)]
    candidates = sorted({r.index for t in early for r in t.inputs if r.kind == "src"})
    good: list[int] = []
    for leaf in candidates:
        if 0.02 * n <= len(downstream_cone(graph, leaf)) <= 0.25 * n:
            good.append(leaf)
            if len(good) == count:
                return good
    if not good:  # tiny graphs: take the leaf with the largest cone
        good = [max(range(n), key=lambda leaf: len(downstream_cone(graph, leaf)))]
    return [good[k % len(good)] for k in range(count)]


# --------------------------------------------------------------------------
# Workspace writers
# --------------------------------------------------------------------------


def write_sources(root: Path, graph: Graph) -> None:
    for pkg in sorted({package(t.index) for t in graph.tasks}):
        (root / pkg).mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(graph.leaves):
        (root / leaf_rel(i)).write_bytes(data)


def posbuild_label(ref: Ref, owner: int) -> str:
    if ref.kind == "src":
        return f"s{ref.index:05d}.txt"
    if package(ref.index) == package(owner):
        return f":{task_name(ref.index)}"
    return f"//{package(ref.index)}:{task_name(ref.index)}"


def genrule_call(task: Task) -> str:
    srcs = ", ".join(f'"{posbuild_label(r, task.index)}"' for r in task.inputs)
    name = task_name(task.index)
    return (
        f'genrule(name = "{name}", srcs = [{srcs}], outs = ["{name}.txt"], '
        f'cmd = "cat $(SRCS) > $@")\n'
    )


def write_posbuild(root: Path, graph: Graph, sandbox: str = "auto") -> None:
    """The posbuild workspace; `sandbox` is its `[sandbox] mode` (make and ninja have none)."""
    write_sources(root, graph)
    (root / "posbuild.toml").write_text(f'[build]\n\n[sandbox]\nmode = "{sandbox}"\n')
    by_package: dict[str, list[str]] = {}
    for task in graph.tasks:
        by_package.setdefault(package(task.index), []).append(genrule_call(task))
    for pkg, calls in by_package.items():
        (root / pkg / "BUILD").write_text("".join(calls))


def tool_path(ref: Ref) -> str:
    """Workspace-relative path of an input in the make/ninja copies."""
    return leaf_rel(ref.index) if ref.kind == "src" else f"out/{out_rel(ref.index)}"


def write_make(root: Path, graph: Graph) -> None:
    """Explicit rules; output dirs come from order-only prerequisites."""
    write_sources(root, graph)
    outs = [f"out/{out_rel(t.index)}" for t in graph.tasks]
    dirs = sorted({f"out/{package(t.index)}" for t in graph.tasks})
    lines = [
        "MAKEFLAGS += --no-builtin-rules --no-builtin-variables",
        ".SUFFIXES:",
        ".DEFAULT_GOAL := all",
        "",
        ".PHONY: all",
        "all: " + " ".join(outs),
        "",
    ]
    lines += [f"{d}:\n\tmkdir -p $@" for d in dirs]
    for task, out in zip(graph.tasks, outs):
        deps = " ".join(tool_path(r) for r in task.inputs)
        lines.append(f"{out}: {deps} | out/{package(task.index)}\n\tcat $^ > $@")
    (root / "Makefile").write_text("\n".join(lines) + "\n")


def write_ninja(root: Path, graph: Graph) -> None:
    """One edge per task; ninja creates output directories itself."""
    write_sources(root, graph)
    lines = ["rule cat", "  command = cat $in > $out", ""]
    for task in graph.tasks:
        deps = " ".join(tool_path(r) for r in task.inputs)
        lines.append(f"build out/{out_rel(task.index)}: cat {deps}")
    (root / "build.ninja").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------


@dataclass
class Tool:
    name: str
    root: Path
    out_dir: Path
    command: list[str]
    clean_paths: list[str]
    env: dict[str, str] = field(default_factory=lambda: TOOL_ENV)

    def clean(self, trash: Path) -> None:
        """Move the outputs and tool state aside, into `trash` (deleted after the measurements).

        Deleting them here would time the file system instead of the tool: ext4 without a
        journal skips inodes freed in the last minute when it allocates, checking each, so every
        file a cold build creates right after 10,000 deletions pays for a scan past them, and
        how much depends on which tool deleted last.
        """
        trash.mkdir(exist_ok=True)
        for rel in self.clean_paths:
            target = self.root / rel
            if target.exists() or target.is_symlink():
                os.rename(target, Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=trash)) / rel)

    def build(self) -> float:
        """Run one build; return wall-clock seconds or exit loudly on failure."""
        start = time.perf_counter()
        proc = subprocess.run(
            self.command, cwd=self.root, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env,
        )
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace")[-2000:]
            sys.exit(f"error: {self.name} build failed (exit {proc.returncode}) "
                     f"in {self.root}:\n{tail}")
        return elapsed


def make_tool(name: str, root: Path, jobs: int, posbuild: str | None) -> Tool:
    if name in POSBUILDS:
        assert posbuild is not None
        env = {**TOOL_ENV, "POSBUILD_NO_SERVER": "1"} if name == "posbuild-1shot" \
            else {k: v for k, v in TOOL_ENV.items() if k != "POSBUILD_NO_SERVER"}
        return Tool(name, root, root / "posbuild-out",
                    [posbuild, "build", f"-j{jobs}", "-q", "//..."],
                    [".posbuild", "posbuild-out"], env)
    if name == "make":
        return Tool(name, root, root / "out",
                    ["make", f"-j{jobs}", "-s"], ["out"])
    return Tool(name, root, root / "out",
                ["ninja", f"-j{jobs}", "-C", str(root)],
                ["out", ".ninja_log", ".ninja_deps"])


WRITERS = {"posbuild": write_posbuild, "make": write_make, "ninja": write_ninja}


def setup_tools(
    base: Path, graph: Graph, names: list[str], jobs: int, posbuild: str | None,
    sandbox: str = "auto"
) -> list[Tool]:
    tools = []
    for name in names:
        root = base / name
        root.mkdir(parents=True)
        if name in POSBUILDS:
            write_posbuild(root, graph, "auto" if name == "posbuild-ns" else sandbox)
        else:
            WRITERS[name](root, graph)
        tools.append(make_tool(name, root, jobs, posbuild))
    return tools


# --------------------------------------------------------------------------
# Verification and file edits
# --------------------------------------------------------------------------


def verify(tools: list[Tool], graph: Graph, when: str) -> None:
    """Every output of every tool must equal the expected bytes."""
    expected = expected_outputs(graph)
    for tool in tools:
        bad = []
        for i, want in enumerate(expected):
            path = tool.out_dir / out_rel(i)
            try:
                got = path.read_bytes()
            except FileNotFoundError:
                got = None
            if got != want:
                bad.append(out_rel(i) + (" (missing)" if got is None else ""))
        if bad:
            sys.exit(f"error: {tool.name} outputs differ from expected after "
                     f"{when}: {len(bad)} of {len(expected)} files, e.g. "
                     f"{', '.join(bad[:5])} (in {tool.out_dir})")


def set_leaf(tools: list[Tool], graph: Graph, leaf: int, data: bytes) -> None:
    graph.leaves[leaf] = data
    for tool in tools:
        (tool.root / leaf_rel(leaf)).write_bytes(data)


def touch_leaf(tools: list[Tool], leaf: int) -> None:
    for tool in tools:
        path = tool.root / leaf_rel(leaf)
        newer = max(time.time_ns(), path.stat().st_mtime_ns + 1_000_000)
        os.utime(path, ns=(newer, newer))


def settle() -> None:
    """Let file timestamps move past the previous build's outputs."""
    time.sleep(0.05)


# --------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------

Timings = dict[str, dict[str, list[float]]]  # scenario -> tool -> seconds


def run_all(tools: list[Tool], timings: Timings, scenario: str) -> None:
    for tool in tools:
        timings[scenario][tool.name].append(tool.build())


def restore_leaves(tools: list[Tool], graph: Graph, pristine: list[bytes]) -> None:
    """Undo the previous repetition's edit so every cold build sees the same sources."""
    for leaf, data in enumerate(pristine):
        if graph.leaves[leaf] != data:
            set_leaf(tools, graph, leaf, data)


def run_repetition(
    tools: list[Tool], graph: Graph, leaf: int, rep: int, timings: Timings, trash: Path
) -> None:
    """cold -> noop -> edit -> touch, each scenario alternating over the tools."""
    for tool in tools:
        tool.clean(trash)
    run_all(tools, timings, "cold")
    verify(tools, graph, f"cold build (rep {rep})")
    run_all(tools, timings, "noop")
    verify(tools, graph, f"no-op build (rep {rep})")

    settle()
    edited = graph.leaves[leaf] + f"edited in repetition {rep}\n".encode()
    set_leaf(tools, graph, leaf, edited)
    run_all(tools, timings, "edit")
    verify(tools, graph, f"edit of {leaf_rel(leaf)} (rep {rep})")

    settle()
    touch_leaf(tools, leaf)
    run_all(tools, timings, "touch")
    verify(tools, graph, f"touch of {leaf_rel(leaf)} (rep {rep})")


RESOLVE_SNIPPET = (  # as `posbuild build` runs it: without the cyclic GC (cli/build.py)
    "import gc, sys, time, pathlib\nfrom posbuild.engine.resolve import resolve\ngc.disable()\nt = "
    "time.perf_counter()\ng = resolve(pathlib.Path(sys.argv[1]), "
    "['//...'])\nprint(time.perf_counter() - t, len(g.actions))\n"
)


def posbuild_python(posbuild: str) -> Path | None:
    """The interpreter the `posbuild` script runs (its #! line), else a python beside it.

    The very same path matters: graph cache entries name the interpreter that wrote them, so
    timing the load with `python` after building with `python3` would time a rebuild of the entry.
    """
    try:
        first = Path(posbuild).read_bytes().split(b"\n", 1)[0].decode()
    except (OSError, UnicodeDecodeError):
        first = ""
    if first.startswith("#!") and Path(first[2:].strip()).is_file():
        return Path(first[2:].strip())
    parent = Path(posbuild).parent
    for name in ("python", "python3"):
        if (parent / name).exists():
            return parent / name
    return None


def time_snippet(python: Path, ws: Path, snippet: str, args: list[str],
                 runs: int) -> tuple[list[float], str] | str:
    """Run `snippet` (which prints "<seconds> <count>") `runs` times in fresh interpreters; the
    seconds of each run and the last count, or the last line of stderr when a run failed."""
    samples: list[float] = []
    count = "?"
    for _ in range(runs):
        proc = subprocess.run([str(python), "-c", snippet, *args], cwd=ws,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode != 0:
            return (proc.stderr.strip().splitlines() or ["no output"])[-1]
        secs, count = proc.stdout.split()[-2:]
        samples.append(float(secs))
    return samples, count


def measure_resolve(posbuild: str, ws: Path, repeat: int) -> str:
    """Median in-process load+resolve time of an already-built workspace."""
    python = posbuild_python(posbuild)
    if python is None:
        return f"load+resolve: unavailable (no python next to {posbuild})"
    timed = time_snippet(python, ws, RESOLVE_SNIPPET, [str(ws)], repeat)
    if isinstance(timed, str):
        return f"load+resolve: unavailable ({timed})"
    samples, actions = timed
    return (f"load+resolve: {statistics.median(samples) * 1000:.1f} ms "
            f"median of {repeat} ({actions} actions)")


QUERY_EXPR = "deps(//...)"
QUERY_SNIPPET = (
    "import sys, time, pathlib\nfrom posbuild.load.query import run_query\n"
    "t = time.perf_counter()\nr = run_query(pathlib.Path(sys.argv[1]), sys.argv[2])\ntext = "
    "r.render('label')\nprint(time.perf_counter() - t, len(r.nodes))\n"
)


def measure_query(posbuild: str, ws: Path, repeat: int) -> str:
    """Median in-process `posbuild query 'deps(//...)'` time (parse, load the cached target graph,
    evaluate, format the labels) on an already-built workspace.

    The first query after a build evaluates the BUILD files once to fill the query's own target
    cache; it is reported apart, and the median is over the queries after it.
    """
    python = posbuild_python(posbuild)
    if python is None:
        return f"query {QUERY_EXPR}: unavailable (no python next to {posbuild})"
    timed = time_snippet(python, ws, QUERY_SNIPPET, [str(ws), QUERY_EXPR], repeat + 1)
    if isinstance(timed, str):
        return f"query {QUERY_EXPR}: unavailable ({timed})"
    samples, nodes = timed
    first, rest = samples[0], samples[1:]
    return (f"query {QUERY_EXPR}: {statistics.median(rest) * 1000:.1f} ms "
            f"median of {repeat} ({nodes} nodes; first query, filling the "
            f"target cache: {first * 1000:.0f} ms)")


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None or den <= 0:
        return "-"
    return f"{num / den:.2f}x"


def median_of(timings: Timings, scenario: str, tool: str) -> float | None:
    samples = timings[scenario].get(tool)
    return statistics.median(samples) if samples else None


def format_table(timings: Timings, names: list[str]) -> list[str]:
    """Medians per tool, and each posbuild against the faster of make and ninja (`/best`)."""
    ours = [name for name in names if name in POSBUILDS]
    headers = ["scenario", *names, *(f"{name}/best" for name in ours)]
    rows = [headers]
    for scenario in SCENARIOS:
        med = {name: median_of(timings, scenario, name) for name in names}
        others = [v for k, v in med.items() if k not in POSBUILDS and v is not None]
        rows.append([
            scenario,
            *(f"{med[name]:.3f}" for name in names),
            *(ratio(med[name], min(others) if others else None) for name in ours),
        ])
    widths = [max(len(row[c]) for row in rows) for c in range(len(headers))]
    return ["  ".join(cell.rjust(w) if c else cell.ljust(w)
                      for c, (cell, w) in enumerate(zip(row, widths)))
            for row in rows]


def describe(graph: Graph, leaves: list[int]) -> str:
    edges = sum(len(t.inputs) for t in graph.tasks)
    out_bytes = sum(len(b) for b in expected_outputs(graph))
    cones = sorted({len(downstream_cone(graph, leaf)) for leaf in leaves})
    packages = (graph.size + PACKAGE_SIZE - 1) // PACKAGE_SIZE
    return (f"{graph.size} tasks, {packages} packages, {graph.layers} layers, "
            f"{edges} inputs, {out_bytes / 1e6:.1f} MB of outputs, "
            f"edit/touch cone {'/'.join(map(str, cones))} tasks")


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def bench_size(n: int, args: argparse.Namespace, workdir: Path) -> None:
    graph = generate_graph(n, args.seed)
    leaves = edit_leaves(graph, args.repeat)
    base = workdir / f"n{n}"
    if base.exists():
        shutil.rmtree(base)
    tools = setup_tools(base, graph, args.tools, args.jobs, args.posbuild, args.sandbox)
    print(f"\nN={n}: {describe(graph, leaves)}; posbuild [sandbox] mode = {args.sandbox}",
          flush=True)

    timings: Timings = {s: {t.name: [] for t in tools} for s in SCENARIOS}
    pristine = list(graph.leaves)
    trash = base / "trash"
    for rep in range(1, args.repeat + 1):
        restore_leaves(tools, graph, pristine)
        run_repetition(tools, graph, leaves[rep - 1], rep, timings, trash)
        print(f"  repetition {rep}/{args.repeat} done", flush=True)

    print(f"median of {args.repeat} (seconds, -j{args.jobs}), "
          "outputs identical across tools:")
    for line in format_table(timings, args.tools):
        print("  " + line)
    if "posbuild" in args.tools:
        print("  " + measure_resolve(args.posbuild, base / "posbuild", args.repeat))
        print("  " + measure_query(args.posbuild, base / "posbuild", args.repeat))
    for tool in tools:
        if tool.name in POSBUILDS:  # their build servers
            subprocess.run([args.posbuild, "shutdown"], cwd=tool.root, env=TOOL_ENV,
                           capture_output=True)
    shutil.rmtree(trash, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000",
                   help="comma-separated task counts (default: 1000,10000)")
    p.add_argument("--repeat", type=int, default=3,
                   help="repetitions per scenario (default: 3)")
    p.add_argument("--tools", default=",".join(TOOLS),
                   help="comma-separated subset of " + ",".join(TOOLS))
    p.add_argument("--posbuild", default=shutil.which("posbuild"),
                   help="path of the posbuild executable (default: from PATH)")
    p.add_argument("--workdir", type=Path,
                   help="where to generate workspaces (default: a temp dir)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary workdir at the end")
    p.add_argument("--jobs", type=int, default=2, help="parallel jobs (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    p.add_argument("--sandbox", choices=("folder", "namespace", "auto"), default="folder",
                   help="posbuild's [sandbox] mode (default: folder, the like-for-like comparison "
                        "with make and ninja, which isolate nothing; bench_sandbox.py measures the "
                        "rest)")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    unknown = sorted(set(args.tools) - set(TOOLS))
    if unknown or not args.tools:
        p.error(f"--tools must name some of {', '.join(TOOLS)}; got {args.tools}")
    args.tools = [t for t in TOOLS if t in args.tools]
    if args.repeat < 1 or not args.sizes or min(args.sizes) < 1:
        p.error("--repeat and --sizes must be positive")
    if set(POSBUILDS) & set(args.tools):
        if not args.posbuild or not Path(args.posbuild).is_file():
            p.error(f"posbuild executable not found ({args.posbuild or 'not on PATH'});"
                    " pass --posbuild PATH or leave it out with --tools make,ninja")
        args.posbuild = str(Path(args.posbuild).absolute())
    for tool in ("make", "ninja"):
        if tool in args.tools and shutil.which(tool) is None:
            p.error(f"{tool} not found on PATH")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="posbuild-bench-")) if temporary \
        else args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"tools: {', '.join(args.tools)}; workdir: {workdir}")
    finished = False
    try:
        for n in args.sizes:
            bench_size(n, args, workdir)
        finished = True
    finally:
        if temporary and not args.keep and finished:
            shutil.rmtree(workdir, ignore_errors=True)
        elif temporary and not args.keep:
            print(f"workdir kept for inspection: {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

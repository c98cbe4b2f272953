#!/usr/bin/env python3
"""What the namespace sandboxes cost per action, compared with the folder sandbox.

Why this exists: `[sandbox] mode = "auto"` runs every action under Landlock (or bubblewrap)
wherever it works, so the price of the extra isolation is paid by every build. This script
measures it two ways, on the same work, for each sandbox that can run here:

* **cold builds**: bench.py's generated workspace of cheap `cat` tasks, built from scratch
  (`.posbuild/` and `posbuild-out/` deleted) with `[sandbox] mode = "landlock"`, `"namespace"`
  (bubblewrap) and `"folder"`, alternating, several times. Per action = median wall time /
  number of actions. Outputs of every mode are compared byte for byte;
* **spawn only**: `LocalSpawner.run` + `remove` of one trivial action (two inputs, one output)
  in a loop, in-process, without the build around it: the sandbox's own cost.

Prints ms/action for each mode and its difference with the folder sandbox (`--modes` picks
them). Run from the repository root:

    .venv/bin/python bench/bench_sandbox.py --size 300 --repeat 3 --jobs 1
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench  # noqa: E402  (the generator of the workspace)

MODES = ("landlock", "namespace", "folder")
ENV = {k: v for k, v in os.environ.items()
       if k not in ("PYTHONDONTWRITEBYTECODE", "POSBUILD_SANDBOX_WRITABLE")}


def set_mode(root: Path, mode: str) -> None:
    (root / "posbuild.toml").write_text(f'[build]\n\n[sandbox]\nmode = "{mode}"\n')


def cold_build(root: Path, mode: str, jobs: int) -> float:
    """One build from nothing; wall seconds. Exits loudly if the build fails."""
    for name in (".posbuild", "posbuild-out"):
        if (root / name).exists():
            subprocess.run(["chmod", "-R", "u+w", str(root / name)], check=True)
            shutil.rmtree(root / name)
    set_mode(root, mode)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "posbuild", "build", f"-j{jobs}", "-q", "//..."],
                          cwd=root,
                          env=ENV, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"error: {mode} build failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    if "bubblewrap" in done.stderr or "Landlock" in done.stderr:
        sys.exit(f"error: {mode} build did not use the sandbox asked for:\n{done.stderr}")
    return elapsed


def outputs(root: Path) -> dict[str, bytes]:
    out = root / "posbuild-out"
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def spawn_only(root: Path, loops: int, modes: tuple[str, ...]) -> dict[str, float]:
    """Median seconds of one LocalSpawner.run + remove of a trivial action, per mode."""
    from posbuild.core.action import Action
    from posbuild.workspace.config import load_config
    from posbuild.exec.sandbox import LocalSpawner, choose_isolation

    (root / "pkg").mkdir(parents=True, exist_ok=True)
    for name in ("a.txt", "b.txt"):
        (root / "pkg" / name).write_text(name + "\n")
    action = Action(label="//pkg:t", kind="genrule",
                    command="cat pkg/a.txt pkg/b.txt > posbuild-out/pkg/t.txt",
                    inputs=("pkg/a.txt", "pkg/b.txt"), tools=(),
                    outputs=("posbuild-out/pkg/t.txt",), env=(),
                    versions=(), timeout=0, tags=(), def_hash=b"\0" * 32, deps=(),
                    sources=("pkg/a.txt", "pkg/b.txt"))
    medians = {}
    for mode in modes:
        set_mode(root, mode)
        config = load_config(root)
        isolation, notice = choose_isolation(config)
        if notice:
            sys.exit(notice)
        sandboxes = LocalSpawner(config.root, config.sandbox_dir, isolation)
        sandboxes.clear_stale()
        samples = []
        for _ in range(loops):
            started = time.perf_counter()
            result = sandboxes.run(action)
            sandboxes.remove(result)
            samples.append(time.perf_counter() - started)
            assert result.exit_code == 0, result.stderr
        medians[mode] = statistics.median(samples)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=300,
                        help="actions in the generated workspace (default 300)")
    parser.add_argument("--repeat", type=int, default=3, help="cold builds per mode (default 3)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="-j of the builds (default 1: no overlap to hide costs)")
    parser.add_argument("--loops", type=int, default=200,
                        help="spawn-only runs per mode (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default=",".join(MODES),
                        help="the sandboxes to compare (default: all three)")
    args = parser.parse_args()

    from posbuild.errors import SandboxUnavailable
    from posbuild.exec import namespaces

    modes = []
    for mode in args.modes.split(","):
        try:
            namespaces.choose(mode, (), ())
        except SandboxUnavailable as error:
            print(f"skipped: {error}")
            continue
        modes.append(mode)
    if "folder" not in modes:
        modes.append("folder")

    with tempfile.TemporaryDirectory(prefix="posbuild-bench-sandbox-") as work:
        root = Path(work) / "ws"
        root.mkdir()
        graph = bench.generate_graph(args.size, args.seed)
        bench.write_posbuild(root, graph)
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        seen: dict[str, dict[str, bytes]] = {}
        for _ in range(args.repeat):
            for mode in modes:
                times[mode].append(cold_build(root, mode, args.jobs))
                seen[mode] = outputs(root)
        if any(seen[mode] != seen["folder"] for mode in modes):
            sys.exit("error: the modes produced different outputs")
        spawn = spawn_only(Path(work) / "spawn", args.loops, tuple(modes)) if args.loops else {}

    print(f"{args.size} actions (bench.py's workspace), cold builds -j{args.jobs}, median of "
          f"{args.repeat}; outputs identical in every mode")
    per_action = {}
    for mode in modes:
        median = statistics.median(times[mode])
        per_action[mode] = median / args.size * 1000
        line = f"  {mode:9}  build {median:7.2f} s  {per_action[mode]:6.2f} ms/action"
        if spawn:
            line += f"   spawn only {spawn[mode] * 1000:6.2f} ms/action"
        print(line)
    for mode in (mode for mode in modes if mode != "folder"):
        line = (f"  {mode} - folder {per_action[mode] - per_action['folder']:+6.2f} ms/action")
        if spawn:
            line += f"{'':14}{(spawn[mode] - spawn['folder']) * 1000:+6.2f} ms/action"
        print(line)


if __name__ == "__main__":
    main()

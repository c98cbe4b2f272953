#!/usr/bin/env python3
"""What running an action on a Dask cluster costs, compared with running it here.

Why this exists: `--executor dask://HOST:PORT` moves every command to a worker, which adds a
submit, a scheduler decision, the transfer of the inputs and of the outputs, and a second
sandbox's worth of file writes to every action. Whether the cluster pays off depends on that
per-action overhead against the action's own run time, so it is measured here on cheap actions,
where it shows alone:

* **fixed**: a one-action build, whose difference is the cost of a build on Dask at all
  (importing `distributed`, connecting, the workers' first environment fingerprint);
* **chain**: `--chain` actions, each reading the previous one's output, built with `-j 1`: one
  action at a time, so (dask - local - fixed) / actions is the *latency* each action gains;
* **wide**: `--wide` independent actions built with `-j --jobs`: (dask - local - fixed) /
  actions is the *throughput* cost, with several actions in flight on the workers.

Every build is cold (`.posbuild/` and `posbuild-out/` deleted), local and dask alternate, and the
outputs of both are compared byte for byte. From the records of the dask builds (`posbuild log
--json`), the medians of where an action's time goes: *lead* (the client starts the action →
the worker starts it: reading and sending inputs, scheduling), *remote* (on the worker: writing
inputs, the sandbox, reading outputs) and *tail* (the worker is done → the client has committed).

With `--remote URL` (a running remote cache that accepts PUT, e.g. nginx with WebDAV), the dask
builds use it as `[cache] remote` with uploads, under a fresh path prefix each so that nothing
hits: the workers then read every input from the remote by digest instead of receiving it through
Dask, and every result is uploaded, as in a CI build that fills the cache. The chain scenario has
one input per action; the wide one has none.

The script starts its own scheduler and `--workers` workers (`--threads` threads, declaring
cpu=threads) on 127.0.0.1 with free ports and dashboards bound to 127.0.0.1, and stops them at the
end; `--scheduler tcp://HOST:PORT` uses a running cluster instead. Run from the repository root:

    .venv/bin/python bench/bench_dask.py --chain 100 --wide 300 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

# as from a user's shell
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
READY = 60.0  # seconds for the scheduler and workers to come up


def dask_command(role: str) -> list[str]:
    script = Path(sys.executable).with_name("dask")
    return [str(script), role] if script.exists() \
        else [sys.executable, "-m", f"distributed.cli.dask_{role}"]


def wait_for(log: Path, pattern: str, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + READY
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text(errors="replace")) if log.exists() else None
        if match:
            return match.group(1)
        if process.poll() is not None:
            sys.exit(f"error: {log.name}: the process exited:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    sys.exit(f"error: timed out waiting for {pattern!r} in {log}")


def start_cluster(folder: Path, workers: int,
                  threads: int) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """A scheduler and workers on 127.0.0.1; the scheduler's address and every process."""
    folder.mkdir(parents=True, exist_ok=True)
    def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as handle:
            return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=ENV, cwd=folder)

    scheduler = spawn([*dask_command("scheduler"), "--host", "127.0.0.1", "--port", "0",
                       "--dashboard-address", "127.0.0.1:0"], folder / "scheduler.log")
    address = wait_for(folder / "scheduler.log", r"Scheduler at:\s+(tcp://\S+)", scheduler)
    processes = [scheduler]
    for n in range(workers):
        processes.append(spawn([*dask_command("worker"), address, "--host", "127.0.0.1",
                                "--nthreads", str(threads),
                                "--no-nanny", "--dashboard-address", "127.0.0.1:0",
                                "--local-directory",
                                str(folder / f"w{n}"), "--resources", f"cpu={threads},mem_mb=4096"],
                               folder / f"worker{n}.log"))
    for n, process in enumerate(processes[1:]):
        wait_for(folder / f"worker{n}.log", r"Registered to:\s+(tcp://\S+)", process)
    return address, processes


def stop_cluster(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(10)


def write_workspace(root: Path, kind: str, count: int) -> None:
    """`count` cheap genrules: a chain (each reads the previous output) or independent ones."""
    rules = []
    for i in range(count):
        srcs = f'srcs = [":a{i - 1}"], ' if kind == "chain" and i else ""
        cmd = "cat $< > $@; echo " + str(i) + " >> $@" if srcs else f"echo {i} > $@"
        rules.append(f'genrule(name = "a{i}", {srcs}outs = ["a{i}.txt"], cmd = "{cmd}")\n')
    if root.exists():
        shutil.rmtree(root)
    (root / "p").mkdir(parents=True)
    (root / "posbuild.toml").write_text("")
    (root / "p/BUILD").write_text("".join(rules))


def cold_build(root: Path, executor: str, jobs: int, remote: str = "") -> float:
    """Seconds of one build from nothing; with `remote`, under a fresh prefix of it, uploading."""
    (root / "posbuild.toml").write_text('[cache]\nremote = '
                                        f'"{remote.rstrip("/")}/bench-{uuid.uuid4().hex}"\n'
                                        f'upload = true\n' if remote else "")
    for name in (".posbuild", "posbuild-out"):
        if (root / name).exists():
            subprocess.run(["chmod", "-R", "u+w", str(root / name)], check=True)
            shutil.rmtree(root / name)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "posbuild", "build", "-q", f"-j{jobs}",
                           "--executor", executor],
                          cwd=root, env=ENV, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"error: {executor} build failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return elapsed


def outputs(root: Path) -> dict[str, bytes]:
    out = root / "posbuild-out"
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def phases(root: Path) -> dict[str, list[float]]:
    """Per executed action of the latest build: lead, remote and tail seconds (see the
    docstring)."""
    done = subprocess.run([sys.executable, "-m", "posbuild", "log", "--json"], cwd=root, env=ENV,
                          capture_output=True, text=True, check=True)
    found: dict[str, list[float]] = {"lead": [], "remote": [], "tail": []}
    for line in done.stdout.splitlines():
        record = json.loads(line)
        if record["state"] != "SUCCESS" or not record.get("worker"):
            continue
        at = {name: datetime.fromisoformat(record[name]).timestamp()
              for name in ("started", "remote_started", "remote_ended", "ended")}
        found["lead"].append(at["remote_started"] - at["started"])
        found["remote"].append(at["remote_ended"] - at["remote_started"])
        found["tail"].append(at["ended"] - at["remote_ended"])
    return found


def scenario(workdir: Path, name: str, count: int, jobs: int, repeat: int, scheduler: str,
             remote: str = "") -> dict[str, object]:
    root = workdir / name
    write_workspace(root, "chain" if name == "chain" else "wide", count)
    times: dict[str, list[float]] = {"local": [], "dask": []}
    seen: dict[str, list[float]] = {"lead": [], "remote": [], "tail": []}
    for _ in range(repeat):
        times["local"].append(cold_build(root, "local", jobs))
        expected = outputs(root)
        times["dask"].append(cold_build(root, scheduler.replace("tcp://", "dask://"), jobs, remote))
        if outputs(root) != expected:
            sys.exit(f"error: {name}: the outputs of the dask build differ from the local build's")
        for key, values in phases(root).items():
            seen[key].extend(values)
    local, remote = statistics.median(times["local"]), statistics.median(times["dask"])
    return {"name": name, "actions": count, "jobs": jobs, "local": local, "dask": remote,
            "per_action_ms": (remote - local) / count * 1000,
            **{key: statistics.median(values) * 1000 if values else float("nan")
               for key, values in seen.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chain", type=int, default=100,
                        help="actions in the chain scenario (0: skip it)")
    parser.add_argument("--wide", type=int, default=300,
                        help="actions in the wide scenario (0: skip it)")
    parser.add_argument("--jobs", type=int, default=4, help="-j of the wide scenario")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2,
                        help="threads (and declared cpu) per worker")
    parser.add_argument("--scheduler", default="",
                        help="use this running cluster (tcp://HOST:PORT)")
    parser.add_argument("--remote", default="",
                        help="dask builds read inputs from this remote cache (http://HOST/PREFIX)")
    parser.add_argument("--workdir", default="",
                        help="where to generate (default: a temporary folder)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="posbuild-bench-dask-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        scheduler = args.scheduler
        if not scheduler:
            scheduler, processes = start_cluster(workdir / "cluster", args.workers, args.threads)
        runs = [("fixed", 1, 1)] + [(name, count, jobs) for name, count, jobs in
                                    (("chain", args.chain, 1), ("wide", args.wide, args.jobs))
                                    if count]
        if args.remote:
            ENV.setdefault("POSBUILD_CACHE_KEY", "bench")
        results = [scenario(workdir, name, count, jobs, args.repeat, scheduler, args.remote)
                   for name, count, jobs in runs]
        fixed = results[0]["dask"] - results[0]["local"]  # type: ignore[operator]
        for r in results[1:]:  # the per-action figures leave out what any build on Dask costs once
            r["per_action_ms"] = (r["dask"] - r["local"] - fixed) / r["actions"] * 1000  # type: ignore[operator]
    finally:
        stop_cluster(processes)
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'scenario':<8} {'actions':>7} {'-j':>3} {'local s':>8} {'dask s':>8} "
          f"{'+ms/action':>10} {'lead ms':>8} {'remote ms':>9} {'tail ms':>8}")
    for r in results:
        print(f"{r['name']:<8} {r['actions']:>7} {r['jobs']:>3} {r['local']:>8.2f} "
              f"{r['dask']:>8.2f} {r['per_action_ms']:>10.1f} {r['lead']:>8.1f} "
              f"{r['remote']:>9.1f} {r['tail']:>8.1f}")
    print(f"({args.workers} workers x {args.threads} threads on 127.0.0.1, medians of "
          f"{args.repeat} cold builds; 'fixed' is the whole difference of a one-action build; "
          "+ms/action of the others leaves it out"
          + (f"; dask builds with the remote cache {args.remote}, uploading)"
             if args.remote else ")"))


if __name__ == "__main__":
    main()

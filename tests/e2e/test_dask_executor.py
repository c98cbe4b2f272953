"""`--executor dask://HOST:PORT`: actions run on a real Dask cluster of separate processes.

The clusters are real: a `dask scheduler` and `dask worker` processes on 127.0.0.1 (free ports,
dashboards bound to 127.0.0.1), started once per module for the tests that leave them intact, and
once per test for the tests that kill a worker or the scheduler. Workers run without a nanny, so
killing a worker's process really removes it from the cluster.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import POSBUILD, Workspace, counts

try:
    import distributed
except ImportError:  # only the test of that very case runs
    distributed = None

NEEDS_DASK = "the dask executor tests need the distributed package: pip install 'posbuild[dask]'"
needs_distributed = pytest.mark.skipif(distributed is None, reason=NEEDS_DASK)

READY_TIMEOUT = 60.0  # seconds for a scheduler and its workers to come up on a busy 2-core machine
RESOURCES = "cpu=2,mem_mb=2048"


def _dask_command(role: str) -> list[str]:
    script = Path(sys.executable).with_name("dask")
    if script.exists():
        return [str(script), role]
    return [sys.executable, "-m", f"distributed.cli.dask_{role}"]


class Cluster:
    """A scheduler and workers as subprocesses, each logging to a file under `folder`."""

    def __init__(self, folder: Path, env: dict[str, str] | None = None) -> None:
        if distributed is None:
            pytest.skip(NEEDS_DASK)
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **(env or {})}
        self.workers: dict[str, subprocess.Popen[bytes]] = {}  # address → process
        log = folder / "scheduler.log"
        self.scheduler = self._spawn([*_dask_command("scheduler"), "--host", "127.0.0.1", "--port",
                                      "0", "--dashboard-address", "127.0.0.1:0"], log)
        self.address = self._wait_for_line(log, re.compile(r"Scheduler at:\s+(tcp://\S+)"),
                                           self.scheduler)
        self.client = distributed.Client(self.address, timeout=READY_TIMEOUT, set_as_default=False)

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as handle:
            return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self.env, cwd=self.folder)

    @staticmethod
    def _wait_for_line(log: Path, pattern: re.Pattern[str],
                       process: subprocess.Popen[bytes]) -> str:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            match = pattern.search(log.read_text(errors="replace")) if log.exists() else None
            if match:
                return match.group(1)
            assert process.poll() is None, log.read_text(errors="replace")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {pattern.pattern} in {log}")

    def add_workers(self, count: int, resources: str | None = RESOURCES) -> list[str]:
        """Start `count` workers and wait until the scheduler knows them; their addresses."""
        started = []
        for _ in range(count):
            number = len(self.workers) + len(started)
            log = self.folder / f"worker{number}.log"
            argv = [*_dask_command("worker"), self.address, "--host", "127.0.0.1", "--nthreads",
                    "2", "--no-nanny",
                    "--dashboard-address", "127.0.0.1:0", "--local-directory",
                    str(self.folder / f"w{number}"), "--name", f"w{number}"]
            if resources:
                argv += ["--resources", resources]
            started.append((self._spawn(argv, log), log))
        addresses = []
        for process, log in started:
            address = self._wait_for_line(log, re.compile(r"Start worker at:\s+(tcp://\S+)"),
                                          process)
            self.workers[address] = process
            addresses.append(address)
        self.client.wait_for_workers(len(self.workers), timeout=READY_TIMEOUT)
        return addresses

    def kill_worker(self, address: str) -> None:
        process = self.workers.pop(address)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        try:
            self.client.close(timeout=5)
        except Exception:
            pass
        # nothing of theirs needs a clean exit
        for process in [*self.workers.values(), self.scheduler]:
            if process.poll() is None:
                process.kill()
            process.wait(10)

    @property
    def url(self) -> str:
        return self.address.replace("tcp://", "dask://")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two workers, each declaring cpu=2 and mem_mb=2048; nothing kills them."""
    running = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        running.add_workers(2)
        yield running
    finally:
        running.stop()


@pytest.fixture
def new_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of the test's own (no workers yet), for tests that kill parts of it. A worker that
    dies while running a task may take it down once more; the second death fails it."""
    running = Cluster(tmp_path / "dask", env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"})
    try:
        yield running
    finally:
        running.stop()


def workspace(tmp_path: Path, name: str, files: dict[str, str]) -> Workspace:
    root = tmp_path / name
    root.mkdir()
    ws = Workspace(root)
    ws.write({"posbuild.toml": "", **files})
    return ws


# -- a workspace of a few hundred actions
# -------------------------------------------------------------

PACKAGES, RULES = 8, 24


def pipeline() -> dict[str, str]:
    """Eight packages of genrules, each a binary tree under its first rule, the first rules a chain
    across packages (so that the cluster has parallel work); a tool with its executable bit,
    executable outputs, a py_task importing a workspace module per package, and a 300 KiB input
    shared by several actions (larger than what travels inside a Dask task)."""
    files = {
        "tools/BUILD": 'exports_files(["stamp.sh", "big.bin"])\n',
        "tools/stamp.sh": "#!/bin/sh\necho \"stamp $1\"\ncat \"$2\"\n",
        "tools/big.bin": "".join(f"{i:07d}\n" for i in range(300 * 1024 // 8)),
        "lib/helper.py": "def shout(text):\n    return text.upper()\n",
        "lib/BUILD": 'exports_files(["helper.py"])\n',
    }
    for p in range(PACKAGES):
        rules = []
        for r in range(RULES):
            srcs = [f"s{r % 4}.txt"] + ([f":g{(r - 1) // 2}"] if r else [f"//p{p - 1}:g0"]
                                        if p else [])
            if r % 6 == 5:
                cmd = "$(location //tools:stamp.sh) " + (
                    f"{r} $(location s{r % 4}.txt) > $@; cat $(SRCS) >> $@")
                tools = ', tools = ["//tools:stamp.sh"]'
            elif r % 8 == 7:
                cmd = "cksum < $(location //tools:big.bin) > $@; cat $(SRCS) | wc -l >> $@"
                srcs.append("//tools:big.bin")
                tools = ""
            else:
                cmd = f"cat $(SRCS) | tail -n 40 > $@; echo {p}.{r} >> $@" + ("; chmod +x $@"
                                                                              if r % 5 == 0 else "")
                tools = ""
            src_list = ", ".join(f'"{s}"' for s in srcs)
            rules.append(
                f'genrule(name = "g{r}", srcs = [{src_list}], outs = ["g{r}.txt"], cmd = '
                f'"{cmd}"{tools})\n')
        rules.append(f'py_task(name = "py", script = "up.py", srcs = [":g{RULES - 1}"], outs = '
                     f'["up.txt"],\n        args = ["$(location :g{RULES - 1})", "$@"])\n')
        files[f"p{p}/BUILD"] = "".join(rules)
        files[f"p{p}/up.py"] = ("import sys\nfrom lib.helper import shout\n"
                                "open(sys.argv[2], 'w').write(shout(open(sys.argv[1]).read()))\n")
        for s in range(4):
            files[f"p{p}/s{s}.txt"] = f"source {p}/{s}\n"
    return files


def outputs(ws: Workspace) -> dict[str, tuple[bytes, bool]]:
    out = ws.root / "posbuild-out"
    return {str(path.relative_to(out)): (path.read_bytes(), os.access(path, os.X_OK))
            for path in sorted(out.rglob("*")) if path.is_file()}


def log_json(ws: Workspace, *args: str) -> list[dict]:  # type: ignore[type-arg]
    result = ws.run("log", "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_build_on_dask_is_byte_identical_to_a_local_one_then_hits_the_cache(
        cluster: Cluster, tmp_path: Path) -> None:
    files = pipeline()
    local, remote = workspace(tmp_path, "local", files), workspace(tmp_path, "remote", files)
    os.chmod(local.root / "tools/stamp.sh", 0o755)
    os.chmod(remote.root / "tools/stamp.sh", 0o755)
    total = PACKAGES * (RULES + 1)

    assert counts(local.ok("--executor", "local", "-j", "2")) == {"executed": total, "cached": 0,
                                                                  "failed": 0}
    result = remote.ok("--executor", cluster.url, "-j", "6")
    assert counts(result) == {"executed": total, "cached": 0, "failed": 0}
    assert outputs(remote) == outputs(local)
    assert outputs(remote)["p3/g5.txt"][0].startswith(b"stamp 5\n")
    assert outputs(remote)["p0/g0.txt"][1]  # an executable output stays executable
    assert outputs(remote)["p7/up.txt"][0].isupper()

    records = log_json(remote)
    assert len(records) == total and {r["state"] for r in records} == {"SUCCESS"}
    assert {r["worker"] for r in records} == set(cluster.workers)  # both workers took actions
    assert {r["host"] for r in records} == {os.uname().nodename}
    for record in records:
        assert record["remote_started"] <= record["remote_ended"]
    table = remote.run("log").stdout
    assert "ran on" in table and any(w.split("://")[1] in table for w in cluster.workers)

    # Nothing changed: every action is a cache hit and nothing runs remotely, even with outputs
    # gone.
    assert counts(remote.ok("--executor", cluster.url)) == {"executed": 0, "cached": total,
                                                            "failed": 0}
    assert remote.run("clean").returncode == 0
    assert counts(remote.ok("--executor", cluster.url)) == {"executed": 0, "cached": total,
                                                            "failed": 0}
    assert outputs(remote) == outputs(local)
    assert not any(r["worker"] for r in log_json(remote))

    # One source changes: only its downstream cone runs again, on the cluster.
    (remote.root / "p7/s1.txt").write_text("changed\n")
    (local.root / "p7/s1.txt").write_text("changed\n")
    local.ok("--executor", "local")
    rebuilt = counts(remote.ok("--executor", cluster.url))
    assert 0 < rebuilt["executed"] < RULES + 1
    assert outputs(remote) == outputs(local)


def test_config_selects_the_executor_and_failures_stay_isolated(cluster: Cluster,
                                                                tmp_path: Path) -> None:
    ws = workspace(tmp_path, "ws", {
        "posbuild.toml": f'[executor]\nkind = "dask"\naddress = "{cluster.address}"\n',
        "p/BUILD": 'genrule(name = "ok", outs = ["ok.txt"], cmd = "echo fine > $@")\n'
                   'genrule(name = "bad", outs = ["bad.txt"], cmd = "echo broken >&2; exit 3")\n'
                   'genrule(name = "after", srcs = [":bad"], outs = ["after.txt"], cmd = "cp $< '
                   '$@")\ngenrule(name = "nothing", outs = ["nothing.txt"], cmd = "true")\n'
                   'genrule(name = "slow", outs = ["slow.txt"], cmd = "sleep 5; touch $@", timeout '
                   '= 1)\n',
    })
    result = ws.build("-k")
    assert result.returncode == 1, result.stderr
    assert ws.out("p/ok.txt") == "fine\n"
    assert "broken" in result.stdout + result.stderr
    assert "exit code 3" in result.stdout + result.stderr
    assert "'posbuild-out/p/nothing.txt' was not created" in result.stdout + result.stderr
    assert "timed out after 1 s" in result.stdout + result.stderr
    records = {r["label"]: r for r in log_json(ws)}
    assert records["//p:bad"]["state"] == "FAILED" \
            and records["//p:bad"]["worker"] in cluster.workers
    assert records["//p:after"]["state"] == "SKIPPED"
    assert not (ws.root / "posbuild-out/p/after.txt").exists()
    # `--executor local` overrides posbuild.toml.
    local = ws.build("--executor", "local", "//p:ok")
    assert local.returncode == 0, local.stderr


def test_an_action_that_fits_no_worker_is_orch_05_before_anything_runs(cluster: Cluster,
                                                                       tmp_path: Path) -> None:
    ws = workspace(tmp_path, "ws", {
        "p/BUILD": 'genrule(name = "small", outs = ["small.txt"], cmd = "touch $@")\n'
                   'genrule(name = "huge", outs = ["huge.txt"], cmd = "touch $@", resources = '
                   '{"mem_mb": 4096})\n',
    })
    result = ws.build("--executor", cluster.url)
    assert result.returncode == 15, result.stderr
    assert result.stderr.strip() == (
        'posbuild: ORCH-05 resource oversubscription: //p:huge requests cpu=1 mem_mb=4096 but the '
        f'Dask cluster at {cluster.address} cannot run it: no worker declares that much (cpu=2 '
        'mem_mb=2048); start workers with --resources "cpu=N,mem_mb=M"')
    assert not (ws.root / "posbuild-out/p/small.txt").exists()
    # The local budget does not apply on the cluster: cpu=2 runs there even if posbuild.toml allows
    # 1.
    ws.write({"posbuild.toml": "[resources]\ncpu = 1\n",
              "p/BUILD": 'genrule(name = "wide", outs = ["wide.txt"], cmd = "echo '
                         '$$OMP_NUM_THREADS > $@", resources = {"cpu": 2, "mem_mb": 100})\n'})
    assert ws.build().returncode == 15  # locally: beyond the budget
    ws.ok("--executor", cluster.url)
    assert ws.out("p/wide.txt") == "2\n"


def test_ctrl_c_counts_the_commands_the_workers_killed(cluster: Cluster, tmp_path: Path) -> None:
    started = tmp_path / "started"
    ws = workspace(tmp_path, "ws", {
        # the folder sandbox: the command must leave its flag where this test sees it
        "posbuild.toml": '[sandbox]\nmode = "folder"\n',
        "p/BUILD": f'genrule(name = "slow", outs = ["slow.txt"], '
                   f'cmd = "touch {started}; sleep 60; touch $@")\n',
    })
    build = subprocess.Popen([*POSBUILD, "build", "--executor", cluster.url], cwd=ws.root,
                             text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + READY_TIMEOUT
    while not started.exists():
        assert build.poll() is None and time.monotonic() < deadline, build.communicate()
        time.sleep(0.05)
    build.send_signal(signal.SIGINT)
    _, err = build.communicate(timeout=30)
    assert build.returncode == 130, err
    assert err.splitlines()[-1] == (
        "posbuild: interrupted by SIGINT; 1 running action stopped, nothing partial kept")
    assert not (ws.root / "posbuild-out/p/slow.txt").exists()


def test_secrets_reach_only_the_worker_that_runs_the_action(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    secret = "s3cr3t-" + os.urandom(8).hex()
    ws = workspace(tmp_path, "ws", {
        "p/BUILD": 'genrule(name = "use", outs = ["sum.txt"], secrets = ["API_TOKEN"],\n'
                   '        cmd = "sleep 1.5; printf %s \\"$$API_TOKEN\\" | cksum > $@")\n',
    })
    build = subprocess.Popen([*POSBUILD, "build", "--executor", cluster.url], cwd=ws.root,
                             text=True,
                             env={**os.environ, "API_TOKEN": secret}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)

    # runs on the scheduler (a nested function travels by value)
    def task_specs(dask_scheduler: object) -> bytes:
        import pickle

        return b"".join(pickle.dumps(ts.run_spec) for key, ts in dask_scheduler.tasks.items()  # type: ignore
                        if str(key).startswith("posbuild:"))

    specs = b""
    deadline = time.monotonic() + 30
    # what the scheduler holds meanwhile
    while build.poll() is None and time.monotonic() < deadline:
        specs += cluster.client.run_on_scheduler(task_specs)
        if specs:
            break
        time.sleep(0.05)
    out, err = build.communicate(timeout=60)
    assert build.returncode == 0, err
    assert b"posbuild:" in specs  # the action's task was seen on the scheduler ...
    assert secret.encode() not in specs  # ... without the secret's value
    expected = subprocess.run(["cksum"], input=secret.encode(), capture_output=True).stdout.decode()
    assert ws.out("p/sum.txt") == expected


def test_a_worker_killed_mid_build_is_replaced_then_repeated_deaths_fail_clearly(
        new_cluster: Cluster, tmp_path: Path) -> None:
    first, second, doomed = new_cluster.add_workers(3)
    slow = "".join(f'genrule(name = "t{i}", outs = ["t{i}.txt"], cmd = "sleep 0.6; echo {i} > '
                   '$@")\n'
                   for i in range(12))
    ws = workspace(tmp_path, "ws", {
        "posbuild.toml": '[sandbox]\nmode = "folder"\n',
        "p/BUILD": slow + 'genrule(name = "all", srcs = [%s], outs = ["all.txt"], cmd = "cat '
                          '$(SRCS) > $@")\n'
                   % ", ".join(f'":t{i}"' for i in range(12)),
    })
    build = subprocess.Popen([*POSBUILD, "build", "--executor", new_cluster.url, "-j", "6"],
                             cwd=ws.root, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    interrupted = _wait_until_processing(new_cluster, doomed)
    new_cluster.kill_worker(doomed)
    out, err = build.communicate(timeout=120)
    assert build.returncode == 0, out + err
    assert ws.out("p/all.txt") == "".join(f"{i}\n" for i in range(12))
    records = {r["label"]: r for r in log_json(ws)}
    assert {r["state"] for r in records.values()} == {"SUCCESS"}
    for label in interrupted:  # what ran on the dead worker ran again on another
        assert records[label]["worker"] in (first, second), (label, records[label])

    # An action that kills whichever worker runs it: run again once, then a clear failure.
    ws.write(
        {"p/BUILD": 'genrule(name = "killer", outs = ["k.txt"], cmd = "kill -9 $$PPID; sleep 5; '
                    'touch $@")\n'})
    started = time.monotonic()
    result = ws.build("--executor", new_cluster.url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "killed by signal 9" in result.stdout + result.stderr
    assert "the Dask worker running this action died" in result.stdout + result.stderr
    assert time.monotonic() - started < 60
    assert not (ws.root / "posbuild-out/p/k.txt").exists()


def _wait_until_processing(cluster: Cluster, worker: str) -> list[str]:
    """Labels of the posbuild actions `worker` runs, once it runs some."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        keys = cluster.client.processing(workers=[worker]).get(worker, [])
        labels = [re.sub(r"-[0-9a-f]{16}$", "", str(k)).removeprefix("posbuild:") for k in keys
                  if str(k).startswith("posbuild:")]
        if labels:
            return labels
        time.sleep(0.02)
    raise AssertionError(f"{worker} never ran an action")


def test_losing_the_scheduler_fails_cleanly_and_a_local_build_recovers(new_cluster: Cluster,
                                                                       tmp_path: Path) -> None:
    (worker,) = new_cluster.add_workers(1)
    ws = workspace(tmp_path, "ws", {
        "p/BUILD": "".join(f'genrule(name = "t{i}", outs = ["t{i}.txt"], cmd = "sleep 1; echo {i} '
                           '> $@")\n'
                           for i in range(6)),
    })
    build = subprocess.Popen([*POSBUILD, "build", "--executor", new_cluster.url, "-j", "2"],
                             cwd=ws.root, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_until_processing(new_cluster, worker)
    started = time.monotonic()
    new_cluster.client.close(timeout=5)
    new_cluster.scheduler.send_signal(signal.SIGKILL)
    out, err = build.communicate(timeout=60)
    assert time.monotonic() - started < 30
    assert build.returncode == 1, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"posbuild: lost the Dask scheduler at {new_cluster.address}"), err
    assert "Traceback" not in out + err
    for path in (ws.root / "posbuild-out").rglob("*.txt"):  # whatever finished before is whole
        assert path.read_text() == f"{path.stem[1:]}\n"
    fsck = ws.run("fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    ws.ok("--executor", "local")
    assert [ws.out(f"p/t{i}.txt") for i in range(6)] == [f"{i}\n" for i in range(6)]


def test_a_worker_whose_environment_differs_is_orch_07(new_cluster: Cluster,
                                                       tmp_path: Path) -> None:
    # the worker's platform differs (faked: the worker reads the variable the tests fake with)
    new_cluster.env["POSBUILD_TEST_FINGERPRINT"] = json.dumps({"os.release": "0.0-worker"})
    (worker,) = new_cluster.add_workers(1)
    ws = workspace(tmp_path, "ws",
                   {"p/BUILD": 'genrule(name = "t", outs = ["t.txt"], cmd = "echo 1 > $@")\n'})
    result = ws.build("--executor", new_cluster.url)
    assert result.returncode == 17, result.stdout + result.stderr
    release = os.uname().release
    assert re.fullmatch(rf"posbuild: ORCH-07 environment drift: Dask worker {worker} \(\S+\) has "
                        r"h_E [0-9a-f]{12}, "
                        rf"not this machine's [0-9a-f]{{12}} \(changed os\.release "
                        rf"{re.escape(release)} -> 0\.0-worker\); give the workers this "
                        r"environment, or pass --allow-env-drift",
                        result.stderr.strip()), result.stderr
    assert not (ws.root / "posbuild-out/p/t.txt").exists()
    ws.ok("--executor", new_cluster.url, "--allow-env-drift")
    assert ws.out("p/t.txt") == "1\n"


@needs_distributed
def test_an_unreachable_scheduler_is_one_clear_line(tmp_path: Path) -> None:
    ws = workspace(tmp_path, "ws",
                   {"p/BUILD": 'genrule(name = "t", outs = ["t.txt"], cmd = "touch $@")\n'})
    result = ws.build("--executor", "dask://127.0.0.1:1",
                      env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"})
    assert result.returncode == 1
    assert result.stderr.startswith(
        "posbuild: cannot reach the Dask scheduler at tcp://127.0.0.1:1 (")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_bad_or_missing_address_is_one_clear_line_with_or_without_distributed(
    tmp_path: Path) -> None:
    ws = workspace(tmp_path, "ws",
                   {"p/BUILD": 'genrule(name = "t", outs = ["t.txt"], cmd = "touch $@")\n'})
    bad = ws.build("--executor", "dask://127.0.0.1:notaport")
    assert bad.returncode == 2 and "expected dask://HOST:PORT" in bad.stderr
    ws.write({"posbuild.toml": '[executor]\nkind = "dask"\n'})
    missing = ws.build()
    assert missing.returncode == 2 and '[executor] kind = "dask" needs an address' in missing.stderr


def test_without_distributed_the_dask_executor_says_how_to_install_it(tmp_path: Path) -> None:
    ws = workspace(tmp_path, "ws",
                   {"p/BUILD": 'genrule(name = "t", outs = ["t.txt"], cmd = "touch $@")\n'})
    blocked = ("import sys; sys.modules['distributed'] = None; sys.argv = ['posbuild', "
               "*sys.argv[1:]]; from posbuild.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", blocked, "build", "--executor",
                             "dask://127.0.0.1:8786"],
                            cwd=ws.root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("posbuild: the dask executor needs the 'distributed' package, "
                                     "which is not installed: pip install 'posbuild[dask]'")


# -- the pure parts, without a cluster
# ----------------------------------------------------------------


@pytest.mark.parametrize("text, address", [
    ("dask://127.0.0.1:8786", "tcp://127.0.0.1:8786"),
    ("dask://scheduler.example", "tcp://scheduler.example:8786"),
    ("tcp://10.0.0.5:9000/", "tcp://10.0.0.5:9000"),
    ("tls://dask.internal:8786", "tls://dask.internal:8786"),
    ("127.0.0.1:1234", "tcp://127.0.0.1:1234"),
    ("dask://[::1]:8786", "tcp://[::1]:8786"),
])
def test_scheduler_addresses(text: str, address: str) -> None:
    from posbuild.exec.dask_cluster import scheduler_address

    assert scheduler_address(text) == address


@pytest.mark.parametrize("text",
                         ["dask://:8786", "dask://host:0", "dask://host:x", "http://host:8786"])
def test_bad_scheduler_addresses(text: str) -> None:
    from posbuild.exec.dask_cluster import scheduler_address
    from posbuild.errors import UsageError

    with pytest.raises(UsageError):
        scheduler_address(text)


def test_placement_by_declared_resources_or_by_threads() -> None:
    from posbuild.core.action import Action
    from posbuild.exec.dask_cluster import (WorkerInfo, check_fits, dask_resources,
                                            declares_resources)
    from posbuild.errors import ResourceOversubscription

    def action(label: str, cpu: int, mem_mb: int) -> Action:
        return Action(label, "genrule", "true", (), (), (), (), (), 0, (), b"", (), (),
                      (cpu, mem_mb, 1))

    plain = [WorkerInfo("tcp://a:1", 4, ())]
    declared = [WorkerInfo("tcp://a:1", 2, (("cpu", 2.0), ("mem_mb", 2048.0))),
                WorkerInfo("tcp://b:1", 8, (("cpu", 8.0),))]
    assert not declares_resources(plain) and declares_resources(declared)
    assert dask_resources((1, 0, 1), False) == {} \
            and dask_resources((2, 512, 1), True) == {"cpu": 2, "mem_mb": 512}
    check_fits([action("//p:a", 1, 0), action("//p:b", 0, 0)], plain, "tcp://s:1")
    check_fits([action("//p:a", 8, 0), action("//p:b", 2, 2048)], declared, "tcp://s:1")
    with pytest.raises(ResourceOversubscription,
                       match=r"//p:big requests cpu=2 .* its workers declare no "):
        check_fits([action("//p:a", 1, 0), action("//p:big", 2, 0)], plain, "tcp://s:1")
    with pytest.raises(ResourceOversubscription,
                       match=r"//p:both requests cpu=4 mem_mb=100 .*\(cpu=2 mem_mb=2048; "
                                                       r"cpu=8 mem_mb=0\)"):
        check_fits([action("//p:both", 4, 100)], declared, "tcp://s:1")


def test_a_blob_scattered_again_after_its_release_gets_a_key_of_its_own(tmp_path: Path) -> None:
    # the scheduler hears of a released key asynchronously: were the key reused, a release arriving
    # after the second scatter would drop the new copy and fail its action with "lost dependencies"
    from posbuild.workspace.config import load_config
    from posbuild.exec.dask_executor import DaskSpawner
    from posbuild.core.digest import hash_bytes

    class Client:
        def __init__(self) -> None:
            self.keys: list[str] = []

        def scatter(self, data: dict[str, bytes], hash: bool) -> dict[str, str]:
            self.keys.extend(data)
            return {key: f"future of {key}" for key in data}

    (tmp_path / "posbuild.toml").write_text("")
    sandboxes = DaskSpawner("tcp://127.0.0.1:1", load_config(tmp_path), (), check_env=False)
    client, data = Client(), b"x" * 300_000
    digest = hash_bytes(data)
    first = sandboxes._scatter(client, digest, data)
    assert sandboxes._scatter(client, digest, data) == first  # shared while in flight, sent once
    sandboxes._release([digest, digest])
    sandboxes._scatter(client, digest, data)
    assert len(client.keys) == 2 and client.keys[0] != client.keys[1]
    assert all(key.startswith(f"posbuild-blob-{digest.hex()}-") for key in client.keys)


def test_an_action_with_a_folder_output_is_refused_before_it_runs(cluster: Cluster,
                                                                   tmp_path: Path) -> None:
    ws = workspace(tmp_path, "ws", {
        "p/BUILD": 'genrule(name = "d", out_dirs = ["d"], cmd = "mkdir $@")\n'})
    result = ws.build("--executor", cluster.url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "//p:d declares out_dirs, which the Dask executor cannot run yet" in result.stderr
    assert "Traceback" not in result.stderr

"""A build killed with SIGKILL leaves a record: the next command that opens the store (`posbuild
log`, or the next build) records it as interrupted, naming the actions it had in flight (§12).

The posbuild process alone is killed, as the kernel's OOM killer or `kill -9` would; its long
command is left to end by itself (a short `sleep`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from conftest import POSBUILD, Workspace

SLOW = {
    "pkg/BUILD": """
        genrule(name = "quick", outs = ["quick.txt"], cmd = "echo quick > $@")
        genrule(name = "slow", srcs = [":quick"], outs = ["slow.txt"],
                cmd = "touch {flag}; sleep 8; cp $< $@")
    """,
}


def _kill_while_slow_runs(ws: Workspace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Build //pkg:slow and SIGKILL posbuild once the slow command has started."""
    flag = tmp_path / "slow-started"
    ws.write({"pkg/BUILD": SLOW["pkg/BUILD"].replace("{flag}", str(flag))})
    process = subprocess.Popen([*POSBUILD, "build", "//pkg:slow"], cwd=ws.root,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert process.poll() is None \
                and time.monotonic() < deadline, ("the slow action never started")
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def _builds(ws: Workspace) -> list[dict]:  # type: ignore[type-arg]
    result = ws.run("log", "--builds", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_posbuild_log_after_a_kill_shows_the_build_interrupted_with_its_action_in_flight(
    ws, tmp_path):
    _kill_while_slow_runs(ws, tmp_path)
    table = ws.run("log")
    assert table.returncode == 0, table.stderr
    assert "interrupted (noticed " in table.stdout
    rows = [line.split() for line in table.stdout.splitlines()]
    assert ["INTERRUPTED", "0.000", "-", "-", "-", "-", "interrupted", "//pkg:slow"] in rows
    records = {r["label"]: r for r in map(json.loads, ws.run("log", "--json").stdout.splitlines())}
    assert records["//pkg:slow"]["state"] == "INTERRUPTED" and records["//pkg:slow"]["ended"] == ""
    assert records["//pkg:slow"]["started"].startswith("20")
    [build] = _builds(ws)
    assert build["state"] == "INTERRUPTED" and "//pkg:slow" in build["in_flight"] and build["seal"]
    assert "ORCH-03" not in ws.run("fsck").stdout


def test_the_next_build_records_a_killed_build_as_interrupted(ws, tmp_path):
    _kill_while_slow_runs(ws, tmp_path)
    ws.write({"pkg/BUILD": SLOW["pkg/BUILD"].replace("{flag}", str(tmp_path / "again")).replace(
        "sleep 8; ", "")})
    ws.ok("//pkg:slow")
    first, second = _builds(ws)
    assert first["state"] == "INTERRUPTED" and "//pkg:slow" in first["in_flight"]
    assert second["state"] == "FINISHED"
    assert "INTERRUPTED" in {r["state"] for r in map(json.loads, ws.run("log", "--json", "--build",
                                                                        "1").stdout.splitlines())}
    assert "ORCH-03" not in ws.run("fsck").stdout


def test_a_build_that_is_still_running_is_not_recorded_as_interrupted(ws, tmp_path):
    flag = tmp_path / "slow-started"
    ws.write({"pkg/BUILD": SLOW["pkg/BUILD"].replace("{flag}",
                                                     str(flag)).replace("sleep 8", "sleep 2")})
    process = subprocess.Popen([*POSBUILD, "build", "//pkg:slow"], cwd=ws.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not flag.exists():
        assert process.poll() is None
        time.sleep(0.02)
    assert [b["state"] for b in _builds(ws)] == ["RUNNING"]
    assert process.wait(timeout=60) == 0
    assert [b["state"] for b in _builds(ws)] == ["FINISHED"]
    assert ws.run("fsck").returncode == 0


def test_a_build_stopped_by_ctrl_c_is_recorded_as_interrupted_by_itself(ws, tmp_path):
    flag = tmp_path / "slow-started"
    ws.write({"pkg/BUILD": SLOW["pkg/BUILD"].replace("{flag}", str(flag))})
    process = subprocess.Popen([*POSBUILD, "build", "//pkg:slow"], cwd=ws.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not flag.exists():
        assert process.poll() is None
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    from posbuild.workspace.config import load_config
    from posbuild.store.lmdbstore import Store

    store = Store(load_config(ws.root).store_dir)  # read as is: nothing after the build settled it
    try:
        [build] = store.builds()
    finally:
        store.close()
    assert build.status == "interrupted"
    records = {r["label"]: r for r in map(json.loads, ws.run("log", "--json").stdout.splitlines())}
    # stopped by posbuild: not a failure of its own
    assert records["//pkg:slow"]["state"] == "INTERRUPTED"
    assert ws.run("fsck").returncode == 0

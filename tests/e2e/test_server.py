"""The build server's own failure modes, each on a real server process: killed mid-build, a stale
socket, two clients, a hung server, a client that goes away, Ctrl-C, a watch it cannot trust,
another posbuild installation, and the ways to turn it off. (The ordinary end-to-end tests run
through it as well: tests/e2e/test_through_server_*.py.)"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (POSBUILD, Result, Workspace, counts, executed_labels, processes_with,
                      through_server)

ws = pytest.fixture(through_server)

UPPER = {
    "pkg/a.txt": "alpha\n",
    "pkg/BUILD": """
        genrule(name = "up", srcs = ["a.txt"], outs = ["up.txt"], cmd = "tr a-z A-Z < $< > $@")
    """,
}


def _slow(flag: Path, seconds: float, name: str = "slow") -> str:
    """A genrule that leaves `flag` when it starts, then sleeps (`_sleeping` finds it)."""
    return (f'genrule(name = "{name}", outs = ["{name}.txt"], tags = ["no-cache"], '
            f'cmd = "touch {flag}; sleep {seconds}; echo done > $@")\n')


def _sleeping(seconds: float) -> bool:
    """Whether a `sleep SECONDS` runs anywhere."""
    return bool(processes_with(f"sleep\0{seconds}\0".encode()))


def _running_slowly(ws: Workspace, tmp_path: Path, seconds: float) -> tuple[int | None,
                                                                          subprocess.Popen[str]]:
    """The server's pid, and a client whose build runs an action sleeping `seconds`."""
    flag = tmp_path / "started"
    ws.write({"pkg/BUILD": _slow(flag, seconds)})
    ws.ok("//pkg:slow", "-n")
    server = _server_pid(ws)
    client = _start(ws, "//pkg:slow")
    _wait_for(flag.exists)
    _wait_for(lambda: _sleeping(seconds))  # the shell starts `sleep` just after the flag
    return server, client


def _server_pid(ws: Workspace) -> int | None:
    """The pid of the server now listening, from its log, if its socket is there."""
    log = ws.root / ".posbuild" / "server.log"
    if not (ws.root / ".posbuild" / "server.sock").exists() or not log.exists():
        return None
    pids = re.findall(r"\[(\d+)\] serving", log.read_text())
    return int(pids[-1]) if pids else None


def _serving(ws: Workspace) -> int:
    """Build UPPER once through the server; the server's pid."""
    ws.write(UPPER)
    ws.ok()
    pid = _server_pid(ws)
    assert pid is not None
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _wait_for(check, seconds: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _start(ws: Workspace, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*POSBUILD, "build", *args], cwd=ws.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _fsck_clean(ws: Workspace) -> None:
    result = subprocess.run([*POSBUILD, "fsck"], cwd=ws.root, capture_output=True, text=True,
                            env={**os.environ, "POSBUILD_NO_SERVER": "1"}, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _without_times(text: str) -> str:
    return re.sub(r"in \d+\.\d+ s", "in T s", text)


def test_a_build_through_the_server_says_and_exits_as_a_one_shot_build(ws, monkeypatch):
    ws.write({**UPPER, "bad/BUILD": 'genrule(name = "x", outs = ["x"], cmd = "exit 3")\n'})
    served = [ws.build("//pkg:up"), ws.build("//bad:x"), ws.build("//nope:x"), ws.build("//...")]
    assert _server_pid(ws) is not None
    subprocess.run([*POSBUILD, "clean", "--all"], cwd=ws.root, check=True, capture_output=True)
    monkeypatch.setenv("POSBUILD_NO_SERVER", "1")
    alone = [ws.build("//pkg:up"), ws.build("//bad:x"), ws.build("//nope:x"), ws.build("//...")]
    assert [r.returncode for r in served] == [r.returncode for r in alone] == [0, 1, 3, 1]
    for through, here in zip(served, alone):
        assert _without_times(through.stdout) == _without_times(here.stdout)
        assert _without_times(through.stderr) == _without_times(here.stderr)
    assert not (ws.root / ".posbuild" / "server.sock").exists()  # one-shot started none


def test_a_no_op_through_the_server_still_sees_every_kind_of_change(ws):
    ws.write({**UPPER, "pkg/BUILD": """
        genrule(name = "up", srcs = ["a.txt"], outs = ["up.txt"], cmd = "tr a-z A-Z < $< > $@")
        genrule(name = "all", srcs = glob(["**/*.txt"]), outs = ["all.txt"], cmd = "cat $(SRCS) > $@")
    """})  # noqa: E501
    assert executed_labels(ws.ok()) == ["//pkg:all", "//pkg:up"]
    assert executed_labels(ws.ok()) == []
    assert executed_labels(ws.ok()) == []  # vouched for by the watch: no stat
    source = ws.root / "pkg/a.txt"
    before = source.stat()
    source.write_text("omega\n")  # same size, and the old times put back
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert executed_labels(ws.ok()) == ["//pkg:all", "//pkg:up"]
    assert ws.out("pkg/up.txt") == "OMEGA\n"
    (ws.root / "pkg/deep/er").mkdir(parents=True)  # a folder made after the server started
    (ws.root / "pkg/deep/er/b.txt").write_text("beta\n")
    assert executed_labels(ws.ok()) == ["//pkg:all"]
    assert ws.out("pkg/all.txt") == "omega\nbeta\n"
    assert executed_labels(ws.ok()) == []
    (ws.root / "pkg/deep/er/b.txt").write_text("gamma\n")  # inside the new folder
    assert executed_labels(ws.ok()) == ["//pkg:all"]
    (ws.root / "posbuild-out/pkg/up.txt").unlink()  # an output removed
    result = ws.ok()
    assert executed_labels(result) == [] and ws.out("pkg/up.txt") == "OMEGA\n"
    (ws.root / "pkg/BUILD").write_text((ws.root / "pkg/BUILD").read_text() + (
        'genrule(name = "new", outs = ["new.txt"], cmd = "echo new > $@")\n'))
    assert executed_labels(ws.ok()) == ["//pkg:new"]


def test_a_server_killed_mid_build_leaves_the_build_to_the_client(ws, tmp_path):
    flag = tmp_path / "started"
    ws.write({"pkg/BUILD": _slow(flag, 2)})
    ws.ok("//pkg:slow")
    flag.unlink()
    (ws.root / "pkg/BUILD").write_text(_slow(flag, 2) + "# again\n")
    client = _start(ws, "//pkg:slow")
    _wait_for(flag.exists)
    pid = _server_pid(ws)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, out + err
    assert "the build server stopped answering; building in this process" in err
    assert ws.out("pkg/slow.txt") == "done\n"
    _fsck_clean(ws)


def test_a_stale_socket_is_replaced_by_a_new_server(ws):
    first = _serving(ws)
    os.kill(first, signal.SIGKILL)
    _wait_for(lambda: not _alive(first))
    assert (ws.root / ".posbuild/server.sock").exists()  # left behind
    assert counts(ws.ok()) == {"executed": 0, "cached": 1, "failed": 0}
    second = _server_pid(ws)
    assert second is not None and second != first


def test_two_clients_at_once_queue_as_two_builds_do(ws, tmp_path):
    flag = tmp_path / "started"
    ws.write({"pkg/BUILD": _slow(flag, 1) + 'genrule(name = "b", outs = ["b.txt"], '
              'cmd = "echo b > $@")\n'})
    ws.ok("//pkg:b")  # the server is up
    first = _start(ws, "//pkg:slow")
    _wait_for(flag.exists)
    second = _start(ws, "//pkg:b")
    out1, err1 = first.communicate(timeout=60)
    out2, err2 = second.communicate(timeout=60)
    assert (first.returncode, second.returncode) == (0, 0), err1 + err2
    assert "another posbuild command is running in this workspace; waiting for it" in err2
    assert ws.out("pkg/slow.txt") == "done\n" and ws.out("pkg/b.txt") == "b\n"


def test_a_build_queued_when_the_server_stops_goes_to_the_next_server(ws, tmp_path):
    flag = tmp_path / "started"
    ws.write({"pkg/BUILD": _slow(flag, 1.5) + 'genrule(name = "b", outs = ["b.txt"], '
              'cmd = "echo b > $@")\n'})
    ws.ok("//pkg:b")
    server = _server_pid(ws)
    first = _start(ws, "//pkg:slow")
    _wait_for(flag.exists)
    second = _start(ws, "//pkg:b", "--rerun", "//pkg:b")
    time.sleep(0.5)  # queued behind the first
    assert ws.run("shutdown").stdout == "build server stopped\n"
    out1, err1 = first.communicate(timeout=60)
    out2, err2 = second.communicate(timeout=60)
    assert (first.returncode, second.returncode) == (0, 0), err1 + err2
    assert "stopped answering" not in err2  # declined, not dropped
    assert executed_labels(Result(0, out2, err2)) == ["//pkg:b"]
    assert _server_pid(ws) not in (None, server)  # the second build started a new server


def test_ctrl_c_stops_the_build_and_the_server_serves_on(ws, tmp_path):
    seconds = 61 + random.randrange(1000) / 1000  # its own, whatever else runs
    server, client = _running_slowly(ws, tmp_path, seconds)
    client.send_signal(signal.SIGINT)
    out, err = client.communicate(timeout=60)
    assert client.returncode == 130, out + err
    assert "interrupted by SIGINT; 1 running action stopped" in err
    assert not _sleeping(seconds)  # stopped before the exit code came
    assert _server_pid(ws) == server and _alive(server)
    _fsck_clean(ws)
    ws.write({"pkg/BUILD": 'genrule(name = "b", outs = ["b.txt"], cmd = "echo b > $@")\n'})
    assert executed_labels(ws.ok()) == ["//pkg:b"]


def test_a_client_that_goes_away_stops_its_build(ws, tmp_path):
    seconds = 62 + random.randrange(1000) / 1000
    server, client = _running_slowly(ws, tmp_path, seconds)
    client.kill()
    client.communicate(timeout=30)
    _wait_for(lambda: not _sleeping(seconds))
    assert _server_pid(ws) == server
    ws.write({"pkg/BUILD": 'genrule(name = "b", outs = ["b.txt"], cmd = "echo b > $@")\n'})
    assert executed_labels(ws.ok()) == ["//pkg:b"]
    _fsck_clean(ws)


def test_a_hung_server_is_left_within_a_second(ws):
    server = _serving(ws)
    os.kill(server, signal.SIGSTOP)
    try:
        (ws.root / "pkg/a.txt").write_text("beta\n")
        started = time.monotonic()
        result = ws.ok()
        assert time.monotonic() - started < 10
        assert executed_labels(result) == ["//pkg:up"] and ws.out("pkg/up.txt") == "BETA\n"
    finally:
        os.kill(server, signal.SIGCONT)


def test_a_watch_it_cannot_trust_makes_the_build_stat_and_the_server_stop(ws, monkeypatch):
    ws.write({**UPPER, "other/BUILD": 'genrule(name = "o", outs = ["o"], cmd = "echo > $@")\n'})
    monkeypatch.setenv("POSBUILD_TEST_MAX_WATCHES", "2")  # the workspace has more folders
    first = ws.ok()
    assert first.stderr.count("cannot trust its watch") == 1
    assert "inotify watch limit" in first.stderr
    assert counts(first) == {"executed": 2, "cached": 0, "failed": 0}
    _wait_for(lambda: not (ws.root / ".posbuild/server.sock").exists())
    assert (ws.root / ".posbuild/server.off").exists()
    (ws.root / "pkg/a.txt").write_text("beta\n")
    second = ws.ok()  # said once: the next builds run one-shot for a while, silently
    assert "watch" not in second.stderr and executed_labels(second) == ["//pkg:up"]
    assert not (ws.root / ".posbuild/server.sock").exists()


def test_a_client_of_another_installation_replaces_the_server(ws, tmp_path, monkeypatch):
    first = _serving(ws)
    copy = tmp_path / "other-install"
    shutil.copytree(Path(__file__).parents[2] / "posbuild", copy / "posbuild",
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("PYTHONPATH", str(copy))
    assert counts(ws.ok()) == {"executed": 0, "cached": 1, "failed": 0}
    second = _server_pid(ws)
    assert second is not None and second != first
    assert "a client of another posbuild installation" in (
        ws.root / ".posbuild/server.log").read_text()
    monkeypatch.delenv("PYTHONPATH")


def test_posbuild_upgraded_in_place_replaces_the_server_at_the_next_build(ws, tmp_path,
                                                                          monkeypatch):
    """An upgrade replaces posbuild's files where they are: the next build goes to a server of
    the new files, however soon it comes (the idle server would notice only at its next tick)."""
    copy = tmp_path / "install"
    shutil.copytree(Path(__file__).parents[2] / "posbuild", copy / "posbuild",
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("PYTHONPATH", str(copy))
    first = _serving(ws)
    module = copy / "posbuild/engine/plan.py"  # rewritten as an installer does: a new file
    (module.parent / "plan.py.new").write_bytes(module.read_bytes())
    os.replace(module.parent / "plan.py.new", module)
    (ws.root / "pkg/a.txt").write_text("beta\n")
    assert executed_labels(ws.ok()) == ["//pkg:up"]
    second = _server_pid(ws)
    assert second is not None and second != first
    assert "posbuild's own files changed" in (ws.root / ".posbuild/server.log").read_text()
    assert (ws.root / "posbuild-out/pkg/up.txt").read_text() == "BETA\n"


def test_a_posbuild_folder_in_the_workspace_is_not_what_the_server_runs(ws):
    """A workspace may hold a folder named `posbuild` (a project's own package, a checkout of
    posbuild): the server is posbuild's, not that folder's, whatever folder the build starts
    in, and it serves build after build."""
    marker = ws.root / "imported"
    ws.write({**UPPER, "posbuild/__init__.py": f"open({str(marker)!r}, 'w').close()\n",
              "posbuild/cli/__init__.py": "", "posbuild/cli/server.py": "raise SystemExit(9)\n"})
    for _ in range(3):
        last = ws.ok()
    assert counts(last) == {"executed": 0, "cached": 1, "failed": 0}
    assert not marker.exists()
    log = (ws.root / ".posbuild/server.log").read_text()
    assert log.count("serving") == 1, log


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to listen as another user")
def test_a_socket_of_another_user_is_never_sent_a_build(ws):
    """A checkout may come with `.posbuild/server.sock` as a link to a socket another user of
    the machine listens on: the client sends its server its whole environment (tokens
    included) and its terminal. It talks only to a server of its own user (SO_PEERCRED)."""
    import tempfile

    listening = Path(tempfile.mkdtemp(prefix="theirs-", dir="/tmp"))  # a folder they can reach
    listening.chmod(0o777)
    heard = listening / "heard"
    listener = subprocess.Popen(
        [sys.executable, "-c", (
            "import os, socket, sys\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o777)\n"
            "s.listen(); open(sys.argv[2] + '.ready', 'w').close()\n"
            "while True:\n"
            "    c, _ = s.accept(); c.settimeout(2)\n"
            "    try:\n"
            "        data = c.recv(65536)\n"
            "    except OSError:\n"
            "        data = b''\n"
            "    open(sys.argv[2], 'ab').write(data)\n"
            "    c.close()\n"),
         str(listening / "evil.sock"), str(heard)])
    try:
        _wait_for((listening / "heard.ready").exists)
        ws.write(UPPER)
        (ws.root / ".posbuild").mkdir()
        (ws.root / ".posbuild/server.sock").symlink_to(listening / "evil.sock")
        result = ws.build(env={"MY_TOKEN": "token-4b1d"})
        assert result.returncode == 0, result.stderr
        assert ws.out("pkg/up.txt") == "ALPHA\n"
        said = heard.read_bytes() if heard.exists() else b""
    finally:
        listener.kill()
        listener.wait()
        shutil.rmtree(listening)
    assert b"token-4b1d" not in said


def test_a_client_with_other_resource_limits_builds_with_them(ws):
    """An action sees the limits of the client that asked for the build: a client whose open
    files limit differs from the server's is not served, and builds in its own process."""
    import resource

    ws.write({"pkg/BUILD": 'genrule(name = "n", outs = ["n.txt"], tags = ["no-cache"], '
                           'cmd = "ulimit -n > $@")\n'})
    ws.ok()
    served = int(ws.out("pkg/n.txt"))
    assert _server_pid(ws) is not None
    lowered = served - 7

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, lowered))

    run = subprocess.run([*POSBUILD, "build"], cwd=ws.root, capture_output=True, text=True,
                         preexec_fn=lower, timeout=120)
    assert run.returncode == 0, run.stderr
    assert int(ws.out("pkg/n.txt")) == lowered
    ws.ok()  # and the server, still there, serves the clients of its own limits
    assert int(ws.out("pkg/n.txt")) == served


@pytest.mark.parametrize("how", ["config", "option", "variable"])
def test_the_server_can_be_turned_off(ws, monkeypatch, how):
    ws.write(UPPER)
    args: tuple[str, ...] = ()
    if how == "config":
        (ws.root / "posbuild.toml").write_text("[build]\nserver = false\n")
    elif how == "option":
        args = ("--no-server",)
    else:
        monkeypatch.setenv("POSBUILD_NO_SERVER", "1")
    ws.ok(*args)
    ws.ok(*args)
    assert not (ws.root / ".posbuild/server.sock").exists()
    assert not (ws.root / ".posbuild/server.log").exists()
    if how != "option":
        (ws.root / ".posbuild/server.log").write_text("serving (for the fixture)\n")


def test_a_running_server_turned_off_in_the_config_steps_down(ws):
    server = _serving(ws)
    (ws.root / "posbuild.toml").write_text("[build]\nserver = false\n")
    ws.ok()
    _wait_for(lambda: not _alive(server))
    ws.ok()
    assert not (ws.root / ".posbuild/server.sock").exists()


def test_an_idle_server_stops(ws):
    (ws.root / "posbuild.toml").write_text("[build]\nserver_idle = 1\n")
    server = _serving(ws)
    _wait_for(lambda: not _alive(server), 15)
    assert "stopping: idle for 1 s" in (ws.root / ".posbuild/server.log").read_text()


def test_shutdown_and_clean_all_stop_the_server(ws):
    server = _serving(ws)
    done = ws.run("shutdown")
    assert done.returncode == 0 and done.stdout == "build server stopped\n"
    assert not (ws.root / ".posbuild/server.sock").exists()
    _wait_for(lambda: not _alive(server), 5)  # its last moments
    assert ws.run("shutdown").stdout == "no build server was running\n"
    ws.ok()
    server = _server_pid(ws)
    assert ws.run("clean", "--all").returncode == 0
    _wait_for(lambda: not _alive(server), 5)
    assert counts(ws.ok()) == {"executed": 1, "cached": 0, "failed": 0}


def test_a_bad_server_setting_is_one_line_at_once(ws):
    ws.write(UPPER)
    (ws.root / "posbuild.toml").write_text("[build]\nserver_idle = 0\n")
    started = time.monotonic()
    result = ws.build()
    assert time.monotonic() - started < 5  # the client does not wait for a server that died
    assert result.returncode == 3, result.stderr  # as every error of posbuild.toml
    assert result.stderr.startswith("posbuild: ") and result.stderr.count("\n") == 1
    assert "[build] server_idle must be >= 1" in result.stderr
    assert "Traceback" not in (ws.root / ".posbuild/server.log").read_text() \
        if (ws.root / ".posbuild/server.log").exists() else True
    (ws.root / "posbuild.toml").write_text("")
    ws.ok()


def test_the_client_imports_no_more_than_it_must(ws):
    """What a build through the server loads in the posbuild process itself."""
    ws.write(UPPER)
    ws.ok()
    probe = ("import sys; sys.argv = ['posbuild', 'build', '-q', '//...']\n"
             "import posbuild.client as c\n"
             "try:\n    c.main()\nexcept SystemExit:\n    pass\n")
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", probe], cwd=ws.root,
                         capture_output=True, text=True, timeout=60)
    loaded = {line.split("|")[-1].strip() for line in run.stderr.splitlines()
              if line.startswith("import time:")}
    assert "posbuild.client" in loaded
    assert not {"click", "posbuild.cli", "posbuild.engine", "lmdb", "msgpack", "struct",
                "resource"} & loaded

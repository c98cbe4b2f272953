"""The Landlock sandbox end to end: what it denies where bubblewrap hides, its processes, and
how "auto" gets (or does without) its launcher.

The guarantees both namespace sandboxes share run under both in test_namespace_sandbox.py; here
are the Landlock counterparts of what only bubblewrap does (a hidden path does not exist there;
here it exists but cannot be read, listed or written), and what is the launcher's own. Every
build runs with POSBUILD_SANDBOX_WRITABLE cleared.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import (POSBUILD, Result, Workspace, bwrap_problem, landlock_problem,
                      processes_with)
from posbuild.core.action import Action
from posbuild.exec import landlock, namespaces
from posbuild.exec.sandbox import LocalSpawner, choose_isolation
from posbuild.workspace.config import load_config

PROBLEM = landlock_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"Landlock cannot run here: {PROBLEM}")
NO_ESCAPE = {namespaces.WRITABLE_VARIABLE: ""}
LANDLOCK = '[sandbox]\nmode = "landlock"\n'


def build(ws: Workspace, *args: str, env: dict[str, str] | None = None) -> Result:
    return ws.build(*args, env={**NO_ESCAPE, **(env or {})})


def ok(ws: Workspace, *args: str, env: dict[str, str] | None = None) -> Result:
    result = build(ws, *args, env=env)
    assert result.returncode == 0, (
        f"build failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def lws(ws: Workspace) -> Workspace:
    ws.write({"posbuild.toml": LANDLOCK})
    return ws


# ---- what it denies: a hidden path exists, but cannot be read, listed or written -----------------

def test_the_workspace_and_store_outside_tmp_can_be_seen_to_exist_but_not_read_listed_or_written(
        outside_tmp):
    root, cache = outside_tmp / "ws", outside_tmp / "cache"
    ws = Workspace(root)
    ws.write({
        "posbuild.toml": LANDLOCK + f'[cache]\ndir = "{cache}"\n',
        "pkg/secret.txt": "undeclared\n",
        "pkg/BUILD": f"""
            genrule(name = "stat", outs = ["stat.txt"], cmd = "test -e {root}/pkg/secret.txt && echo exists > $@")
            genrule(name = "read", outs = ["read.txt"], cmd = "cat {root}/pkg/secret.txt > $@")
            genrule(name = "list", outs = ["list.txt"], cmd = "ls -A {root} > $@")
            genrule(name = "store", outs = ["store.txt"], cmd = "ls -A {cache} > $@")
            genrule(name = "write", outs = ["write.txt"], cmd = "echo x > $@; echo x > {root}/escaped.txt")
            genrule(name = "spoil", outs = ["spoil.txt"], cmd = "echo x > $@; echo x > {cache}/escaped.txt")
        """,  # noqa: E501
    })
    ok(ws, "//pkg:stat")  # what Landlock does not hide: stat sees the path
    assert ws.out("pkg/stat.txt") == "exists\n"
    for name in ("read", "list", "store", "write", "spoil"):
        result = build(ws, f"//pkg:{name}")
        assert result.returncode == 1, f"{name}:\n{result.stdout}{result.stderr}"
        assert "Permission denied" in result.stderr, f"{name}: {result.stderr}"
    assert not (root / "escaped.txt").exists() and not (cache / "escaped.txt").exists()


def test_the_hosts_tmp_dev_shm_and_other_sandboxes_cannot_be_read_or_written(lws, tmp_path):
    probe = tmp_path / "probe.txt"
    probe.write_text("host\n")
    lws.write({"pkg/BUILD": f"""
        genrule(name = "tmp", outs = ["t.txt"], cmd = "cat {probe} > $@")
        genrule(name = "tmpw", outs = ["tw.txt"], cmd = "echo x > $@; echo x > /tmp/escaped-$$$$")
        genrule(name = "shm", outs = ["s.txt"], cmd = "ls /dev/shm > $@")
        genrule(name = "others", outs = ["o.txt"], cmd = "ls -A $$(dirname $$PWD)/.. > $@")
        genrule(name = "own", outs = ["own.txt"], cmd = "echo mine > $$TMPDIR/f && cat $$TMPDIR/f > $@")
    """})  # noqa: E501
    for name in ("tmp", "tmpw", "shm", "others"):
        result = build(lws, f"//pkg:{name}")
        assert result.returncode == 1, f"{name}:\n{result.stdout}{result.stderr}"
        assert "Permission denied" in result.stderr, f"{name}: {result.stderr}"
    ok(lws, "//pkg:own")  # TMPDIR, in the action's own sandbox, is writable
    assert lws.out("pkg/own.txt") == "mine\n"


def test_the_secrets_file_cannot_be_read_although_its_folder_is_visible(outside_tmp):
    secrets = outside_tmp / "conf/secrets"
    secrets.parent.mkdir()
    secrets.write_text("TOKEN=s3cr3t-value\n")
    secrets.chmod(0o600)
    (secrets.parent / "other.txt").write_text("visible\n")
    ws = Workspace(outside_tmp / "ws")
    ws.write({
        "posbuild.toml": LANDLOCK + f'[secrets]\nfile = "{secrets}"\n',
        "pkg/BUILD": f"""
            genrule(name = "beside", outs = ["b.txt"], cmd = "cat {secrets.parent}/other.txt > $@")
            genrule(name = "peek", outs = ["p.txt"], cmd = "cat {secrets} > $@")
        """,
    })
    ok(ws, "//pkg:beside")
    assert ws.out("pkg/b.txt") == "visible\n"
    result = build(ws, "//pkg:peek")
    assert result.returncode == 1 and "Permission denied" in result.stderr, result.stderr


def test_declared_inputs_are_copies_a_write_to_them_changes_only_the_actions_own(lws):
    """bubblewrap binds inputs read-only; Landlock cannot take the write right back inside the
    sandbox, so inputs are copies there, as in the folder sandbox (a large one too, not a link)."""
    big = b"0123456789abcdef" * (1024 * 1024 + 1)  # over the 16 MiB bubblewrap binds in place
    (lws.root / "pkg").mkdir()
    (lws.root / "pkg/big.bin").write_bytes(big)
    lws.write({
        "pkg/in.txt": "source\n",
        "pkg/BUILD": """
            genrule(name = "src", srcs = ["in.txt", "big.bin"], outs = ["src.txt"],
                    cmd = "test ! -L pkg/big.bin; echo more >> pkg/in.txt; echo x >> pkg/big.bin; cat pkg/in.txt > $@")
        """,  # noqa: E501
    })
    ok(lws, "//pkg:src")
    assert lws.out("pkg/src.txt") == "source\nmore\n"
    assert (lws.root / "pkg/in.txt").read_text() == "source\n"
    assert (lws.root / "pkg/big.bin").read_bytes() == big


def test_no_capabilities_and_no_new_privileges(lws):
    lws.write({"pkg/BUILD": """
        genrule(name = "caps", outs = ["c.txt"], cmd = "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs)' /proc/self/status > $@")
    """})  # noqa: E501
    ok(lws, "//pkg:caps")
    values = dict(line.split(":") for line in lws.out("pkg/c.txt").splitlines())
    assert {k: v.strip() for k, v in values.items()} == {
        "CapInh": "0" * 16, "CapPrm": "0" * 16, "CapEff": "0" * 16, "CapBnd": "0" * 16,
        "CapAmb": "0" * 16, "NoNewPrivs": "1"}


# ---- processes -----------------------------------------------------------------------------------



def _gone(needle: bytes, within: float) -> bool:
    deadline = time.monotonic() + within
    while processes_with(needle):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_command_that_left_its_session_and_double_forked_dies_when_posbuild_is_killed(lws):
    """The process group kill cannot reach it; the build's PID namespace, whose PID 1 ends with
    posbuild, does."""
    marker = f"{81 + (os.getpid() % 1000) / 1000:.3f}"
    lws.write({"pkg/BUILD": f"""
        genrule(name = "long", outs = ["l.txt"],
                cmd = "setsid sh -c '(sleep {marker} &) ; sleep {marker}' & sleep {marker}")
    """})
    needle = f"sleep\0{marker}".encode()
    posbuild = subprocess.Popen([*POSBUILD, "build", "//pkg:long"], cwd=lws.root,
                                env={**os.environ, **NO_ESCAPE}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(processes_with(needle)) < 3:
            assert time.monotonic() < deadline, "the command never started"
            assert posbuild.poll() is None, "posbuild ended early"
            time.sleep(0.02)
        posbuild.kill()
        posbuild.wait(timeout=10)
        assert _gone(needle, 10), "the command outlived posbuild"
    finally:
        if posbuild.poll() is None:
            posbuild.kill()
            posbuild.wait()
        for pid in processes_with(needle):
            os.kill(pid, signal.SIGKILL)


def _fork_servers(root: Path) -> list[int]:
    """The fork servers (`launcher serve`) whose posbuild builds in `root`."""
    found = []
    for pid in processes_with(b"\0serve\0-N\0"):
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if os.readlink(f"/proc/{parent}/cwd") == str(root):
                found.append(pid)
        except (OSError, ValueError, IndexError):
            pass
    return found


def test_a_fork_server_killed_mid_build_is_replaced_and_none_outlives_the_build(lws):
    """Every command starts through one fork server per build (forkserver.py); killed from
    outside while an action runs, the next action starts through a new one, the build ends
    as it would have, and no server is left behind."""
    lws.write({"pkg/BUILD": """
        genrule(name = "first", outs = ["first.txt"], cmd = "sleep 1.5; echo first > $@")
        genrule(name = "second", srcs = [":first"], outs = ["second.txt"],
                cmd = "cat $< > $@; echo second >> $@")
    """})
    posbuild = subprocess.Popen([*POSBUILD, "build", "--no-server", "//pkg:second"],
                                cwd=lws.root, env={**os.environ, **NO_ESCAPE},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not processes_with(b"sleep\x001.5"):  # the first action runs
            assert time.monotonic() < deadline and posbuild.poll() is None, "it never started"
            time.sleep(0.02)
        time.sleep(0.2)  # and posbuild has the server's answer (its pid)
        servers = _fork_servers(lws.root)
        assert servers, "no fork server runs"
        for pid in servers:
            os.kill(pid, signal.SIGKILL)
        stdout, stderr = posbuild.communicate(timeout=60)
    finally:
        if posbuild.poll() is None:
            posbuild.kill()
            posbuild.wait()
    assert posbuild.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert (lws.root / "posbuild-out/pkg/second.txt").read_text() == "first\nsecond\n"
    assert _fork_servers(lws.root) == []
    assert lws.run("fsck").returncode == 0


def test_what_a_command_left_running_in_a_session_of_its_own_ends_with_the_build(lws):
    """The build's PID namespace ends with posbuild: a daemon an action started ends then, at the
    latest (bubblewrap, a PID namespace per action, ends it with its action)."""
    marker = f"{91 + (os.getpid() % 1000) / 1000:.3f}"
    lws.write({"pkg/BUILD": f"""
        genrule(name = "daemon", outs = ["d.txt"], cmd = "setsid sleep {marker} & sleep 1; echo > $@")
    """})  # noqa: E501
    ok(lws, "//pkg:daemon")
    assert _gone(f"sleep\0{marker}".encode(), 5), "the daemon outlived the build"


def test_a_long_lived_process_ends_what_a_build_left_running_when_the_build_ends(ws, tmp_path,
                                                                               monkeypatch):
    """A build server runs many builds: the namespaces end with each build's spawner, and the
    next build gets new ones."""
    monkeypatch.setattr(landlock, "HOLDER", landlock.Holder())  # none of this process's others
    config = replace(load_config(ws.root), sandbox_mode="landlock")
    marker = f"{93 + (os.getpid() % 1000) / 1000:.3f}"
    action = Action(label="//pkg:d", kind="genrule",
                    command=f"setsid sleep {marker} & sleep 1; echo > posbuild-out/pkg/d.txt",
                    inputs=(), tools=(), outputs=("posbuild-out/pkg/d.txt",), env=(), versions=(),
                    timeout=0, tags=(), def_hash=b"\0" * 32, deps=(), sources=())
    for build_number in range(2):
        isolation, _ = choose_isolation(config)
        sandboxes = LocalSpawner(ws.root, tmp_path / "sandboxes", isolation)
        sandboxes.clear_stale()
        result = sandboxes.run(action)
        try:
            assert result.exit_code == 0, result.stderr
            assert processes_with(f"sleep\0{marker}".encode()), "the daemon never started"
        finally:
            sandboxes.remove(result)
            sandboxes.close()
        assert _gone(f"sleep\0{marker}".encode(), 5), f"build {build_number} left it running"


def test_exit_codes_and_signals_are_passed_on_as_in_the_folder_sandbox(lws):
    lws.write({"pkg/BUILD": """
        genrule(name = "code", outs = ["c.txt"], cmd = "exit 7")
        genrule(name = "direct", outs = ["d.txt"], cmd = "false")
        genrule(name = "signal", outs = ["s.txt"], cmd = "kill -TERM $$$$")
    """})
    assert "exit code 7" in build(lws, "//pkg:code").stderr
    result = build(lws, "//pkg:signal")
    assert "killed by signal 15" in result.stderr or "SIGTERM" in result.stderr, result.stderr
    result = build(lws, "//pkg:direct")  # run without the shell, through the launcher
    assert result.returncode == 1 and "exit code 1" in result.stderr, result.stderr


@pytest.mark.parametrize("command", [
    "cat pkg/a.txt > posbuild-out/pkg/l.txt && cat pkg/a.txt >> posbuild-out/pkg/l.txt",
    "cat pkg/absent.txt && cat pkg/a.txt; cat pkg/a.txt > posbuild-out/pkg/l.txt",
    "cat pkg/a.txt > posbuild-out/pkg/l.txt && cat pkg/absent.txt; cat pkg/a.txt",
    "cat pkg/a.txt && cat pkg/a.txt > missing/l.txt; cat pkg/a.txt",
    "pkg/die && cat pkg/a.txt; cat pkg/a.txt > posbuild-out/pkg/l.txt",
    "cat pkg/absent.txt 2> /dev/null && cat pkg/a.txt; cat pkg/a.txt 2> e > posbuild-out/pkg/l.txt",
])
def test_a_line_of_commands_runs_through_the_launcher_as_under_the_shell(ws, tmp_path,
                                                                         monkeypatch, command):
    """Each program of a line the shell would only have run one after another starts through
    the fork server, and the line ends as bash's would (shellfree.Script)."""
    monkeypatch.setattr(landlock, "HOLDER", landlock.Holder())
    ws.write({"pkg/a.txt": "a\n", "pkg/die": "#!/bin/sh\nkill -SEGV $$\n"})
    (ws.root / "pkg/die").chmod(0o755)
    config = replace(load_config(ws.root), sandbox_mode="landlock")
    action = Action(label="//pkg:l", kind="genrule", command=command,
                    inputs=("pkg/a.txt", "pkg/die"), tools=(), outputs=("posbuild-out/pkg/l.txt",),
                    env=(), versions=(), timeout=0, tags=(), def_hash=b"\0" * 32, deps=(),
                    sources=("pkg/a.txt", "pkg/die"))
    seen = []
    for shell_free in (True, False):
        isolation, _ = choose_isolation(config)
        sandboxes = LocalSpawner(ws.root, tmp_path / f"sandboxes-{shell_free}", isolation,
                                 shell_free=shell_free)
        sandboxes.clear_stale()
        result = sandboxes.run(action)
        try:
            out = result.exec_root / "posbuild-out/pkg/l.txt"
            seen.append((result.exit_code, result.stdout,
                         re.sub(rb"line 1: +[0-9]+ ", b"line 1: <pid> ", result.stderr),
                         out.read_bytes() if out.exists() else None))
        finally:
            sandboxes.remove(result)
            sandboxes.close()
    assert seen[0] == seen[1]


# ---- the launcher: compiled on first use, again when damaged; without it, bubblewrap -----------

def _launchers(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "posbuild").glob("launcher-*") if p.suffix != ".sha256")


def test_the_launcher_is_compiled_into_the_cache_and_again_when_missing_or_damaged(lws, tmp_path):
    cache = tmp_path / "cache"
    env = {"XDG_CACHE_HOME": str(cache)}
    lws.write({"pkg/BUILD": 'genrule(name = "t", outs = ["t.txt"], cmd = "echo t > $@")\n'})
    ok(lws, "//pkg:t", env=env)
    [launcher] = _launchers(cache)
    assert launcher.name == landlock.launcher_path(cache / "posbuild").name
    first = launcher.stat().st_ino
    ok(lws, "//pkg:t", env=env)  # up to date: nothing runs, nothing is compiled
    assert launcher.stat().st_ino == first
    launcher.write_bytes(launcher.read_bytes()[:1000])  # damaged
    (lws.root / "pkg/BUILD").write_text(
        'genrule(name = "t", outs = ["t.txt"], cmd = "echo t2 > $@")\n')
    ok(lws, "//pkg:t", env=env)
    assert lws.out("pkg/t.txt") == "t2\n"
    [again] = _launchers(cache)
    assert again.stat().st_size > 1000
    again.unlink()  # missing
    (lws.root / "pkg/BUILD").write_text(
        'genrule(name = "t", outs = ["t.txt"], cmd = "echo t3 > $@")\n')
    ok(lws, "//pkg:t", env=env)
    assert lws.out("pkg/t.txt") == "t3\n" and len(_launchers(cache)) == 1
    # no temporary file left
    assert not [p for p in (cache / "posbuild").iterdir() if p.name.count(".") > 1]


@pytest.mark.skipif(bwrap_problem() is not None, reason="bubblewrap cannot run here")
def test_auto_without_a_working_compiler_falls_back_to_bubblewrap_with_one_notice(ws, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "bwrap").symlink_to(namespaces.find_bwrap() or "")
    (folder / "cc").write_text("#!/bin/sh\necho 'cc: cannot find crt1.o' >&2\nexit 1\n")
    (folder / "cc").chmod(0o755)
    ws.write({
        "pkg/hidden.txt": "h\n",
        "pkg/BUILD": f'genrule(name = "t", outs = ["t.txt"], cmd = "cat {ws.root}/pkg/hidden.txt '
                     '> $@")\n'})
    result = build(ws, "//pkg:t", env={"PATH": str(folder),
                                        "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.returncode == 1
    notices = [line for line in result.stderr.splitlines() if "Landlock" in line]
    assert notices == [f"posbuild: the Landlock sandbox is not available ({folder}/cc failed: cc: "
                       "cannot find crt1.o); actions run under bubblewrap"], result.stderr
    assert "hidden.txt: No such file or directory" in result.stderr  # bubblewrap's answer


def test_landlock_mode_without_its_launcher_is_an_error_before_anything_runs(lws, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    lws.write({"pkg/BUILD": 'genrule(name = "t", outs = ["t.txt"], cmd = "echo t > $@")\n'})
    result = build(lws, "//...", env={"PATH": str(folder),
                                      "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.returncode == 4, result.stdout + result.stderr
    assert result.stderr.strip() == (
        'posbuild: [sandbox] mode = "landlock" cannot run here (no C compiler (cc) on PATH); set '
        '[sandbox] mode = "auto", "namespace" or "folder"')
    assert not (lws.root / "posbuild-out/pkg/t.txt").exists()

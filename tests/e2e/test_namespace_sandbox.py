"""The namespace sandboxes end to end: what an action can no longer see, write or reach.

Every build here runs twice, with `[sandbox] mode = "namespace"` (bubblewrap) and `"landlock"`
(what "auto" picks where it can run), unless it says otherwise, and with
POSBUILD_SANDBOX_WRITABLE cleared, so that no test probe folder is left writable. Tests of what
only bubblewrap does (a hidden path does not even exist) use `bws`; their Landlock counterparts
are in test_landlock_sandbox.py. The tests skip where a sandbox cannot run (no user namespaces,
a seccomp filter, a kernel without Landlock ABI 6 ...).
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import (POSBUILD, Result, Workspace, bwrap_problem, counts, landlock_problem,
                      processes_with)
from posbuild.exec import namespaces
from posbuild.core.action import Action
from posbuild.workspace.config import load_config
from posbuild.errors import SandboxUnavailable
from posbuild.exec.sandbox import LocalSpawner, choose_isolation


PROBLEM = bwrap_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None,
                                reason=f"bubblewrap cannot run here: {PROBLEM}")
LANDLOCK = pytest.param("landlock", marks=pytest.mark.skipif(
    landlock_problem() is not None, reason=f"Landlock cannot run here: {landlock_problem()}"))

NAMESPACE = '[sandbox]\nmode = "namespace"\n'
# what a command reading a hidden file is told
HIDDEN_ERROR = {"namespace": "No such file or directory", "landlock": "Permission denied"}
NO_ESCAPE = {namespaces.WRITABLE_VARIABLE: ""}


def build(ws: Workspace, *args: str, env: dict[str, str] | None = None) -> Result:
    return ws.build(*args, env={**NO_ESCAPE, **(env or {})})


def ok(ws: Workspace, *args: str) -> Result:
    result = build(ws, *args)
    assert result.returncode == 0, (
        f"build failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(params=["namespace", LANDLOCK])
def nws(ws: Workspace, request: pytest.FixtureRequest) -> Workspace:
    """A workspace whose actions must run in a namespace sandbox: bubblewrap, then Landlock
    (`nws.mode` says which)."""
    ws.write({"posbuild.toml": f'[sandbox]\nmode = "{request.param}"\n'})
    ws.mode = request.param  # type: ignore[attr-defined]
    return ws


@pytest.fixture
def bws(ws: Workspace) -> Workspace:
    """A workspace whose actions must run under bubblewrap (what only it does)."""
    ws.write({"posbuild.toml": NAMESPACE})
    return ws


def _action(command: str, inputs: tuple[str, ...] = (),
            outputs: tuple[str, ...] = ("posbuild-out/pkg/out.txt",),
            tags: tuple[str, ...] = ()) -> Action:
    return Action(label="//pkg:probe", kind="genrule", command=command, inputs=inputs, tools=(),
                  outputs=outputs,
                  env=(), versions=(), timeout=0, tags=tags, def_hash=b"\0" * 32, deps=(),
                  sources=tuple(p for p in inputs if not p.startswith("posbuild-out/")))


# ---- the workspace and the host are out of reach ----------------------------------------------

def test_reading_an_undeclared_workspace_file_by_absolute_path_fails(nws):
    nws.write({
        "pkg/in.txt": "declared\n",
        "pkg/secret.txt": "undeclared\n",
        "pkg/BUILD": f"""
            genrule(name = "peek", srcs = ["in.txt"], outs = ["peek.txt"],
                    cmd = "cat {nws.root}/pkg/secret.txt > $@")
        """,
    })
    result = build(nws, "//pkg:peek")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"secret.txt: {HIDDEN_ERROR[nws.mode]}" in result.stderr
    assert not (nws.root / "posbuild-out/pkg/peek.txt").exists()


def test_writing_into_the_workspace_by_absolute_path_fails_and_changes_nothing(nws):
    nws.write({"pkg/BUILD": f"""
        genrule(name = "escape", outs = ["e.txt"], cmd = "echo x > $@; echo x > {nws.root}/pkg/escaped.txt")
    """})  # noqa: E501
    result = build(nws, "//pkg:escape")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "escaped.txt" in result.stderr
    assert not (nws.root / "pkg/escaped.txt").exists()


def test_writing_into_the_hosts_tmp_fails_and_tmp_is_private(bws, tmp_path):
    mine = f"/tmp/posbuild-ns-probe-{os.getpid()}-{time.monotonic_ns()}"
    bws.write({"pkg/BUILD": f"""
        genrule(name = "own", outs = ["own.txt"], cmd = "echo private > {mine} && cat {mine} > $@ && ls -A /tmp >> $@")
        genrule(name = "host", outs = ["host.txt"], cmd = "echo x > $@; echo x > {tmp_path}/escaped.txt")
    """})  # noqa: E501
    ok(bws, "//pkg:own")
    assert not Path(mine).exists()  # the action's /tmp is its own, gone when it ends
    listing = bws.out("pkg/own.txt").split()
    assert listing[0] == "private" and Path(mine).name in listing
    # the host's /tmp is not there
    assert not any(name.startswith("pytest-of-") for name in listing)
    result = build(bws, "//pkg:host")
    assert result.returncode == 1, result.stdout + result.stderr
    assert not (tmp_path / "escaped.txt").exists()


def test_a_workspace_and_a_store_outside_tmp_are_covered_by_read_only_empty_folders(
        outside_tmp):
    """The workspace root and an outside `[cache] dir` are hidden by read-only tmpfs mounts when
    they do not live under /tmp (which is replaced as a whole)."""
    root, cache = outside_tmp / "ws", outside_tmp / "cache"
    ws = Workspace(root)
    ws.write({
        "posbuild.toml": NAMESPACE + f'[cache]\ndir = "{cache}"\n',
        "pkg/secret.txt": "undeclared\n",
        "pkg/BUILD": f"""
            genrule(name = "look", outs = ["look.txt"], cmd = "ls -A {root} {cache} > $@")
            genrule(name = "read", outs = ["read.txt"], cmd = "cat {root}/pkg/secret.txt > $@")
            genrule(name = "write", outs = ["write.txt"], cmd = "echo x > $@; echo x > {root}/escaped.txt")
            genrule(name = "spoil", outs = ["spoil.txt"], cmd = "echo x > $@; echo x > {cache}/escaped.txt")
        """,  # noqa: E501
    })
    ok(ws, "//pkg:look")
    assert ws.out("pkg/look.txt") == f"{cache}:\n\n{root}:\n"  # both empty
    for name in ("read", "write", "spoil"):
        result = build(ws, f"//pkg:{name}")
        assert result.returncode == 1, f"{name}:\n{result.stdout}{result.stderr}"
    assert "Read-only file system" in result.stderr
    assert not (root / "escaped.txt").exists() and not (cache / "escaped.txt").exists()


def test_other_sandboxes_and_the_hosts_dev_shm_are_invisible(bws):
    bws.write({"pkg/BUILD": """
        genrule(name = "a", outs = ["a.txt"], cmd = "ls -A $$(dirname $$PWD)/.. > $@; ls -A /dev/shm >> $@")
    """})  # noqa: E501
    ok(bws, "//pkg:a")
    sandbox_folders, shm = bws.out("pkg/a.txt").splitlines()[:1], bws.out(
        "pkg/a.txt").splitlines()[1:]
    assert len(sandbox_folders) == 1  # only this action's own sandbox in the sandbox base
    assert shm == [f"posbuild-{os.getuid()}"] or shm == []  # the path to the sandbox, nothing else


# ---- network -----------------------------------------------------------------------------------

@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


def _connect_rule(name: str, port: int, tags: str = "") -> str:
    script = (
        f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5); "
        "print('connected')")
    return (f'genrule(name = "{name}", outs = ["{name}.txt"], {tags}'
            f'cmd = "python3 -c \\"{script}\\" > $@")\n')


def test_a_socket_to_localhost_fails_without_the_network_tag(nws, listener):
    nws.write({"pkg/BUILD": _connect_rule("offline", listener)})
    result = build(nws, "//pkg:offline")
    assert result.returncode == 1, result.stdout + result.stderr
    # bubblewrap: a loopback of its own; Landlock: TCP denied
    assert any(why in result.stderr for why in (
        "Connection refused", "unreachable", "PermissionError")), result.stderr


def test_a_socket_to_localhost_works_with_the_network_tag(nws, listener):
    nws.write({"pkg/BUILD": _connect_rule("online", listener, 'tags = ["network"], ')})
    ok(nws, "//pkg:online")
    assert nws.out("pkg/online.txt") == "connected\n"


# ---- inputs are read-only ------------------------------------------------------------------------

def test_declared_inputs_are_readable_but_not_writable(bws):
    bws.write({
        "pkg/in.txt": "source\n",
        "pkg/BUILD": """
            genrule(name = "first", outs = ["first.txt"], cmd = "echo first > $@")
            genrule(name = "reads", srcs = ["in.txt", ":first"], outs = ["reads.txt"], cmd = "cat $(SRCS) > $@")
            genrule(name = "src", srcs = ["in.txt"], outs = ["src.txt"], cmd = "echo x > $@; echo more >> pkg/in.txt")
            genrule(name = "gen", srcs = [":first"], outs = ["gen.txt"],
                    cmd = "echo x > $@; echo more >> posbuild-out/pkg/first.txt")
        """,  # noqa: E501
    })
    ok(bws, "//pkg:reads")
    assert bws.out("pkg/reads.txt") == "source\nfirst\n"
    for name in ("src", "gen"):
        result = build(bws, f"//pkg:{name}")
        assert result.returncode == 1, f"{name}:\n{result.stdout}{result.stderr}"
        # a read-only mount, or (as root without capabilities) the file's own read-only mode
        assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr
    assert (bws.root / "pkg/in.txt").read_text() == "source\n"
    assert bws.out("pkg/first.txt") == "first\n"


def test_a_large_input_is_bound_read_only_from_the_workspace(bws):
    big = b"0123456789abcdef" * (1024 * 1024 + 1)  # just over the 16 MiB link limit
    (bws.root / "pkg").mkdir()
    (bws.root / "pkg/big.bin").write_bytes(big)
    bws.write({"pkg/BUILD": """
        genrule(name = "size", srcs = ["big.bin"], outs = ["size.txt"], cmd = "wc -c < $< > $@; test ! -L $<")
        genrule(name = "spoil", srcs = ["big.bin"], outs = ["spoil.txt"], cmd = "echo x > $@; echo x >> $<")
    """})  # noqa: E501
    ok(bws, "//pkg:size")
    assert int(bws.out("pkg/size.txt")) == len(big)
    result = build(bws, "//pkg:spoil")
    assert result.returncode == 1, result.stdout + result.stderr
    assert (bws.root / "pkg/big.bin").stat().st_size == len(big)


def test_scratch_files_in_the_working_folder_are_still_allowed(nws):
    nws.write({"pkg/BUILD": """
        genrule(name = "scratch", outs = ["s.txt"],
                cmd = "echo tmp > scratch.txt && mkdir -p work && cp scratch.txt work/ && cat work/scratch.txt > $@")
    """})  # noqa: E501
    ok(nws, "//pkg:scratch")
    assert nws.out("pkg/s.txt") == "tmp\n"


# ---- the same results as the folder sandbox -----------------------------------------------------

GRAPH = {
    "pkg/a.txt": "b\na\nc\n",
    "pkg/gen.py": "import sys\nopen(sys.argv[2], "
                  "'w').write(''.join(sorted(open(sys.argv[1]))).upper())\n",
    "pkg/BUILD": """
        genrule(name = "sorted", srcs = ["a.txt"], outs = ["sorted.txt"], cmd = "sort $< > $@")
        genrule(name = "both", srcs = [":sorted", "a.txt"], outs = ["both.txt", "n.txt"],
                cmd = "cat $(SRCS) > posbuild-out/pkg/both.txt; wc -l < pkg/a.txt > posbuild-out/pkg/n.txt")
        genrule(name = "fails", outs = ["f.txt"], cmd = "echo oops >&2; exit 3")
        py_task(name = "upper", script = "gen.py", srcs = [":sorted"], outs = ["upper.txt"],
                args = ["$(location :sorted)", "$@"])
    """,  # noqa: E501
}


def _outputs(root: Path) -> dict[str, bytes]:
    out = root / "posbuild-out"
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_outputs_and_failures_are_identical_in_namespace_and_folder_mode(tmp_path):
    results = {}
    modes = ("namespace", "folder") + (("landlock",) if landlock_problem() is None else ())
    for mode in modes:
        ws = Workspace(tmp_path / mode)
        ws.root.mkdir()
        ws.write({**GRAPH, "posbuild.toml": f'[sandbox]\nmode = "{mode}"\n'})
        ok(ws, "//pkg:sorted", "//pkg:both", "//pkg:upper")
        failed = build(ws, "//pkg:fails")
        assert failed.returncode == 1
        assert "command failed (exit code 3)" in failed.stderr and "oops" in failed.stderr
        results[mode] = _outputs(ws.root)
    assert all(results[mode] == results["folder"] for mode in modes)
    assert results["namespace"]["pkg/upper.txt"] == b"A\nB\nC\n"


def test_py_task_runs_in_the_namespace_sandbox(nws):
    nws.write({
        "app/data.txt": "hello\n",
        "app/lib.py": "def shout(text):\n    return text.upper()\n",
        "app/run.py": "import sys\nimport lib\nopen(sys.argv[2], "
                      "'w').write(lib.shout(open(sys.argv[1]).read()))\n",
        "app/BUILD": """
            py_task(name = "shout", script = "run.py", srcs = ["data.txt"], outs = ["out.txt"],
                    args = ["$(location data.txt)", "$@"])
        """,
    })
    ok(nws, "//app:shout")
    assert nws.out("app/out.txt") == "HELLO\n"


def test_py_task_with_an_interpreter_inside_the_workspace(nws):
    """A venv in the checkout (the common case) stays visible, read-only, inside the sandbox."""
    venv = nws.root / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    here = [p for p in sys.path if p.endswith("site-packages")]
    (site / "posbuild-deps.pth").write_text("\n".join([str(Path(__file__).parents[2]),
                                                       *here]) + "\n")
    nws.write({
        "app/run.py": "import sys\nopen(sys.argv[1], 'w').write(sys.prefix + '\\n')\n",
        "app/BUILD": 'py_task(name = "where", script = "run.py", outs = ["where.txt"], args = '
                     '["$@"])\n',
    })
    env = {**os.environ, **NO_ESCAPE}
    done = subprocess.run([str(venv / "bin/python"), "-m", "posbuild", "build", "//app:where"],
                          cwd=nws.root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert nws.out("app/where.txt") == f"{venv}\n"


def test_verify_works_in_the_namespace_sandbox(nws):
    nws.write({
        "pkg/a.txt": "x\n",
        "pkg/BUILD": """
            genrule(name = "copy", srcs = ["a.txt"], outs = ["copy.txt"], cmd = "cat $< > $@; ls pkg >> $@")
            genrule(name = "clock", outs = ["clock.txt"], cmd = "date +%s%N > $@")
        """,  # noqa: E501
    })
    good = nws.run("verify", "//pkg:copy", env=NO_ESCAPE)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "all deterministic" in good.stdout
    bad = nws.run("verify", "//pkg:clock", env=NO_ESCAPE)
    assert bad.returncode == 14, bad.stdout + bad.stderr


# ---- processes ---------------------------------------------------------------------------------



def test_the_command_ends_when_posbuild_is_killed(nws):
    """--die-with-parent: a SIGKILLed posbuild leaves no command running (the folder sandbox
    does)."""
    marker = f"{61 + (os.getpid() % 1000) / 1000:.3f}"
    nws.write(
        {"pkg/BUILD": f'genrule(name = "long", outs = ["l.txt"], cmd = "sleep {marker} & sleep '
                      f'{marker}")\n'})
    posbuild = subprocess.Popen([*POSBUILD, "build", "//pkg:long"], cwd=nws.root,
                                env={**os.environ, **NO_ESCAPE},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    needle = f"sleep\0{marker}".encode()
    try:
        deadline = time.monotonic() + 30
        while len(processes_with(needle)) < 2:
            assert time.monotonic() < deadline, "the command never started"
            assert posbuild.poll() is None, "posbuild ended early"
            time.sleep(0.02)
        posbuild.kill()
        posbuild.wait(timeout=10)
        deadline = time.monotonic() + 10
        while processes_with(needle):
            assert time.monotonic() < deadline, "the command outlived posbuild"
            time.sleep(0.05)
    finally:
        if posbuild.poll() is None:
            posbuild.kill()
            posbuild.wait()
        for pid in processes_with(needle):
            os.kill(pid, signal.SIGKILL)


def test_a_timeout_ends_the_command_and_its_background_children(nws):
    marker = f"{71 + (os.getpid() % 1000) / 1000:.3f}"
    nws.write({"pkg/BUILD": f"""
        genrule(name = "slow", outs = ["s.txt"], timeout = 1, cmd = "sleep {marker} & sleep {marker}; echo > $@")
    """})  # noqa: E501
    started = time.monotonic()
    result = build(nws, "//pkg:slow")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "timed out" in result.stderr
    assert time.monotonic() - started < 20
    assert processes_with(f"sleep\0{marker}".encode()) == []


# ---- choosing the sandbox ------------------------------------------------------------------------

def _fake_bwrap(folder: Path, script: str | None) -> dict[str, str]:
    """A PATH whose only `bwrap` is `script` (or none at all); everything else posbuild needs is
    absolute."""
    folder.mkdir()
    if script is not None:
        (folder / "bwrap").write_text(f"#!/bin/sh\n{script}\n")
        (folder / "bwrap").chmod(0o755)
    # no compiler on that PATH and no launcher compiled yet: the Landlock sandbox cannot run
    return {**NO_ESCAPE, "PATH": str(folder), "XDG_CACHE_HOME": str(folder / "cache")}


def test_auto_falls_back_to_the_folder_sandbox_with_one_notice(ws, tmp_path):
    ws.write({"pkg/BUILD": "".join(
        f'genrule(name = "t{i}", outs = ["t{i}.txt"], cmd = "echo {i} > $@")\n' for i in range(3))})
    result = ws.build("//...", env=_fake_bwrap(tmp_path / "bin", None))
    assert result.returncode == 0, result.stdout + result.stderr
    notices = [line for line in result.stderr.splitlines() if "bubblewrap" in line]
    assert notices == ["posbuild: bubblewrap not available (bwrap not found on PATH); "
                       "actions run in the folder sandbox"]
    assert counts(result)["executed"] == 3


def test_auto_falls_back_when_bwrap_is_broken(ws, tmp_path):
    ws.write({"pkg/BUILD": 'genrule(name = "t", outs = ["t.txt"], cmd = "echo t > $@")\n'})
    broken = "echo 'bwrap: No permissions to creating new namespace' >&2; exit 1"
    result = ws.build("//...", env=_fake_bwrap(tmp_path / "bin", broken))
    assert result.returncode == 0, result.stdout + result.stderr
    notices = [line for line in result.stderr.splitlines() if "bubblewrap" in line]
    assert len(notices) == 1 \
            and "No permissions to creating new namespace" in notices[0], result.stderr
    assert ws.out("pkg/t.txt") == "t\n"


def test_namespace_mode_without_bwrap_is_an_error_before_anything_runs(bws, tmp_path):
    bws.write({"pkg/BUILD": 'genrule(name = "t", outs = ["t.txt"], cmd = "echo t > $@")\n'})
    result = bws.build("//...", env=_fake_bwrap(tmp_path / "bin", None))
    assert result.returncode == SandboxUnavailable.exit_code == 4, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 \
            and lines[0].startswith('posbuild: [sandbox] mode = "namespace" needs bubblewrap')
    assert "bwrap not found on PATH" in lines[0]
    assert not (bws.root / "posbuild-out/pkg/t.txt").exists()
    verify = bws.run("verify", env=_fake_bwrap(tmp_path / "bin2", "exit 1"))
    assert verify.returncode == 4, verify.stdout + verify.stderr


def test_folder_mode_never_runs_bwrap(ws, tmp_path):
    ws.write({"posbuild.toml": '[sandbox]\nmode = "folder"\n',
              "pkg/BUILD": 'genrule(name = "t", outs = ["t.txt"], cmd = "cat '
                           f'{ws.root}/posbuild.toml > $@")\n'})
    result = ws.build("//...", env=_fake_bwrap(tmp_path / "bin", f"touch {tmp_path}/ran; exit 1"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bubblewrap" not in result.stderr
    assert not (tmp_path / "ran").exists()
    assert "folder" in ws.out("pkg/t.txt")  # the folder sandbox does not hide the workspace


# ---- the one escape hatch: POSBUILD_SANDBOX_WRITABLE --------------------------------------------

def test_writable_folders_are_writable_and_the_workspace_inside_stays_hidden(ws, tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    config = replace(load_config(ws.root), sandbox_mode="namespace")
    isolation, notice = choose_isolation(config, namespaces.writable_paths(
        {namespaces.WRITABLE_VARIABLE: f"{tmp_path}:relative/ignored"}))
    assert isolation is not None and notice == ""
    (ws.root / "pkg").mkdir()
    (ws.root / "pkg/secret.txt").write_text("s\n")
    sandboxes = LocalSpawner(ws.root, tmp_path / "sandboxes", isolation)
    sandboxes.clear_stale()
    result = sandboxes.run(
        _action(f"echo hi > {probe}/note; ls -A {ws.root} > $PWD/posbuild-out/pkg/out.txt"))
    try:
        assert result.exit_code == 0, result.stderr
        assert (probe / "note").read_text() == "hi\n"
        assert (result.exec_root / "posbuild-out/pkg/out.txt").read_text() == ""
    finally:
        sandboxes.remove(result)


@pytest.mark.parametrize("mode", ["namespace", LANDLOCK])
def test_the_resource_usage_of_the_command_is_measured_through_bwrap(ws, tmp_path, mode):
    isolation, _ = choose_isolation(replace(load_config(ws.root), sandbox_mode=mode))
    assert isolation is not None
    sandboxes = LocalSpawner(ws.root, tmp_path / "sandboxes", isolation)
    sandboxes.clear_stale()
    # more than this process's own peak: a command it starts itself is charged with that, and
    # a figure no higher is recorded as unknown (under bwrap, started by this process)
    megabytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 + 100
    hog = (
        f"python3 -c 'b = bytearray({megabytes} * 1024 * 1024); sum(range(2000000))'; echo > "
        "$PWD/posbuild-out/pkg/out.txt")
    result = sandboxes.run(_action(hog))
    try:
        assert result.exit_code == 0, result.stderr
        assert result.usage is not None and result.usage.max_rss_kb is not None
        assert result.usage.max_rss_kb >= megabytes * 1024
    finally:
        sandboxes.remove(result)


# ---- the bwrap command line ----------------------------------------------------------------------

def test_inputs_are_bound_by_folder_where_no_output_is_written():
    binds = namespaces.input_binds(
        ["lib/x/y.txt", "pkg/a.txt", "pkg/sub/b.txt", "posbuild-out/dep/o.txt",
         "posbuild-out/pkg/first.txt", "posbuild-out/pkg/sub/z.txt", "top.txt"],
        ["posbuild-out/pkg/out.txt"])
    assert binds == ["lib", "pkg", "posbuild-out/dep", "posbuild-out/pkg/sub",
                     "posbuild-out/pkg/first.txt", "top.txt"]


def test_hidden_folders_visible_paths_and_their_order(tmp_path):
    root, venv, store = tmp_path / "ws", tmp_path / "ws/.venv", tmp_path / "cache"
    venv.mkdir(parents=True)
    store.mkdir()
    made = namespaces.isolation("/usr/bin/bwrap", [str(root), str(store), "/dev/shm/posbuild-0/x"],
                                [str(venv), "/usr"], writable=[str(tmp_path)], as_root=False)
    head = list(made.head)
    assert "--unshare-net" in head and "--unshare-net" not in made.head_network
    assert "--cap-drop" not in head
    opened = head.index(str(tmp_path))
    assert head[opened - 1] == "--bind" and head[opened + 1] == str(tmp_path)
    assert head[head.index(str(root)) - 1] == "--tmpfs" \
            and head[head.index(str(store)) - 1] == ("--tmpfs")
    # opened, hidden, then shown again
    assert opened < head.index(str(root)) < head.index(str(venv))
    assert head[head.index(str(venv)) - 1] == "--ro-bind"
    # visible anyway / under the fresh /dev
    assert "/usr" not in head and "/dev/shm/posbuild-0/x" not in head
    assert sorted(made.tail) == sorted(("--remount-ro", str(root), "--remount-ro", str(store)))
    argv = namespaces.command(made, "/dev/shm/s/1", "/dev/shm/s/1/exec", [("/a", "/a")], False,
                              ["/bin/bash", "-c", "true"])
    assert argv[-4:] == ["--", "/bin/bash", "-c", "true"]
    # mount points first, then read-only
    assert argv.index("/dev/shm/s/1") < argv.index("--remount-ro")
    assert "--cap-drop" in namespaces.isolation("/usr/bin/bwrap", (), (), as_root=True).head

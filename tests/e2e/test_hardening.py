"""Ways out that a hostile or broken action, store or request must not find.

Each test builds the attack for real: an output that is a symbolic link, a forged cache entry
that names a path outside the workspace, an action reading the secrets file, an action holding
capabilities or reaching a host Unix socket, an upload requested without the signing key, and a
generation recorded with a stale file mode.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

from conftest import bwrap_problem, counts
from posbuild.core.records import ActionResult, OutputFile
from posbuild.store.lmdbstore import Store

SECRET = "hardening-secret-7c1d"
UPPER_BUILD = {"pkg/a.txt": "alpha\n",
               "pkg/BUILD": 'genrule(name = "up", srcs = ["a.txt"], outs = ["up.txt"], '
                            'cmd = "tr a-z A-Z < $< > $@")\n'}


needs_bwrap = pytest.mark.skipif(bwrap_problem() is not None,
                                 reason=f"bubblewrap cannot run here: {bwrap_problem()}")
MODES = ["folder", pytest.param("namespace", marks=needs_bwrap)]


@pytest.mark.parametrize("mode", MODES)
def test_an_output_that_is_a_symbolic_link_fails_and_nothing_is_kept(ws, tmp_path, mode):
    target = tmp_path / "outside.txt"
    target.write_text(SECRET)
    ws.write({
        "posbuild.toml": f'[sandbox]\nmode = "{mode}"\n',
        "p/BUILD": f'genrule(name = "link", outs = ["l.txt"], cmd = "ln -s {target} $@")\n',
    })
    result = ws.build("//p:link")
    assert result.returncode == 1
    assert "declared output 'posbuild-out/p/l.txt' is a symbolic link" in result.stderr
    assert not os.path.lexists(ws.root / "posbuild-out/p/l.txt")
    assert not any(SECRET.encode() in p.read_bytes() for p in ws.root.rglob("*") if p.is_file())


def test_a_forged_result_naming_a_path_outside_is_never_written(ws, tmp_path):
    ws.write({"p/BUILD": 'genrule(name = "g", outs = ["g.txt"], cmd = "echo good > $@")\n'})
    ws.ok("//p:g")
    record = json.loads(ws.run("log", "--json").stdout.splitlines()[-1])
    key = bytes.fromhex(record["key"])
    escaped = ws.root.parent / "escaped.txt"
    planted = b"planted\n"
    store = Store(ws.root / ".posbuild/store")
    try:
        from posbuild.core.digest import hash_bytes

        digest, empty = hash_bytes(planted), hash_bytes(b"")
        forged = ActionResult((OutputFile("posbuild-out/../../escaped.txt", digest, len(planted),
                                          False),), 0,
                              empty, empty)
        store.commit((key, forged), [(digest, planted), (empty, b"")])
        store.flush()
    finally:
        store.close()
    ws.run("clean")
    result = ws.ok("//p:g")
    assert counts(result)["executed"] == 1  # the forged entry counted as a miss
    assert ws.out("p/g.txt") == "good\n"
    assert not escaped.exists()


@needs_bwrap
def test_no_action_reads_the_secrets_file_in_the_namespace_sandbox(ws, tmp_path):
    # under the folder tests leave writable: the file must be masked
    secrets = tmp_path / "conf" / "secrets"
    secrets.parent.mkdir()
    secrets.write_text(f"API_TOKEN={SECRET}\n")
    secrets.chmod(0o600)
    ws.write({
        "posbuild.toml": '[sandbox]\nmode = "namespace"\n',
        "p/BUILD": f'genrule(name = "peek", outs = ["peek.txt"], cmd = "cat {secrets} > $@ || '
                   'true; echo end >> $@")\n',
    })
    result = ws.build("//p:peek", env={"POSBUILD_SECRETS_FILE": str(secrets)})
    assert result.returncode == 0, result.stderr
    assert ws.out("p/peek.txt") == "end\n"


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="capabilities matter when posbuild runs as root")
def test_a_namespaced_action_has_no_capabilities(ws):
    ws.write({
        "posbuild.toml": '[sandbox]\nmode = "namespace"\n',
        "p/BUILD": 'genrule(name = "caps", outs = ["caps.txt"], cmd = "grep -E \'^Cap(Eff|Prm)\' '
                   '/proc/self/status > $@")\n',
    })
    ws.ok("//p:caps")
    values = {line.split(":")[0]: int(line.split(":")[1], 16)
              for line in ws.out("p/caps.txt").splitlines()}
    assert values == {"CapPrm": 0, "CapEff": 0}


@needs_bwrap
@pytest.mark.skipif(not os.access("/run", os.W_OK),
                    reason="needs a writable /run for the host socket")
def test_host_unix_sockets_under_run_need_the_network_tag(ws):
    path = Path(f"/run/posbuild-test-{os.getpid()}.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            connection.sendall(b"hello\n")
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    script = (
        f"import socket; s = socket.socket(socket.AF_UNIX); s.connect('{path}'); "
        "print(s.recv(6).decode(), end='')")
    try:
        ws.write({
            "posbuild.toml": '[sandbox]\nmode = "namespace"\n',
            "p/BUILD": f"""
                genrule(name = "closed", outs = ["c.txt"], cmd = "python3 -c \\"{script}\\" > $@")
                genrule(name = "open", outs = ["o.txt"], tags = ["network"], cmd = "python3 -c \\"{script}\\" > $@")
            """,  # noqa: E501
        })
        assert ws.build("//p:closed").returncode == 1
        ws.ok("//p:open")
        assert ws.out("p/o.txt") == "hello\n"
    finally:
        stop.set()
        thread.join()
        server.close()
        path.unlink()


def test_remote_upload_without_the_key_fails_even_when_up_to_date(ws, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on: the remote is down, which is fine
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ws.write({
        "posbuild.toml": f'[cache]\nremote = "http://127.0.0.1:{port}/c"\n',
        "p/BUILD": 'genrule(name = "g", outs = ["g.txt"], cmd = "echo g > $@")\n',
    })
    env = {"POSBUILD_CACHE_KEY": "", "POSBUILD_SECRETS_FILE": str(tmp_path / "none")}
    assert ws.build("//p:g", env=env).returncode == 0
    result = ws.build("--remote-upload", "//p:g", env=env)
    assert result.returncode == 2
    assert "--remote-upload needs the signing key" in result.stderr


def test_a_generation_records_the_mode_a_later_build_installed(ws):
    ws.write({"p/BUILD": """
        genrule(name = "a", outs = ["a.sh"], cmd = "echo echo hi > $@")
        genrule(name = "b", outs = ["b.txt"], cmd = "echo b > $@")
    """})
    ws.ok("//p:all")
    ws.write({"p/BUILD": """
        genrule(name = "a", outs = ["a.sh"], cmd = "echo echo hi > $@; chmod +x $@")
        genrule(name = "b", outs = ["b.txt"], cmd = "exit 1")
    """})
    # a ran (now executable); no generation recorded
    assert ws.build("-k", "//p:all").returncode == 1
    ws.write({"p/BUILD": """
        genrule(name = "a", outs = ["a.sh"], cmd = "echo echo hi > $@; chmod +x $@")
        genrule(name = "b", outs = ["b.txt"], cmd = "echo b > $@")
    """})
    ws.ok("//p:all")
    (ws.root / "posbuild-out/p/a.sh").unlink()
    assert ws.run("rollback").returncode == 0
    assert os.stat(ws.root / "posbuild-out/p/a.sh").st_mode & 0o111


def test_a_file_where_an_output_folder_belongs_is_no_traceback(ws):
    ws.write({"p/BUILD": 'genrule(name = "bad", outs = ["b.txt"], cmd = "exit 1")\n'})
    (ws.root / "posbuild-out").mkdir()
    (ws.root / "posbuild-out/p").write_text("a file, not a folder\n")
    result = ws.build("//p:bad")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "FAILED //p:bad" in result.stderr


SHADOWS = ("signal", "select", "socket", "struct", "threading", "subprocess", "selectors")


@pytest.mark.parametrize("mode", ["folder", "auto"])
@pytest.mark.parametrize("server", [False, True])
def test_python_files_of_the_workspace_never_run_in_posbuilds_own_processes(ws, tmp_path, mode,
                                                                              server):
    """A workspace's `signal.py` (or any module named as one of the standard library's) is the
    project's, never imported by the processes posbuild starts for itself (the orphan guard, the
    build server): those run outside every sandbox."""
    ran = tmp_path / "ran"
    ran.mkdir()
    ws.write({"posbuild.toml": f'[sandbox]\nmode = "{mode}"\n',
              "BUILD": 'genrule(name = "a", outs = ["a.txt"], tags = ["no-cache"], '
                       'cmd = "sleep 0.2; echo hi > $@")\n',
              **{f"{name}.py": f"open({str(ran / name)!r}, 'w').close()\n" for name in SHADOWS}})
    env = {} if not server else {"POSBUILD_NO_SERVER": ""}
    try:
        for _ in range(2):
            result = ws.build(env=env)
            assert result.returncode == 0, result.stderr
    finally:
        if server:
            ws.run("shutdown")
    assert sorted(p.name for p in ran.iterdir()) == []


def test_links_planted_in_the_failed_runs_folder_are_never_followed(ws, tmp_path):
    """`.posbuild/failed/<package>/<name>/` keeps a failed run's output; a checkout that comes
    with `.posbuild/failed/<package>` as a link to another folder must not make posbuild delete
    that folder's `<name>` when the action passes, nor write there when it fails."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "ok").mkdir(parents=True)
    (elsewhere / "ok" / "precious.txt").write_text("keep me\n")
    bad = 'genrule(name = "bad", outs = ["bad.txt"], cmd = "echo oops; exit 3")\n'
    ws.write({"pkg/BUILD": 'genrule(name = "ok", outs = ["ok.txt"], cmd = "echo ok > $@")\n'
                           + bad})
    ws.ok("//pkg:ok")
    (ws.root / ".posbuild/failed").mkdir()
    (ws.root / ".posbuild/failed/pkg").symlink_to(elsewhere)
    ws.write({"pkg/BUILD": 'genrule(name = "ok", outs = ["ok.txt"], cmd = "echo ok2 > $@")\n'
                           + bad})
    assert ws.build("//pkg:ok").returncode == 0
    assert (elsewhere / "ok" / "precious.txt").read_text() == "keep me\n"
    failed = ws.build("//pkg:bad")
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == ["ok"]


@pytest.mark.parametrize("name", ["lock", "server.log", "server.lock", "store/gc.lock"])
def test_links_planted_at_posbuilds_own_files_are_never_followed(ws, tmp_path, name):
    """A checkout may come with `.posbuild/lock` (or the server's log, its lock, the store's
    lock) as a link: posbuild must not create or append to the file it names. A build through
    the server still succeeds (one-shot when the server cannot start) or says what is wrong in
    one line."""
    ws.write(UPPER_BUILD)
    ws.ok()
    target = tmp_path / "victim"
    target.write_text("original\n")
    missing = tmp_path / "not-there"
    planted = ws.root / ".posbuild" / name
    planted.unlink(missing_ok=True)
    for link_to in (target, missing):
        planted.unlink(missing_ok=True)
        planted.symlink_to(link_to)
        result = ws.build(env={"POSBUILD_NO_SERVER": ""})
        ws.run("shutdown")
        assert "Traceback" not in result.stderr
        if result.returncode != 0:
            assert result.stderr.count("\n") == 1 and "posbuild: " in result.stderr
        assert target.read_text() == "original\n"
        assert not missing.exists()


@pytest.mark.parametrize("planted", ["posbuild-out", "posbuild-out/pkg"])
@pytest.mark.parametrize("mode", MODES)
def test_an_output_folder_planted_as_a_link_is_never_written_through(ws, tmp_path, planted,
                                                                       mode):
    """A checkout may come with `posbuild-out` (or a folder in it) as a link to a folder of the
    user's, and an action whose output is named as a file there (`authorized_keys`): the build
    refuses in one line before anything runs, and the folder is as it was."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "authorized_keys").write_text("the user's key\n")
    ws.write({"posbuild.toml": f'[sandbox]\nmode = "{mode}"\n',
              "pkg/BUILD": 'genrule(name = "k", outs = ["authorized_keys"], '
                           'cmd = "echo an attacker key > $@")\n'})
    if planted != "posbuild-out":
        (ws.root / "posbuild-out").mkdir()
    (ws.root / planted).symlink_to(elsewhere)
    result = ws.build()
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and "is a symbolic link" in result.stderr
    assert (elsewhere / "authorized_keys").read_text() == "the user's key\n"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["authorized_keys"]


def test_rollback_never_writes_through_a_folder_link(ws, tmp_path):
    ws.write(UPPER_BUILD)
    ws.ok()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(ws.root / "posbuild-out/pkg")
    (ws.root / "posbuild-out/pkg").symlink_to(elsewhere)
    result = ws.run("rollback")
    assert result.returncode == 3, result.stderr
    assert "is a symbolic link" in result.stderr
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("planted", ["tmp", "graphs"])
def test_fsck_and_builds_never_sweep_through_a_link_planted_in_the_state_folder(ws, tmp_path,
                                                                                planted):
    """`posbuild fsck` empties `.posbuild/tmp/` and removes dead writers' temp files; a
    checkout with `.posbuild/tmp` (or `graphs`) linked to a folder of the user's must not make
    it delete what that folder holds."""
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    (home / "docs" / "thesis.txt").write_text("years of work\n")
    (home / ".tmp-1-2-notes").write_text("a name like a temp file's\n")
    ws.write(UPPER_BUILD)
    ws.ok()
    link = ws.root / ".posbuild" / planted
    shutil.rmtree(link)
    link.symlink_to(home)
    before = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert ws.run("fsck").returncode in (0, 1)
    (ws.root / "pkg/a.txt").write_text("beta\n")
    ws.ok()
    assert ws.out("pkg/up.txt") == "BETA\n"
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == before
    assert (home / "docs" / "thesis.txt").read_text() == "years of work\n"


"""The remote cache against a real nginx (WebDAV PUT): a second clean workspace builds everything
from it with zero executions; poisoned entries (wrong signature, wrong bytes, unsigned) are
rejected and the action runs locally; a remote that is down, or killed in the middle of a build,
costs one warning and never a failed build."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import pytest

from conftest import POSBUILD, Result, Workspace, counts, executed_labels
from nginx_server import Nginx, free_port, nginx  # noqa: F401 - the fixture
from oracle import assert_correct_build

KEY = {"POSBUILD_CACHE_KEY": "correct horse battery staple"}

SOURCES = {
    "pkg/raw.txt": "3\n1\n2\n",
    "pkg/BUILD": """
        genrule(name = "sorted", srcs = ["raw.txt"], outs = ["sorted.txt"], cmd = "sort $< > $@; echo sorted")
        genrule(name = "report", srcs = [":sorted"], outs = ["report.txt"], cmd = "wc -l < $< > $@")
        genrule(name = "tool", srcs = [], outs = ["tool.sh"], cmd = "printf '#!/bin/sh\\necho hi\\n' > $@; chmod +x $@")
        genrule(name = "big", srcs = ["raw.txt"], outs = ["big.bin"],
                cmd = "python3 -c 'import sys; open(sys.argv[1], \\"wb\\").write(bytes(range(256)) * 4096)' $@")
    """,  # noqa: E501
}


def workspace(base: Path, name: str, url: str, extra: str = "") -> Workspace:
    """A workspace with the same sources as every other one, and a fresh `.posbuild/`."""
    root = base / name
    root.mkdir()
    (root / "posbuild.toml").write_text(f'[cache]\nremote = "{url}"\ntimeout = 2\n{extra}')
    ws = Workspace(root)
    ws.write(SOURCES)
    return ws


def tree(ws: Workspace) -> dict[str, tuple[bytes, int]]:
    out = ws.root / "posbuild-out"
    return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mode & 0o777)
            for p in sorted(out.rglob("*")) if p.is_file()}


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line]


def build(ws: Workspace, *args: str, env: dict[str, str] | None = None):
    return ws.build(*args, env={**KEY, **(env or {})})


def test_a_clean_workspace_builds_everything_from_the_remote_with_zero_executions(tmp_path, nginx):
    a = workspace(tmp_path, "a", nginx.url)
    first = build(a, "--remote-upload", "//...")
    assert first.returncode == 0, first.stderr
    assert counts(first)["executed"] == 4
    assert "4 results uploaded" in first.stderr
    assert len(nginx.files("ac")) == 4
    # the large blob, streamed
    assert any(p.stat().st_size == 256 * 4096 for p in nginx.files("cas"))

    b = workspace(tmp_path, "b", nginx.url)  # a new CI machine: same sources, nothing local
    second = build(b, "//...")
    assert second.returncode == 0, second.stderr
    assert counts(second) == {"executed": 0, "cached": 4, "failed": 0}
    assert "remote cache: 4 hits, 0 misses" in second.stderr
    assert tree(b) == tree(a)  # the same bytes and the same modes (tool.sh is executable)
    assert tree(b)["pkg/tool.sh"][1] == 0o555
    assert b.run("fsck").returncode == 0  # what came from the remote is a consistent local store

    log = b.run("log", "--json")
    states = [line for line in log.stdout.splitlines() if '"state": "CACHED"' in line]
    assert len(states) == 4
    again = build(b, "//...")  # now entirely local: the remote is not even asked
    assert counts(again)["executed"] == 0
    assert [r for r in nginx.requests() if "GET" in r][-1].endswith("200")


def test_the_local_store_is_checked_first(tmp_path, nginx):
    a = workspace(tmp_path, "a", nginx.url)
    assert build(a, "--remote-upload", "//...").returncode == 0
    shutil.rmtree(a.root / "posbuild-out")
    before = len(nginx.requests())
    result = build(a, "//...")
    assert counts(result)["executed"] == 0
    assert len(nginx.requests()) == before  # restored from the local store, no request at all


def test_a_build_without_upload_writes_nothing(tmp_path, nginx):
    a = workspace(tmp_path, "a", nginx.url)
    result = build(a, "//...")
    assert result.returncode == 0
    assert nginx.files("ac") == [] and nginx.files("cas") == []
    assert all(r.startswith("GET") for r in nginx.requests())


def test_upload_from_the_config_file(tmp_path, nginx):
    a = workspace(tmp_path, "a", nginx.url, "upload = true\n")
    assert build(a, "//...").returncode == 0
    assert len(nginx.files("ac")) == 4


def _upload_and_fresh(tmp_path: Path, nginx: Nginx) -> Workspace:
    a = workspace(tmp_path, "a", nginx.url)
    assert build(a, "--remote-upload", "//...").returncode == 0
    return workspace(tmp_path, "b", nginx.url)


def _entry_of(nginx: Nginx, ws: Workspace, label: str) -> Path:
    """The /ac/ file of a label's action, found through the uploader's execution records."""
    import json

    for line in ws.run("log", "--json").stdout.splitlines():
        record = json.loads(line)
        if record["label"] == label:
            return nginx.root / "ac" / record["key"]
    raise AssertionError(f"no record of {label}")


def test_an_entry_with_a_wrong_signature_is_rejected_and_the_action_runs_locally(tmp_path, nginx):
    b = _upload_and_fresh(tmp_path, nginx)
    entry = _entry_of(nginx, Workspace(tmp_path / "a"), "//pkg:report")
    form, algorithm, body, signature = msgpack.unpackb(entry.read_bytes())
    key, packed, names = msgpack.unpackb(body)
    # a poisoner without the key plants other output bytes under the same action key
    forged = msgpack.packb([key, packed, names], use_bin_type=True)
    entry.write_bytes(msgpack.packb([form, algorithm, forged, bytes(32)], use_bin_type=True))

    result = build(b, "//...")
    assert result.returncode == 0, result.stderr
    assert executed_labels(result) == ["//pkg:report"]
    assert f"entry /ac/{entry.name} for //pkg:report rejected: wrong signature" in result.stderr
    assert len(warnings(result.stderr)) == 1
    assert b.out("pkg/report.txt").strip() == "3"


def test_an_entry_signed_with_another_key_is_rejected(tmp_path, nginx):
    b = _upload_and_fresh(tmp_path, nginx)
    result = build(b, "//...", env={"POSBUILD_CACHE_KEY": "another key"})
    assert result.returncode == 0
    assert counts(result)["executed"] == 4
    assert len(warnings(result.stderr)) == 4  # one per rejected entry, each naming its key
    assert all("wrong signature" in w for w in warnings(result.stderr))


def test_an_entry_copied_under_another_key_is_rejected(tmp_path, nginx):
    b = _upload_and_fresh(tmp_path, nginx)
    a = Workspace(tmp_path / "a")
    report, sorted_ = _entry_of(nginx, a, "//pkg:report"), _entry_of(nginx, a, "//pkg:sorted")
    report.write_bytes(sorted_.read_bytes())  # a genuine, signed entry, but for another action
    result = build(b, "//...")
    assert executed_labels(result) == ["//pkg:report"]
    assert "signed for another action key" in result.stderr
    assert b.out("pkg/report.txt").strip() == "3"


def test_unsigned_entries_are_never_trusted(tmp_path, nginx):
    b = _upload_and_fresh(tmp_path, nginx)
    entry = _entry_of(nginx, Workspace(tmp_path / "a"), "//pkg:sorted")
    entry.write_bytes(b"\x0a\x20" + os.urandom(40))  # e.g. a Bazel ActionResult, or garbage
    result = build(b, "//...")
    assert executed_labels(result) == ["//pkg:sorted"]
    assert "not a signed posbuild entry" in result.stderr


def test_wrong_bytes_in_a_cas_entry_are_rejected_before_use(tmp_path, nginx):
    b = _upload_and_fresh(tmp_path, nginx)
    for blob in nginx.files("cas"):
        if blob.read_bytes() == b"1\n2\n3\n":  # sorted.txt
            blob.write_bytes(b"1\n2\n4\n")  # same size, other bytes
    result = build(b, "//...")
    assert result.returncode == 0, result.stderr
    # report still comes from the remote: same input bytes
    assert executed_labels(result) == ["//pkg:sorted"]
    [warning] = warnings(result.stderr)
    assert "blob /cas/" in warning and "of //pkg:sorted rejected: its bytes hash to" in warning
    assert b.out("pkg/sorted.txt") == "1\n2\n3\n"
    assert b.run("fsck").returncode == 0


def test_wrong_bytes_in_a_large_cas_entry_are_rejected(tmp_path, nginx):
    b = _upload_and_fresh(tmp_path, nginx)
    [large] = [p for p in nginx.files("cas") if p.stat().st_size == 256 * 4096]
    data = bytearray(large.read_bytes())
    data[500_000] ^= 1
    large.write_bytes(bytes(data))
    result = build(b, "//...")
    assert executed_labels(result) == ["//pkg:big"]
    assert "of //pkg:big rejected" in result.stderr
    assert not list((b.root / ".posbuild" / "tmp").glob("remote-*"))  # no temp file left behind


def test_a_missing_cas_entry_is_a_miss(tmp_path, nginx):
    b = _upload_and_fresh(tmp_path, nginx)
    for blob in nginx.files("cas"):
        if blob.read_bytes() == b"3\n":  # report.txt
            blob.unlink()
    result = build(b, "//...")
    assert executed_labels(result) == ["//pkg:report"]
    assert "is missing from the remote" in result.stderr


def test_without_the_key_the_remote_is_not_used(tmp_path, nginx):
    b = _upload_and_fresh(tmp_path, nginx)
    before = len(nginx.requests())
    env = {k: v for k, v in os.environ.items() if k != "POSBUILD_CACHE_KEY"}
    proc = subprocess.run([*POSBUILD, "build", "//..."], cwd=b.root,
                          env={**env, "XDG_CONFIG_HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "executed" in proc.stdout and "4 executed" in proc.stdout
    notices = [line for line in proc.stderr.splitlines() if "not used" in line]
    assert len(notices) == 1 and "POSBUILD_CACHE_KEY" in notices[0] \
            and "never trusted unsigned" in notices[0]
    assert len(nginx.requests()) == before


def test_remote_upload_without_the_key_fails_before_anything_runs(tmp_path, nginx):
    a = workspace(tmp_path, "a", nginx.url)
    env = {k: v for k, v in os.environ.items() if k != "POSBUILD_CACHE_KEY"}
    proc = subprocess.run([*POSBUILD, "build", "--remote-upload", "//..."], cwd=a.root,
                          env={**env, "XDG_CONFIG_HOME": str(tmp_path)}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "posbuild: --remote-upload needs the signing key: secret 'POSBUILD_CACHE_KEY'")
    assert not (a.root / "posbuild-out").exists()
    assert nginx.requests() == []


def test_the_key_may_come_from_the_secrets_file(tmp_path, nginx):
    b = _upload_and_fresh(tmp_path, nginx)
    secrets = tmp_path / "secrets"
    secrets.write_text(f"POSBUILD_CACHE_KEY={KEY['POSBUILD_CACHE_KEY']}\n")
    secrets.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "POSBUILD_CACHE_KEY"}
    proc = subprocess.run([*POSBUILD, "build", "//..."], cwd=b.root,
                          env={**env, "POSBUILD_SECRETS_FILE": str(secrets)}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "0 executed, 4 cached" in proc.stdout


def test_remote_upload_needs_a_remote(ws):
    ws.write(SOURCES)
    result = ws.build("--remote-upload", "//...", env=KEY)
    assert result.returncode == 2
    assert result.stderr == (
        "posbuild: --remote-upload needs a remote cache: set [cache] remote in posbuild.toml\n")


def test_a_remote_that_is_down_costs_one_warning(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/cache"  # nothing listens there
    a = workspace(tmp_path, "a", url)
    result = build(a, "--remote-upload", "//...")
    assert result.returncode == 0, result.stderr
    assert counts(result)["executed"] == 4
    assert warnings(result.stderr) == [
        f"posbuild: warning: remote cache {url} is unavailable (connection refused); building "
        "without it from here on"]


def test_a_slow_remote_times_out_and_costs_one_warning(tmp_path):
    import socket

    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/cache"
        a = workspace(tmp_path, "a", url)
        (a.root / "posbuild.toml").write_text(f'[cache]\nremote = "{url}"\ntimeout = 0.5\n')
        started = time.monotonic()
        result = build(a, "//...")
        assert time.monotonic() - started < 30
    assert result.returncode == 0, result.stderr
    assert counts(result)["executed"] == 4
    [warning] = warnings(result.stderr)
    assert "(timed out" in warning


def test_a_server_that_refuses_put_costs_one_warning(tmp_path, nginx):
    nginx.stop()
    nginx.dav = False
    nginx.start()
    a = workspace(tmp_path, "a", nginx.url)
    result = build(a, "--remote-upload", "//...")
    assert result.returncode == 0
    [warning] = warnings(result.stderr)
    assert "HTTP 405 on PUT" in warning and "dav_methods PUT" in warning


def test_the_remote_killed_in_the_middle_of_a_build(tmp_path, nginx):
    """Many slow-ish actions upload while nginx is SIGKILLed: one warning, the build succeeds, and
    the next build (remote still down) has nothing left to do."""
    a = workspace(tmp_path, "a", nginx.url)
    rules = "\n".join(f'genrule(name = "s{i}", srcs = [], outs = ["s{i}.txt"], cmd = "sleep 0.15; '
                      f'echo {i} > $@")'
                      for i in range(30))
    a.write({"slow/BUILD": rules})
    proc = subprocess.Popen([*POSBUILD, "build", "-j", "2", "--remote-upload", "//slow/..."],
                            cwd=a.root,
                            env={**os.environ, **KEY}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    killed = threading.Event()

    def kill_after_some_uploads() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(nginx.files("ac")) < 4:
            time.sleep(0.02)
        nginx.kill()
        killed.set()

    killer = threading.Thread(target=kill_after_some_uploads)
    killer.start()
    stdout, stderr = proc.communicate(timeout=180)
    killer.join()
    assert killed.is_set()
    assert proc.returncode == 0, stderr
    uploaded = len(nginx.files("ac"))
    assert 4 <= uploaded < 30  # it really died in the middle
    assert "30 executed" in stdout
    [warning] = [line for line in stderr.splitlines() if "warning" in line]
    assert f"remote cache {nginx.url} is unavailable" in warning
    ws = Workspace(a.root)
    assert all(ws.out(f"slow/s{i}.txt") == f"{i}\n" for i in range(30))
    again = build(ws, "//slow/...")
    assert counts(again)["executed"] == 0


def test_the_remote_killed_while_a_clean_workspace_downloads(tmp_path, nginx):
    a = workspace(tmp_path, "a", nginx.url)
    rules = "\n".join(f'genrule(name = "d{i}", srcs = [], outs = ["d{i}.bin"], '
                      f'cmd = "head -c 300000 /dev/zero > $@; echo {i} >> $@")' for i in range(40))
    a.write({"data/BUILD": rules})
    assert build(a, "--remote-upload", "//data/...").returncode == 0
    b = workspace(tmp_path, "b", nginx.url)
    b.write({"data/BUILD": rules})
    proc = subprocess.Popen([*POSBUILD, "build", "//data/..."], cwd=b.root,
                            env={**os.environ, **KEY},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    log = nginx.base / "access.log"
    start = len(log.read_text().splitlines())
    while time.monotonic() < deadline and len(log.read_text().splitlines()) < start + 10:
        time.sleep(0.005)
    nginx.kill()
    assert proc.poll() is None, "the build ended before the remote was killed"
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert len([line for line in stderr.splitlines() if "warning" in line]) == 1
    # some came from the remote, the rest ran
    assert 0 < counts(Result(0, stdout, stderr))["executed"] < 40
    for i in range(40):
        assert (b.root / f"posbuild-out/data/d{i}.bin").read_bytes() == bytes(
            300000) + f"{i}\n".encode()
    assert b.run("fsck").returncode == 0


def test_a_dry_run_does_not_ask_the_remote(tmp_path, nginx):
    b = _upload_and_fresh(tmp_path, nginx)
    before = len(nginx.requests())
    result = build(b, "-n", "//...")
    assert result.returncode == 0
    assert len(nginx.requests()) == before


def test_verify_ignores_the_remote(tmp_path, nginx):
    a = workspace(tmp_path, "a", nginx.url)
    assert build(a, "--remote-upload", "//...").returncode == 0
    before = len(nginx.requests())
    result = build(a, "--verify", "//...")
    assert result.returncode == 0, result.stderr
    assert len(nginx.requests()) == before


def test_a_poisoned_entry_is_replaced_by_the_next_upload(tmp_path, nginx):
    b = _upload_and_fresh(tmp_path, nginx)
    entry = _entry_of(nginx, Workspace(tmp_path / "a"), "//pkg:sorted")
    genuine = entry.read_bytes()
    entry.write_bytes(b"poison")
    result = build(b, "--remote-upload", "//...")
    assert executed_labels(result) == ["//pkg:sorted"]
    assert entry.read_bytes() == genuine  # signing is deterministic: the same entry is written back


def test_large_files_are_streamed_not_buffered(tmp_path, nginx):
    """A 1 MiB output goes through cas/ files on both sides (above the inline limit)."""
    b = _upload_and_fresh(tmp_path, nginx)
    result = build(b, "//pkg:big")
    assert counts(result)["executed"] == 0
    cas = b.root / ".posbuild" / "store" / "cas"
    assert [p.stat().st_size for p in cas.rglob("*") if p.is_file()] == [256 * 4096]


def test_roles_decide_who_uploads(tmp_path, nginx):
    roles = ('[roles.dev]\nbuild = ["//..."]\n\n[roles.ci]\nbuild = ["//..."]\nupload = true\n')
    dev = workspace(tmp_path, "dev", nginx.url, f"upload = true\n\n{roles}")
    result = build(dev, "//...", env={"POSBUILD_ROLE": "dev"})
    assert result.returncode == 0, result.stderr
    assert nginx.files("ac") == []  # `[cache] upload = true`, but dev may only read
    ci = workspace(tmp_path, "ci", nginx.url, f"upload = true\n\n{roles}")
    assert build(ci, "//...", env={"POSBUILD_ROLE": "ci"}).returncode == 0
    assert len(nginx.files("ac")) == 4
    fresh = workspace(tmp_path, "fresh", nginx.url, f"\n{roles}")
    # every role reads
    assert counts(build(fresh, "//...", env={"POSBUILD_ROLE": "dev"}))["executed"] == 0


# -- the signed entry format on its own ----------------------------------------------------------

def _result():
    from posbuild.core.digest import hash_bytes
    from posbuild.core.records import ActionResult, OutputFile

    out = hash_bytes(b"out")
    return ActionResult((OutputFile("posbuild-out/p/o", out, 3, False),), 0, hash_bytes(b""),
                        hash_bytes(b"")), out


def test_an_entry_round_trips_and_binds_key_result_and_names():
    from posbuild.core.digest import hash_bytes
    from posbuild.store.remote import EntryRejected, pack_entry, unpack_entry

    result, out = _result()
    names = {out: (bytes(32), 3), hash_bytes(b""): (bytes(range(32)), 0)}
    key = hash_bytes(b"key")
    data = pack_entry(b"secret", key, result, names)
    entry = unpack_entry(b"secret", key, data)
    assert entry.result == result and {d: (n, s) for d, n, s in entry.names} == names
    assert list(entry.blobs()) == [(out, bytes(32), 3), (hash_bytes(b""), bytes(range(32)), 0)]
    with pytest.raises(EntryRejected, match="wrong signature"):
        unpack_entry(b"other", key, data)
    with pytest.raises(EntryRejected, match="another action key"):
        unpack_entry(b"secret", hash_bytes(b"other key"), data)
    for position in range(len(data)):  # no single flipped bit is ever accepted
        tampered = bytearray(data)
        tampered[position] ^= 0x10
        try:
            got = unpack_entry(b"secret", key, bytes(tampered))
        except EntryRejected:
            continue
        assert got == entry  # only a flip in msgpack framing that decodes to the same values


def test_an_entry_without_the_names_of_its_blobs_is_rejected():
    from posbuild.core.digest import hash_bytes
    from posbuild.store.remote import EntryRejected, pack_entry, unpack_entry

    result, out = _result()
    # stdout/stderr unnamed
    data = pack_entry(b"secret", hash_bytes(b"k"), result, {out: (bytes(32), 3)})
    with pytest.raises(EntryRejected, match="no SHA-256 name"):
        unpack_entry(b"secret", hash_bytes(b"k"), data)


def test_an_entry_written_before_blob_sizes_were_signed_is_still_read():
    from posbuild.core.digest import hash_bytes
    from posbuild.store.remote import ENTRY_FORMAT, SIGNATURE_ALGORITHM, sign, unpack_entry

    result, out = _result()
    key = hash_bytes(b"key")
    body = msgpack.packb([key, result.pack(),
                          [[out, bytes(32)], [hash_bytes(b""), bytes(range(32))]]],
                         use_bin_type=True)
    data = msgpack.packb([ENTRY_FORMAT, SIGNATURE_ALGORITHM, body, sign(b"secret", body)],
                         use_bin_type=True)
    entry = unpack_entry(b"secret", key, data)
    assert list(entry.blobs()) == [(out, bytes(32), 3), (hash_bytes(b""), bytes(range(32)), -1)]


def test_an_entry_whose_output_size_differs_from_its_blob_size_is_rejected():
    from posbuild.core.digest import hash_bytes
    from posbuild.store.remote import EntryRejected, pack_entry, unpack_entry

    result, out = _result()
    names = {out: (bytes(32), 4), hash_bytes(b""): (bytes(range(32)), 0)}
    with pytest.raises(EntryRejected, match="size of an output"):
        unpack_entry(b"secret", hash_bytes(b"k"),
                     pack_entry(b"secret", hash_bytes(b"k"), result, names))


def test_an_entry_holding_a_secret_is_rejected():
    import dataclasses

    from posbuild.core.digest import hash_bytes
    from posbuild.store.remote import EntryRejected, pack_entry, unpack_entry

    result, out = _result()
    names = {out: (bytes(32), 3), hash_bytes(b""): (bytes(range(32)), 0)}
    data = pack_entry(b"secret", hash_bytes(b"k"), dataclasses.replace(result, secret=True), names)
    with pytest.raises(EntryRejected, match="holds a secret"):
        unpack_entry(b"secret", hash_bytes(b"k"), data)


FOLDER_BUILD = {"fold/BUILD": """
    genrule(name = "idx", out_dirs = ["index"],
            cmd = "mkdir -p $@/sub && echo one > $@/a && echo member-two > $@/sub/b")
    genrule(name = "use", srcs = [":idx"], outs = ["cat.txt"], cmd = "cat $(location :idx)/sub/b > $@")
"""}  # noqa: E501


def test_a_folder_output_comes_from_the_remote_with_every_file(tmp_path, nginx):
    a = workspace(tmp_path, "a", nginx.url)
    a.write(FOLDER_BUILD)
    assert build(a, "--remote-upload", "//fold:all").returncode == 0
    b = workspace(tmp_path, "b", nginx.url)
    b.write(FOLDER_BUILD)
    fetched = build(b, "//fold:all")
    assert counts(fetched) == {"executed": 0, "cached": 2, "failed": 0}, fetched.stderr
    assert tree(b) == tree(a)
    assert b.out("fold/index/sub/b") == "member-two\n"
    assert b.run("fsck").returncode == 0
    assert_correct_build(b, ("//fold:all",))
    # an entry whose folder lacks a file on the remote is a miss, never half a folder
    c = workspace(tmp_path, "c", nginx.url)
    c.write(FOLDER_BUILD)
    for blob in nginx.files("cas"):
        if blob.read_bytes() == b"member-two\n":
            blob.unlink()
    missed = build(c, "//fold:all")
    assert missed.returncode == 0, missed.stderr
    assert executed_labels(missed) == ["//fold:idx"]
    assert c.out("fold/index/sub/b") == "member-two\n"

"""A build on Dask with a remote cache: the workers read the actions' inputs from the remote's CAS
by digest instead of receiving their bytes in the Dask tasks.

Real processes throughout: nginx with WebDAV PUT as the remote (tests/nginx_server.py), a `dask
scheduler` and two `dask worker` processes on 127.0.0.1 (the cluster of test_dask_executor.py).
Proof that the bytes did not travel with the tasks: the summary line counts the inputs the workers
read, nginx's access log holds exactly that many `GET /cas/` (a fresh build has no remote hits, so
the client itself GETs no blob), and the task of one slow action, caught on the scheduler, holds
its input's SHA-256 name but neither its bytes nor the cache key.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import time
from pathlib import Path


from conftest import POSBUILD, Workspace, counts
from nginx_server import Nginx, nginx  # noqa: F401 - the fixture
from test_dask_executor import Cluster, cluster, outputs, workspace  # noqa: F401 - cluster: a fixture (one per module)

KEY = {"POSBUILD_CACHE_KEY": "correct horse battery staple"}
MARKER = f"marker-{os.urandom(12).hex()}\n"

FILES = {
    "p/data.txt": "".join(f"line {i % 7}\n" for i in range(200)),
    "p/marker.txt": MARKER,
    # above what rides in a task
    "p/big.bin": "".join(f"{i:07d}\n" for i in range(300 * 1024 // 8)),
    "p/tool.sh": '#!/bin/sh\necho "tool $1"\ncat "$1"\n',
    "p/BUILD": """
        genrule(name = "a", srcs = ["data.txt"], outs = ["a.txt"], cmd = "sort $< | uniq -c > $@")
        genrule(name = "b", srcs = [":a", "big.bin"], outs = ["b.txt"],
                cmd = "cksum < $(location big.bin) > $@; cat $(location :a) >> $@")
        genrule(name = "m", srcs = ["marker.txt"], outs = ["m.txt"], tools = ["tool.sh"],
                cmd = "sleep 1.5; $(location tool.sh) $(location marker.txt) > $@")
        genrule(name = "c", srcs = [":b", ":m"], outs = ["c.txt"], cmd = "cat $(SRCS) > $@; chmod +x $@")
    """,  # noqa: E501
}


def with_remote(tmp_path: Path, name: str, url: str, files: dict[str, str] = FILES) -> Workspace:
    ws = workspace(tmp_path, name,
                   {**files, "posbuild.toml": f'[cache]\nremote = "{url}"\ntimeout = 2\n'})
    os.chmod(ws.root / "p/tool.sh", 0o755)
    return ws


def local_reference(tmp_path: Path, files: dict[str, str] = FILES) -> dict[str, tuple[bytes, bool]]:
    ws = workspace(tmp_path, "local", files)
    os.chmod(ws.root / "p/tool.sh", 0o755)
    ws.ok("--executor", "local")
    return outputs(ws)


def build(ws: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*POSBUILD, "build", *args], cwd=ws.root, env={**os.environ, **KEY},
                          text=True, capture_output=True, timeout=180)


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line]


def read_by_workers(stderr: str) -> int:
    summary = [line for line in stderr.splitlines() if line.startswith("posbuild: remote cache: ")]
    if not summary or "read by Dask workers" not in summary[-1]:
        return 0
    return int(summary[-1].rsplit(", ", 1)[1].split()[0])


def cas_gets(server: Nginx) -> list[str]:
    return [r for r in server.requests() if r.startswith("GET /cache/cas/")]


def sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def executed_inputs(ws: Workspace) -> int:
    lines = subprocess.run([*POSBUILD, "log", "--json"], cwd=ws.root, capture_output=True,
                           text=True).stdout
    return sum(len(r["inputs"]) for r in map(json.loads, lines.splitlines())
               if r["state"] == "SUCCESS")


def test_workers_read_inputs_from_the_remote_not_from_the_tasks(cluster: Cluster, tmp_path: Path,
                                                                  nginx: Nginx) -> None:  # noqa: F811
    reference = local_reference(tmp_path)
    ws = with_remote(tmp_path, "ws", nginx.url)
    proc = subprocess.Popen([*POSBUILD, "build", "--executor", cluster.url, "-j", "4",
                             "--remote-upload"],
                            cwd=ws.root, text=True, env={**os.environ, **KEY},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def task_specs(dask_scheduler: object) -> bytes:  # runs on the scheduler
        import pickle

        return b"".join(pickle.dumps(ts.run_spec) for key, ts in dask_scheduler.tasks.items()  # type: ignore
                        if str(key).startswith("posbuild://p:m-"))

    spec = b""
    deadline = time.monotonic() + 60
    while proc.poll() is None and not spec and time.monotonic() < deadline:
        spec = cluster.client.run_on_scheduler(task_specs)
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert warnings(stderr) == []
    assert outputs(ws) == reference  # the same bytes, the same executable bits

    # the task of //p:m names its input by digest: neither the bytes nor the cache key travel
    assert bytes.fromhex(sha(MARKER)) in spec
    assert MARKER.encode() not in spec and pickle.dumps(MARKER.encode()) not in spec
    assert KEY["POSBUILD_CACHE_KEY"].encode() not in spec

    # every input of every action was read by a worker from the remote, once per action
    read = read_by_workers(stderr)
    assert read == executed_inputs(ws) == 7
    gets = cas_gets(nginx)
    assert len(gets) == read and all(g.endswith(" 200") for g in gets)
    for source in ("p/data.txt", "p/marker.txt", "p/big.bin", "p/tool.sh"):
        assert f"GET /cache/cas/{sha((ws.root / source).read_bytes())} 200" in gets
    # an output, as the next one's input
    assert f"GET /cache/cas/{sha(reference['p/a.txt'][0])} 200" in gets
    assert "PUT" in " ".join(nginx.requests())  # the inputs were uploaded before the actions ran


def test_a_read_only_build_ships_what_the_remote_lacks_and_survives_a_tampered_blob(
        cluster: Cluster, tmp_path: Path, nginx: Nginx) -> None:  # noqa: F811
    ws = with_remote(tmp_path, "ws", nginx.url)
    assert build(ws, "--executor", cluster.url, "-j", "4", "--remote-upload").returncode == 0

    # Without upload: an input the remote has is read from it, one it lacks travels with the task.
    ws.write({"p/new.txt": "new\n", "p/BUILD": FILES["p/BUILD"] + """
        genrule(name = "n", srcs = ["new.txt", "data.txt"], outs = ["n.txt"], cmd = "cat $(SRCS) > $@")
    """})  # noqa: E501
    before = len(nginx.requests())
    first = build(ws, "--executor", cluster.url)
    assert first.returncode == 0, first.stderr
    assert counts(first) == {"executed": 1, "cached": 4, "failed": 0}
    assert warnings(first.stderr) == []
    assert ws.out("p/n.txt") == "new\n" + FILES["p/data.txt"]
    requests = nginx.requests()[before:]
    assert f"HEAD /cache/cas/{sha('new' + chr(10))} 404" in requests
    # uploaded by the first build
    assert f"GET /cache/cas/{sha(FILES['p/data.txt'])} 200" in requests
    assert not any(r.startswith("PUT") for r in requests)
    assert read_by_workers(first.stderr) == 1

    # Someone overwrites a blob on the server with other bytes of the same size: the worker refuses
    # them, and the action runs once more with its inputs shipped through Dask.
    blob = nginx.root / "cas" / sha(FILES["p/data.txt"])
    blob.write_bytes(FILES["p/data.txt"].replace("line 3", "line 9").encode())
    ws.write({"p/BUILD": FILES["p/BUILD"].replace("uniq -c", "uniq -c | sort -rn")})
    second = build(ws, "--executor", cluster.url, "-j", "4")
    assert second.returncode == 0, second.stderr
    [warning] = warnings(second.stderr)
    assert warning.startswith(f"posbuild: warning: remote cache {nginx.url}: Dask worker tcp://")
    assert (f"could not read an action's inputs from it (input p/data.txt: /cas/{blob.name} on "
            f"{nginx.url} holds other bytes") in warning \
                and warning.endswith("inputs travel through Dask from here on")
    expected = subprocess.run("sort | uniq -c | sort -rn", shell=True, input=FILES["p/data.txt"],
                              text=True, capture_output=True).stdout
    assert ws.out("p/a.txt") == expected  # from the true bytes
    assert ws.run("fsck").returncode == 0


def test_a_remote_that_is_down_costs_one_warning_and_inputs_travel_through_dask(
        cluster: Cluster, tmp_path: Path, nginx: Nginx) -> None:  # noqa: F811
    reference = local_reference(tmp_path)
    ws = with_remote(tmp_path, "ws", nginx.url)
    nginx.kill()
    result = build(ws, "--executor", cluster.url, "-j", "4", "--remote-upload")
    assert result.returncode == 0, result.stderr
    assert warnings(result.stderr) == [
        f"posbuild: warning: remote cache {nginx.url} is unavailable (connection refused); "
        f"building without it from here on"]
    assert counts(result) == {"executed": 4, "cached": 0, "failed": 0}
    assert read_by_workers(result.stderr) == 0
    assert outputs(ws) == reference


# -- the keyless CAS client a worker uses, on its own
# -----------------------------------------------


def test_the_keyless_cas_client_verifies_both_digests(tmp_path: Path, nginx: Nginx) -> None:  # noqa: F811
    from posbuild.core.digest import hash_bytes
    from posbuild.store.remote import RemoteCache, sha256_of

    data = b"some input\n" * 100
    name, digest = sha256_of(data), hash_bytes(data)
    writer = RemoteCache(nginx.url, 2, b"key", True, lambda message: None)
    assert writer.offer_blob(name, data)
    reader = RemoteCache.blobs_only(nginx.url, 2)
    assert reader.get_entry(digest, "//p:x") is None  # no key: it trusts no entry
    target = tmp_path / "got"
    assert reader.read_blob(name, digest, target) == "" and target.read_bytes() == data

    (nginx.root / "cas" / name.hex()).write_bytes(data.upper())
    why = reader.read_blob(name, digest, target := tmp_path / "bad")
    assert why.startswith(f"/cas/{name.hex()} on {nginx.url} holds other bytes") \
            and not target.exists()
    other = sha256_of(b"absent")
    missing = reader.read_blob(other, hash_bytes(b"absent"), tmp_path / "absent")
    assert missing == f"/cas/{other.hex()} is missing from {nginx.url}"
    looker = RemoteCache(nginx.url, 2, b"key", False, lambda message: None)
    # HEAD only, no PUT
    assert looker.offer_blob(name, data) and not looker.offer_blob(other, b"absent")
    assert not (nginx.root / "cas" / other.hex()).exists()

    nginx.kill()
    why = RemoteCache.blobs_only(nginx.url, 2).read_blob(name, digest, tmp_path / "down")
    assert why == f"{nginx.url} is unavailable (connection refused)"

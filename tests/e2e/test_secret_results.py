"""A result that may hold a secret stays in the store that made it: an action that declares
`allow_secret_in_output`, and every action downstream of it that does not declare the secret
itself, is never exported in a cache archive, never uploaded to a remote cache and never taken
from one; and the signing key never reaches an action through `[env] pass`."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import msgpack
import pytest

from conftest import Workspace, executed_labels
from hostile_server import CacheServer

KEY = {"POSBUILD_CACHE_KEY": "correct horse battery staple"}
ALICE = "alice-Token-4711"
BOB = "bob-Token-0815"

SOURCES = {
    "pkg/BUILD": """
        genrule(name = "token", srcs = [], outs = ["token.txt"], secrets = ["API_TOKEN"],
                allow_secret_in_output = True, cmd = "printf '%s' \\"$API_TOKEN\\" > $@")
        genrule(name = "derived", srcs = [":token"], outs = ["derived.txt"], cmd = "tr a-z A-Z < $< > $@")
        genrule(name = "twice", srcs = [":derived"], outs = ["twice.txt"], cmd = "cat $< $< > $@")
        genrule(name = "checked", srcs = [":token"], outs = ["length.txt"], secrets = ["API_TOKEN"],
                cmd = "wc -c < $< > $@")
        genrule(name = "public", srcs = [], outs = ["public.txt"], cmd = "echo public > $@")
    """,  # noqa: E501
}
# "checked" declares the secret: searched, shareable
CARRIERS = ["//pkg:derived", "//pkg:token", "//pkg:twice"]


@pytest.fixture(autouse=True)
def no_ambient_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POSBUILD_CACHE_KEY", "POSBUILD_SECRETS_FILE", "API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
def server():
    cache = CacheServer()
    yield cache
    cache.close()


def workspace(base: Path, name: str, config: str = "") -> Workspace:
    root = base / name
    root.mkdir()
    (root / "posbuild.toml").write_text(config)
    ws = Workspace(root)
    ws.write(SOURCES)
    return ws


def forms(value: str) -> list[bytes]:
    """The bytes a secret value takes in the outputs: as it is, and as `derived` writes it."""
    return [value.encode(), value.upper().encode()]


def test_an_export_leaves_out_every_result_that_may_hold_a_secret(tmp_path):
    a = workspace(tmp_path, "a")
    assert a.build("//...", env={**KEY, "API_TOKEN": ALICE}).returncode == 0
    archive = tmp_path / "cache.tar"
    result = a.run("cache", "export", str(archive), env=KEY)
    assert result.returncode == 0, result.stderr
    assert "2 action results" in result.stdout
    assert "3 results that may hold a secret were left out" in result.stdout
    data = archive.read_bytes()
    assert not any(form in data for form in forms(ALICE))
    assert a.run("fsck").returncode == 0  # flagged result rows are well-formed rows

    b = workspace(tmp_path, "b")
    assert b.run("cache", "import", str(archive), env=KEY).returncode == 0
    built = b.build("//...", env={**KEY, "API_TOKEN": BOB})
    assert built.returncode == 0, built.stderr
    # checked: its input changed
    assert executed_labels(built) == sorted([*CARRIERS, "//pkg:checked"])
    assert b.out("pkg/twice.txt") == BOB.upper() * 2


def test_a_result_holding_a_secret_never_serves_an_action_that_forbids_one(tmp_path):
    """`allow_secret_in_output` is part of the action's definition: once it is withdrawn, the
    action runs again and its output is searched, instead of a cache hit handing its dependents,
    which then no longer count as carrying a secret, the old output that holds it."""
    a = workspace(tmp_path, "a")
    assert a.build("//...", env={**KEY, "API_TOKEN": ALICE}).returncode == 0
    build = a.root / "pkg" / "BUILD"
    build.write_text(build.read_text().replace("allow_secret_in_output = True",
                                               "allow_secret_in_output = False"))
    again = a.build("//pkg:token", env={**KEY, "API_TOKEN": ALICE})
    assert again.returncode == 1, again.stdout + again.stderr
    assert "output 'posbuild-out/pkg/token.txt' contains the value of secret 'API_TOKEN'" \
            in again.stderr


def test_export_leaves_out_a_flagged_result_even_where_the_graph_says_nothing(tmp_path,
                                                                              monkeypatch):
    """The flag travels with the result: an export that cannot read its build's graph (another
    version of posbuild recorded it) still leaves out what the store flagged."""
    from posbuild.store import cachearchive
    from posbuild.store.lmdbstore import Store

    a = workspace(tmp_path, "a")
    assert a.build("//...", env={**KEY, "API_TOKEN": ALICE}).returncode == 0
    monkeypatch.setattr(cachearchive, "_graph_facts", lambda store,
                        build: (frozenset(), frozenset()))
    store = Store(a.root / ".posbuild" / "store")
    try:
        report = cachearchive.export_cache(store, ["//..."], tmp_path / "cache.tar", b"key")
    finally:
        store.close()
    assert (report.results, report.private) == (2, 3)
    assert not any(form in (tmp_path / "cache.tar").read_bytes() for form in forms(ALICE))


def test_no_result_that_may_hold_a_secret_reaches_the_remote(tmp_path, server):
    a = workspace(tmp_path, "a", f'[cache]\nremote = "{server.url}"\n')
    result = a.build("--remote-upload", "//...", env={**KEY, "API_TOKEN": ALICE})
    assert result.returncode == 0, result.stderr
    assert "2 results uploaded" in result.stderr
    assert len(server.paths("ac")) == 2  # checked and public
    for path, data in server.files.items():
        assert not any(form in data for form in forms(ALICE)), path


def _key_of(ws: Workspace, label: str) -> str:
    for line in ws.run("log", "--json").stdout.splitlines():
        record = json.loads(line)
        if record["label"] == label and record["key"]:
            return record["key"]
    raise AssertionError(f"no record of {label}")


def test_the_remote_is_never_asked_for_a_result_that_may_hold_a_secret(tmp_path, server):
    """An entry for `token` on the remote (as a posbuild that uploaded such results wrote it) holds
    Alice's secret under a key that does not depend on the secret's value: Bob must not get it."""
    import hashlib

    from posbuild.store.remote import ENTRY_FORMAT, SIGNATURE_ALGORITHM, sign
    from posbuild.store.lmdbstore import Store

    a = workspace(tmp_path, "a")
    assert a.build("//...", env={**KEY, "API_TOKEN": ALICE}).returncode == 0
    key = bytes.fromhex(_key_of(a, "//pkg:token"))
    store = Store(a.root / ".posbuild" / "store")
    try:
        result = store.get_result(key)
        assert result is not None
        blobs = {d: store.get_blob(d) for d in (*(o.digest for o in result.outputs),
                                                 result.stdout_digest, result.stderr_digest)}
    finally:
        store.close()
    rows = [[o.path, o.digest, o.size, o.executable] for o in result.outputs]
    # unflagged
    packed = msgpack.packb([1, result.exit_code, result.stdout_digest, result.stderr_digest, rows])
    names = [[d, hashlib.sha256(data).digest()] for d, data in sorted(blobs.items())]
    body = msgpack.packb([key, packed, names], use_bin_type=True)
    server.files[f"/cache/ac/{key.hex()}"] = msgpack.packb([ENTRY_FORMAT, SIGNATURE_ALGORITHM, body,
                                                            sign(KEY["POSBUILD_CACHE_KEY"].encode(),
                                                                 body)],
                                                           use_bin_type=True)
    for data in blobs.values():
        server.files[f"/cache/cas/{hashlib.sha256(data).hexdigest()}"] = data

    b = workspace(tmp_path, "b", f'[cache]\nremote = "{server.url}"\n')
    built = b.build("//pkg:token", env={**KEY, "API_TOKEN": BOB})
    assert built.returncode == 0, built.stderr
    assert executed_labels(built) == ["//pkg:token"]
    assert b.out("pkg/token.txt") == BOB


def test_the_signing_key_cannot_be_passed_to_actions(tmp_path):
    ws = workspace(tmp_path, "a", '[env]\npass = ["LANG", "POSBUILD_CACHE_KEY"]\n')
    ws.write({"pkg/BUILD": 'genrule(name = "leak", srcs = [], outs = ["k.txt"], '
                           'cmd = "printf %s \\"${POSBUILD_CACHE_KEY:-}\\" > $@")\n'})
    for command in (("build", "//..."), ("query", "//..."), ("env", "show")):
        result = ws.run(*command, env=KEY)
        assert result.returncode == 3, (command, result.stdout, result.stderr)
        assert result.stderr == (f"posbuild: {ws.root / 'posbuild.toml'}: [env] pass: "
                                 "'POSBUILD_CACHE_KEY' is posbuild's signing key and is never "
                                 "given to actions (one holding it could forge shared cache "
                                 "entries); remove it\n")
    assert not (ws.root / "posbuild-out").exists()
    # names are exact: no patterns
    (ws.root / "posbuild.toml").write_text('[env]\npass = ["POSBUILD_*"]\n')
    result = ws.run("build", "//...", env=KEY)
    assert result.returncode == 3 \
            and "'POSBUILD_*' is not an environment variable name" in result.stderr


def test_without_pass_an_action_never_sees_the_signing_key_nor_an_undeclared_secret(tmp_path):
    ws = workspace(tmp_path, "a")
    ws.write(
        {"pkg/BUILD": 'genrule(name = "env", srcs = [], outs = ["env.txt"], cmd = "env > $@")\n'})
    result = ws.build("//...", env={**KEY, "API_TOKEN": ALICE})
    assert result.returncode == 0, result.stderr
    seen = ws.out("pkg/env.txt")
    assert KEY["POSBUILD_CACHE_KEY"] not in seen and ALICE not in seen


def test_secret_carriers_follow_the_graph_downstream():
    from typing import NamedTuple

    from posbuild.workspace.secrets import secret_carriers

    class A(NamedTuple):
        secrets: tuple[str, ...] = ()
        allow_secret_in_output: bool = False
        deps: tuple[int, ...] = ()

    graph = [A(("S",), True), A(deps=(0,)), A(("S",), deps=(0,)), A(("S",), True, deps=(2,)),
             A(("T",), deps=(1,)), A(), A(deps=(2, 5))]
    assert secret_carriers(graph) == {0, 1, 3, 4}
    assert secret_carriers([A(), A(("S",))]) == frozenset()


def test_an_old_result_row_reads_as_not_secret_and_a_flagged_one_round_trips():
    import dataclasses

    from posbuild.core.digest import hash_bytes
    from posbuild.core.records import ActionResult, OutputFile

    result = ActionResult((OutputFile("posbuild-out/p/o", hash_bytes(b"o"), 1, False),), 0,
                          hash_bytes(b""), hash_bytes(b""))
    old = msgpack.packb([1, 0, hash_bytes(b""), hash_bytes(b""),
                         [["posbuild-out/p/o", hash_bytes(b"o"), 1, False]]])
    assert result.pack() == old  # an unflagged row is byte for byte what it was
    assert ActionResult.unpack(old) == result and not result.secret
    flagged = dataclasses.replace(result, secret=True)
    assert ActionResult.unpack(flagged.pack()) == flagged


def test_tar_of_export_has_no_blob_named_only_by_a_secret_result(tmp_path):
    a = workspace(tmp_path, "a")
    assert a.build("//...", env={**KEY, "API_TOKEN": ALICE}).returncode == 0
    archive = tmp_path / "cache.tar"
    assert a.run("cache", "export", str(archive), env=KEY).returncode == 0
    with tarfile.open(archive) as tar:
        contents = [tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()]  # type: ignore[union-attr]
    assert b"public\n" in contents and b"16\n" in contents
    assert not any(form in data for data in contents for form in forms(ALICE))

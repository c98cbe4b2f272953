"""Inputs and machine states that used to kill posbuild, through the real CLI: each must end as
one line `posbuild: ...` with its exit code, never a traceback or a death by signal.

Deeply nested BUILD files and queries (the Starlark evaluator's native stack), a truncated or
garbled store (LMDB maps its file and trusts every page), a read-only store, a full disk and an
address-space limit below the store's 64 GiB map.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import POSBUILD, Result, Workspace

CHAIN = {
    "pkg/BUILD": "".join(
        f'genrule(name = "t{i}", outs = ["t{i}.txt"], cmd = "printf %0{200 + i}d {i} > $@")\n'
        for i in range(40)),
}


def assert_one_line(result: Result, code: int, *needles: str) -> str:
    """The command failed with `code` and said why in one `posbuild:` line, without a traceback."""
    assert result.returncode == code, (result.returncode, result.stdout[-2000:],
                                       result.stderr[-2000:])
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("posbuild: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- nesting that overflowed the evaluator's native stack ------------------------------------


DEEP_BUILD = {
    "brackets": "x = " + "[" * 3000 + "]" * 3000 + "\n",
    "lambdas": "x = " + "lambda: " * 1100 + "1\n",
    "plus chain": "x = " + " + ".join(["1"] * 10000) + "\n",
    "not chain": "x = " + "not " * 10000 + "True\n",
    "calls": "x = " + "len(" * 3000 + "[]" + ")" * 3000 + "\n",
}


@pytest.mark.parametrize("kind", sorted(DEEP_BUILD))
def test_a_deeply_nested_build_file_is_an_error_naming_its_line(ws, kind):
    first = 'genrule(name = "a", outs = ["a.txt"], cmd = "echo > $@")\n\n'
    ws.write({"pkg/BUILD": first + DEEP_BUILD[kind]})
    assert_one_line(ws.build("//..."), 3, "pkg/BUILD:3: nested more than 200 levels deep")
    assert_one_line(ws.run("query", "//..."), 3, "pkg/BUILD:3:")


def test_a_deep_elif_chain_in_a_loaded_bzl_file_names_that_file(ws):
    body = "".join(f"    elif x == {i}:\n        return {i}\n" for i in range(1, 3000))
    ws.write({
        "pkg/deep.bzl": "def f(x):\n    if x == 0:\n        return 0\n" + body,
        "pkg/BUILD": 'load(":deep.bzl", "f")\ngenrule(name = "a", outs = ["a.txt"], cmd = "echo > '
                     '$@")\n',
    })
    assert_one_line(ws.build("//..."), 3, "pkg/deep.bzl:", "nested more than 200 levels deep")


def test_an_ordinary_build_file_deep_enough_for_real_use_still_loads(ws):
    nested = "[" * 60 + '"x"' + "]" * 60
    ws.write({"pkg/BUILD": f"""
        def pick(v):
            if v == 1:
                return "a"
            elif v == 2:
                return "b"
            else:
                return "c" if v > 3 and not v < 0 else "d"
        deep = {nested}
        genrule(name = "a", outs = ["a.txt"], cmd = "echo " + pick(2) + " > $@ # ((( [[[ " + "(" * 300)
    """})  # noqa: E501
    ws.ok("//...")
    assert ws.out("pkg/a.txt") == "b\n"


def test_a_load_chain_is_bounded(ws):
    files = {f"pkg/m{i}.bzl": f'load(":m{i + 1}.bzl", "v")\n' for i in range(150)}
    files["pkg/m150.bzl"] = "v = 1\n"
    files["pkg/BUILD"] = 'load(":m0.bzl", "v")\n'
    ws.write(files)
    assert_one_line(ws.run("query", "//..."), 3, "load() chain deeper than 100 files")


def test_watch_reports_a_deeply_nested_build_file_and_goes_on(ws):
    from test_watch import Watch

    ws.write({"pkg/BUILD": 'genrule(name = "a", srcs = ["a.txt"], outs = ["a.out"], cmd = "cp $< '
                           '$@")\n',
              "pkg/a.txt": "1\n"})
    w = Watch(ws)
    try:
        assert w.cycle().group(0).startswith("[watch] initial build")
        good = (ws.root / "pkg/BUILD").read_text()
        (ws.root / "pkg/BUILD").write_text(good + "x = " + "(" * 3000 + "1" + ")" * 3000 + "\n")
        match = w.cycle()
        assert match.group(7) == "3", match.group(0)
        assert w.err_line(r"^posbuild: pkg/BUILD:2: nested more than 200")
        (ws.root / "pkg/BUILD").write_text(good)
        (ws.root / "pkg/a.txt").write_text("2\n")
        assert w.changed()[1:] == (1, 0, 0)
        assert w.proc.poll() is None
    finally:
        w.kill()


def test_a_query_of_50000_parentheses_is_a_syntax_error(ws):
    ws.write({"pkg/BUILD": 'genrule(name = "a", outs = ["a.txt"], cmd = "echo > $@")\n'})
    line = assert_one_line(ws.run("query", "(" * 50000 + "//pkg:a" + ")" * 50000), 2,
                           "nests more than 200 levels deep")
    assert len(line) < 500
    assert_one_line(ws.run("query", "deps(" * 300 + "//pkg:a" + ")" * 300), 2,
                    "nests more than 200")


def test_a_deeply_nested_query_regex_is_a_syntax_error(ws):
    ws.write({"pkg/BUILD": 'genrule(name = "a", outs = ["a.txt"], cmd = "echo > $@")\n'})
    assert_one_line(ws.run("query", "kind(" + "(" * 30000 + ")" * 30000 + ", //...)"), 2,
                    "bad regular expression: nested too deeply")


def test_a_long_union_chain_in_a_query_is_evaluated(ws):
    ws.write({"pkg/BUILD": 'genrule(name = "a", outs = ["a.txt"], cmd = "echo > $@")\n'})
    result = ws.run("query", " + ".join(["//pkg:a"] * 5000))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == "//pkg:a\n"


# -- a damaged store ----------------------------------------------------------------------------


def _data(ws: Workspace) -> Path:
    return ws.root / ".posbuild/store/db/data.mdb"


def test_a_truncated_store_is_orch03_for_every_command_and_fsck_repair_recovers(ws):
    ws.write(CHAIN)
    ws.ok("//...")
    data = _data(ws)
    os.truncate(data, data.stat().st_size // 2)
    for args in (("build", "//..."), ("fsck",), ("log",), ("gc",), ("explain", "//pkg:t1")):
        assert_one_line(ws.run(*args), 13, "ORCH-03", "data.mdb is truncated")
    repaired = ws.run("fsck", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired: the store was damaged" in repaired.stdout and "moved it to" in repaired.stdout
    # kept aside as evidence
    assert list((ws.root / ".posbuild/store").glob("db.damaged-*/data.mdb"))
    ws.ok("//...")
    assert ws.out("pkg/t3.txt") == "3".zfill(203)
    assert ws.run("fsck").returncode == 0


def _garble_leaf_pages(data: Path, every: int) -> int:
    """Overwrite the body of every `every`-th B-tree page (branch or leaf) with noise."""
    raw = bytearray(data.read_bytes())
    page = int.from_bytes(raw[40:44], "little")
    garbled = 0
    for number in range(2, len(raw) // page):
        flags = int.from_bytes(raw[number * page + 10:number * page + 12], "little")
        if flags & 0x03 and number % every == 0:
            raw[number * page + 16:(number + 1) * page] = os.urandom(page - 16)
            garbled += 1
    data.write_bytes(bytes(raw))
    return garbled


def test_a_garbled_store_page_fails_fsck_and_repair_rebuilds_from_what_is_readable(ws):
    ws.write(CHAIN)
    ws.ok("//...")
    ws.ok("//...")  # a no-op build: more commits, more pages
    assert _garble_leaf_pages(_data(ws), 2)
    found = ws.run("fsck")
    assert_one_line(found, 13, "ORCH-03", "is damaged")
    repaired = ws.run("fsck", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "Traceback" not in repaired.stdout + repaired.stderr
    assert "rebuilt it from" in repaired.stdout
    assert ws.run("fsck").returncode == 0
    ws.ok("//...")
    assert ws.out("pkg/t7.txt") == "7".zfill(207)
    after = ws.run("fsck")
    assert after.returncode == 0, after.stdout + after.stderr


def test_a_read_only_store_is_one_line_and_stays_unchanged(ws):
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap not found (it makes the store read-only for a root user too)")
    ws.write(CHAIN)
    ws.ok("//...")
    # something to execute
    (ws.root / "pkg/BUILD").write_text(CHAIN["pkg/BUILD"].replace("%0", "x%0"))
    store = ws.root / ".posbuild/store"
    before = _data(ws).read_bytes()
    proc = subprocess.run(["bwrap", "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                           "--ro-bind", str(store), str(store), *POSBUILD, "build", "//..."],
                          cwd=ws.root, capture_output=True, text=True, timeout=120)
    if "bwrap:" in proc.stderr:
        pytest.skip(f"bwrap cannot run here: {proc.stderr.strip()}")
    assert_one_line(Result(proc.returncode, proc.stdout, proc.stderr), 1, "Read-only file system")
    assert _data(ws).read_bytes() == before


def _address_space(limit: int):  # type: ignore[no-untyped-def]
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_an_address_space_limit_below_the_map_size_still_builds_or_says_why(ws):
    ws.write(CHAIN)
    env = {**os.environ}
    run = lambda limit: subprocess.run([*POSBUILD, "build", "//..."], cwd=ws.root, env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=120,
                                       preexec_fn=_address_space(limit))
    built = run(2 << 30)
    assert built.returncode == 0, built.stderr[-3000:]
    assert ws.out("pkg/t2.txt") == "2".zfill(202)
    refused = run(160 << 20)
    assert_one_line(Result(refused.returncode, refused.stdout, refused.stderr), 1,
                    "not enough address space")


FULL_DISK = r"""
set -eu
mount -t tmpfs -o size=400k tmpfs "$1"
cd "$1"
: > posbuild.toml
mkdir pkg
cp "$2" pkg/BUILD
set +e
"$3" -m posbuild build //... > "$4/full.out" 2> "$4/full.err"; echo $? > "$4/full.rc"
mount -o remount,size=16m tmpfs "$1"
"$3" -m posbuild fsck > "$4/fsck.out" 2>&1; echo $? > "$4/fsck.rc"
"$3" -m posbuild build //... > "$4/again.out" 2>&1; echo $? > "$4/again.rc"
"$3" -m posbuild fsck > "$4/fsck2.out" 2>&1; echo $? > "$4/fsck2.rc"
"""


def test_a_full_disk_is_one_line_and_leaves_a_store_fsck_accepts(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("unshare not found (a small tmpfs in a mount namespace plays the full disk)")
    mount, logs = tmp_path / "small", tmp_path / "logs"
    mount.mkdir()
    logs.mkdir()
    build = tmp_path / "BUILD"
    build.write_text("".join(f'genrule(name = "t{i}", outs = ["t{i}.txt"], cmd = "head -c 4000 '
                             '/dev/zero > $@")\n'
                             for i in range(200)))
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a mount namespace: {probe.stderr.decode().strip()}")
    script = tmp_path / "full.sh"
    script.write_text(textwrap.dedent(FULL_DISK))
    subprocess.run(["unshare", "-rm", "sh", str(script), str(mount), str(build), sys.executable,
                    str(logs)],
                   check=True, timeout=300, env=os.environ)
    read = lambda name: (logs / name).read_text()  # noqa: E731
    assert_one_line(Result(int(read("full.rc")), read("full.out"), read("full.err")), 1,
                    "No space left on device")
    assert read("fsck.rc").strip() == "0", read("fsck.out")
    assert read("again.rc").strip() == "0", read("again.out")
    assert read("fsck2.rc").strip() == "0", read("fsck2.out")


def test_an_unclosed_quote_before_deep_brackets_is_refused_at_once(ws):
    """Found by the fuzz test: the nesting scan's string pattern backtracked for minutes."""
    ws.write(
        {"pkg/BUILD": "def f(x):\n    if x:\n" + "(" * 700 + '"' + "(" * 400 + "\n        return "
                                                                               "x\n"})
    result = ws.run("query", "//...", timeout=30)
    assert_one_line(result, 3, "pkg/BUILD:3: nested more than 200 levels deep")


def test_a_store_file_replaced_by_a_folder_is_found_and_repaired(ws):
    """Found by the fuzz test: fsck --repair left it, and every later command failed."""
    ws.write(CHAIN)
    ws.ok("//...")
    data = _data(ws)
    data.unlink()
    data.mkdir()
    assert_one_line(ws.build("//..."), 13, "data.mdb is a folder")
    assert_one_line(ws.run("fsck"), 13, "data.mdb is a folder")
    repaired = ws.run("fsck", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    ws.ok("//...")
    assert ws.run("fsck").returncode == 0

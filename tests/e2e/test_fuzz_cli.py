"""Fuzzing the real CLI: no input ever ends in a Python traceback or a death by signal.

Random and mutated BUILD and .bzl files, posbuild.toml values of every TOML type, target
patterns (with bytes that are not UTF-8), query expressions, and damaged files under
`.posbuild/` go through `posbuild.cli.main` exactly as `python -m posbuild` runs it, in a forked
child per example: as fast as in-process, and a crash of the child (SIGSEGV in the Starlark
evaluator, SIGBUS in LMDB) is seen as such instead of killing the test run.

Every example must end with an exit code of DESIGN §8, no "Traceback" in its output, and within
a time bound. CI runs a fixed, derandomized set of examples in well under a minute;
`POSBUILD_FUZZ_SCALE=20 pytest tests/e2e/test_fuzz_cli.py` runs twenty times as many, with fresh
random seeds (`POSBUILD_FUZZ_SEED=N` to replay one run).

Nothing here executes a generated command: BUILD files are only loaded (`query`, `build -n`),
and the builds of the damaged-state examples run the fixed commands of a known workspace.
Generated paths stay inside the temp workspace.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import POSBUILD  # noqa: E402

SCALE = float(os.environ.get("POSBUILD_FUZZ_SCALE", "1"))
SEED = os.environ.get("POSBUILD_FUZZ_SEED")
EXIT_CODES = {0, 1, 2, 3, 4, 11, 12, 13, 14, 15, 16, 17, 130, 143}
CHILD_TIMEOUT = 60.0


def fuzz(examples: int):  # type: ignore[no-untyped-def]
    """Hypothesis settings: `examples` in CI (derandomized, reproducible), SCALE times more by
    hand."""
    count = max(1, int(examples * SCALE))
    chosen = settings(max_examples=count, deadline=None, database=None,
                      derandomize=SCALE == 1 and SEED is None,
                      suppress_health_check=list(HealthCheck), print_blob=True)
    if SEED is not None:
        return lambda test: hypothesis.seed(int(SEED))(chosen(test))
    return chosen


# -- running the CLI in a forked child -----------------------------------------------------------


def _warm_up() -> None:
    """Import what the commands import, once, so that each forked child starts warm."""
    import posbuild.engine.session  # noqa: F401
    import posbuild.cli
    import posbuild.load.loader  # noqa: F401
    import posbuild.load.query  # noqa: F401
    from posbuild.cli import COMMANDS

    for module, _ in COMMANDS.values():
        __import__(module)


_warm_up()


def run_cli(cwd: Path, *args: str) -> tuple[int, str]:
    """Run `posbuild ARGS` in `cwd` in a forked child: (exit code or -signal, stdout + stderr)."""
    with tempfile.TemporaryFile() as output:
        pid = os.fork()
        if pid == 0:  # the child: exactly what `python -m posbuild ARGS` does, then leave at once
            code = 70
            try:
                os.chdir(cwd)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(output.fileno(), 1)
                os.dup2(output.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False, encoding="utf-8", errors="surrogateescape")
                sys.stderr = open(2, "w", closefd=False, encoding="utf-8",
                                  errors="backslashreplace")
                from posbuild.cli import main

                main(list(args))
                code = 0
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            except BaseException:  # noqa: BLE001 - printed for the parent, which fails the example
                import traceback

                traceback.print_exc()
                code = 70
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except Exception:  # noqa: BLE001
                        pass
                os._exit(code)
        deadline = time.monotonic() + CHILD_TIMEOUT
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"posbuild {args!r} did not end within {CHILD_TIMEOUT} s")
            time.sleep(0.002)
        output.seek(0)
        text = output.read().decode("utf-8", "replace")
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return code, text


def assert_clean(code: int, text: str, what: object) -> None:
    """No traceback, no signal, a documented exit code."""
    assert code >= 0, f"killed by {signal.Signals(-code).name}: {what!r}\n{text[-3000:]}"
    assert "Traceback (most recent call last)" not in text, (
        f"traceback for {what!r}:\n{text[-5000:]}")
    assert code in EXIT_CODES, f"exit {code} for {what!r}:\n{text[-3000:]}"
    if code:
        assert any(line.startswith("posbuild: ") or line.startswith("[watch]")
                   for line in text.splitlines()), \
            f"exit {code} without a `posbuild:` line for {what!r}:\n{text[-3000:]}"


def workspace(files: dict[str, bytes | str]) -> Path:
    root = Path(tempfile.mkdtemp(prefix="fuzz-ws-"))
    for rel, content in {"posbuild.toml": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape"))
    return root


# -- BUILD and .bzl files -----------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "all", "x.txt", "out", "a/b", "", ".", "..", "a:b", "é",
                         "\udcff", "*"])
LABELS = st.sampled_from([":a", ":b", "//pkg:a", "//pkg", "//other:c", "x.txt", "//missing:z",
                          "@repo//x:y",
                          "//pkg/...", ":", "//:", "a b", "../x", "/abs", "$(location :a)",
                          "\udcfe"])


def starlark_value(depth: int = 2) -> st.SearchStrategy[str]:
    """Starlark source text of a value of any type."""
    scalars = st.one_of(
        st.none().map(lambda _: "None"), st.booleans().map(str),
        st.integers(min_value=-(1 << 70), max_value=1 << 70).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.text(max_size=12).map(lambda s: json.dumps(s)),
        LABELS.map(json.dumps),
        st.sampled_from(["glob(['*'])", "glob(['**/*.txt'], exclude = ['a*'])",
                                                 "package_name()", "len([1])", "{}", "[]", "()",
                         "struct"]),
    )
    if depth == 0:
        return scalars
    inner = starlark_value(depth - 1)
    return st.one_of(
        scalars,
        st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.dictionaries(st.text(max_size=6).map(json.dumps), inner, max_size=3).map(
            lambda d: "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"),
        st.tuples(inner, inner).map(lambda t: f"{t[0]} + {t[1]}"),
    )


ATTRS = st.sampled_from(["name", "srcs", "outs", "cmd", "tools", "env", "version", "requires",
                         "resources",
                         "secrets", "timeout", "tags", "deps", "script", "args", "visibility",
                         "bogus"])


@st.composite
def rule_call(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["genrule", "filegroup", "py_task", "exports_files", "glob",
                                 "feedback_loop", "load", "nonexistent"]))
    attrs = {"name": json.dumps(draw(NAMES))} if draw(st.booleans()) else {}
    for _ in range(draw(st.integers(0, 5))):
        attrs[draw(ATTRS)] = draw(starlark_value())
    if kind == "load":
        module = draw(st.sampled_from([":defs.bzl", "//pkg:defs.bzl", "@posbuild//rules:concat.bzl",
                                       ":nope.bzl", "x"]))
        symbol = draw(st.sampled_from(['"f"', '"concat"', '"zz"', 'g = "f"']))
        return f"load({json.dumps(module)}, {symbol})"
    return f"{kind}(" + ", ".join(f"{k} = {v}" for k, v in attrs.items()) + ")"


BOMBS = st.tuples(st.sampled_from(["(", "[", "{\"a\": ", "not ", "-", "lambda: ", "1 + ", "x.",
                                   "f(", "    "]),
                  st.integers(1, 4000))


@st.composite
def build_file(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(rule_call(), min_size=1, max_size=6))
    text = "\n".join(lines) + "\n"
    if draw(st.booleans()):
        text = (
            "def f(x):\n    if x:\n        return [x]\n    elif x == 1:\n        return None\n    "
            "return x\n") + text
    data = bytearray(text.encode("utf-8", "surrogateescape"))
    for _ in range(draw(st.integers(0, 4))):  # byte-level mutations
        where = draw(st.integers(0, len(data)))
        how = draw(st.integers(0, 3))
        if how == 0:
            data[where:where] = draw(st.binary(max_size=8))
        elif how == 1:
            del data[where:where + draw(st.integers(1, 20))]
        elif how == 2:
            data[where:where] = draw(st.sampled_from([b"(", b")", b"[", b"]", b'"', b"'''", b"\t",
                                                      b"\n  ", b"#",
                                                      b"\\", b"\xff", b"\xc3", b"\x00", b":", b"=",
                                                      b","]))
        else:
            piece, count = draw(BOMBS)
            data[where:where] = piece.encode() * count
    return bytes(data)


@fuzz(60)
@given(build=build_file(), bzl=st.one_of(st.none(), build_file()),
       command=st.sampled_from([("query", "//..."), ("build", "-n", "//..."),
                                ("build", "-n", "//pkg:a"), ("query", "deps(//pkg:all)")]))
def test_random_and_mutated_build_files(build: bytes, bzl: bytes | None,
                                        command: tuple[str, ...]) -> None:
    files: dict[str, bytes | str] = {"pkg/BUILD": build, "pkg/x.txt": "x\n",
                                     "other/BUILD": 'filegroup(name = "c")\n'}
    if bzl is not None:
        files["pkg/defs.bzl"] = bzl
    root = workspace(files)
    try:
        code, text = run_cli(root, *command)
        assert_clean(code, text, (build, bzl, command))
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- posbuild.toml --------------------------------------------------------------------------------

SAFE_PATHS = st.sampled_from(["", "cache", "sub/store", ".posbuild/other", "a\x00b", "ÿ", "c d",
                              "x" * 300])
KEYS = {
    "build": ["jobs", "build_file_names", "sandbox_base", "bogus"],
    "cache": ["dir", "max_size", "remote", "timeout", "upload", "bogus"],
    "env": ["pass", "tools", "bogus"],
    "resources": ["cpu", "mem_mb", "io", "bogus"],
    "sandbox": ["mode", "bogus"],
    "secrets": ["file"],
    "roles": ["dev", "ci"],
    "executor": ["kind"],
    "bogus": ["x"],
}
PATH_KEYS = {("cache", "dir"), ("build", "sandbox_base"), ("secrets", "file")}


def toml_value(depth: int = 2) -> st.SearchStrategy[str]:
    """TOML source text of a value of any TOML type."""
    scalars = st.one_of(
        st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1).map(str),
        st.floats().map(lambda f: "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf")
                        if math.isinf(f)
                        else repr(f)),
        st.booleans().map(lambda b: "true" if b else "false"),
        st.text(max_size=10).map(lambda s: json.dumps(s)),
        st.sampled_from(['"auto"', '"folder"', '"namespace"', '"local"', '"1G"', '"-5"', '"BUILD"',
                         '"//..."',
                         "1979-05-27T07:32:00Z", "07:32:00", '"http://127.0.0.1:9"', '"ftp://x"',
                         '""']),
    )
    if depth == 0:
        return scalars
    inner = toml_value(depth - 1)
    return st.one_of(
        scalars,
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.dictionaries(st.sampled_from(["build", "upload", "x"]), inner, max_size=2).map(
            lambda d: "{" + ", ".join(f"{k} = {v}" for k, v in d.items()) + "}"),
    )


@st.composite
def config_file(draw: st.DrawFn) -> bytes:
    lines = []
    for table in draw(st.lists(st.sampled_from(sorted(KEYS)), max_size=4, unique=True)):
        lines.append(f"[{table}]")
        for key in draw(st.lists(st.sampled_from(KEYS[table]), max_size=3, unique=True)):
            safe = (table, key) in PATH_KEYS
            value = json.dumps(draw(SAFE_PATHS)) if safe else draw(toml_value())
            if table == "executor":
                value = draw(st.sampled_from(['"local"', "1", '"dask"']))
            lines.append(f"{key} = {value}")
    data = bytearray("\n".join(lines).encode())
    if draw(st.integers(0, 4)) == 0:
        where = draw(st.integers(0, len(data)))
        data[where:where] = draw(st.binary(max_size=6))
    return bytes(data)


@fuzz(40)
@given(config=config_file(), command=st.sampled_from([("query", "//..."), ("build", "-n", "//..."),
                                                      ("gc", "--keep-generations", "1"),
                                                      ("env", "show"), ("log",), ("fsck",)]))
def test_random_posbuild_toml_values(config: bytes, command: tuple[str, ...]) -> None:
    if b"dask" in config and command[0] == "build":
        return  # an executor address would be dialled
    root = workspace({"posbuild.toml": config,
                      "pkg/BUILD": 'genrule(name = "a", outs = ["a.txt"], cmd = "echo")\n'})
    try:
        code, text = run_cli(root, *command)
        assert_clean(code, text, (config, command))
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- target patterns and query expressions
# ----------------------------------------------------------

PATTERN_CHARS = st.sampled_from(list("/:.*@-_+^()'\" \tabpkgx0129é") + ["...", "//", ":all",
                                                                        "\udcff", "\x00", "\n"])
PATTERNS = st.one_of(st.lists(PATTERN_CHARS, max_size=14).map("".join),
                     st.sampled_from(["//...", "//pkg:all", "//pkg/...", ":a", "a", "//pkg:a",
                                      "-//pkg:a"]))


@st.composite
def query_expr(draw: st.DrawFn, depth: int = 3) -> str:
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(PATTERNS)
    sub = lambda: draw(query_expr(depth - 1))  # noqa: E731
    form = draw(st.integers(0, 8))
    if form == 0:
        inner = sub()
        bound = draw(st.sampled_from(['', ', 1', ', 0', ', -1', ', 99999999999999999999', ', x']))
        return f"deps({inner}{bound})"
    if form == 1:
        return f"rdeps({sub()}, {sub()})"
    if form == 2:
        return f"allpaths({sub()}, {sub()})"
    if form == 3:
        regex = draw(st.sampled_from(["genrule", "(", "[a-", "*", "rule$", '"x', "\\"]))
        return f"kind({regex}, {sub()})"
    if form == 4:
        return (
            f"attr({draw(st.sampled_from(['cmd', 'tags', 'srcs', '', 'x y']))}, "
            f"{draw(st.text(max_size=5))}, {sub()})")
    if form == 5:
        left = sub()
        operator = draw(st.sampled_from(['+', '-', '^', 'union', 'except', 'intersect', '*']))
        return f"{left} {operator} {sub()}"
    if form == 6:
        return f"({sub()})"
    if form == 7:
        return draw(st.sampled_from(["(", ")", "deps(", "((((", ",", "'", "\"",
                                     "nope(//...)"])) + sub()
    piece, count = draw(st.tuples(st.sampled_from(["(", "deps(", " + //pkg:a"]),
                                  st.integers(1, 3000)))
    return piece * count + sub()


QUERY_WS = {
    "pkg/BUILD": 'genrule(name = "a", srcs = ["x.txt"], outs = ["a.txt"], cmd = "cat $< > $@", '
                 'tags = ["t"])\ngenrule(name = "b", srcs = [":a"], outs = ["b.txt"], cmd = "cat '
                 '$< > $@")\n',
    "pkg/x.txt": "x\n",
}


@pytest.fixture(scope="module")
def query_ws():  # type: ignore[no-untyped-def]
    root = workspace(QUERY_WS)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@fuzz(60)
@given(expr=query_expr(), output=st.sampled_from(["label", "json", "graph"]))
def test_random_query_expressions(query_ws: Path, expr: str, output: str) -> None:
    code, text = run_cli(query_ws, "query", expr, "--output", output)
    assert_clean(code, text, expr)


@fuzz(60)
@given(patterns=st.lists(PATTERNS, min_size=1, max_size=3),
       command=st.sampled_from([("build", "-n"), ("query",), ("log",), ("explain",), ("lock",),
                                ("build", "-n", "-k"), ()]))
def test_random_target_patterns(query_ws: Path, patterns: list[str],
                                command: tuple[str, ...]) -> None:
    takes_one = command in (("query",), ("log",), ("explain",))
    args = [*command, patterns[0]] if takes_one else [*command, *patterns]
    code, text = run_cli(query_ws, *args)
    assert_clean(code, text, args)


# -- damaged store and state files
# ------------------------------------------------------------------

BUILT_WS = {
    "pkg/BUILD": "".join(f'genrule(name = "t{i}", srcs = ["in.txt"], outs = ["t{i}.txt"], '
                         f'cmd = "cat $< > $@; echo {i} >> $@")\n' for i in range(6)),
    "pkg/in.txt": "input\n",
}


@pytest.fixture(scope="module")
def built_ws():  # type: ignore[no-untyped-def]
    """A workspace built twice (real subprocess builds), whose state the examples damage."""
    root = workspace(BUILT_WS)
    for _ in range(2):
        subprocess.run([*POSBUILD, "build", "-q", "//..."], cwd=root, check=True,
                       capture_output=True, timeout=120)
    subprocess.run([*POSBUILD, "lock", "//..."], cwd=root, check=True, capture_output=True,
                   timeout=120)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def state_files(root: Path) -> list[str]:
    found = []
    for folder in (root / ".posbuild", root / "posbuild-out"):
        found += sorted(p.relative_to(root).as_posix() for p in folder.rglob("*") if p.is_file())
    return found + ["posbuild.lock"]


@st.composite
def damage(draw: st.DrawFn, files: list[str]) -> tuple[str, str, bytes, int]:
    target = draw(st.sampled_from(files))
    how = draw(st.sampled_from(["truncate", "flip", "garbage", "empty", "folder", "delete",
                                "append"]))
    return target, how, draw(st.binary(min_size=1, max_size=64)), draw(st.integers(0, 1 << 20))


def apply_damage(root: Path, target: str, how: str, noise: bytes, at: int) -> None:
    path = root / target
    data = path.read_bytes() if path.is_file() else b""
    where = at % max(len(data), 1)
    if how == "truncate":
        path.write_bytes(data[:where])
    elif how == "flip":
        path.write_bytes(data[:where] + noise + data[where + len(noise):])
    elif how == "garbage":
        path.write_bytes(noise * (1 + len(data) // len(noise)))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "folder":
        path.unlink(missing_ok=True)
        path.mkdir()
    elif how == "delete":
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(data + noise)


COMMANDS = [("build", "//..."), ("build", "-n", "//..."), ("query", "//..."), ("log",),
            ("log", "--builds"),
            ("fsck",), ("fsck", "--repair"), ("gc",), ("explain", "//pkg:t1"), ("rollback",),
            ("env", "check")]
# LMDB trusts its pages: a garbled page can kill any reader with SIGBUS, which fsck (reading in a
# child process) finds and `fsck --repair` repairs; other commands are promised that only for a
# truncated file, which they detect before mapping it.
STORE_COMMANDS = [("fsck",), ("fsck", "--repair")]


@fuzz(30)
@given(data=st.data())
def test_damaged_store_and_state_files(built_ws: Path, data: st.DataObject) -> None:
    root = Path(tempfile.mkdtemp(prefix="fuzz-state-")) / "ws"
    shutil.copytree(built_ws, root, symlinks=True)
    try:
        target, how, noise, at = data.draw(damage(state_files(root)))
        apply_damage(root, target, how, noise, at)
        in_store = target.endswith("data.mdb") and how not in ("truncate", "empty", "delete")
        command = data.draw(st.sampled_from(STORE_COMMANDS if in_store else COMMANDS))
        code, text = run_cli(root, *command)
        assert_clean(code, text, (target, how, command))
        if command == ("fsck", "--repair"):
            again, text = run_cli(root, "fsck")
            assert_clean(again, text, (target, how, "fsck after repair"))
            # the store is fsck's to repair (a folder where the lock file was is not)
            if "/store/" in target:
                assert again in (0, 13, 16), text
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)

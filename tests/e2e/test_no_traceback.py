"""Inputs that printed Python tracebacks, through the real CLI: each is one `posbuild:` line with
its exit code. Non-UTF-8 arguments and file names, wrong values in posbuild.toml, a file where
the store folder belongs. (tests/e2e/test_fuzz_cli.py looks for more of the kind.)"""

from __future__ import annotations

import os

import pytest

from conftest import Result

GENRULE = 'genrule(name = "a", outs = ["a.txt"], cmd = "echo a > $@")\n'


def one_line(result: Result, code: int, *needles: str) -> str:
    assert result.returncode == code, (result.returncode, result.stdout[-2000:],
                                       result.stderr[-2000:])
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("posbuild: ")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args",
                         [("build", "//\xff:a"), ("query", "'//pkg:\xff'"), ("log", "//\xff"),
                                  ("explain", "//pkg:\xfe"), ("lock", "//\xff/..."),
                          ("//pkg:\xff",)])
def test_a_pattern_that_is_not_utf8_is_named_with_its_bytes(ws, args):
    ws.write({"pkg/BUILD": GENRULE})
    ws.ok("//...")
    raw = [os.fsdecode(arg.encode("latin-1")) for arg in args]  # the bytes a shell would pass
    line = one_line(ws.run(*raw), 3, "not UTF-8 text")
    assert "\\x" in line and "\\udc" not in line


def test_a_globbed_file_name_that_is_not_utf8_is_named_and_a_folder_so_named_holds_no_package(ws):
    ws.write({"pkg/BUILD": 'genrule(name = "g", srcs = glob(["*.txt"]), outs = ["g.out"], cmd = '
                           '"cat $(SRCS) > $@")\n',
              "pkg/ok.txt": "ok\n", "other/BUILD": GENRULE})
    odd = os.fsdecode(b"f\xff.txt")
    (ws.root / "pkg" / odd).write_text("odd\n")
    folder = ws.root / os.fsdecode(b"dir\xfe")
    folder.mkdir()
    (folder / "BUILD").write_text(GENRULE)
    one_line(ws.build("//..."), 3, "pkg/BUILD:1", "glob() matched 'f\\xff.txt'")
    built = ws.build("//other:a")
    assert built.returncode == 0, built.stderr
    (ws.root / "pkg" / odd).unlink()
    listed = ws.run("query", "//...")
    assert listed.returncode == 0 \
            and listed.stdout.split() == ["//other:a", "//pkg:g"], listed.stderr


@pytest.mark.parametrize("config, needle", [
    (b"[build]\njobs = 1\n\xff\n", "not UTF-8 text"),
    (b'[cache]\ndir = "a\\u0000b"\n', "[cache] dir must not contain a NUL character"),
    (b"[cache]\ntimeout = nan\n", "[cache] timeout must be a finite number"),
    (b"[build]\njobs = 99999999999999999999999\n", "[build] jobs must be a finite number"),
    (b'[build]\nbuild_file_names = ["BUILD", "x\\u0000"]\n',
     "build_file_names must not contain a NUL"),
    (b"[resources]\ncpu = inf\n", "[resources] cpu must be int"),
])
def test_wrong_values_in_posbuild_toml_are_one_line(ws, config, needle):
    ws.write({"pkg/BUILD": GENRULE})
    (ws.root / "posbuild.toml").write_bytes(config)
    for args in (("build", "//..."), ("query", "//..."), ("gc",)):
        one_line(ws.run(*args), 3, "posbuild.toml", needle)


@pytest.mark.parametrize("config, where, code, needle", [
    # the configuration is at fault
    ('[cache]\ndir = ".cache/store"\n', ".cache/store", 3, "not a folder"),
    ("", ".posbuild/store", 1, "a file"),
])
def test_a_file_where_the_store_folder_belongs_is_one_line(ws, config, where, code, needle):
    ws.write({"pkg/BUILD": GENRULE, "posbuild.toml": config})
    (ws.root / where).parent.mkdir(parents=True, exist_ok=True)
    (ws.root / where).write_text("not a folder\n")
    one_line(ws.build("//..."), code, where, needle)
    one_line(ws.build("//pkg:a"), code, where, needle)
    assert (ws.root / where).read_text() == "not a folder\n"

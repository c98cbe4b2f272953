"""Every bad input is one `posbuild: ...` line with its DESIGN §8 exit code, and changes nothing on
disk."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import msgpack
import pytest

from conftest import POSBUILD, Workspace

GOOD = {
    "good/in.txt": "hello\n",
    "good/BUILD": 'genrule(name = "report", srcs = ["in.txt"], outs = ["report.txt"], cmd = "tr '
                  'a-z A-Z < $< > $@")\n',
}


def snapshot(root: Path) -> dict[str, object]:
    """posbuild-out/ bytes and modes, and the files of the store (with the rows of its database)."""
    out: dict[str, object] = {}
    base = root / "posbuild-out"
    for path in sorted(base.rglob("*")) if base.exists() else []:
        rel = str(path.relative_to(base))
        mode = path.stat().st_mode
        out[rel] = (mode, path.read_bytes() if path.is_file() else None)
    store: dict[str, object] = {}
    store_dir = root / ".posbuild" / "store"
    for path in sorted(store_dir.rglob("*")):
        rel = str(path.relative_to(store_dir))
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() \
            and path.name != "lock.mdb" else None
        store[rel] = _rows(store_dir / "db") if path.name == "data.mdb" else digest
    return {"out": out, "store": store}


def _rows(db: Path) -> dict[str, object]:
    """Every row of every named database but the record chain's head, which a refused build
    moves."""
    import lmdb

    env = lmdb.open(str(db), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            names = [bytes(name) for name, _ in txn.cursor()]
            rows: dict[str, object] = {}
            for name in names:
                items = txn.cursor(db=env.open_db(name, txn=txn))
                rows[name.decode()] = [(k, v) for k, v in items
                                       if (name, k) != (b"meta", b"records")]
            return rows
    finally:
        env.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One workspace with a good target built, copied by every test that needs one (saves a build
    each)."""
    root = tmp_path_factory.mktemp("template") / "ws"
    root.mkdir()
    (root / "posbuild.toml").write_text("")
    ws = Workspace(root)
    ws.write(GOOD)
    ws.ok("//...")
    assert ws.out("good/report.txt") == "HELLO\n"
    return root


@pytest.fixture
def built(ws, template):
    """A workspace with one good target already built, and the snapshot taken after it."""
    shutil.copytree(template, ws.root, dirs_exist_ok=True)
    before = snapshot(ws.root)
    assert before["out"]["good/report.txt"][1] == b"HELLO\n"
    assert before["store"], "the good build left no store"
    return ws, before


def one_error_line(result, exit_code: int) -> str:
    """The single stderr line (without `posbuild: `), after checking the exit code and stdout."""
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("posbuild: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0][len("posbuild: "):]


def bad_build(built, files: dict[str, str], *patterns: str, exit_code: int = 3) -> str:
    """Write `files` into the built workspace, build `patterns`, check the error and the unchanged
    disk."""
    ws, before = built
    ws.write(files)
    result = ws.build(*(patterns or ("//...",)))
    message = one_error_line(result, exit_code)
    assert result.stdout == ""
    after = snapshot(ws.root)
    # refused by a critical error: the attempt is recorded, nothing else
    if exit_code in range(11, 18):
        builds = after["store"]["db/data.mdb"]["builds"]  # type: ignore[index]
        row = msgpack.unpackb(builds.pop()[1])
        assert (row["status"], row["error"]) == ("refused", f"ORCH-0{exit_code - 10}")
    assert after == before
    return message


# --- BUILD files --------------------------------------------------------------------------------


def test_syntax_error_names_file_and_line(built):
    message = bad_build(
        built, {"p/BUILD": 'x = 1\n\ngenrule(name = "a", outs = ["a"], cmd = "x"\ny = 2\n'})
    assert message == "p/BUILD:4:1: Parse error: unexpected identifier 'y' here"


def test_evaluation_error_names_file_and_line(built):
    message = bad_build(built, {"p/BUILD": "x = 1\ny = undefined_var + x\n"})
    assert message == "p/BUILD:2:5: Variable `undefined_var` not found"


def test_rule_error_inside_bzl_macro_names_the_bzl_line(built):
    message = bad_build(built, {
        "tools/BUILD": "",
        "tools/macros.bzl": 'def my_macro(name):\n    x = 1\n    genrule(name = name, outs = '
                            '["o"], cmd = "c", bogus = x)\n',
        "p/BUILD": 'load("//tools:macros.bzl", "my_macro")\nmy_macro(name = "z")\n',
    })
    assert message.startswith(
        "tools/macros.bzl:3:5: genrule 'z': unknown attribute 'bogus' (known: "
        "allow_secret_in_output, cmd, ")


def test_evaluation_error_inside_bzl_macro_names_a_file_and_line(built):
    message = bad_build(built, {
        "tools/BUILD": "",
        "tools/macros.bzl": "def my_macro(name):\n    return name + 1\n",
        "p/BUILD": 'load("//tools:macros.bzl", "my_macro")\n\nmy_macro(name = "z")\n',
    })
    # starlark-pyo3 reports only the outermost frame: the call site in the BUILD file.
    assert message == "p/BUILD:3:1: Operation `+` not supported for types `string` and `int`"


def test_syntax_error_inside_bzl_is_one_clean_message(built):
    message = bad_build(built, {
        "tools/BUILD": "",
        "tools/bad.bzl": "def f(:\n    pass\n",
        "p/BUILD": 'load("//tools:bad.bzl", "f")\n',
    })
    assert message == "tools/bad.bzl:1:7: Parse error: unexpected symbol ':' here"


def test_load_of_missing_bzl_names_the_workspace_path(built):
    message = bad_build(built, {"tools/BUILD": "", "p/BUILD": 'load("//tools:nope.bzl", "f")\n'})
    assert message == "p/BUILD:1:1: cannot load '//tools:nope.bzl': no file tools/nope.bzl"


def test_load_of_missing_library_file_names_no_internal_path(built):
    message = bad_build(built, {"p/BUILD": 'load("@posbuild//rules:copy.bzl", "copy_file")\n'})
    assert message == ("p/BUILD:1:1: cannot load '@posbuild//rules:copy.bzl': the standard library "
                       "has no copy.bzl (did you mean 'copy_file.bzl'?)")


def test_load_of_a_missing_symbol_suggests_one(built):
    message = bad_build(built, {"p/BUILD": 'load("@posbuild//rules:copy_file.bzl", "copyfile")\n'})
    assert message == "p/BUILD:1:40: Module has no symbol `copyfile`, did you mean `copy_file`?"


def test_syntax_error_at_the_end_names_the_bracket_never_closed(built):
    message = bad_build(built,
                        {"p/BUILD": 'x = 1\n\ngenrule(name = "a",\n        outs = ["a"]\n\n'})
    assert message == "p/BUILD:3:8: Parse error: '(' is never closed"


def test_syntax_error_at_the_end_names_the_last_line(built):
    message = bad_build(built, {"p/BUILD": 'x = 1\n\ndef f():\n'})
    assert message == "p/BUILD:3: Parse error: unexpected end of file"


def test_syntax_error_at_the_end_of_a_bzl_file(built):
    message = bad_build(built, {"tools/BUILD": "", "tools/m.bzl": "def f(\n    x,\n",
                                "p/BUILD": 'load("//tools:m.bzl", "f")\n'})
    assert message == "tools/m.bzl:1:6: Parse error: '(' is never closed"


def test_a_build_file_saved_with_a_byte_order_mark_loads(ws):
    ws.write({"p/in.txt": "x"})
    (ws.root / "p" / "BUILD").write_bytes(
        b'\xef\xbb\xbfgenrule(name = "a", srcs = ["in.txt"], outs = ["a"], cmd = "cp $< $@")\r\n')
    ws.ok("//p:a")
    assert ws.out("p/a") == "x"


def test_a_build_file_that_is_not_utf8_names_the_line(built):
    ws, _ = built
    (ws.root / "p").mkdir()
    (ws.root / "p" / "BUILD").write_bytes(
        b'x = 1\ngenrule(name = "a", outs = ["a"], cmd = "echo \xe9 > $@")\n')
    result = ws.build("//...")
    assert one_error_line(result, 3) == "p/BUILD:2:47: not UTF-8 text (byte 0xe9)"


def test_a_tab_in_the_indentation_names_its_own_line(built):
    # starlark places this error at the end of the line before; the user looks for the tab
    message = bad_build(
        built, {"p/BUILD": 'x = 1\nif x:\n\tgenrule(name = "a", outs = ["a"], cmd = "c")\n'})
    assert message == "p/BUILD:3:1: Parse error: tabs are not allowed"


def test_a_tab_in_the_indentation_of_a_bzl_file_names_its_own_line(built):
    message = bad_build(built,
                        {"tools/BUILD": "", "tools/m.bzl": "def f():\n    x = 1\n  \ty = 2\n",
                                "p/BUILD": 'load("//tools:m.bzl", "f")\n'})
    assert message == "tools/m.bzl:3:3: Parse error: tabs are not allowed"


@pytest.mark.parametrize("call, detail", [
    ('copy_file(name = "c", src = "in.txt", out = 3)', "copy_file 'c': 'out' must be a file name"),
    ('copy_file(name = "c", src = "in.txt", out = "../c")',
     "genrule 'c': output '../c' must be a relative path inside the package, without '.', '..' or "
     "empty parts"),
    ('copy_file(name = "c", src = "in.txt", out = "c.txt", colour = 1)',
     "genrule 'c': unknown attribute 'colour'"),
])
def test_error_inside_a_library_macro_names_the_build_line(built, call, detail):
    message = bad_build(built, {"p/in.txt": "x", "p/BUILD": (
        'load("@posbuild//rules:copy_file.bzl", "copy_file")\n\n' + call + "\n")})
    assert message.startswith(f"p/BUILD:3: {detail}")
    assert "@posbuild" not in message and ".bzl" not in message


def test_a_source_must_be_a_file_or_a_link_to_one(built):
    ws, _ = built
    (ws.root / "p/data").mkdir(parents=True)
    (ws.root / "p/data/real.txt").write_text("real\n")
    (ws.root / "p/data/linked.txt").symlink_to("real.txt")
    (ws.root / "p/data/dangling.txt").symlink_to("nowhere.txt")
    (ws.root / "p/data/folder.txt").mkdir()
    rule = 'genrule(name = "a", srcs = ["data/{}"], outs = ["a.txt"], cmd = "cat $< > $@")\n'
    for name in ("dangling.txt", "folder.txt", "missing.txt"):
        message = bad_build(built, {"p/BUILD": rule.format(name)}, "//p:a")
        assert message == (f"p/BUILD:1: //p:a: srcs entry 'data/{name}': no such target or "
                           f"source file '//p:data/{name}'"), message
    ws.write({"p/BUILD": rule.format("linked.txt")})
    result = ws.build("//p:a")
    assert result.returncode == 0, result.stderr
    assert ws.out("p/a.txt") == "real\n"


def test_unknown_label_in_srcs_suggests_a_close_name(built):
    message = bad_build(built, {"p/BUILD": (
        'genrule(name = "b", outs = ["b.txt"], cmd = "echo > $@")\n'
        'genrule(name = "a", srcs = [":bb"], outs = ["a.txt"], cmd = "cat $< > $@")\n'
    )})
    assert message == (
        "p/BUILD:2: //p:a: srcs entry ':bb': no such target or source file '//p:bb' (did you mean "
        "'b'?)")


def test_malformed_label_in_srcs(built):
    message = bad_build(
        built, {"p/BUILD": 'genrule(name = "a", srcs = ["//p:x:y"], outs = ["a"], cmd = "c")\n'})
    assert message == (
        "p/BUILD:1: //p:a: srcs entry '//p:x:y': invalid label '//p:x:y': bad target name 'x:y'")


def test_an_env_name_that_no_environment_can_hold(built):
    # exec would have passed "A=B=1", which a command reads as A set to "B=1"
    message = bad_build(built, {"p/BUILD": (
        'genrule(name = "a", outs = ["a.txt"], env = {"A=B": "1"}, cmd = "env > $@")\n')})
    assert message == "p/BUILD:1:1: genrule: attribute 'env': 'A=B' is not an environment " \
                      "variable name"


@pytest.mark.parametrize("name, attributes", [
    ("cmd", 'cmd = "echo a\\x00b > $@"'),
    ("env", 'cmd = "echo > $@", env = {"X": "a\\x00b"}'),
    ("tools", 'cmd = "echo > $@", tools = ["a\\x00b"]'),
])
def test_a_nul_character_where_no_command_can_pass_one(built, name, attributes):
    message = bad_build(built, {"p/BUILD": (
        f'genrule(name = "a", outs = ["a.txt"], {attributes})\n')})
    assert message.startswith(f"p/BUILD:1:1: genrule: attribute '{name}' holds a NUL character")
    assert message.endswith("which no path, command line or environment can pass")


def test_duplicate_target_name(built):
    message = bad_build(built, {"p/BUILD": (
        'genrule(name = "a", outs = ["a.txt"], cmd = "c")\n'
        'genrule(name = "a", outs = ["b.txt"], cmd = "c")\n'
    )})
    assert message == "p/BUILD:2:1: duplicate target name 'a' in package '//p'"


def test_output_declared_by_two_targets(built):
    message = bad_build(built, {"p/BUILD": (
        'genrule(name = "a", outs = ["same.txt"], cmd = "c")\n'
        'genrule(name = "b", outs = ["same.txt"], cmd = "c")\n'
    )})
    assert message == "p/BUILD:2:1: output 'same.txt' of //p:b is already an output of //p:a"


def test_output_named_like_an_earlier_target(built):
    message = bad_build(built, {"p/BUILD": (
        'genrule(name = "a", outs = ["a.txt"], cmd = "c")\n'
        'genrule(name = "b", outs = ["a"], cmd = "c")\n'
    )})
    assert message == "p/BUILD:2:1: output 'a' of //p:b conflicts with the target //p:a"


def test_target_named_like_an_earlier_output(built):
    message = bad_build(built, {"p/BUILD": (
        'genrule(name = "a", outs = ["b"], cmd = "c")\n'
        'genrule(name = "b", outs = ["b.txt"], cmd = "c")\n'
    )})
    assert message == "p/BUILD:2:1: target name 'b' conflicts with output 'b' of //p:a"


def test_bad_attribute_type(built):
    message = bad_build(built, {"p/BUILD": 'genrule(name = "a", outs = "x", cmd = "c")\n'})
    assert message == (
        "p/BUILD:1:1: genrule: attribute 'outs' must be a list of non-empty strings, got str")


def test_unknown_attribute(built):
    message = bad_build(built,
                        {"p/BUILD": 'genrule(name = "a", outs = ["x"], cmd = "c", colour = 1)\n'})
    assert message == (
        "p/BUILD:1:1: genrule 'a': unknown attribute 'colour' (known: allow_secret_in_output, cmd, "
        "env, host_tools, message, out_dirs, outs, requires, "
        "resources, secrets, srcs, tags, timeout, tools, version, visibility)"
    )


def test_missing_required_attribute(built):
    message = bad_build(built, {"p/BUILD": 'genrule(name = "a", outs = ["x"])\n'})
    assert message == "p/BUILD:1:1: genrule 'a': missing required attribute 'cmd'"


def test_a_rule_declared_at_the_top_level_of_a_bzl_file_is_refused(built):
    message = bad_build(built, {
        "tools/BUILD": "",
        "tools/m.bzl": 'genrule(name = "sneaky", outs = ["s.txt"], cmd = "echo > $@")\ndef f():\n  '
                       '  pass\n',
        "p/BUILD": 'load("//tools:m.bzl", "f")\n',
    })
    assert message == (
        "tools/m.bzl:1:1: rules can only be declared while a BUILD file is evaluated, not at load "
        "time")


def test_fail_in_a_workspace_macro_names_the_bzl_line_and_the_call(built):
    message = bad_build(built, {
        "tools/BUILD": "",
        "tools/m.bzl": 'def f(name):\n    fail("no good: " + name)\n',
        "p/BUILD": 'load("//tools:m.bzl", "f")\n\nf(name = "z")\n',
    })
    assert message == "tools/m.bzl:2:5: no good: z (called from p/BUILD:3)"


def test_a_library_error_through_a_workspace_macro_names_the_macro_line_and_the_call(built):
    message = bad_build(built, {
        "p/in.txt": "x",
        "tools/BUILD": "",
        "tools/m.bzl": ('load("@posbuild//rules:copy_file.bzl", "copy_file")\n'
                        'def cp(name):\n    copy_file(name = name, src = "in.txt", out = 3)\n'),
        "p/BUILD": 'load("//tools:m.bzl", "cp")\n\ncp(name = "z")\n',
    })
    assert message == (
        "tools/m.bzl:3: copy_file 'z': 'out' must be a file name (called from p/BUILD:3)")


def test_a_missing_macro_argument_names_the_macro_not_its_module(built):
    message = bad_build(
        built, {"p/BUILD": 'load("@posbuild//rules:concat.bzl", "concat")\nconcat(name = "c")\n'})
    assert message == "p/BUILD:2:1: Missing parameter `srcs` for call to `concat`"


def test_invalid_target_name(built):
    message = bad_build(built, {"p/BUILD": 'genrule(name = "a/../b", outs = ["x"], cmd = "c")\n'})
    assert message == ("p/BUILD:1:1: genrule(): invalid target name 'a/../b' (it may not hold ':', "
                       "start with '/' or have '.', '..' or empty parts)")


def test_an_empty_string_in_a_list_attribute_is_named(built):
    message = bad_build(built, {"p/BUILD": 'genrule(name = "a", outs = ["ok", ""], cmd = "c")\n'})
    assert message == (
        "p/BUILD:1:1: genrule: attribute 'outs' must be a list of non-empty strings, but it holds "
        "''")


# --- cmd substitutions --------------------------------------------------------------------------


def test_unknown_make_variable_in_cmd(built):
    message = bad_build(
        built, {"p/BUILD": 'genrule(name = "a", outs = ["x"], cmd = "echo $(FOO) > $@")\n'})
    assert message == (
        "p/BUILD:1: //p:a: cmd: unknown variable '$(FOO)' (write '$$' for a literal '$', or set "
        "FOO in [vars] of posbuild.toml or with --define)")


def test_location_without_a_label(built):
    message = bad_build(
        built, {"p/BUILD": 'genrule(name = "a", outs = ["x"], cmd = "echo $(location) > $@")\n'})
    assert message == (
        "p/BUILD:1: //p:a: cmd: $(location) needs a label, as in $(location //pkg:name)")


def test_first_src_shorthand_with_two_srcs(built):
    message = bad_build(built, {
        "p/s1.txt": "1", "p/s2.txt": "2",
        "p/BUILD": 'genrule(name = "a", srcs = ["s1.txt", "s2.txt"], outs = ["x"], cmd = "cat $< > '
                   '$@")\n',
    })
    assert message == "p/BUILD:1: //p:a: cmd: $< needs exactly one file, but there are 2"


def test_single_out_shorthand_with_two_outs(built):
    message = bad_build(built,
                        {"p/BUILD": 'genrule(name = "a", outs = ["x", "y"], cmd = "touch $@")\n'})
    assert message == "p/BUILD:1: //p:a: cmd: $@ needs exactly one file, but there are 2"


def test_location_of_a_label_not_in_srcs(built):
    message = bad_build(built, {
        "p/other.txt": "o",
        "p/BUILD": 'genrule(name = "a", outs = ["x"], cmd = "cat $(location other.txt) > $@")\n',
    })
    assert message == (
        "p/BUILD:1: //p:a: cmd: $(location other.txt): 'other.txt' is not in srcs, tools or outs")


# --- the command line ---------------------------------------------------------------------------


def test_unknown_target_on_command_line_suggests_a_close_name(built):
    assert bad_build(built, {},
                     "//good:reprt") == ("no such target '//good:reprt' (did you mean 'report'?)")


def test_no_such_package(built):
    assert bad_build(built, {}, "//goo:report") == "no such package '//goo' (did you mean 'good'?)"


def test_no_such_package_with_all(built):
    assert bad_build(built, {}, "//nowhere:all") == "no such package '//nowhere'"


@pytest.mark.parametrize("command, pattern", [
    ("build", "//.ci:a"), ("build", "//.ci:all"), ("build", "//p:b"), ("query", "//.ci:a"),
    ("query", "//.ci:all"),
])
def test_a_package_in_a_hidden_folder_is_named_as_such(built, command, pattern):
    ws, _ = built
    ws.write({".ci/BUILD": 'genrule(name = "a", outs = ["a"], cmd = "echo > $@")\n',
              "p/BUILD": 'genrule(name = "b", srcs = ["//.ci:a"], outs = ["b"], cmd = "cat $< > '
                         '$@")\n'})
    message = one_error_line(ws.run(command, pattern), 3)
    assert message.endswith("no such package '//.ci': posbuild does not look for packages in "
                            "hidden folders, posbuild-out, .posbuild or __pycache__")


def test_recursive_pattern_that_matches_nothing(built):
    assert bad_build(built, {}, "//nowhere/...") == "pattern '//nowhere/...' matches no targets"


def test_package_without_targets_matches_nothing(built):
    message = bad_build(built, {"empty/BUILD": "x = 1\n"}, "//empty:all")
    assert message == "pattern '//empty:all' matches no targets"


def test_malformed_label_on_command_line(built):
    assert bad_build(built, {},
                     "//good:a:b") == ("invalid target pattern '//good:a:b': bad target name 'a:b'")


@pytest.mark.parametrize("pattern, detail", [
    ("///", "bad package path '/'"),
    ("//", "the root package needs ':name'"),
    ("//:", "empty target name"),
    ("//good:", "empty target name"),
    ("//good//x", "bad package path 'good//x'"),
    ("@repo//good:report", "external repositories are only for load()"),
    ("//good/.../x", "'...' must end the pattern"),
])
def test_invalid_target_pattern(built, pattern, detail):
    assert bad_build(built, {}, pattern) == f"invalid target pattern '{pattern}': {detail}"


def test_invalid_target_pattern_with_the_shorthand(built):
    ws, before = built
    assert one_error_line(ws.run("///"), 3) == "invalid target pattern '///': bad package path '/'"
    assert snapshot(ws.root) == before


@pytest.mark.parametrize("command", ["watch", "verify", "lock", "query"])
def test_every_command_calls_a_malformed_pattern_an_invalid_target_pattern(built, command):
    ws, before = built
    result = ws.run(command, "///", timeout=30)
    assert one_error_line(result, 3).endswith("invalid target pattern '///': bad package path '/'")
    assert snapshot(ws.root) == before


def test_a_bare_name_at_a_root_without_build_file_suggests_the_package(built):
    message = bad_build(built, {}, "good")
    assert message == (
        "no such target '//:good': the workspace root has no BUILD file (did you mean "
        "'//good:all'?)")


def test_a_package_path_as_a_name_suggests_the_package(built):
    message = bad_build(
        built, {"BUILD": 'genrule(name = "top", outs = ["top.txt"], cmd = "echo > $@")\n'}, "good")
    assert message == "no such target '//:good' (did you mean '//good:all'?)"


def test_recursive_pattern_with_all_suffix_builds(built):
    ws, _ = built
    result = ws.ok("//good/...:all")
    assert "1 action " in result.stdout


def test_one_bad_pattern_among_good_ones_builds_nothing(built):
    assert bad_build(built, {}, "//good:report", "//good:nope") == "no such target '//good:nope'"


@pytest.mark.parametrize("args, word", [
    (["build", "-j", "0"], "-j"),
    (["build", "--no-such-option"], "--no-such-option"),
    (["no-such-command"], "no-such-command"),
])
def test_usage_error_is_one_line(built, args, word):
    ws, before = built
    result = ws.run(*args)
    assert word in one_error_line(result, 2)
    assert snapshot(ws.root) == before


@pytest.mark.parametrize("label, detail", [
    ("//...", "explain takes one target label, not the pattern '//...'"),
    ("//good:all", "explain takes one target label, not the pattern '//good:all'"),
    ("//good:inputs",
     "//good:inputs is a filegroup, which runs no action; explain a rule it names: //good:report"),
    ("//good:report.txt", "//good:report.txt is an output of //good:report; explain //good:report"),
    ("//good:in.txt", "//good:in.txt is a source file, which no action produces"),
    ("//good:reprt", "no such target '//good:reprt' (did you mean 'report'?)"),
    ("//goo:report", "no such package '//goo' (did you mean 'good'?)"),
])
def test_explain_of_what_runs_no_action_says_so(built, label, detail):
    ws, before = built
    ws.write(
        {"good/BUILD": GOOD["good/BUILD"] + 'filegroup(name = "inputs", srcs = [":report"])\n'})
    assert one_error_line(ws.run("explain", label), 2) == detail
    assert snapshot(ws.root) == before


# --- the workspace ------------------------------------------------------------------------------


def test_missing_posbuild_toml(tmp_path):
    folder = tmp_path / "nows" / "sub"
    folder.mkdir(parents=True)
    assert not any((p / "posbuild.toml").exists() for p in (folder, *folder.parents))
    proc = subprocess.run([*POSBUILD, "build", "//..."], cwd=folder, capture_output=True, text=True,
                          timeout=60)
    message = one_error_line(proc, 2)
    assert message == (
        f"no posbuild.toml found in {folder} or any folder above it; "
        "create one (it may be empty) to mark the workspace root"
    )
    assert sorted(p.name for p in (tmp_path / "nows").rglob("*")) == ["sub"]


def test_malformed_posbuild_toml(built):
    ws, _ = built
    message = bad_build(built, {"posbuild.toml": "[build\njobs = 2\n"})
    assert message == (
        f"{ws.root}/posbuild.toml: Expected ']' at the end of a table declaration (at line 1, "
        "column 7)")


def test_wrongly_typed_posbuild_toml_value(built):
    ws, _ = built
    message = bad_build(built, {"posbuild.toml": '[build]\njobs = "many"\n'})
    assert message == f"{ws.root}/posbuild.toml: [build] jobs must be int, got str 'many'"


@pytest.mark.parametrize("toml, detail", [
    ("[resouces]\ncpu = 1\n", "unknown table [resouces]; did you mean [resources]?"),
    ("[bulid]\njobs = 2\n", "unknown table [bulid]; did you mean [build]?"),
    ("[zzz]\n",
     "unknown table [zzz] (known: build, cache, env, executor, python, resources, roles, "
     "sandbox, secrets, vars)"),
    ("[build]\njbos = 2\n",
     "[build] has unknown key 'jbos' (known: build_file_names, default_visibility, jobs, "
     "sandbox_base, server, server_idle); did you mean "
     "'jobs'?"),
    ("[cache]\nmax-size = '1G'\n",
     "[cache] has unknown key 'max-size' (known: dir, max_size, remote, timeout, upload); did you "
     "mean 'max_size'?"),
    ("[env]\npas = ['X']\n",
     "[env] has unknown key 'pas' (known: pass, tools); did you mean 'pass'?"),
    ("[sandbox]\nmod = 'folder'\n",
     "[sandbox] has unknown key 'mod' (known: mode); did you mean 'mode'?"),
    ("[secrets]\nfiles = '/x'\n",
     "[secrets] has unknown key 'files' (known: file); did you mean 'file'?"),
    ("[executor]\nadress = 'x'\n",
     "[executor] has unknown key 'adress' (known: address, kind); did you mean 'address'?"),
    ("[resources]\ncpus = 1\n",
     "[resources] has unknown key 'cpus' (known: cpu, mem_mb, io); did you mean 'cpu'?"),
    ("[roles.dev]\nbuidl = ['//...']\n",
     "[roles.dev] has unknown key 'buidl' (known: build, upload); did you mean 'build'?"),
    ("jobs = 2\n", "'jobs' is outside any table; did you mean [build] jobs?"),
    ("colour = 2\n",
     "'colour' is outside any table (known tables: build, cache, env, executor, python, "
     "resources, roles, sandbox, secrets, vars)"),
])
def test_unknown_table_or_key_in_posbuild_toml(built, toml, detail):
    ws, _ = built
    assert bad_build(built, {"posbuild.toml": toml}) == f"{ws.root}/posbuild.toml: {detail}"


@pytest.mark.parametrize("toml, detail", [
    ("[build]\nbuild_file_names = []\n", "[build] build_file_names must name at least one file"),
    ("[build]\nbuild_file_names = ['pkg/BUILD']\n",
     "[build] build_file_names: 'pkg/BUILD' must be a file name, without '/'"),
    ("[env]\npass = ['FOO=1']\n",
     "[env] pass: 'FOO=1' is not an environment variable name (pass names a variable of posbuild's "
     "environment; a value is set in a rule's env)"),
])
def test_a_setting_that_could_only_mislead_is_refused(built, toml, detail):
    ws, _ = built
    assert bad_build(built, {"posbuild.toml": toml}) == f"{ws.root}/posbuild.toml: {detail}"


# --- cycles -------------------------------------------------------------------------------------


def test_cycle_is_reported_with_its_path_and_nothing_runs(ws, tmp_path):
    marker = tmp_path / "marker"
    touch = f"touch {marker}; echo x > $@"
    ws.write({"p/BUILD": (
        f'genrule(name = "free", outs = ["free.txt"], cmd = "{touch}")\n'
        f'genrule(name = "a", srcs = [":b"], outs = ["a.txt"], cmd = "{touch}")\n'
        f'genrule(name = "b", srcs = [":c"], outs = ["b.txt"], cmd = "{touch}")\n'
        f'genrule(name = "c", srcs = [":a"], outs = ["c.txt"], cmd = "{touch}")\n'
    )})
    result = ws.build("//...")
    assert one_error_line(result, 11) == (
        "ORCH-01 DAG cycle detected: //p:a (p/BUILD:2) -> //p:b (p/BUILD:3) -> //p:c (p/BUILD:4) "
        "-> //p:a")
    assert result.stdout == ""
    assert not marker.exists()
    out = ws.root / "posbuild-out"
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_cycle_through_an_output_file_label_across_packages(built):
    message = bad_build(built, {
        "x/BUILD": 'genrule(name = "x", srcs = ["//y:y.txt"], outs = ["x.txt"], '
                   'cmd = "cp $< $@")\n',
        "y/BUILD": 'genrule(name = "y", srcs = ["//x:x.txt"], outs = ["y.txt"], '
                   'cmd = "cp $< $@")\n',
    }, "//x:x", exit_code=11)
    assert message == "ORCH-01 DAG cycle detected: //x:x (x/BUILD:1) -> //y:y (y/BUILD:1) -> //x:x"


def test_self_cycle(built):
    message = bad_build(built, {
        "p/BUILD": 'genrule(name = "a", srcs = ["a.txt"], outs = ["a.txt"], cmd = "cp $< $@")\n',
    }, "//p:a", exit_code=11)
    assert message == "ORCH-01 DAG cycle detected: //p:a (p/BUILD:1) -> //p:a"


def test_cycle_through_a_macro_names_the_call_line(built):
    message = bad_build(built, {
        "tools/BUILD": "",
        "tools/m.bzl": 'def pair(name, src):\n    genrule(name = name + "_gen", srcs = [src], outs '
                       '= [name + ".txt"], cmd = "c")\n',
        "p/BUILD": 'load("//tools:m.bzl", "pair")\n\npair(name = "a", src = ":b_gen")\npair(name = '
                   '"b", src = ":a_gen")\n',
    }, "//p:a_gen", exit_code=11)
    assert message == (
        "ORCH-01 DAG cycle detected: //p:a_gen (p/BUILD:3) -> //p:b_gen (p/BUILD:4) -> //p:a_gen")


def test_a_cycle_of_targets_made_in_a_loop_names_the_loop_line(built):
    message = bad_build(built, {"p/BUILD": (
        'x = 1\n\n[genrule(name = "t%d" % i, srcs = [":t%d" % (1 - i)], outs = ["t%d.txt" % i], '
        'cmd = "c")\n for i in range(2)]\n')}, "//p:t0", exit_code=11)
    assert message == (
        "ORCH-01 DAG cycle detected: //p:t0 (p/BUILD:3) -> //p:t1 (p/BUILD:3) -> //p:t0")


def test_an_error_of_a_target_made_by_a_macro_with_a_computed_name_names_the_call(built):
    message = bad_build(built, {
        "tools/BUILD": "",
        "tools/m.bzl": 'def step(n):\n    genrule(name = "step%d" % n, srcs = [":in%d" % n], outs '
                       '= ["s%d" % n], cmd = "c")\n',
        "p/BUILD": 'load("//tools:m.bzl", "step")\n\nstep(1)\nstep(\n    2,\n)\n',
    }, "//p:step2")
    assert message.startswith("p/BUILD:4: //p:step2: srcs entry ':in2': no such target")


def test_version_mismatch_names_the_consumer_line(built):
    message = bad_build(built, {"p/BUILD": (
        'genrule(name = "a", outs = ["a.txt"], cmd = "c", version = {"s": "1"})\n\n'
        'genrule(\n    name = "b",\n    srcs = [":a"],\n    requires = {":a": {"s": "2"}},\n'
        '    outs = ["b.txt"],\n    cmd = "c",\n)\n'
    )}, exit_code=12)
    assert message == (
        "ORCH-02 version mismatch: p/BUILD:4: //p:b requires //p:a s=2, but //p:a declares s=1")


# --- a failing action ---------------------------------------------------------------------------


def test_failed_action_exits_1_and_names_it(built):
    ws, before = built
    ws.write(
        {"p/BUILD": 'genrule(name = "bad", outs = ["bad.txt"], cmd = "echo oops >&2; exit 3")\n'})
    result = ws.build("//...")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "posbuild: 1 action failed: //p:bad"
    assert "oops" in result.stderr
    assert not (ws.root / "posbuild-out/p/bad.txt").exists()
    assert snapshot(ws.root)["out"] == before["out"]

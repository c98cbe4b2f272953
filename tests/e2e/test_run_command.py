"""`posbuild run LABEL -- ARGS`: build an sh_binary or py_binary with its data and deps, then run
it in the caller's folder with the terminal's stdin/stdout/stderr and its exit code; a target
that is not executable is a usage error."""

from __future__ import annotations

import subprocess

from conftest import POSBUILD, Workspace

TOOLS = {
    "posbuild.toml": "",
    "tools/BUILD": """
        genrule(name = "table", outs = ["table.txt"], cmd = "echo 'a 1' > $@")
        sh_binary(name = "show", srcs = ["show.sh"], data = [":table"],
                  args = ["$(location :table)"], env = {"GREETING": "hi"})
        py_binary(name = "count", srcs = ["count.py"], deps = ["textlib.py"])
    """,
    "tools/show.sh": """
        echo "args: $*"
        echo "cwd: $(pwd)"
        echo "workspace: $POSBUILD_WORKSPACE_DIRECTORY $BUILD_WORKSPACE_DIRECTORY"
        echo "greeting: $GREETING"
        cat "$1"
        read line
        echo "stdin: $line"
        echo "to stderr" >&2
        exit 7
    """,
    "tools/count.py": """
        import sys
        import textlib
        print(textlib.words(sys.argv[1:]))
    """,
    "tools/textlib.py": """
        def words(args):
            return f"{len(args)} words"
    """,
}


def test_run_builds_the_tool_and_runs_it_where_the_user_is(ws: Workspace) -> None:
    ws.write(TOOLS)
    here = ws.root / "somewhere"
    here.mkdir()
    proc = subprocess.run([*POSBUILD, "run", "//tools:show", "--", "x", "--flag", "y z"],
                          cwd=here, input="typed\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 7, proc.stderr  # the tool's exit code, passed through
    table = ws.root / "posbuild-out/tools/table.txt"
    assert table.read_text() == "a 1\n"  # its data were built first
    lines = proc.stdout.splitlines()
    assert f"args: {table} x --flag y z" in lines  # $(location) absolute, then the user's args
    assert f"cwd: {here}" in lines
    assert f"workspace: {ws.root} {ws.root}" in lines
    assert "greeting: hi" in lines and "a 1" in lines and "stdin: typed" in lines
    assert proc.stderr.endswith("to stderr\n")


def test_run_a_py_binary_that_imports_a_workspace_module(ws: Workspace) -> None:
    ws.write(TOOLS)
    result = ws.run("run", "-q", "//tools:count", "--", "a", "b", "c")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "3 words\n"


def test_run_from_a_package_folder_takes_a_relative_label(ws: Workspace) -> None:
    ws.write(TOOLS)
    result = ws.run("run", "-q", ":count", "--", "one", cwd=ws.root / "tools")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1 words\n"


def test_run_a_test_directly(ws: Workspace) -> None:
    ws.write({"posbuild.toml": "", "t/BUILD": """
        sh_test(name = "check", srcs = ["check.sh"])
    """, "t/check.sh": "echo run by hand: $1\nexit 3\n"})
    result = ws.run("run", "-q", "//t:check", "--", "now")
    assert (result.returncode, result.stdout) == (3, "run by hand: now\n")
    assert not (ws.root / "posbuild-out/t/check.test.log").exists()  # not as a test


def test_run_of_a_target_that_is_not_executable_is_a_clear_error(ws: Workspace) -> None:
    ws.write(TOOLS)
    result = ws.run("run", "//tools:table")
    assert result.returncode == 2
    assert result.stderr == (
        "posbuild: //tools:table is a genrule, not an executable target: posbuild run runs "
        "sh_binary, py_binary, sh_test and py_test targets (build it with "
        "`posbuild build //tools:table`)\n")
    assert not (ws.root / "posbuild-out/tools/table.txt").exists()  # nothing was built


def test_run_takes_one_target(ws: Workspace) -> None:
    ws.write(TOOLS)
    result = ws.run("run", "//tools:all")
    assert result.returncode == 2
    assert "posbuild run takes one target, not the pattern '//tools:all'" in result.stderr


def test_run_stops_when_the_build_fails(ws: Workspace) -> None:
    ws.write(TOOLS)
    (ws.root / "tools/BUILD").write_text(
        'genrule(name = "table", outs = ["table.txt"], cmd = "exit 1")\n'
        'sh_binary(name = "show", srcs = ["show.sh"], data = [":table"])\n')
    result = ws.run("run", "//tools:show")
    assert result.returncode == 1
    assert "args:" not in result.stdout
    assert "posbuild: 1 action failed: //tools:table" in result.stderr


def test_binaries_build_what_they_need_under_build(ws: Workspace) -> None:
    ws.write(TOOLS)
    ws.ok("//tools:show")
    assert (ws.root / "posbuild-out/tools/table.txt").read_text() == "a 1\n"

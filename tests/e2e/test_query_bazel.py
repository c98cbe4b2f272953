"""`posbuild query` functions and outputs a Bazel user reaches for: somepath, filter, tests,
buildfiles, `--output build`, and a py_task's imported modules as nodes of the graph."""

from __future__ import annotations

import pytest

from conftest import Workspace

DEFS_BZL = """\
load(":naming.bzl", "suffix")

def twice(name, src):
    genrule(name = name, srcs = [src], outs = [name + suffix], cmd = "cat $< $< > $@")
"""
ML_BUILD = """\
load("//lib:defs.bzl", "twice")

py_task(
    name = "train",
    script = "train.py",
    outs = ["model.txt"],
    args = ["$@"],
    tags = ["slow"],
)

twice(name = "doubled", src = "data.csv")

[genrule(name = "part%d" % i, outs = ["part%d.txt" % i], cmd = "echo > $@") for i in range(2)]
"""
APP_BUILD = """\
genrule(
    name = "report",
    srcs = ["//ml:model.txt", ":notes.md"],
    outs = ["report.txt"],
    cmd = "cat $(SRCS) > $@",
    env = {"LANG": "C"},
)
filegroup(name = "docs", srcs = ["notes.md"])
"""


@pytest.fixture
def bazel_ws(ws: Workspace) -> Workspace:
    ws.write({
        "lib/BUILD": "",
        "lib/defs.bzl": DEFS_BZL,
        "lib/naming.bzl": 'suffix = ".twice"\n',
        "ml/BUILD": ML_BUILD,
        "ml/data.csv": "a\n",
        "ml/train.py": "import helper\nfrom util import scale\n"
                       "import sys\nopen(sys.argv[1], 'w').write(str(scale.K))\n",
        "ml/helper.py": "import json\n",
        "ml/util/__init__.py": "",
        "ml/util/scale.py": "K = 2\n",
        "ml/unused.py": "",
        "app/BUILD": APP_BUILD,
        "app/notes.md": "n\n",
    })
    return ws


def query(ws: Workspace, *args: str) -> list[str]:
    result = ws.run("query", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_rdeps_of_an_imported_module_names_what_reruns_when_it_changes(
        bazel_ws: Workspace) -> None:
    assert query(bazel_ws, "rdeps(//..., //ml:helper.py)") == [
        "//app:report", "//ml:helper.py", "//ml:train"]
    assert query(bazel_ws, "rdeps(//..., //ml:util/scale.py)") == [
        "//app:report", "//ml:train", "//ml:util/scale.py"]
    assert query(bazel_ws, 'kind("source file", deps(//ml:train))') == [
        "//ml:helper.py", "//ml:train.py", "//ml:util/__init__.py", "//ml:util/scale.py"]
    # the build agrees: editing the module re-runs the task
    bazel_ws.ok("//ml:train")
    (bazel_ws.root / "ml/helper.py").write_text("import os\n")
    assert "//ml:train" in bazel_ws.ok("//ml:train").stdout


def test_a_new_import_changes_the_graph_at_once(bazel_ws: Workspace) -> None:
    assert "//ml:unused.py" not in query(bazel_ws, "deps(//ml:train)")
    (bazel_ws.root / "ml/helper.py").write_text("import unused\n")
    assert query(bazel_ws, "rdeps(//ml:all, //ml:unused.py)") == ["//ml:train", "//ml:unused.py"]


def test_somepath_gives_one_path(bazel_ws: Workspace) -> None:
    assert query(bazel_ws, "somepath(//app:report, //ml:util/scale.py)") == [
        "//app:report", "//ml:train", "//ml:util/scale.py"]
    assert query(bazel_ws, "somepath(//app:report, //ml:data.csv)") == []
    assert query(bazel_ws, "somepath(//app:all, //app:notes.md)") == [
        "//app:docs", "//app:notes.md"]


def test_filter_keeps_the_labels_the_regex_matches(bazel_ws: Workspace) -> None:
    assert query(bazel_ws, "filter('part[0-9]$', //...)") == ["//ml:part0", "//ml:part1"]
    assert query(bazel_ws, r"filter(\.py$, deps(//ml:train))") == [
        "//ml:helper.py", "//ml:train.py", "//ml:util/__init__.py", "//ml:util/scale.py"]


def test_tests_selects_no_rule_that_is_not_a_test(bazel_ws: Workspace) -> None:
    assert query(bazel_ws, "tests(//...)") == []


def test_tests_selects_test_rules(ws: Workspace) -> None:
    from posbuild.core.target import SCHEMAS

    if "sh_test" not in SCHEMAS:
        pytest.skip("no sh_test rule in this version")
    ws.write({"t/BUILD": 'sh_test(name = "check", srcs = ["check.sh"])\n'
                         'genrule(name = "g", outs = ["g.txt"], cmd = "echo > $@")\n',
              "t/check.sh": "true\n"})
    assert query(ws, "tests(//...)") == ["//t:check"]


def test_buildfiles_are_the_build_and_bzl_files_of_the_packages(bazel_ws: Workspace) -> None:
    assert query(bazel_ws, "buildfiles(//ml:train)") == [
        "//lib:defs.bzl", "//lib:naming.bzl", "//ml:BUILD"]
    assert query(bazel_ws, "buildfiles(deps(//app:report))") == [
        "//app:BUILD", "//lib:defs.bzl", "//lib:naming.bzl", "//ml:BUILD"]
    # a load added to a .bzl file is seen at once
    (bazel_ws.root / "lib/more.bzl").write_text("X = 1\n")
    (bazel_ws.root / "lib/naming.bzl").write_text('load(":more.bzl", "X")\nsuffix = ".twice"\n')
    assert query(bazel_ws, "buildfiles(//ml:doubled)") == [
        "//lib:defs.bzl", "//lib:more.bzl", "//lib:naming.bzl", "//ml:BUILD"]


def test_output_build_prints_the_rules_as_bazel_does(bazel_ws: Workspace) -> None:
    root = bazel_ws.root
    result = bazel_ws.run("query", "//app:all + //ml:doubled + //ml:part1 + //ml:train + "
                          "//ml:train.py", "--output", "build")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"""\
# {root}/app/BUILD:8:10
filegroup(
  name = "docs",
  srcs = ["//app:notes.md"],
)

# {root}/app/BUILD:1:8
genrule(
  name = "report",
  srcs = ["//ml:model.txt", "//app:notes.md"],
  outs = ["//app:report.txt"],
  cmd = "cat $(SRCS) > $@",
  env = {{"LANG": "C"}},
)

# {root}/ml/BUILD:11:6
genrule(
  name = "doubled",
  srcs = ["//ml:data.csv"],
  outs = ["//ml:doubled.twice"],
  cmd = "cat $< $< > $@",
)

# {root}/ml/BUILD:13:9
genrule(
  name = "part1",
  outs = ["//ml:part1.txt"],
  cmd = "echo > $@",
)

# {root}/ml/BUILD:3:8
py_task(
  name = "train",
  outs = ["//ml:model.txt"],
  script = "//ml:train.py",
  args = ["$@"],
  tags = ["slow"],
)

"""


def test_output_build_of_sources_only_is_empty(bazel_ws: Workspace) -> None:
    result = bazel_ws.run("query", "//ml:train.py", "--output", "build")
    assert (result.returncode, result.stdout) == (0, "")


def test_a_module_that_does_not_parse_is_the_builds_error(bazel_ws: Workspace) -> None:
    (bazel_ws.root / "ml/helper.py").write_text("def (\n")
    queried, built = bazel_ws.run("query", "//ml:all"), bazel_ws.build("//ml:train")
    assert queried.returncode == built.returncode == 3
    assert queried.stderr == built.stderr == (
        "posbuild: ml/helper.py:1: //ml:train: syntax error: invalid syntax (in a module that "
        "ml/train.py imports)\n")

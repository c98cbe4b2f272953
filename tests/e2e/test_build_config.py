"""Configuration without editing BUILD files: `[vars]` and `--define` read by config(), data
files of the workspace read by read_json/read_lines/read_tsv/read_csv (a sample sheet), and what
each does to action keys and to the graph cache; with print(), glob()'s empty matches and the
Bazel features posbuild refuses."""

from __future__ import annotations

import os
import textwrap

import pytest
from conftest import Result, counts, executed_labels, through_server

served = pytest.fixture(through_server, name="served")

TWO_RULES = {"pkg/BUILD": """
    genrule(name = "uses", outs = ["uses.txt"], cmd = "echo " + config("MODE", "fast") + " > $@")
    genrule(name = "plain", outs = ["plain.txt"], cmd = "echo plain > $@")
"""}

SHEET = {
    "pkg/samples.tsv": "sample\tfastq\nA\ta.fq\nB\tb.fq\n",
    "pkg/BUILD": """
        print("loading", package_name())
        [genrule(
            name = "count_" + s["sample"],
            outs = [s["sample"] + ".txt"],
            cmd = "echo " + s["fastq"] + " > $@",
        ) for s in read_tsv("samples.tsv")]
    """,
}


def one_line(result: Result, code: int, *needles: str) -> str:
    """The one `posbuild:` line of a failure with exit `code`, holding every needle."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("posbuild: ")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def evaluated(result: Result) -> bool:
    """Whether the build evaluated the BUILD file (its print() said so)."""
    return "DEBUG: pkg/BUILD:" in result.stderr


# --- config(), [vars] and --define -------------------------------------------------------------

def test_a_define_rebuilds_only_the_actions_whose_definition_uses_it(ws):
    ws.write(TWO_RULES)
    assert executed_labels(ws.ok()) == ["//pkg:plain", "//pkg:uses"]
    assert ws.out("pkg/uses.txt") == "fast\n"
    changed = ws.ok("--define", "MODE=slow")
    assert executed_labels(changed) == ["//pkg:uses"]
    assert counts(changed) == {"executed": 1, "cached": 1, "failed": 0}
    assert ws.out("pkg/uses.txt") == "slow\n"
    assert counts(ws.ok("--define=MODE=slow")) == {"executed": 0, "cached": 2, "failed": 0}
    back = ws.ok()  # the default again: its result is still in the store
    assert counts(back)["executed"] == 0
    assert ws.out("pkg/uses.txt") == "fast\n"


def test_vars_of_posbuild_toml_are_read_and_a_define_overrides_them(ws):
    ws.write({"posbuild.toml": '[vars]\nMODE = "toml"\nN = 3\nON = true\n',
              "pkg/BUILD": """
                  genrule(name = "uses", outs = ["uses.txt"],
                          cmd = "echo %s %s %s > $@" % (config("MODE"), config("N"), config("ON")))
              """})
    ws.ok()
    assert ws.out("pkg/uses.txt") == "toml 3 true\n"
    ws.ok("--define", "MODE=cli", "--define", "N=4")
    assert ws.out("pkg/uses.txt") == "cli 4 true\n"
    ws.write({"posbuild.toml": '[vars]\nMODE = "edited"\nN = 3\nON = true\n'})
    ws.ok()
    assert ws.out("pkg/uses.txt") == "edited 3 true\n"


def test_a_value_is_a_make_variable_in_cmd_as_a_bazel_define_is(ws):
    """`$(KEY)` in a genrule's cmd is the value of `--define KEY=...` or `[vars]`, as in Bazel;
    SRCS and the other built-in variables keep their meaning."""
    ws.write({"posbuild.toml": '[vars]\nGREETING = "hello"\n',
              "pkg/BUILD": """
                  genrule(name = "greet", srcs = ["name.txt"], outs = ["greet.txt"],
                          cmd = "echo $(GREETING) $$(cat $(SRCS)) > $@")
                  genrule(name = "plain", outs = ["plain.txt"], cmd = "echo plain > $@")
              """,
              "pkg/name.txt": "world\n"})
    ws.ok()
    assert ws.out("pkg/greet.txt") == "hello world\n"
    changed = ws.ok("--define", "GREETING=bonjour", "--define", "SRCS=ignored")
    assert executed_labels(changed) == ["//pkg:greet"]
    assert ws.out("pkg/greet.txt") == "bonjour world\n"


def test_config_with_no_value_and_no_default_names_the_key_file_and_line(ws):
    ws.write({"pkg/BUILD": """
        genrule(name = "plain", outs = ["plain.txt"], cmd = "echo plain > $@")
        genrule(name = "uses", outs = ["uses.txt"], cmd = "echo " + config("GENOME") + " > $@")
    """})
    one_line(ws.build(), 3, "pkg/BUILD:3", 'config("GENOME")', "--define GENOME=VALUE")
    assert not (ws.root / "posbuild-out").exists()
    ws.ok("--define", "GENOME=hg38")
    assert ws.out("pkg/uses.txt") == "hg38\n"


@pytest.mark.parametrize("define", ["MODE", "=x", "1A=x", "a b=c"])
def test_a_malformed_define_is_a_usage_error(ws, define):
    ws.write(TWO_RULES)
    one_line(ws.build("--define", define), 2, "--define", "KEY=VALUE")


@pytest.mark.parametrize("toml, needle", [
    ('[vars]\nMODE = 1.5\n', "[vars] MODE must be a string, integer or boolean"),
    ('[vars]\n"a b" = "x"\n', "[vars] 'a b' is not a name"),
    ('[vars]\nMODE = ["x"]\n', "[vars] MODE must be a string"),
])
def test_a_bad_vars_table_is_a_configuration_error(ws, toml, needle):
    ws.write({**TWO_RULES, "posbuild.toml": toml})
    one_line(ws.build(), 3, "posbuild.toml", needle)


def test_a_graph_evaluated_under_other_defines_is_not_reused_and_a_no_op_evaluates_nothing(ws):
    ws.write({"pkg/BUILD": 'print("mode", config("MODE", "fast"))\n'
                           + textwrap.dedent(TWO_RULES["pkg/BUILD"])})
    first = ws.ok()
    assert "DEBUG: pkg/BUILD:1: mode fast" in first.stderr
    assert not evaluated(ws.ok())  # the graph cache answers: no BUILD file is evaluated
    defined = ws.ok("--define", "MODE=slow")
    assert "DEBUG: pkg/BUILD:1: mode slow" in defined.stderr
    assert not evaluated(ws.ok("--define", "MODE=slow"))
    assert "mode fast" in ws.ok().stderr


def test_every_command_that_loads_build_files_takes_define(ws):
    ws.write({"pkg/BUILD": """
        genrule(name = "uses", outs = [config("OUT") + ".txt"], cmd = "echo x > $@")
    """})
    one_line(ws.run("query", "//..."), 3, 'config("OUT")')
    query = ws.run("query", "//pkg:all", "--define", "OUT=first")
    assert query.returncode == 0 and query.stdout == "//pkg:uses\n", query.stderr
    dry = ws.build("-n", "--define", "OUT=first")
    assert dry.returncode == 0 and "//pkg:uses" in dry.stdout, dry.stderr
    assert not (ws.root / "posbuild-out/pkg/first.txt").exists()
    ws.ok("--define", "OUT=first")
    assert ws.out("pkg/first.txt") == "x\n"
    assert ws.run("query", "//pkg:all", "--define", "OUT=second").returncode == 0
    explained = ws.run("explain", "//pkg:uses", "--define", "OUT=first")
    assert explained.returncode == 0 and "//pkg:uses" in explained.stdout, explained.stderr
    assert "do not load" in ws.run("env", "show").stderr
    shown = ws.run("env", "show", "--define", "OUT=first")
    assert shown.returncode == 0 and "warning" not in shown.stderr, shown.stderr
    for command in (("watch",), ("verify",), ("lock",), ("env", "approve"), ("env", "check")):
        helped = ws.run(*command, "--help")
        assert "--define KEY=VALUE" in helped.stdout, (command, helped.stdout)


# --- data files ----------------------------------------------------------------------------

def test_a_sample_sheet_makes_one_target_per_row_and_an_edit_reevaluates_the_package(ws):
    ws.write(SHEET)
    first = ws.ok()
    assert evaluated(first)
    assert executed_labels(first) == ["//pkg:count_A", "//pkg:count_B"]
    again = ws.ok()
    assert not evaluated(again) and executed_labels(again) == []
    ws.write({"pkg/samples.tsv": "sample\tfastq\nA\ta.fq\nB\tb.fq\nC\tc.fq\n"})
    grown = ws.ok()
    assert evaluated(grown)
    assert executed_labels(grown) == ["//pkg:count_C"]
    assert ws.out("pkg/C.txt") == "c.fq\n"
    assert ws.run("query", "//pkg:all").stdout.split() == [
        "//pkg:count_A", "//pkg:count_B", "//pkg:count_C"]


def test_a_sample_sheet_edited_in_place_with_its_times_put_back_is_still_seen(ws):
    ws.write(SHEET)
    ws.ok()
    sheet = ws.root / "pkg/samples.tsv"
    before = sheet.stat()
    sheet.write_text("sample\tfastq\nA\ta.fq\nB\tX.fq\n")  # same size
    os.utime(sheet, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert executed_labels(ws.ok()) == ["//pkg:count_B"]
    assert ws.out("pkg/B.txt") == "X.fq\n"


def test_an_edited_sample_sheet_is_noticed_through_the_build_server(served):
    served.write(SHEET)
    assert executed_labels(served.ok()) == ["//pkg:count_A", "//pkg:count_B"]
    assert executed_labels(served.ok()) == []
    assert executed_labels(served.ok()) == []  # vouched for by the server's watch
    served.write({"pkg/samples.tsv": "sample\tfastq\nA\ta.fq\nB\tb.fq\nC\tc.fq\n"})
    assert executed_labels(served.ok()) == ["//pkg:count_C"]
    served.write({"pkg/samples.tsv": "sample\tfastq\nA\ta.fq\n"})
    assert executed_labels(served.ok()) == []
    assert served.run("query", "//pkg:all").stdout.split() == ["//pkg:count_A"]


def test_the_build_server_answers_each_define_with_a_graph_of_its_own_values(served):
    served.write({"pkg/BUILD": 'print("mode", config("MODE", "fast"))\n'
                               + textwrap.dedent(TWO_RULES["pkg/BUILD"])})
    assert "DEBUG: pkg/BUILD:1: mode fast" in served.ok().stderr
    assert executed_labels(served.ok("--define", "MODE=slow")) == ["//pkg:uses"]
    assert served.out("pkg/uses.txt") == "slow\n"
    kept = served.ok("--define", "MODE=slow")
    assert executed_labels(kept) == [] and not evaluated(kept)
    assert counts(served.ok())["executed"] == 0
    assert served.out("pkg/uses.txt") == "fast\n"


def test_read_json_lines_and_csv_give_starlark_values(ws):
    ws.write({
        "pkg/config.json": '{"genome": "hg38", "threads": 4, "chroms": ["1", "2"], "x": null}',
        "pkg/ids.txt": "# sample ids\nA\n\n  B  \n",
        "pkg/sheet.csv": "\ufeffsample,condition\nA,treated\nB,\"control, day 2\"\n\n",
        "pkg/BUILD": """
            c = read_json("config.json")
            rows = read_csv("sheet.csv")
            text = "%s %d %s %s %s %s" % (c["genome"], c["threads"], ",".join(c["chroms"]),
                c["x"], read_lines("ids.txt"), [r["condition"] for r in rows])
            genrule(name = "show", outs = ["show.txt"], cmd = "echo '" + text + "' > $@")
        """,
    })
    ws.ok()
    assert ws.out("pkg/show.txt") == (
        'hg38 4 1,2 None ["A", "B"] ["treated", "control, day 2"]\n')


def test_a_data_file_is_read_relative_to_the_package_or_by_label_also_from_a_bzl_file(ws):
    ws.write({
        "config/samples.tsv": "sample\nA\nB\n",
        "config/BUILD": "",
        "defs/BUILD": "",
        "defs/names.txt": "n1\nn2\n",
        "defs/defs.bzl": """
            NAMES = read_lines("names.txt")
            def per_sample(name):
                return [name + "_" + s["sample"] for s in read_tsv("//config:samples.tsv")]
        """,
        "pkg/BUILD": """
            load("//defs:defs.bzl", "NAMES", "per_sample")
            genrule(name = "show", outs = ["show.txt"],
                    cmd = "echo " + " ".join(NAMES + per_sample("x")) + " > $@")
        """,
    })
    ws.ok()
    assert ws.out("pkg/show.txt") == "n1 n2 x_A x_B\n"
    ws.write({"defs/names.txt": "n3\n"})
    ws.ok()
    assert ws.out("pkg/show.txt") == "n3 x_A x_B\n"


@pytest.mark.parametrize("path, needle", [
    ("../../outside.tsv", "leaves the workspace"),
    ("/etc/passwd", "an absolute path"),
    ("link.tsv", "outside the workspace"),
    ("../posbuild-out/pkg/x.txt", "posbuild-out/"),
    ("missing.tsv", "no file pkg/missing.tsv"),
    ("@repo//x:y.tsv", "no external repositories"),
])
def test_reading_outside_the_workspace_is_refused_naming_file_and_line(ws, path, needle):
    outside = ws.root.parent / "outside.tsv"
    outside.write_text("sample\nA\n")
    (ws.root / "pkg").mkdir()
    (ws.root / "pkg/link.tsv").symlink_to(outside)
    ws.write({"pkg/BUILD": f"""
        genrule(name = "plain", outs = ["plain.txt"], cmd = "echo > $@")
        rows = read_tsv("{path}")
    """})
    one_line(ws.build(), 3, "pkg/BUILD:3", f"read_tsv('{path}')", needle)
    assert not (ws.root / "posbuild-out").exists()


def test_a_symbolic_link_inside_the_workspace_is_read_and_its_target_watched(ws):
    ws.write({"data/real.tsv": "sample\nA\n", **SHEET})
    os.unlink(ws.root / "pkg/samples.tsv")
    (ws.root / "pkg/samples.tsv").symlink_to("../data/real.tsv")
    ws.write({"data/real.tsv": "sample\tfastq\nA\ta.fq\n"})
    assert executed_labels(ws.ok()) == ["//pkg:count_A"]
    ws.write({"data/real.tsv": "sample\tfastq\nA\ta.fq\nD\td.fq\n"})
    assert executed_labels(ws.ok()) == ["//pkg:count_D"]


@pytest.mark.parametrize("name, text, needle", [
    ("s.tsv", "sample\tfastq\nA\ta.fq\nB\n", "pkg/s.tsv:3: 1 field, but the header row has 2"),
    ("s.tsv", "sample\tsample\nA\tB\n", "pkg/s.tsv:1: column 'sample' appears twice"),
    ("s.json", '{"a": 1,\n "b": }', "pkg/s.json:2: not valid JSON"),
    ("s.tsv", "sample\n\xff\n", "not UTF-8 text"),
])
def test_a_data_file_that_does_not_parse_names_its_file_and_line(ws, name, text, needle):
    reader = "read_json" if name.endswith(".json") else "read_tsv"
    ws.write({"pkg/BUILD": f'x = {reader}("{name}")\n'})
    path = ws.root / "pkg" / name
    path.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    one_line(ws.build(), 3, "pkg/BUILD:1", needle)


def test_a_data_file_deleted_after_a_build_is_a_build_error_next_time(ws):
    ws.write(SHEET)
    ws.ok()
    os.unlink(ws.root / "pkg/samples.tsv")
    one_line(ws.build(), 3, "pkg/BUILD", "no file pkg/samples.tsv")


# --- print() -----------------------------------------------------------------------------------

def test_print_writes_a_debug_line_with_file_and_line_as_bazel_does(ws):
    ws.write({
        "pkg/defs.bzl": """
            def macro(name):
                print("macro", name, [1, "a"])
                genrule(name = name, outs = [name + ".txt"], cmd = "echo > $@")
        """,
        "pkg/BUILD": """
            load(":defs.bzl", "macro")

            print("top", 1, sep = "-")
            macro("m")
        """,
    })
    result = ws.ok()
    debug = [line for line in result.stderr.splitlines() if line.startswith("DEBUG")]
    assert debug == ["DEBUG: pkg/BUILD:4: top-1", 'DEBUG: pkg/defs.bzl:3: macro m [1, "a"]']
    assert "DEBUG" not in result.stdout


def test_print_is_not_repeated_when_an_error_is_placed(ws):
    ws.write({"pkg/BUILD": """
        print("once")
        [genrule(name = n, outs = ["x.txt"], cmd = "echo > $@") for n in ["a", "b"]]
    """})
    result = ws.build()
    assert result.returncode == 3
    assert result.stderr.count("DEBUG: pkg/BUILD:2: once") == 1, result.stderr


# --- glob() ------------------------------------------------------------------------------------

@pytest.mark.parametrize("expr, needle", [
    ('glob(["*.csv"])', "glob(): pattern '*.csv' matched no files in '//pkg'"),
    ('glob(["*.txt", "data/*.csv"])', "pattern 'data/*.csv' matched no files"),
    ('glob(["*.txt"], exclude = ["*"])', "is excluded"),
])
def test_a_glob_that_matches_nothing_is_an_error_naming_the_pattern(ws, expr, needle):
    ws.write({"pkg/a.txt": "a\n",
              "pkg/BUILD": f'genrule(name = "g", srcs = {expr}, outs = ["g.out"], '
                           f'cmd = "echo > $@")\n'})
    one_line(ws.build(), 3, "pkg/BUILD:1", needle, "allow_empty = True")


def test_allow_empty_true_allows_an_empty_glob(ws):
    ws.write({"pkg/BUILD": 'genrule(name = "g", srcs = glob(["*.csv"], allow_empty = True), '
                           'outs = ["g.out"], cmd = "echo $(SRCS) none > $@")\n'})
    ws.ok()
    assert ws.out("pkg/g.out") == "none\n"


# --- what posbuild does not have -------------------------------------------------------------

@pytest.mark.parametrize("call, needle", [
    ("rule(implementation = _impl)", "rule() is not supported: posbuild has no Starlark rules"),
    ("provider()", "provider() is not supported"),
    ("aspect(implementation = _impl)", "aspect() is not supported"),
    ('toolchain(name = "t", toolchain = ":x", toolchain_type = ":y")',
     "toolchain() is not supported"),
    ('register_toolchains("//x:all")', "register_toolchains() is not supported"),
    ("repository_rule(implementation = _impl)", "repository_rule() is not supported"),
    ('config_setting(name = "fast", define_values = {"MODE": "fast"})',
     'config_setting() is not supported: posbuild has no configurable attributes: read the '
     'value with config("KEY", default)'),
    ('genrule(name = "g", outs = ["g"], cmd = select({"//conditions:default": "echo > $@"}))',
     "select() is not supported"),
])
def test_a_bazel_feature_posbuild_lacks_is_refused_in_one_line_saying_what_to_write(ws, call,
                                                                                 needle):
    ws.write({"pkg/BUILD": f"def _impl(ctx):\n    pass\n\nx = {call}\n"
              if not call.startswith("genrule") else call + "\n"})
    line = one_line(ws.build(), 3, "pkg/BUILD:", needle)
    assert any(word in line for word in ("macro", "config(", "tools", "query", "workspace"))


def test_a_rule_call_in_a_bzl_file_is_refused_at_the_load(ws):
    ws.write({"pkg/defs.bzl": "def _impl(ctx):\n    pass\n\nmy_rule = rule(implementation = "
                              "_impl)\n",
              "pkg/BUILD": 'load(":defs.bzl", "my_rule")\nmy_rule(name = "x")\n'})
    one_line(ws.build(), 3, "pkg/defs.bzl:4", "rule() is not supported", "macro")



def test_watch_takes_a_define_and_rebuilds_when_the_sample_sheet_changes(ws):
    from test_watch import Watch

    ws.write({**SHEET, "pkg/BUILD": SHEET["pkg/BUILD"].replace(
        '"echo " + s["fastq"]', '"echo " + config("TAG") + s["fastq"]')})
    watching = Watch(ws, "--define", "TAG=t-")
    try:
        first = watching.cycle()
        assert first.group(0).startswith("[watch] initial build"), first.group(0)
        assert ws.out("pkg/A.txt") == "t-a.fq\n"
        (ws.root / "pkg/samples.tsv").write_text("sample\tfastq\nA\ta.fq\nB\tb.fq\nC\tc.fq\n")
        assert watching.changed() == ("pkg/samples.tsv", 1, 2, 0)
        assert ws.out("pkg/C.txt") == "t-c.fq\n"
    finally:
        watching.kill()


def test_names_a_build_file_binds_itself_shadow_the_refused_ones(ws):
    ws.write({"pkg/defs.bzl": 'def select(choices):\n    return choices["default"]\n',
              "pkg/BUILD": """
                  load(":defs.bzl", "select")
                  RULES = ["a"]
                  [genrule(name = rule, outs = [rule + ".txt"],
                           cmd = select({"default": "echo ok > $@"})) for rule in RULES]
                  toolchain = {"x": 1}
              """})
    ws.ok()
    assert ws.out("pkg/a.txt") == "ok\n"

"""Force and select: `build --rerun PATTERN` executes cached actions again (Snakemake's
`--forcerun`), and `tags = ["nondeterministic-output:NAME"]` exempts one output from verify's
byte comparison, whose findings quote the bytes around the first difference."""

from __future__ import annotations

from conftest import counts
from oracle import assert_correct_build

PIPELINE = {
    "pkg/in.txt": "hi\n",
    "pkg/BUILD": """
        genrule(name = "up", srcs = ["in.txt"], outs = ["up.txt"], cmd = "tr a-z A-Z < $< > $@")
        genrule(name = "down", srcs = [":up"], outs = ["down.txt"], cmd = "cat $< $< > $@")
        genrule(name = "clock", outs = ["clock.txt"], cmd = "date +%s%N > $@")
        genrule(name = "after_clock", srcs = [":clock"], outs = ["after.txt"], cmd = "cp $< $@")
    """,
}


def test_rerun_executes_a_cached_action_and_its_dependents_only_if_its_outputs_change(ws):
    ws.write(PIPELINE)
    ws.ok("//...")
    result = ws.build("--rerun", "//pkg:up", "--rerun", "//pkg:clock", "//...")
    assert result.returncode == 0, result.stderr
    # up reproduces its bytes: down is a cache hit (early cutoff); clock does not: after_clock runs
    assert counts(result) == {"executed": 3, "cached": 1, "failed": 0}
    assert_correct_build(ws)  # after_clock holds the new clock, not the old one
    headings = [line for line in ws.run("log").stdout.splitlines() if line.startswith("build ")]
    assert headings[-1].endswith("rerun //pkg:up //pkg:clock")


def test_rerun_takes_patterns_relative_to_the_current_package(ws):
    ws.write(PIPELINE)
    ws.ok("//...")
    result = ws.run("build", "--rerun", ":up", "--explain", ":down", cwd=ws.root / "pkg")
    assert result.returncode == 0, result.stderr
    assert counts(result) == {"executed": 1, "cached": 1, "failed": 0}
    assert "explain //pkg:up: --rerun names it" in result.stderr


def test_a_dry_run_lists_what_rerun_would_execute(ws):
    ws.write(PIPELINE)
    ws.ok("//...")
    result = ws.build("-n", "--rerun", "//pkg:up", "//pkg:down")
    assert result.returncode == 0, result.stderr
    assert "would execute //pkg:up" in result.stdout
    assert "would execute //pkg:down" in result.stdout  # its input is unknown until up runs


def test_a_rerun_pattern_that_names_no_action_of_the_build_is_a_usage_error(ws):
    ws.write(PIPELINE)
    ws.ok("//...")
    builds = ws.run("log").stdout
    result = ws.build("--rerun", "//pkg:upp", "//...")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == \
        "posbuild: --rerun //pkg:upp: matches no action of this build (//...)"
    assert ws.run("log").stdout == builds  # nothing ran, nothing was recorded


STAMPED = {
    "pkg/in.txt": "data\n",
    "pkg/BUILD": """
        genrule(name = "stamped", srcs = ["in.txt"], outs = ["data.txt", "log.txt"],
                cmd = "cp $< $(location data.txt); date +%s%N > $(location log.txt)",
                tags = ["nondeterministic-output:log.txt"])
    """,
}


def test_verify_does_not_compare_an_output_tagged_nondeterministic(ws):
    ws.write(STAMPED)
    ws.ok("//...")
    result = ws.run("verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(1 output tagged nondeterministic-output not compared)" in result.stdout
    ws.write({"pkg/BUILD": STAMPED["pkg/BUILD"].replace(
        'tags = ["nondeterministic-output:log.txt"]', 'tags = []')})
    ws.ok("//...")
    assert ws.run("verify").returncode == 14  # without the tag, the log file is a finding


def test_build_verify_does_not_compare_an_output_tagged_nondeterministic(ws):
    ws.write(STAMPED)
    ws.ok("//...")
    result = ws.build("--verify", "//...")
    assert result.returncode == 0, result.stderr
    assert counts(result) == {"executed": 1, "cached": 0, "failed": 0}


def test_a_nondeterministic_output_tag_must_name_a_declared_output(ws):
    ws.write({"pkg/BUILD": STAMPED["pkg/BUILD"].replace("output:log.txt", "output:lg.txt")})
    result = ws.build("//...")
    assert result.returncode == 3
    assert result.stderr.strip().splitlines()[-1] == (
        "posbuild: pkg/BUILD:2:1: genrule 'stamped': tag 'nondeterministic-output:lg.txt' names "
        "no output of its outs (data.txt, log.txt)")


def test_a_finding_quotes_the_bytes_around_the_first_difference(ws):
    ws.write({"pkg/BUILD": """
        genrule(name = "stamp", outs = ["stamp.txt"],
                cmd = "echo 'built by posbuild at' $$(date +%s%N) > $@")
    """})
    ws.ok("//...")
    result = ws.build("--verify", "//...")
    assert result.returncode == 14
    line = next(line for line in result.stderr.splitlines() if "ORCH-04" in line)
    cached, run = line.split('the cached result "…')[1], line.split(', this run "…')[1]
    # the same 12 bytes before the first differing digit: the end of the text, and digits
    assert cached[:12] == run[:12] and cached[:12].rstrip("0123456789") in "built by posbuild at "
    assert cached[12] != run[12]

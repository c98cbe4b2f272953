"""What an action said, end to end: shown as Bazel shows it, kept, and printed by `log --output`.

An executed action that printed something gets an `INFO: From LABEL:` block on stderr (stdout,
then stderr); `-q` and cache hits print none; a long output is cut with a note naming the
command that prints all of it. `posbuild log --output LABEL` prints what the last run wrote,
from the result for a success or a cache hit, from `.posbuild/failed/` for a failure.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from conftest import counts

TALKS = 'genrule(name = "talk", outs = ["t.txt"], ' \
        'cmd = "echo said on stdout; echo said on stderr >&2; echo x > $@")\n'
SILENT = 'genrule(name = "silent", outs = ["s.txt"], cmd = "echo x > $@")\n'


def test_executed_action_that_printed_shows_an_info_block_on_stderr(ws):
    ws.write({"pkg/BUILD": TALKS + SILENT})
    result = ws.ok("//...")
    assert "INFO: From //pkg:talk:\nsaid on stdout\nsaid on stderr\n" in result.stderr
    assert "said on" not in result.stdout
    assert "//pkg:silent:" not in result.stderr  # nothing printed: no block


def test_quiet_build_shows_no_action_output(ws):
    ws.write({"pkg/BUILD": TALKS})
    result = ws.ok("-q", "//...")
    assert result.stderr == "" and result.stdout == ""


def test_cache_hit_shows_no_action_output(ws):
    ws.write({"pkg/BUILD": TALKS})
    ws.ok("//...")
    ws.run("clean")  # posbuild-out/ goes; the store keeps the result
    result = ws.ok("//...")
    assert counts(result)["cached"] == 1
    assert "INFO" not in result.stderr and "said on" not in result.stderr


def test_long_output_is_cut_with_a_note_naming_log_output(ws):
    ws.write({"pkg/BUILD": 'genrule(name = "long", outs = ["l.txt"], '
                           'cmd = "seq 1 1000; echo x > $@")\n'})
    result = ws.ok("//...")
    shown = result.stderr.split("INFO: From //pkg:long:\n", 1)[1].splitlines()
    assert shown[:200] == [str(n) for n in range(1, 201)]
    assert shown[200] == ("(output cut: 800 more lines; all of it: "
                          "posbuild log --output //pkg:long)")
    full = ws.run("log", "--output", "//pkg:long")
    assert full.returncode == 0
    assert full.stdout.splitlines() == [str(n) for n in range(1, 1001)]


def test_log_output_prints_what_the_last_run_wrote(ws):
    ws.write({"pkg/BUILD": TALKS})
    ws.ok("//...")
    result = ws.run("log", "--output", "//pkg:talk")
    assert (result.returncode, result.stdout, result.stderr) == \
        (0, "said on stdout\n", "said on stderr\n")


def test_log_output_after_a_cache_hit_prints_the_run_that_produced_it(ws):
    ws.write({"pkg/BUILD": TALKS})
    ws.ok("//...")
    ws.run("clean")
    assert counts(ws.ok("//..."))["cached"] == 1
    result = ws.run("log", "--output", "talk", cwd=ws.root / "pkg")
    assert (result.returncode, result.stdout, result.stderr) == \
        (0, "said on stdout\n", "said on stderr\n")


def test_log_output_of_a_failed_run(ws):
    ws.write({"pkg/BUILD": 'genrule(name = "bad", outs = ["b.txt"], '
                           'cmd = "echo tried; echo broke >&2; exit 3")\n'})
    assert ws.build("//...").returncode == 1
    result = ws.run("log", "--output", "//pkg:bad")
    assert (result.returncode, result.stdout, result.stderr) == (0, "tried\n", "broke\n")


def test_log_output_of_an_action_that_never_ran_is_a_one_line_error(ws):
    ws.write({"pkg/BUILD": TALKS})
    ws.ok("//...")
    result = ws.run("log", "--output", "//pkg:nothing")
    assert result.returncode == 2
    assert result.stderr == ("posbuild: no run of //pkg:nothing is recorded "
                             "(not a target, or it never ran)\n")
    assert ws.run("log", "--output", "//pkg:a:b").returncode == 3  # not a label at all


def test_shown_and_kept_output_of_an_action_with_a_secret_is_redacted(ws, tmp_path: Path):
    value = "s3cr3t-Value-8f2c91"
    digest = hashlib.sha256(value.encode()).hexdigest()
    ws.write({"pkg/BUILD": f"""
        genrule(name = "ok", outs = ["o.txt"], secrets = ["API_TOKEN"],
                cmd = "test $$(printf %s \\"$$API_TOKEN\\" | sha256sum | cut -c1-64) = {digest}"
                      + " && echo token is $$API_TOKEN && echo x > $@")
        genrule(name = "bad", outs = ["b.txt"], secrets = ["API_TOKEN"],
                cmd = "echo token is $$API_TOKEN >&2; echo $$API_TOKEN > $@; exit 1")
    """})
    env = {"API_TOKEN": value, "POSBUILD_SECRETS_FILE": str(tmp_path / "none")}
    result = ws.build("-k", "//...", env=env)
    assert result.returncode == 1
    assert "INFO: From //pkg:ok:\ntoken is " in result.stderr
    shown = [result.stdout, result.stderr,
             ws.run("log", "--output", "//pkg:ok", env=env).stdout,
             ws.run("log", "--output", "//pkg:bad", env=env).stderr]
    assert all(value not in text for text in shown)
    assert "token is" in shown[2] and "token is" in shown[3]
    kept = [p for p in (ws.root / ".posbuild").rglob("*")
            if p.is_file() and value.encode() in p.read_bytes()]
    assert kept == []

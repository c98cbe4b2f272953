"""`posbuild explain` and `build --explain` tell the truth, scenario by scenario, as a user meets
them: what changed (with old and new values, `[env] pass` variables included), a re-run with the
key of the previous execution, failed and skipped actions, and `build -n --explain`."""

from __future__ import annotations

import pytest

from conftest import counts

BUILD = """
genrule(name = "a", srcs = ["a.txt"], outs = ["a.out"], cmd = "cat $< > $@", version = {"model": "1"})
genrule(name = "b", srcs = [":a"], tools = ["tool.sh"], outs = ["b.out"], cmd = "pkg/tool.sh $< > $@")
genrule(name = "passed", outs = ["p.out"], cmd = "echo $${MODE:-none} > $@")
genrule(name = "bad", srcs = ["a.txt"], outs = ["bad.out"], cmd = "exit 3")
genrule(name = "after", srcs = [":bad"], outs = ["after.out"], cmd = "cat $< > $@")
"""  # noqa: E501


@pytest.fixture
def ex(ws):
    (ws.root / "posbuild.toml").write_text('[env]\npass = ["MODE"]\n')
    ws.write({"pkg/a.txt": "one\n", "pkg/tool.sh": "#!/bin/sh\ncat \"$1\"\n", "pkg/BUILD": BUILD})
    (ws.root / "pkg/tool.sh").chmod(0o755)
    return ws


def explain(ws, label):
    result = ws.run("explain", label)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_never_built_and_no_build_at_all_are_clear_errors(ex):
    nothing = ex.run("explain", "//pkg:a")
    assert nothing.returncode == 2 and nothing.stderr == "posbuild: no build recorded yet\n"
    ex.ok("//pkg:a")
    never = ex.run("explain", "//pkg:b")
    assert never.returncode == 2 \
            and "no execution record of //pkg:b; build it first" in never.stderr


def test_a_first_execution_a_cache_hit_and_an_up_to_date_action(ex):
    ex.ok("//pkg:a")
    assert "no earlier execution is recorded: it ran because its key was not in the store" \
            in explain(ex, "//pkg:a")
    ex.ok("//pkg:a")
    assert "up to date in build 2" in explain(ex, "//pkg:a")
    ex.run("clean")
    ex.ok("//pkg:a")
    assert "cache hit in build 3" in explain(ex, "//pkg:a")


def test_edits_of_a_source_the_command_a_version_and_a_tool_are_named(ex):
    ex.ok("//pkg:b")
    ex.write({"pkg/a.txt": "two\n",
              "pkg/BUILD": BUILD.replace('"1"', '"2"').replace("cat $< > $@", "cat $< $< > $@")})
    ex.ok("//pkg:b")
    out = explain(ex, "//pkg:a")
    assert "compared with its previous execution, in build 1 (executed" in out
    assert "- input pkg/a.txt changed: " in out and "- version model changed: 1 -> 2" in out
    assert "- the command changed: 'cat pkg/a.txt > posbuild-out/pkg/a.out' -> " in out
    ex.write({"pkg/tool.sh": "#!/bin/sh\ncat \"$1\" \"$1\"\n"})
    ex.ok("//pkg:b")
    assert "- input pkg/tool.sh changed: " in explain(ex, "//pkg:b")


def test_a_variable_passed_by_env_pass_is_named_with_old_and_new_values(ex):
    assert ex.run("build", "//pkg:passed", env={"MODE": "fast"}).returncode == 0
    assert ex.run("build", "//pkg:passed", env={"MODE": "slow"}).returncode == 0
    assert "- variable MODE (passed by [env] pass) changed: 'fast' -> 'slow'" in explain(
        ex, "//pkg:passed")
    unset = ex.run("build", "--explain", "//pkg:passed", env={"MODE": ""})
    assert "explain //pkg:passed: variable MODE (passed by [env] pass) changed: 'slow' -> ''" \
            in unset.stderr
    gone = ex.run("build", "-n", "--explain", "//pkg:passed")
    assert "explain //pkg:passed: variable MODE (passed by [env] pass) changed: '' -> (unset)" \
            in gone.stderr


def test_a_failed_action_and_its_skipped_dependent_get_a_sentence(ex):
    result = ex.build("-k", "//...")
    assert result.returncode == 1
    bad = explain(ex, "//pkg:bad")
    assert "//pkg:bad: failed in build 1 (exit 3), key " in bad and "; nothing was cached" in bad
    assert "()" not in bad
    after = explain(ex, "//pkg:after")
    assert after == ("//pkg:after: skipped in build 1: it never started, because what it depends "
                     "on failed: //pkg:bad (exit 3); nothing of it was run or kept\n")


def test_an_action_skipped_because_the_build_stopped_after_a_failure_says_so(ex):
    ex.write({"pkg/BUILD": BUILD + """
genrule(name = "slow", outs = ["slow.out"], cmd = "sleep 1; echo > $@")
genrule(name = "late", srcs = [":slow"], outs = ["late.out"], cmd = "cat $< > $@")
"""})
    # without -k nothing new starts after //pkg:bad fails
    result = ex.build("-j2", "//pkg:bad", "//pkg:late")
    assert result.returncode == 1 and counts(result)["failed"] == 1
    assert explain(ex, "//pkg:late") == (
        "//pkg:late: skipped in build 1: it never started, because the build started nothing new "
        "after //pkg:bad (exit 3) failed (with -k it builds what does not depend on a failure); "
        "nothing of it was run or kept\n")


def test_a_failure_retried_with_the_same_key_says_so(ex, tmp_path):
    flag = tmp_path / "flag"
    rule = (
        f'genrule(name = "f", srcs = ["a.txt"], outs = ["f.out"], cmd = "test -f {flag}; cat $< > '
        '$@")\n')
    ex.write({"pkg/BUILD": rule})
    assert ex.build("//pkg:f").returncode == 1
    flag.write_text("")
    result = ex.build("--explain", "//pkg:f")
    assert result.returncode == 0, result.stderr
    sentence = ("its previous execution (build 1) had the same key and failed (exit 1); a failure "
                "is never cached, so it ran again")
    assert f"explain //pkg:f: {sentence}" in result.stderr
    out = explain(ex, "//pkg:f")
    assert "executed in build 2" in out and sentence in out and "compared with" not in out


def test_a_result_removed_by_gc_and_run_again_with_the_same_key_says_so(ex):
    # a failed build records no generation: gc may take //pkg:a's result
    ex.build("-k", "//pkg:a", "//pkg:bad")
    gc = ex.run("gc", "--max-size", "1")
    assert gc.returncode == 0, gc.stderr
    (ex.root / "posbuild-out/pkg/a.out").unlink()
    result = ex.build("--explain", "//pkg:a")
    assert counts(result)["executed"] == 1
    sentence = (
        "its previous execution (build 1) had the same key, but that result was no longer in the "
        "store")
    assert f"explain //pkg:a: {sentence}" in result.stderr
    assert sentence in explain(ex, "//pkg:a")


def test_build_dry_run_explain_gives_the_reason_of_each_action_it_would_run(ex):
    fresh = ex.build("-n", "--explain", "//pkg:b")
    assert "explain //pkg:a: no earlier execution is recorded" in fresh.stderr
    assert "explain //pkg:b: no earlier execution is recorded" in fresh.stderr
    ex.ok("//pkg:b")
    ex.write({"pkg/a.txt": "changed\n"})
    result = ex.build("-n", "--explain", "//pkg:b")
    assert result.returncode == 0
    assert "would execute //pkg:a" in result.stdout and "would execute //pkg:b" in result.stdout
    assert "explain //pkg:a: input pkg/a.txt changed: " in result.stderr
    assert "explain //pkg:b: //pkg:a, which it depends on, would execute" in result.stderr
    quiet = ex.build("-n", "//pkg:b")
    assert "explain" not in quiet.stderr


def test_build_verify_explain_says_why_a_cached_action_runs_again(ex):
    ex.ok("//pkg:a")
    result = ex.build("--verify", "--explain", "//pkg:a")
    assert "explain //pkg:a: --verify runs it again to compare with its cached result" \
            in result.stderr
    assert "`build --verify` ran it again to compare with its cached result" in explain(
        ex, "//pkg:a")

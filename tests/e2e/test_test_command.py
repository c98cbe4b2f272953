"""`posbuild test`: sh_test and py_test run in the sandbox as cached actions, Bazel's summary,
exit 5 when a test fails, failures re-run, flaky retries, timeouts, JUnit XML a standard parser
reads, and the CI shape: a cache exported after `posbuild test //...` makes a fresh clone run no
test at all."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import Workspace
from nginx_server import nginx  # noqa: F401 - the fixture

TESTS = {
    "posbuild.toml": "",
    "lib/BUILD": """
        genrule(name = "greeting", outs = ["greeting.txt"], cmd = "echo hello > $@")
        sh_test(name = "greeting_test", srcs = ["check.sh"], data = [":greeting"],
                args = ["$(location :greeting)"], size = "small")
        sh_test(name = "broken_test", srcs = ["broken.sh"])
        py_test(name = "math_test", srcs = ["math_test.py", "mathlib.py"])
    """,
    "lib/check.sh": 'echo "checking $1"\ngrep -q hello "$1"\ntouch "$TEST_TMPDIR/scratch"\n' +
                    '[ "$TEST_TARGET" = //lib:greeting_test ]\n',
    "lib/broken.sh": "echo 'expected 2, got 3 <&>'\nexit 1\n",
    "lib/math_test.py": "import mathlib\nassert mathlib.double(2) == 4\nprint('math ok')\n",
    "lib/mathlib.py": "def double(x):\n    return 2 * x\n",
}


def summary_lines(stdout: str) -> dict[str, str]:
    """`//pkg:name   (cached) PASSED in 0.0s` lines, by label, status without the time."""
    found = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"(//\S+)\s+(.*?)(?: in \d+\.\ds)?", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def final(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("Executed "))


@pytest.fixture
def tws(ws: Workspace) -> Workspace:
    ws.write(TESTS)
    return ws


def test_tests_pass_fail_and_a_passing_result_is_cached(tws: Workspace) -> None:
    first = tws.run("test")
    assert first.returncode == 5, first.stderr
    assert summary_lines(first.stdout) == {"//lib:broken_test": "FAILED",
                                           "//lib:greeting_test": "PASSED",
                                           "//lib:math_test": "PASSED"}
    assert "  posbuild-out/lib/broken_test.test.log" in first.stdout
    assert final(first.stdout) == ("Executed 3 out of 3 tests: 2 tests pass and 1 fails "
                                   "locally.")
    assert "1 test did not pass: //lib:broken_test" in first.stderr
    assert "checking posbuild-out/lib/greeting.txt" in tws.out("lib/greeting_test.test.log")

    again = tws.run("test", "//...")
    assert again.returncode == 5
    # as in Bazel, a failure is never a cached result: the failing test runs again
    assert summary_lines(again.stdout) == {"//lib:broken_test": "FAILED",
                                           "//lib:greeting_test": "(cached) PASSED",
                                           "//lib:math_test": "(cached) PASSED"}
    assert final(again.stdout) == ("Executed 1 out of 3 tests: 2 tests pass and 1 fails "
                                   "locally.")


def test_a_changed_input_runs_the_test_again(tws: Workspace) -> None:
    assert tws.run("test", "//lib:math_test").returncode == 0
    (tws.root / "lib/mathlib.py").write_text("def double(x):\n    return x + x\n")
    rerun = tws.run("test", "//lib:math_test")
    assert summary_lines(rerun.stdout) == {"//lib:math_test": "PASSED"}
    (tws.root / "lib/mathlib.py").write_text("def double(x):\n    return 3 * x\n")
    broken = tws.run("test", "//lib:math_test")
    assert broken.returncode == 5
    assert summary_lines(broken.stdout) == {"//lib:math_test": "FAILED"}
    assert "AssertionError" in tws.out("lib/math_test.test.log")


def test_junit_xml_reads_with_a_standard_parser(tws: Workspace) -> None:
    tws.run("test")
    passed = ET.parse(tws.root / "posbuild-out/lib/greeting_test.test.xml").getroot()
    assert passed.tag == "testsuites"
    suite = passed.find("testsuite")
    assert suite is not None and suite.get("name") == "//lib:greeting_test"
    assert suite.get("tests") == "1" and suite.get("failures") == "0"
    case = suite.find("testcase")
    assert case is not None and case.find("failure") is None
    assert float(case.get("time", "x")) >= 0
    assert "checking posbuild-out/lib/greeting.txt" in case.findtext("system-out", "")

    failed = ET.parse(tws.root / "posbuild-out/lib/broken_test.test.xml").getroot()
    case = failed.find("testsuite/testcase")
    assert case is not None
    failure = case.find("failure")
    assert failure is not None and failure.get("message") == "exit code 1"
    assert failed.find("testsuite").get("failures") == "1"  # type: ignore[union-attr]
    assert case.findtext("system-out") == "expected 2, got 3 <&>\n"  # escaped, read back


def test_build_builds_tests_but_does_not_run_them(tws: Workspace) -> None:
    tws.ok("//...")
    assert tws.out("lib/greeting.txt") == "hello\n"  # what a test needs is built
    assert not list((tws.root / "posbuild-out/lib").glob("*.test.*"))


def test_env_approve_covers_the_programs_tests_run(tws: Workspace) -> None:
    assert tws.run("env", "approve").returncode == 0
    result = tws.run("test", "//lib:greeting_test")
    assert result.returncode == 0, result.stderr  # no ORCH-07: the runner and sh were approved


def test_query_sees_what_a_test_needs(tws: Workspace) -> None:
    result = tws.run("query", "deps(//lib:greeting_test)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["//lib:check.sh", "//lib:greeting", "//lib:greeting_test"]


def test_a_non_test_target_is_built_not_run(tws: Workspace) -> None:
    result = tws.run("test", "//lib:greeting")
    assert result.returncode == 0, result.stderr
    assert tws.out("lib/greeting.txt") == "hello\n"
    assert "No test targets were found" in result.stdout


def test_binaries_among_the_patterns_are_built_not_run(ws: Workspace) -> None:
    """`posbuild test //...` over a package with tools as well as tests: the tools are built
    (as Bazel builds them), only the tests run."""
    ws.write({"tool/BUILD": """
                  sh_binary(name = "show", srcs = ["show.sh"])
                  py_binary(name = "report", srcs = ["report.py"])
                  sh_test(name = "show_test", srcs = ["show_test.sh"], data = [":show"])
              """,
              "tool/show.sh": "echo shown\n",
              "tool/report.py": "print('report')\n",
              "tool/show_test.sh": "test -e tool/show.sh\n"})
    result = ws.run("test", "//...")
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary_lines(result.stdout) == {"//tool:show_test": "PASSED"}
    assert final(result.stdout).startswith("Executed 1 out of 1 test")


def test_a_timeout_from_the_size_or_the_attribute(ws: Workspace) -> None:
    ws.write({"posbuild.toml": "", "t/BUILD": """
        sh_test(name = "slow_test", srcs = ["slow.sh"], timeout = 1)
    """, "t/slow.sh": "echo started\nsleep 30\n"})
    result = ws.run("test", timeout=60)
    assert result.returncode == 5
    assert summary_lines(result.stdout) == {"//t:slow_test": "TIMEOUT"}
    assert final(result.stdout) == "Executed 1 out of 1 test: 1 test times out."
    case = ET.parse(ws.root / "posbuild-out/t/slow_test.test.xml").getroot().find(
        "testsuite/testcase")
    assert case is not None and case.find("failure").get("type") == "TIMEOUT"  # type: ignore
    assert case.findtext("system-out") == "started\n"


def flaky_workspace(ws: Workspace, probe: Path, flaky: bool) -> None:
    """A test that fails on its first run and passes after (a counter outside the sandbox)."""
    ws.write({"posbuild.toml": "", "f/BUILD": f"""
        sh_test(name = "flaky_test", srcs = ["flaky.sh"], flaky = {flaky})
    """, "f/flaky.sh": f"""
        n=$(cat {probe} 2>/dev/null || echo 0)
        echo $((n + 1)) > {probe}
        echo "attempt $n"
        [ "$n" -ge 1 ]
    """})


def test_a_flaky_test_that_passes_on_a_retry_is_flaky(ws: Workspace, tmp_path: Path) -> None:
    flaky_workspace(ws, tmp_path / "runs", flaky=True)
    result = ws.run("test")
    assert result.returncode == 0, result.stderr
    assert summary_lines(result.stdout) == {"//f:flaky_test": "FLAKY, failed in 1 out of 2"}
    assert final(result.stdout) == "Executed 1 out of 1 test: 1 test is flaky."
    assert (tmp_path / "runs").read_text() == "2\n"
    assert summary_lines(ws.run("test").stdout) == {"//f:flaky_test": "(cached) PASSED"}


def test_flaky_attempts_overrides(ws: Workspace, tmp_path: Path) -> None:
    flaky_workspace(ws, tmp_path / "runs", flaky=True)
    once = ws.run("test", "--flaky-attempts", "1")
    assert once.returncode == 5
    assert summary_lines(once.stdout) == {"//f:flaky_test": "FAILED"}
    (tmp_path / "runs").unlink()
    flaky_workspace(ws, tmp_path / "runs", flaky=False)  # not flaky: one attempt, unless told
    assert ws.run("test").returncode == 5
    (tmp_path / "runs").unlink()
    assert ws.run("test", "--flaky-attempts", "2").returncode == 0


def test_tests_run_in_parallel(ws: Workspace, tmp_path: Path) -> None:
    """Each test waits for the other's flag: they pass only if they run at the same time."""
    files = {"posbuild.toml": "", "p/BUILD": """
        sh_test(name = "a_test", srcs = ["a.sh"], timeout = 20)
        sh_test(name = "b_test", srcs = ["b.sh"], timeout = 20)
    """}
    for me, other in (("a", "b"), ("b", "a")):
        files[f"p/{me}.sh"] = (f"touch {tmp_path}/{me}\n"
                               f"for i in $(seq 100); do [ -e {tmp_path}/{other} ] && exit 0; "
                               "sleep 0.1; done\nexit 1\n")
    ws.write(files)
    result = ws.run("test", "-j", "2")
    assert result.returncode == 0, result.stdout
    assert final(result.stdout) == "Executed 2 out of 2 tests: 2 tests pass."


def test_a_test_whose_dependency_fails_has_no_status(ws: Workspace) -> None:
    ws.write({"posbuild.toml": "", "d/BUILD": """
        genrule(name = "input", outs = ["input.txt"], cmd = "exit 1")
        sh_test(name = "needs_test", srcs = ["t.sh"], data = [":input"])
        sh_test(name = "alone_test", srcs = ["t.sh"])
    """, "d/t.sh": "true\n"})
    result = ws.run("test")
    assert result.returncode == 1  # the build failed, as in Bazel
    assert summary_lines(result.stdout) == {"//d:alone_test": "PASSED",
                                           "//d:needs_test": "NO STATUS"}
    assert final(result.stdout) == ("Executed 1 out of 2 tests: 1 test passes and 1 was "
                                    "skipped.")


@pytest.mark.parametrize("rule, detail", [
    ('sh_test(name = "t", srcs = ["a.sh", "b.sh"])', "srcs must name exactly one script"),
    ('py_test(name = "t", srcs = ["a.py"])', "main 't.py' is not in srcs"),
    ('sh_test(name = "t", srcs = ["a.sh"], size = "huge")', "'size' must be one of small"),
    ('sh_test(name = "t", srcs = ["a.sh"], timeout = "forever")', "short, moderate"),
    ('genrule(name = "g", outs = ["t.test.log"], cmd = "true")\n'
     'sh_test(name = "t", srcs = ["a.sh"])', "//b:g: output 't.test.log' is where the test //b:t"),
])
def test_bad_test_attributes_are_build_file_errors(ws: Workspace, rule: str,
                                                   detail: str) -> None:
    ws.write({"posbuild.toml": "", "b/BUILD": rule + "\n", "b/a.sh": "", "b/b.sh": "",
              "b/a.py": ""})
    result = ws.run("test")
    assert result.returncode == 3
    assert result.stderr.startswith("posbuild: b/BUILD:1") and detail in result.stderr
    assert "Traceback" not in result.stderr


def test_ci_runs_no_test_after_importing_the_cache(tws: Workspace, tmp_path: Path) -> None:
    """The CI shape: test, export the cache, import it into a fresh clone: nothing runs."""
    (tws.root / "lib/broken.sh").write_text("true\n")
    key = {"POSBUILD_CACHE_KEY": "ci key"}
    assert tws.run("test", "//...", env=key).returncode == 0
    archive = tmp_path / "ci-cache.tar.gz"
    exported = tws.run("cache", "export", str(archive), "//...", env=key)
    assert exported.returncode == 0, exported.stderr

    clone = Workspace(tmp_path / "clone")
    shutil.copytree(tws.root, clone.root, ignore=shutil.ignore_patterns(".posbuild",
                                                                        "posbuild-out"))
    imported = clone.run("cache", "import", str(archive), env=key)
    assert imported.returncode == 0, imported.stderr
    result = clone.run("test", "//...", env=key)
    assert result.returncode == 0, result.stderr
    assert set(summary_lines(result.stdout).values()) == {"(cached) PASSED"}
    assert final(result.stdout) == "Executed 0 out of 3 tests: 3 tests pass."
    assert "checking" in clone.out("lib/greeting_test.test.log")


def test_test_results_come_from_the_remote_cache(tmp_path: Path, nginx) -> None:  # noqa: F811
    """The other CI shape: one machine uploads its test results, a fresh one runs none."""
    key = {"POSBUILD_CACHE_KEY": "remote key"}
    machines = []
    for name in ("a", "b"):
        ws = Workspace(tmp_path / name)
        ws.write({**TESTS, "posbuild.toml": f'[cache]\nremote = "{nginx.url}"\n',
                  "lib/broken.sh": "true\n"})
        machines.append(ws)
    first = machines[0].run("test", "--remote-upload", env=key)
    assert first.returncode == 0, first.stderr
    second = machines[1].run("test", env=key)
    assert second.returncode == 0, second.stderr
    assert final(second.stdout) == "Executed 0 out of 3 tests: 3 tests pass."
    assert set(summary_lines(second.stdout).values()) == {"(cached) PASSED"}


def test_a_test_over_its_declared_memory_is_orch_05(ws: Workspace) -> None:
    ws.write({"posbuild.toml": "", "m/BUILD": """
        py_test(name = "big_test", srcs = ["big_test.py"], resources = {"mem_mb": 1})
    """, "m/big_test.py": "block = bytearray(64 << 20)\n"})
    result = ws.run("test")
    assert result.returncode == 15, result.stderr
    assert "ORCH-05 resource oversubscription" in result.stderr
    assert summary_lines(result.stdout) == {"//m:big_test": "FAILED"}


def test_an_executable_script_in_the_root_package_runs_by_its_own_interpreter(ws: Workspace
                                                                             ) -> None:
    # `check.sh`, executable, at the workspace's root: a path without a slash, which running it
    # must not look up on PATH; `[[` is bash's, so it ran by its #! line, not by sh
    ws.write({"posbuild.toml": "", "BUILD": 'sh_test(name = "root_test", srcs = ["check.sh"])\n',
              "check.sh": '#!/bin/bash\n[[ -n "$TEST_TARGET" ]] && echo "ran $TEST_TARGET"\n'})
    (ws.root / "check.sh").chmod(0o755)
    result = ws.run("test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary_lines(result.stdout) == {"//:root_test": "PASSED"}
    assert ws.out("root_test.test.log") == "ran //:root_test\n"

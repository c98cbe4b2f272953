"""The pieces of `posbuild test`: the in-sandbox runner's XML, reading it back, Bazel's summary
lines, and the test rules' attributes (size, timeout, entry point)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from posbuild.core.label import Label
from posbuild.core import target as targets
from posbuild.core.target import AttributeError_, make_target
from posbuild.engine.testresults import (FAILED, FLAKY, NO_STATUS, PASSED, TIMEOUT, Run,
                                         Verdict, final_line, read_result, summary)
from posbuild.load import testaction


def run_runner(tmp_path: Path, argv: list[str], timeout: int = 30, shell: bool = False) -> Run:
    command = testaction.test_command(sys.executable, "//p:t", argv, "t.test.log",
                                      "t.test.xml", timeout, shell)
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, timeout=60)
    assert done.returncode == 0  # a failing test is a result, not a failed action
    return read_result(tmp_path / "t.test.xml")


def test_runner_passes_fails_and_keeps_the_log(tmp_path: Path) -> None:
    assert run_runner(tmp_path, ["sh", "-c", "echo fine"]).status == PASSED
    assert (tmp_path / "t.test.log").read_text() == "fine\n"
    assert run_runner(tmp_path, ["sh", "-c", "echo bad >&2; exit 4"]).status == FAILED
    case = ET.parse(tmp_path / "t.test.xml").getroot().find("testsuite/testcase")
    assert case is not None and case.find("failure").get("message") == "exit code 4"  # type: ignore
    assert case.findtext("system-out") == "bad\n"


def test_runner_times_out_and_kills_the_test_s_children(tmp_path: Path) -> None:
    run = run_runner(tmp_path, ["sh", "-c", "sleep 30 & sleep 30"], timeout=1)
    assert run.status == TIMEOUT and run.seconds is not None and run.seconds < 10


def test_runner_log_with_bytes_xml_cannot_hold(tmp_path: Path) -> None:
    run = run_runner(tmp_path, ["sh", "-c", r"printf 'a\001b\377c]]>\n'"])
    assert run.status == PASSED
    case = ET.parse(tmp_path / "t.test.xml").getroot().find("testsuite/testcase")
    assert case is not None and case.findtext("system-out") == "a?b\ufffdc]]>\n"


def test_runner_runs_a_script_without_its_executable_bit_with_sh(tmp_path: Path) -> None:
    (tmp_path / "t.sh").write_text("echo from sh\n")
    assert run_runner(tmp_path, ["t.sh"], shell=True).status == PASSED
    assert (tmp_path / "t.test.log").read_text() == "from sh\n"


def test_missing_or_broken_xml_has_no_status(tmp_path: Path) -> None:
    assert read_result(tmp_path / "none.xml") == Run(NO_STATUS)
    (tmp_path / "bad.xml").write_text("<testsuites><")
    assert read_result(tmp_path / "bad.xml") == Run(NO_STATUS)


def result(label: str, status: str, cached: bool = False, attempts: int = 1,
           seconds: float | None = 0.25) -> Verdict:
    return Verdict(label, status, cached, 0 if cached else attempts, seconds,
                      f"posbuild-out/{label[2:].replace(':', '/')}.test.log")


def test_summary_is_bazel_s() -> None:
    lines = summary([result("//a:one", PASSED, cached=True), result("//a:two", FAILED),
                     result("//b:flaky", FLAKY, attempts=2), result("//b:gone", NO_STATUS,
                                                                     attempts=0)])
    assert lines == [
        "//a:one                (cached) PASSED in 0.2s",
        "//a:two                         FAILED in 0.2s",
        "  posbuild-out/a/two.test.log",
        "//b:flaky  FLAKY, failed in 1 out of 2 in 0.2s",
        "  posbuild-out/b/flaky.test.log",
        "//b:gone                             NO STATUS",
        "Executed 2 out of 4 tests: 1 test passes, 1 is flaky, 1 fails locally and 1 was "
        "skipped.",
    ]


@pytest.mark.parametrize("statuses, line", [
    ([PASSED], "Executed 1 out of 1 test: 1 test passes."),
    ([PASSED, PASSED], "Executed 2 out of 2 tests: 2 tests pass."),
    ([FAILED, FAILED, TIMEOUT], "Executed 3 out of 3 tests: 2 tests fail locally and 1 times "
                                "out."),
])
def test_final_line(statuses: list[str], line: str) -> None:
    assert final_line([result(f"//p:t{i}", s) for i, s in enumerate(statuses)]) == line


def target(kind: str, **attrs: object) -> targets.Target:
    return make_target(kind, Label("p", "t"), dict(attrs), None)


def test_timeout_follows_size_and_bazel_s_names() -> None:
    def seconds(kind: str = "sh_test", **attrs: object) -> int:
        srcs = ["t.py"] if kind == "py_test" else ["t.sh"]
        return targets.test_timeout(target(kind, srcs=srcs, **attrs))

    assert seconds() == 300  # medium, Bazel's default
    assert seconds(size="small") == 60
    assert seconds(size="enormous") == 3600
    assert seconds(size="small", timeout="long") == 900
    assert seconds("py_test", timeout=5) == 5


def test_py_rules_run_main_by_default_name_py() -> None:
    assert target("py_test", srcs=["t.py", "lib.py"]).main == "t.py"
    assert target("py_binary", srcs=["tool.py"], main="tool.py").main == "tool.py"
    with pytest.raises(AttributeError_, match="main 'x.py' is not in srcs"):
        target("py_binary", srcs=["tool.py"], main="x.py")
    with pytest.raises(AttributeError_, match="unknown attribute 'size'"):
        target("sh_binary", srcs=["t.sh"], size="small")  # a binary is not a test

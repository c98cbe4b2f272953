"""The pure pieces that show and keep what an action said: cutting a long output, the "not
found" hint, and what a failed run's folder keeps."""

from __future__ import annotations

import os
from pathlib import Path

from posbuild.engine.notfound import Sandbox, hint
from posbuild.engine.postmortem import copy_written, failure_folder
from posbuild.engine.reporter import OUTPUT_BYTES, clipped, output_block


def test_short_output_is_shown_whole():
    assert clipped("a\nb") == ("a\nb", 0)


def test_output_is_cut_after_the_line_limit():
    text = "\n".join(str(n) for n in range(500))
    head, left = clipped(text)
    assert head.splitlines() == [str(n) for n in range(200)] and left == 300


def test_output_is_cut_after_the_byte_limit_at_a_line_end():
    text = "\n".join("x" * 1000 for _ in range(100))  # 100 lines, ~100 KB
    head, left = clipped(text)
    assert len(head) <= OUTPUT_BYTES and all(line == "x" * 1000 for line in head.splitlines())
    assert left == 100 - len(head.splitlines())


def test_one_line_longer_than_the_byte_limit_is_cut_and_counted():
    head, left = clipped("y" * (OUTPUT_BYTES + 10))
    assert len(head) == OUTPUT_BYTES and left == 1


def test_a_block_shows_stdout_then_stderr_and_nothing_for_silence():
    assert output_block("//p:a", b"out\n", b"err\n") == "INFO: From //p:a:\nout\nerr\n"
    assert output_block("//p:a", b"", b"  \n") == ""


def test_a_cut_block_names_the_command_that_prints_all_of_it():
    block = output_block("//p:a", "\n".join("x" * 300).encode(), b"")
    assert block.endswith("(output cut: 100 more lines; all of it: "
                          "posbuild log --output //p:a)\n")


SANDBOX = Sandbox(("/ws", "/tmp"), "/usr/local/bin:/usr/bin:/bin", "")


def test_no_hint_unless_the_shell_did_not_find_a_program(tmp_path: Path):
    tool = tmp_path / "t"
    tool.write_text("")
    here = Sandbox((str(tmp_path),), "/usr/bin", "")
    assert hint(1, f"bash: line 1: {tool}: No such file or directory\n".encode(), here) is None
    assert hint(127, f"bash: line 1: {tool}: No such file or directory\n".encode(),
                here) is not None


def test_a_program_on_the_callers_path_only_is_named_with_its_path(tmp_path: Path):
    tool = tmp_path / "samtools"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    seen = Sandbox((), "/usr/bin", str(tmp_path))
    found = hint(127, b"sh: 1: samtools: not found\n", seen)
    assert found is not None and f"'samtools' is {tool}" in found and "PATH=/usr/bin" in found


def test_a_program_nowhere_on_this_machine_gets_no_hint():
    assert hint(127, b"bash: line 1: no-such-program-xyz: command not found\n",
                Sandbox((), "/usr/bin", os.environ.get("PATH", ""))) is None


def test_failure_folder_is_package_then_name(tmp_path: Path):
    assert failure_folder(tmp_path, "//a/b:c") == tmp_path / "a/b/c"


def test_copy_written_skips_inputs_and_links(tmp_path: Path):
    root = tmp_path / "exec"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg/in.txt").write_text("input")
    (root / "pkg/out.log").write_text("log")
    (root / "pkg/link").symlink_to("/etc/passwd")
    copy_written(root, tmp_path / "kept", frozenset({"pkg/in.txt"}))
    assert sorted(p.name for p in (tmp_path / "kept/pkg").iterdir()) == ["out.log"]


def test_terminal_clears_its_status_line_before_an_output_block():
    import io

    from posbuild.core.records import Outcome
    from posbuild.engine.reporter import QuietReporter, TerminalReporter

    out, err = io.StringIO(), io.StringIO()
    terminal = TerminalReporter(out, err, interval=0)
    terminal.build_started(2, 0)
    terminal.action_finished("//p:a", Outcome.EXECUTED, "", b"")
    terminal.action_output("//p:a", b"hello\n", b"")
    assert out.getvalue().endswith("\r" + " " * len("[1/2] //p:a") + "\r")
    assert err.getvalue() == "INFO: From //p:a:\nhello\n"
    quiet_err = io.StringIO()
    QuietReporter(io.StringIO(), quiet_err).action_output("//p:a", b"hello\n", b"")
    assert quiet_err.getvalue() == ""

"""Live progress through the real CLI: the terminal's status line names the running actions
with their elapsed time and message while they run, piped output says when an action runs long,
and `-q` stays silent."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import time

from conftest import POSBUILD, Workspace

SLOW = {
    "p/BUILD": """
        genrule(name = "slow", outs = ["slow.txt"], message = "sorting sample A",
                cmd = "sleep 2.5; echo done > $@")
        genrule(name = "fast", outs = ["fast.txt"], cmd = "echo x > $@")
    """,
}


def in_terminal(ws: Workspace, *args: str,
                env: dict[str, str] | None = None) -> list[tuple[float, str]]:
    """Run `posbuild ARGS` with a pseudo-terminal as stdout and stderr; what it wrote, as
    (seconds since the start, text) for each rewrite of the line (split at `\\r` and `\\n`)."""
    controller, terminal = pty.openpty()
    started = time.monotonic()
    proc = subprocess.Popen([*POSBUILD, *args], cwd=ws.root, stdin=subprocess.DEVNULL,
                            stdout=terminal, stderr=terminal, env={**os.environ, **(env or {})})
    os.close(terminal)
    screen: list[tuple[float, str]] = []
    try:
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:  # EIO: the build closed the terminal
                break
            if not data:
                break
            at = time.monotonic() - started
            screen += [(at, part) for part in re.split(r"[\r\n]+", data.decode())
                       if part.strip()]
    finally:
        os.close(controller)
        assert proc.wait(timeout=60) == 0, screen
    return screen


def test_terminal_shows_the_running_action_its_message_and_elapsed_time(ws: Workspace) -> None:
    ws.write(SLOW)
    screen = in_terminal(ws, "build", "//p:slow")
    texts = [text for _, text in screen]
    summary = next(i for i, text in enumerate(texts) if text.startswith("OK: 1 action "))
    live = texts[:summary]
    # from the first second, before any action has finished
    assert any(text.startswith("[0/1] 0s //p:slow: sorting sample A") for text in live), texts
    # and at least once a second while it runs
    for second in (1, 2):
        assert any(text.startswith(f"[0/1] {second}s //p:slow: sorting sample A")
                   for text in live), texts


def test_terminal_status_redraws_within_a_second(ws: Workspace) -> None:
    """The elapsed seconds tick on screen: each of 0s, 1s, 2s shows up less than a second after
    the one before."""
    ws.write(SLOW)
    screen = in_terminal(ws, "build", "//p:slow")
    first_seen = {}
    for at, text in screen:
        match = re.match(r"\[0/1\] (\d)s //p:slow", text)
        if match:
            first_seen.setdefault(int(match.group(1)), at)
    assert sorted(first_seen) == [0, 1, 2], screen
    assert first_seen[1] - first_seen[0] < 1.6 and first_seen[2] - first_seen[1] < 1.6, screen


def test_quiet_prints_nothing_while_an_action_runs(ws: Workspace) -> None:
    ws.write(SLOW)
    assert in_terminal(ws, "build", "-q", "//p:slow") == []
    piped = ws.build("-q", "//...", env={"POSBUILD_STILL_RUNNING_AFTER": "0.5"})
    assert piped.returncode == 0
    assert piped.stdout == piped.stderr == ""


def test_piped_output_says_still_running_for_a_long_action(ws: Workspace) -> None:
    ws.write(SLOW)
    result = ws.build("//...", env={"POSBUILD_STILL_RUNNING_AFTER": "1"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # once at the threshold, again each time its run doubles; a quick action never gets one
    still = [line for line in lines if line.startswith("still running")]
    assert still and still[0] == "still running: //p:slow: sorting sample A (1s)", lines
    assert all(re.fullmatch(r"still running: //p:slow: sorting sample A \(2s\)", line)
               for line in still[1:]), lines
    # the one line per finished action is as before, after the lines that said it runs
    assert "[1/2] //p:fast" in lines and "[2/2] //p:slow" in lines
    assert lines.index("[2/2] //p:slow") > lines.index(still[-1])
    assert lines[-1].startswith("OK: 2 actions (2 executed, 0 cached, 0 failed)")

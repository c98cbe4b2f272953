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


def _messages_written(ws: Workspace, *args: str,
                      env: dict[str, str]) -> tuple[int, list[bytes], float]:
    """Run `posbuild ARGS` with stdout and stderr one SOCK_SEQPACKET socket, on which every
    `write()` arrives as a message of its own: (exit code, the messages in order, seconds)."""
    import socket
    import threading

    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    messages: list[bytes] = []

    def read() -> None:
        while message := reader.recv(1 << 16):
            messages.append(message)

    thread = threading.Thread(target=read)
    thread.start()
    started = time.monotonic()
    try:
        proc = subprocess.Popen([*POSBUILD, *args], cwd=ws.root, stdin=subprocess.DEVNULL,
                                stdout=writer.fileno(), stderr=writer.fileno(),
                                env={**os.environ, **env})
        writer.close()
        code = proc.wait(timeout=120)
    finally:
        writer.close()
        thread.join(timeout=30)
        reader.close()
    return code, messages, time.monotonic() - started


def test_piped_lines_are_written_together_even_unbuffered(ws: Workspace) -> None:
    """Under PYTHONUNBUFFERED (which CI images often set) each line was a write of its own, and
    every write woke the pipe's reader: a cold build of 10,000 cheap actions piped into `cat`
    took 13 s instead of 10. The lines of a burst of finished actions now go out together,
    complete and in order, and stderr's text still follows the lines before it."""
    count = 120
    ws.write({"p/BUILD": "\n".join(
        f'genrule(name = "t{n:03d}", outs = ["t{n:03d}.txt"], cmd = "echo {n} > $@")'
        for n in range(count)) + '\ngenrule(name = "loud", srcs = [":t000"], outs = ["l.txt"], '
        'cmd = "echo said-on-stderr >&2; echo x > $@")\n'})
    code, messages, seconds = _messages_written(ws, "build", "-j2", "//...",
                                                env={"PYTHONUNBUFFERED": "1"})
    text = b"".join(messages).decode()
    assert code == 0, text
    lines = text.splitlines()
    finished = [line for line in lines if line.startswith("[")]
    assert [line.split("]")[0] for line in finished] == [f"[{n}" + f"/{count + 1}"
                                                         for n in range(1, count + 2)]
    # one write per line before (count + 1 lines, the output block and the summary); now at
    # most ten a second, and a few for stderr's text and the summary, however slow the machine
    assert len(messages) < count and len(messages) <= 10 * seconds + 12, (
        seconds, [m[:40] for m in messages])
    # the action's stderr comes after the line of the action that printed it, which ends first
    assert lines.index("said-on-stderr") > lines.index(
        next(line for line in finished if line.endswith("//p:loud")))
    assert lines[-1].startswith(f"OK: {count + 1} actions")


def test_piped_lines_reach_the_log_while_the_build_runs(ws: Workspace) -> None:
    """Without PYTHONUNBUFFERED a pipe is block-buffered: the lines of a slow build's actions
    reached a CI log only at the end (or 8 KiB at a time). Each now comes within half a second
    of its action's end."""
    ws.write({"p/BUILD": """
        genrule(name = "a", outs = ["a.txt"], cmd = "echo a > $@")
        genrule(name = "b", srcs = [":a"], outs = ["b.txt"], cmd = "sleep 2; cat $< > $@")
    """})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    started = time.monotonic()
    proc = subprocess.Popen([*POSBUILD, "build", "//..."], cwd=ws.root, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    arrived = [(time.monotonic() - started, line.decode()) for line in proc.stdout]
    assert proc.wait(timeout=60) == 0, arrived
    first = next(at for at, line in arrived if line.startswith("[1/2] //p:a"))
    last = next(at for at, line in arrived if line.startswith("[2/2] //p:b"))
    assert last - first > 1.5, arrived  # read while //p:b still slept

"""An action's timeout is enforced by the thread that waits for it, with no thread of its own: a
timer thread per action could fail to start (a thread limit, no memory) and the timeout with it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from posbuild.core.action import Action
from posbuild.exec.sandbox import LocalSpawner


def _action(command: str, timeout: float) -> Action:
    return Action(label="//pkg:slow", kind="genrule", command=command, inputs=(), tools=(),
                  outputs=("posbuild-out/pkg/out.txt",), env=(), versions=(), timeout=timeout,
                  tags=(), def_hash=b"\0" * 32, deps=(), sources=(), resources=(1, 0, 0))


@pytest.fixture
def sandboxes(tmp_path: Path) -> LocalSpawner:
    (tmp_path / "ws/pkg").mkdir(parents=True)
    return LocalSpawner(tmp_path / "ws", tmp_path / "sandboxes")


def test_a_timeout_holds_when_no_thread_can_be_started(sandboxes, monkeypatch) -> None:
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    began = time.monotonic()
    result = sandboxes.run(_action("sleep 30", timeout=0.5))
    try:
        assert result.timed_out and result.exit_code != 0
        assert time.monotonic() - began < 10
    finally:
        sandboxes.remove(result)


def test_a_command_that_ends_in_time_is_not_a_timeout(sandboxes) -> None:
    result = sandboxes.run(_action("echo ok > posbuild-out/pkg/out.txt", timeout=30))
    try:
        assert not result.timed_out and result.exit_code == 0 and not result.missing
    finally:
        sandboxes.remove(result)


def test_a_command_waited_for_after_its_deadline_is_timed_out_at_once(sandboxes) -> None:
    running = sandboxes.start(_action("sleep 30", timeout=0.2))
    time.sleep(0.5)  # the scheduler may come to wait only after the deadline passed
    began = time.monotonic()
    result = sandboxes.wait(running)
    try:
        assert result.timed_out and time.monotonic() - began < 5
    finally:
        sandboxes.remove(result)


def test_a_command_that_ended_before_a_late_wait_is_not_a_timeout(sandboxes) -> None:
    running = sandboxes.start(_action("echo ok > posbuild-out/pkg/out.txt", timeout=0.3))
    time.sleep(1.0)
    result = sandboxes.wait(running)
    try:
        assert not result.timed_out and result.exit_code == 0
    finally:
        sandboxes.remove(result)

"""sandbox.LocalSpawner around one command: what the sandbox holds, how it is removed whatever the
command left in it, how stdout and stderr are captured, and which processors a command gets."""

from __future__ import annotations

import gc
import os
import subprocess
import threading
from pathlib import Path

import pytest

from posbuild.core.action import Action
from posbuild.exec.orphans import ORPHANS
from posbuild.exec.sandbox import LocalSpawner


def _action(command: str, inputs: tuple[str, ...] = ("pkg/a.txt", "lib/deep/b.txt"),
            outputs: tuple[str, ...] = ("posbuild-out/pkg/out.txt",), cpu: int = 1) -> Action:
    return Action(label="//pkg:probe", kind="genrule", command=command, inputs=inputs, tools=(),
                  outputs=outputs,
                  env=(), versions=(), timeout=0, tags=(), def_hash=b"\0" * 32, deps=(),
                  sources=inputs, resources=(cpu, 0, 0))


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "pkg").mkdir(parents=True)
    (root / "lib/deep").mkdir(parents=True)
    (root / "pkg/a.txt").write_text("a\n")
    (root / "lib/deep/b.txt").write_text("b\n")
    return root


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "sandboxes"


def _run_and_remove(sandboxes: LocalSpawner, action: Action) -> tuple[int, bytes, bytes, list[str]]:
    """Run, list what the sandbox held afterwards (relative paths), remove it."""
    result = sandboxes.run(action)
    sandbox = result.exec_root.parent
    held = sorted(str(p.relative_to(sandbox)) for p in sandbox.rglob("*"))
    sandboxes.remove(result)
    assert not sandbox.exists() and not sandbox.is_symlink()
    return result.exit_code, result.stdout, result.stderr, held


def test_a_sandbox_holds_the_inputs_and_output_folders_only_and_captures_both_streams(
    workspace, base) -> None:
    code, out, err, held = _run_and_remove(LocalSpawner(workspace, base),
                                           _action("cat pkg/a.txt lib/deep/b.txt > "
                                                   "posbuild-out/pkg/out.txt; echo to-out; echo "
                                                   "to-err >&2"))
    assert (code, out, err) == (0, b"to-out\n", b"to-err\n")
    assert held == ["exec", "exec/lib", "exec/lib/deep", "exec/lib/deep/b.txt", "exec/pkg",
                    "exec/pkg/a.txt",
                    "exec/posbuild-out", "exec/posbuild-out/pkg", "exec/posbuild-out/pkg/out.txt",
                    "tmp"]


def test_large_captured_output_is_read_whole(workspace, base) -> None:
    code, out, _, _ = _run_and_remove(LocalSpawner(workspace, base),
                                      _action(
                                          "head -c 300000 /dev/zero | tr '\\0' x; touch "
                                          "posbuild-out/pkg/out.txt"))
    assert code == 0 and out == b"x" * 300_000


@pytest.mark.parametrize("leftovers", [
    "mkdir -p tmp/cache/x && touch tmp/cache/x/y $HOME/z",  # in the command's HOME/TMPDIR
    "touch pkg/extra && mkdir -p new/deeper && touch new/deeper/f",  # beside the inputs
    "rm pkg/a.txt && mkdir pkg/a.txt && touch pkg/a.txt/inside",  # an input turned into a folder
    "rm -r lib",  # folders the sandbox made, already gone
    "chmod 500 pkg",  # a folder the sandbox cannot remove from without making it writable again
])
def test_whatever_a_command_leaves_the_sandbox_is_removed_entirely(workspace, base,
                                                                   leftovers) -> None:
    code, _, err, _ = _run_and_remove(LocalSpawner(workspace, base),
                                      _action(f"{leftovers}; exit 0"))
    assert code == 0, err
    assert os.listdir(base) == []


def test_a_folder_swapped_for_a_link_never_redirects_the_removal(workspace, base, tmp_path) -> None:
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    for name in ("a.txt", "deep/b.txt"):  # the very names the sandbox would remove
        (outside / name).write_text("keep\n")
    command = f"rm -r pkg lib/deep && ln -s {outside} pkg && ln -s {outside} lib/deep"
    code, _, err, _ = _run_and_remove(LocalSpawner(workspace, base), _action(command))
    assert code == 0, err
    assert (outside / "a.txt").read_text() == "keep\n" \
            and (outside / "deep/b.txt").read_text() == ("keep\n")
    assert os.listdir(base) == []


def test_a_sandbox_base_nobody_made_yet_is_made(workspace, tmp_path) -> None:
    code, _, _, _ = _run_and_remove(LocalSpawner(workspace, tmp_path / "not/yet"),
                                    _action("touch posbuild-out/pkg/out.txt"))
    assert code == 0


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and at least two processors")
def test_each_command_gets_its_own_processors_whatever_the_thread_ran_before(workspace,
                                                                             base) -> None:
    everything = len(os.sched_getaffinity(0))
    probe = "python3 -c 'import os; print(len(os.sched_getaffinity(0)))'"
    sandboxes = LocalSpawner(workspace, base)
    seen: list[int] = []

    def worker() -> None:  # one thread, as a build's worker runs one action after another
        for cpu in (1, 1, 0, 2, 1, 0):
            code, out, err, _ = _run_and_remove(sandboxes, _action(probe, inputs=(), cpu=cpu))
            assert code == 0, err
            seen.append(int(out))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [1, 1, everything, 2, 1, everything]
    _run_and_remove(sandboxes, _action(probe, inputs=(), cpu=1))  # on the main thread
    assert len(os.sched_getaffinity(0)) == everything  # which never stays confined


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and at least two processors")
def test_a_command_is_pinned_where_the_kernel_runs_its_spawner(workspace, base,
                                                               monkeypatch) -> None:
    # two builds side by side must not both put every command on the lowest processor: among
    # processors this build uses equally, the one the spawning thread runs on now is taken
    import posbuild.exec.sandbox as sandbox

    probe = "python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))'"
    highest = max(os.sched_getaffinity(0))
    monkeypatch.setattr(sandbox, "current_processor", lambda: highest)
    code, out, err, _ = _run_and_remove(LocalSpawner(workspace, base),
                                        _action(probe, inputs=(), cpu=1))
    assert code == 0, err
    assert out.split() == [str(highest).encode()]


def test_every_command_reads_an_empty_stdin(workspace, base) -> None:
    sandboxes = LocalSpawner(workspace, base)
    for _ in range(2):  # the same /dev/null descriptor serves every command
        result = sandboxes.run(_action("cat > posbuild-out/pkg/out.txt; echo $?"))
        try:
            assert result.exit_code == 0 and result.stdout == b"0\n"
            assert (result.exec_root / "posbuild-out/pkg/out.txt").read_bytes() == b""
        finally:
            sandboxes.remove(result)


def test_start_returns_while_the_command_runs_and_wait_reports_its_end(workspace, base,
                                                                       tmp_path) -> None:
    # the command waits (up to 10 s) for a file the test makes only after start() has returned:
    # had start() waited for the command, it would have found no file
    marker = tmp_path / "go"
    sandboxes = LocalSpawner(workspace, base)
    running = sandboxes.start(_action(
        f"for i in $(seq 100); do [ -e {marker} ] && break; sleep 0.1; done; "
        f"if [ -e {marker} ]; then echo saw > posbuild-out/pkg/out.txt; else echo none > "
        "posbuild-out/pkg/out.txt; fi"))
    marker.touch()
    result = sandboxes.wait(running)
    try:
        assert result.exit_code == 0 and not result.missing
        assert (result.exec_root / "posbuild-out/pkg/out.txt").read_text() == "saw\n"
    finally:
        sandboxes.remove(result)
    assert not result.exec_root.parent.exists()


def test_the_orphan_guard_is_not_polled_by_every_later_command(workspace, base) -> None:
    # subprocess polls (wait4) each process whose Popen it saw dropped while running, at every
    # later Popen: the guard, running for the whole build, must not be one of them
    sandboxes = LocalSpawner(workspace, base)
    for _ in range(2):
        sandboxes.remove(sandboxes.run(_action("echo x > posbuild-out/pkg/out.txt")))
    gc.collect()
    guard = ORPHANS._process
    assert guard is not None and guard.poll() is None  # started with the first command, running
    assert all(process.pid != guard.pid for process in subprocess._active)  # type: ignore[attr-defined]

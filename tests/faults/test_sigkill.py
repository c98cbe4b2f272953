"""Real fault injection: SIGKILL a running `posbuild build` at many instants, then build again.

DESIGN §7.3: killing posbuild at any instant leaves a state from which the next build finishes
correctly — every output present with the right bytes, no temp file under `posbuild-out/`, a
result in the store for each action's key as the correctness oracle recomputes it
(tests/oracle.py), and a build after that executes nothing. The kill delays are fractions of a
measured clean build, so they land before, during and near the end of the work whatever the
speed of the machine.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import POSBUILD, Workspace, counts
from oracle import assert_correct_build

N_SOURCES = 5
N_ACTIONS = 40


def _name(i: int) -> str:
    return f"n{i:02d}"


def _srcs(i: int) -> list[str]:
    """A chain/diamond mix: five interleaved chains, with cross links and fresh sources."""
    if i < N_SOURCES:
        return [f"s{i}.txt"]
    srcs = [f":{_name(i - N_SOURCES)}"]
    if i % 2 == 0:
        srcs.append(f":{_name(i - 1)}")
    if i % 3 == 0:
        srcs.append(f"s{i % N_SOURCES}.txt")
    return srcs


def _workspace_files() -> dict[str, str]:
    files = {f"g/s{i}.txt": f"source {i}\n" * (i + 1) for i in range(N_SOURCES)}
    rules = []
    for i in range(N_ACTIONS):
        srcs = ", ".join(f'"{s}"' for s in _srcs(i))
        rules.append(
            f'genrule(name = "{_name(i)}", srcs = [{srcs}], outs = ["{_name(i)}.txt"], '
            f'cmd = "sleep 0.05; {{ echo {_name(i)}; cat $(SRCS) | md5sum; }} > $@")'
        )
    files["g/BUILD"] = "\n".join(rules) + "\n"
    return files


def _expected(changed: dict[str, str] | None = None) -> dict[str, bytes]:
    """Every output's bytes, computed in Python from the graph definition (and changed sources)."""
    files = {**_workspace_files(), **(changed or {})}
    content: dict[str, bytes] = {}
    for i in range(N_ACTIONS):
        data = b"".join(
            content[s[1:]] if s.startswith(":") else files[f"g/{s}"].encode() for s in _srcs(i)
        )
        content[_name(i)] = f"{_name(i)}\n{hashlib.md5(data).hexdigest()}  -\n".encode()
    return {f"g/{name}.txt": data for name, data in content.items()}


def _posbuild_out(root: Path) -> dict[str, bytes]:
    out = root / "posbuild-out"
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _temp_names(root: Path) -> list[str]:
    out = root / "posbuild-out"
    if not out.exists():
        return []
    return [str(p.relative_to(out)) for p in out.rglob("*") if ".tmp" in p.name
            or p.name.startswith(".")]


def _fresh_workspace(path: Path) -> Workspace:
    path.mkdir()
    (path / "posbuild.toml").write_text("")
    ws = Workspace(path)
    ws.write(_workspace_files())
    return ws


def _start(ws: Workspace, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*POSBUILD, "build", *args], cwd=ws.root, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ),
    )


def _kill_after(proc: subprocess.Popen[bytes], delay: float) -> bool:
    """SIGKILL the whole process group after `delay` s; whether it was still running then."""
    time.sleep(delay)
    alive = proc.poll() is None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    return alive


def _assert_recovers(ws: Workspace, expected: dict[str, bytes]) -> None:
    ws.ok("-j2", "//...")
    assert _posbuild_out(ws.root) == expected
    assert _temp_names(ws.root) == []
    assert_correct_build(ws)
    again = ws.ok("-j2", "//...")
    assert counts(again) == {"executed": 0, "cached": N_ACTIONS, "failed": 0}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[float, dict[str, bytes]]:
    """A clean build's wall time, and its outputs (checked against the Python computation)."""
    ws = _fresh_workspace(tmp_path_factory.mktemp("reference") / "ws")
    started = time.monotonic()
    ws.ok("-j2", "//...")
    duration = time.monotonic() - started
    outputs = _posbuild_out(ws.root)
    assert outputs == _expected()
    return duration, outputs


FRACTIONS = [0.05, 0.2, 0.4, 0.6, 0.8, 0.95]


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_sigkill_during_a_clean_build_then_build_recovers(tmp_path, reference, fraction):
    duration, expected = reference
    ws = _fresh_workspace(tmp_path / "ws")
    alive = _kill_after(_start(ws, "-j2", "//..."), fraction * duration)
    if fraction < 0.9:
        assert alive, f"the build finished before the kill at {fraction * duration:.2f} s"
    _assert_recovers(ws, expected)


def test_sigkill_twice_in_a_row_then_build_recovers(tmp_path, reference):
    """The second kill hits a build that starts from the first one's leftovers."""
    duration, expected = reference
    ws = _fresh_workspace(tmp_path / "ws")
    _kill_after(_start(ws, "-j2", "//..."), 0.4 * duration)
    _kill_after(_start(ws, "-j2", "//..."), 0.5 * duration)
    _assert_recovers(ws, expected)


def test_sigkill_during_an_incremental_build_then_build_recovers(tmp_path, reference):
    """Killed while re-executing after a source change: old and new results mixed in the store."""
    duration, _ = reference
    ws = _fresh_workspace(tmp_path / "ws")
    ws.ok("-j2", "//...")
    changed = {"g/s0.txt": "changed source 0\n"}
    ws.write(changed)
    _kill_after(_start(ws, "-j2", "//..."), 0.5 * duration)
    _assert_recovers(ws, _expected(changed))


# Large outputs make restoring `posbuild-out/` from the store take long enough to be hit.
N_LARGE = 12
LARGE_BYTES = 6 * 1024 * 1024


def _large_files() -> dict[str, str]:
    rules = [
        f'genrule(name = "big{i:02d}", outs = ["big{i:02d}.bin"], '
        # yes dies of SIGPIPE
        f'cmd = "{{ yes {chr(ord("a") + i)} || true; }} | head -c {LARGE_BYTES} > $@")'
        for i in range(N_LARGE)
    ]
    return {"big/BUILD": "\n".join(rules) + "\n"}


def _kill_when_a_temp_file_appears(ws: Workspace, folder: Path) -> bool:
    """Run a build and SIGKILL it the moment `folder` holds a file; whether that happened."""
    proc = _start(ws, "//...")
    try:
        while proc.poll() is None:
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            if names:
                os.killpg(proc.pid, signal.SIGKILL)
                return True
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _built_large_workspace(tmp_path: Path) -> tuple[Workspace, dict[str, bytes]]:
    """A workspace of large outputs, built once; and those outputs."""
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    (ws.root / "posbuild.toml").write_text("")
    ws.write(_large_files())
    ws.ok("//...")
    expected = _posbuild_out(ws.root)
    assert expected["big/big00.bin"] == b"a\n" * (LARGE_BYTES // 2)
    return ws, expected


def test_sigkill_while_restoring_outputs_from_the_store_leaves_nothing_partial(tmp_path):
    """Killed in the middle of writing outputs back from the store, as after `posbuild clean`: new
    files are written unnamed and linked in when complete, so whatever the kill interrupted is
    gone."""
    ws, expected = _built_large_workspace(tmp_path)
    for _ in range(5):
        assert ws.run("clean").returncode == 0
        # the first restored file
        if _kill_when_a_temp_file_appears(ws, ws.root / "posbuild-out/big"):
            break
    else:
        pytest.fail("never caught a restore in the act")
    present = _posbuild_out(ws.root)
    assert 0 < len(present) and all(data == expected[name] for name, data in present.items()), \
        "a half-written output is in posbuild-out/"
    result = ws.ok("//...")
    assert counts(result)["executed"] == 0
    assert _temp_names(ws.root) == []
    assert os.listdir(ws.root / ".posbuild/tmp") == []
    assert _posbuild_out(ws.root) == expected
    assert_correct_build(ws)


def test_sigkill_while_replacing_outputs_from_the_store_leaves_no_temp_files(tmp_path):
    """Killed while writing outputs back over files edited by hand: replacements go through temp
    files in `.posbuild/tmp`, which the next build clears."""
    ws, expected = _built_large_workspace(tmp_path)
    for _ in range(5):
        for name in expected:
            # replaced, as an editor saves: in place it is the store's own file (a large output
            # is shared), and writing into it would change the blob, so the action would run again
            edited = ws.root / "posbuild-out" / name
            edited.unlink()
            edited.write_bytes(b"edited by hand\n")
        if _kill_when_a_temp_file_appears(ws, ws.root / ".posbuild/tmp"):
            break
    else:
        pytest.fail("never caught a replacement in the act of writing a temp file")
    result = ws.ok("//...")
    assert counts(result)["executed"] == 0
    assert _temp_names(ws.root) == [], "a temp file of the killed restore is in posbuild-out/"
    assert os.listdir(ws.root / ".posbuild/tmp") == [], (
        "the killed restore's temp file was not cleared")
    assert _posbuild_out(ws.root) == expected
    assert_correct_build(ws)


def test_an_action_that_ran_long_keeps_its_result_when_the_build_is_killed_after_it(tmp_path):
    """Cheap actions' rows are committed in groups (a kill may make a few of them run again);
    an action whose command took a while is committed before its dependents can start."""
    # under the test's temp folder, which conftest leaves writable to actions
    started = tmp_path / "started"
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.write({"posbuild.toml": "", "g/BUILD": (
        'genrule(name = "slow", outs = ["slow.txt"], cmd = "sleep 0.6; echo slow > $@")\n'
        f'genrule(name = "wait", srcs = [":slow"], outs = ["wait.txt"], cmd = "touch {started}; '
        'sleep 60; cat $< > $@")\n')})
    proc = _start(ws, "//...")
    try:
        deadline = time.monotonic() + 30
        while not started.exists():  # //g:wait runs, so //g:slow has ended
            assert proc.poll() is None and time.monotonic() < deadline, "//g:wait never started"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    result = ws.ok("//g:slow")
    assert counts(result) == {"executed": 0, "cached": 1, "failed": 0}, result.stderr
    assert_correct_build(ws, ("//g:slow",))

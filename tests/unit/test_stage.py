"""Staging and removing a sandbox, by native.c and by the Python code beside it: the same tree,
made in the same order, and removed without ever following a link out of it, whichever does
the work; and the C spawn starts a command exactly as `subprocess` would."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from posbuild.core.action import Action
from posbuild.core.digest import hash_bytes
from posbuild.exec import native, stage as staging
from posbuild.exec.stage import Staged, remove_tree, stage

needs_native = pytest.mark.skipif(not native.available(), reason="native.c cannot be compiled here")


@pytest.fixture(params=["native", "python"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with native.c doing the work, and again with the Python code alone."""
    if request.param == "native" and not native.available():
        pytest.skip("native.c cannot be compiled here")
    if request.param == "python":
        monkeypatch.setattr(native, "_library", False)
    return str(request.param)


def action(inputs: tuple[str, ...], outputs: tuple[str, ...]) -> Action:
    return Action("//p:t", "genrule", "true", inputs, (), outputs, (), (), 0, (),
                  hash_bytes(b"t"), (), inputs)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    for path, text in {"a.txt": "a", "p/b.txt": "bee", "p/q/c.sh": "#!/bin/sh\n",
                       "r/d.txt": "d" * 5000, "posbuild-out/p/e.txt": "e"}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    (root / "p/q/c.sh").chmod(0o755)
    return root


INPUTS = ("a.txt", "p/b.txt", "p/q/c.sh", "posbuild-out/p/e.txt", "r/d.txt")
OUTPUTS = ("posbuild-out/p/out.txt", "posbuild-out/z/deep/out2.txt")


def tree(folder: Path) -> Iterator[tuple[str, str, int, str]]:
    """Every entry below `folder` in listing order: path, kind, mode bits, content."""
    for name in os.listdir(folder):
        path = folder / name
        if path.is_symlink():
            yield str(path.relative_to(folder)), "link", 0, os.readlink(path)
        elif path.is_dir():
            yield name, "folder", 0, ""
            yield from ((f"{name}/{p}", k, m, c) for p, k, m, c in tree(path))
        else:
            yield name, "file", stat.S_IMODE(path.stat().st_mode) & 0o111, path.read_text()


def base_folder(tmp_path: Path) -> Path:
    """Sandboxes on a memory file system where there is one, as posbuild places them: there a
    listing shows the order the entries were made in."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        folder = shm / f"posbuild-test-stage-{os.getpid()}-{tmp_path.name}"
        folder.mkdir()
        return folder
    return tmp_path / "sandboxes"


@pytest.fixture
def sandboxes(tmp_path: Path) -> Iterator[Path]:
    folder = base_folder(tmp_path)
    yield folder
    remove_tree(str(folder))


@needs_native
def test_both_stage_the_same_tree_in_the_same_order(workspace: Path, sandboxes: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    made = stage(f"{workspace}/", action(INPUTS, OUTPUTS), f"{sandboxes}/c")
    assert isinstance(made, Staged)
    monkeypatch.setattr(native, "_library", False)
    layout = stage(f"{workspace}/", action(INPUTS, OUTPUTS), f"{sandboxes}/py")
    assert isinstance(layout, dict)
    assert list(tree(sandboxes / "c")) == list(tree(sandboxes / "py"))
    files = {path for path, kind, _, _ in tree(sandboxes / "c") if kind == "file"}
    assert files == {f"exec/{p}" for p in INPUTS}
    assert ("exec/p/q/c.sh", "file", 0o111, "#!/bin/sh\n") in list(tree(sandboxes / "c"))
    assert (sandboxes / "c/exec/posbuild-out/z/deep").is_dir()  # an output's folder


@needs_native
def test_both_stage_any_paths_alike(tmp_path: Path, sandboxes: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Random sets of paths (folders shared, nested, named alike: `a/b`, `a/b.x`, `a/b-c`), in
    random order: the same tree made in the same order, and removed whole."""
    rng = random.Random(7)
    parts = ["a", "b", "b.x", "b-c", "c"]
    root = tmp_path / "random"
    for round_ in range(150):
        paths: dict[str, None] = {}
        while len(paths) < rng.randint(1, 9):
            folders = [rng.choice(parts) for _ in range(rng.randint(0, 3))]
            paths["/".join([*folders, f"f{len(paths)}"])] = None
        names = list(paths)
        rng.shuffle(names)
        cut = rng.randint(0, len(names))
        inputs, outputs = tuple(names[:cut]), tuple(names[cut:])
        for path in inputs:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(path)
        made = {}
        for name, library in (("c", native._library), ("py", False)):
            monkeypatch.setattr(native, "_library", library)
            made[name] = stage(f"{root}/", action(inputs, outputs), f"{sandboxes}/{name}")
        assert isinstance(made["c"], Staged) and isinstance(made["py"], dict)
        assert list(tree(sandboxes / "c")) == list(tree(sandboxes / "py")), (inputs, outputs)
        monkeypatch.setattr(native, "_library", None)
        remove_tree(f"{sandboxes}/c", made["c"])
        remove_tree(f"{sandboxes}/py", made["py"])
        assert not os.listdir(sandboxes), round_


def test_a_large_input_is_copied_or_linked(implementation: str, workspace: Path,
                                           sandboxes: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staging, "LINK_LIMIT", 4096)  # r/d.txt is above it
    stage(f"{workspace}/", action(INPUTS, OUTPUTS), f"{sandboxes}/copy")
    assert not (sandboxes / "copy/exec/r/d.txt").is_symlink()
    assert (sandboxes / "copy/exec/r/d.txt").read_text() == "d" * 5000
    stage(f"{workspace}/", action(INPUTS, OUTPUTS), f"{sandboxes}/link", link_large=True)
    assert os.readlink(sandboxes / "link/exec/r/d.txt") == f"{workspace}/r/d.txt"
    assert not (sandboxes / "link/exec/a.txt").is_symlink()


def test_a_folder_input_is_copied_whole(implementation: str, workspace: Path,
                                        sandboxes: Path) -> None:
    (workspace / "posbuild-out/p/dir/sub").mkdir(parents=True)
    (workspace / "posbuild-out/p/dir/sub/f.txt").write_text("f")
    made = stage(f"{workspace}/", action(("a.txt", "posbuild-out/p/dir"), OUTPUTS),
                 f"{sandboxes}/s")
    assert isinstance(made, dict)  # the Python code staged it
    assert (sandboxes / "s/exec/posbuild-out/p/dir/sub/f.txt").read_text() == "f"
    remove_tree(f"{sandboxes}/s", made)
    assert not (sandboxes / "s").exists()


def test_a_missing_input_is_the_error_it_is(implementation: str, workspace: Path,
                                            sandboxes: Path) -> None:
    with pytest.raises(FileNotFoundError) as raised:
        stage(f"{workspace}/", action(("a.txt", "gone.txt"), OUTPUTS), f"{sandboxes}/s")
    assert raised.value.filename == f"{workspace}/gone.txt"


def test_the_first_sandbox_makes_the_base(implementation: str, workspace: Path,
                                          sandboxes: Path) -> None:
    made = stage(f"{workspace}/", action(INPUTS, OUTPUTS), f"{sandboxes}/new/base/s")
    assert (sandboxes / "new/base/s/exec/a.txt").read_text() == "a"
    remove_tree(f"{sandboxes}/new/base/s", made)
    assert not (sandboxes / "new/base/s").exists()


def test_a_sandbox_is_removed_by_what_staging_made(implementation: str, workspace: Path,
                                                   sandboxes: Path) -> None:
    made = stage(f"{workspace}/", action(INPUTS, OUTPUTS), f"{sandboxes}/s")
    (sandboxes / "s/exec/posbuild-out/p/out.txt").write_text("made")  # one output made, one not
    remove_tree(f"{sandboxes}/s", made)
    assert not (sandboxes / "s").exists()


def test_what_a_command_left_is_removed_and_no_link_followed(implementation: str,
                                                             workspace: Path, sandboxes: Path,
                                                             tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "q").mkdir(parents=True)
    (outside / "q/c.sh").write_text("keep")
    (outside / "out2.txt").write_text("keep")
    made = stage(f"{workspace}/", action(INPUTS, OUTPUTS), f"{sandboxes}/s")
    exec_root = sandboxes / "s/exec"
    (exec_root / "p/q/c.sh").unlink()
    (exec_root / "p/q").rmdir()
    os.symlink(outside / "q", exec_root / "p/q")  # a folder of inputs now a link out
    os.rmdir(exec_root / "posbuild-out/z/deep")
    os.symlink(outside, exec_root / "posbuild-out/z/deep")  # an output's folder too
    (exec_root / "posbuild-out/p/out.txt").mkdir()  # a folder where an output file goes
    (exec_root / "posbuild-out/p/out.txt/x").write_text("x")
    (exec_root / "extra.txt").write_text("left")
    (sandboxes / "s/tmp/cache").mkdir()
    remove_tree(f"{sandboxes}/s", made)
    assert not (sandboxes / "s").exists()
    assert (outside / "q/c.sh").read_text() == "keep"
    assert (outside / "out2.txt").read_text() == "keep"


@needs_native
def test_a_command_started_in_c_is_started_as_popen_would(tmp_path: Path) -> None:
    inherited_read, inherited_write = os.pipe()
    os.set_inheritable(inherited_write, True)  # Popen closes it for the command; so must spawn
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    err = os.open(tmp_path / "err", os.O_WRONLY | os.O_CREAT, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    script = ("import os, sys; print(os.getcwd(), os.getsid(0) == os.getpid(), "
              "sorted(os.listdir('/proc/self/fd')), os.environ['ONLY'], "
              "[k for k in os.environ if k != 'LC_CTYPE'], "
              "sys.argv[1:]); sys.stderr.write('err')")
    old_handler = signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python sets it, always
    try:
        spawned = native.spawn(sys.executable, ["python-named", "-c", script, "a b", ""],
                               {"ONLY": "x y"}, str(tmp_path), null, out, err)
        assert spawned is not None
        _, status, _ = os.wait4(spawned.pid, 0)
        ignored = native.spawn("/bin/sh", ["sh", "-c", "grep SigIgn /proc/self/status"], {},
                               "/", null, out, err)
        assert ignored is not None
        os.waitpid(ignored.pid, 0)
    finally:
        signal.signal(signal.SIGPIPE, old_handler)
        for fd in (inherited_read, inherited_write, out, err, null):
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    said = (tmp_path / "out").read_text().splitlines()
    # listing /proc/self/fd opens one more descriptor (3); Python may add LC_CTYPE (PEP 538)
    assert said[0] == f"{tmp_path} True ['0', '1', '2', '3'] x y ['ONLY'] ['a b', '']"
    assert (tmp_path / "err").read_text() == "err"
    ignored_mask = int(said[1].split()[1], 16)
    assert not ignored_mask & (1 << (signal.SIGPIPE - 1)) and not ignored_mask & (
        1 << (signal.SIGXFSZ - 1))


@needs_native
def test_a_command_that_cannot_be_started_is_the_error_popen_gives(tmp_path: Path) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    script = tmp_path / "no-interpreter"
    script.write_text("echo hi\n")  # no `#!`: the kernel cannot exec it
    script.chmod(0o755)
    try:
        for program, error in ((str(tmp_path / "missing"), FileNotFoundError),
                               (str(tmp_path), PermissionError)):
            with pytest.raises(error) as raised:
                native.spawn(program, ["x"], {}, "/", null, null, null)
            assert raised.value.filename == program
            with pytest.raises(error):
                subprocess.Popen(["x"], executable=program, stdin=null, stdout=null, stderr=null)
        with pytest.raises(OSError) as raised:
            native.spawn(str(script), ["x"], {}, "/", null, null, null)
        assert raised.value.errno == 8  # ENOEXEC: the shell-free start hands it to bash
        assert native.spawn("/bin/true", ["true", "a\0b"], {}, "/", null, null, null) is None
    finally:
        os.close(null)


def test_the_native_code_can_be_turned_off(tmp_path: Path) -> None:
    probe = "from posbuild.exec import native; print(native.available())"
    said = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={**os.environ, "POSBUILD_TEST_NO_NATIVE": "1"}, check=True)
    assert said.stdout.strip() == "False"

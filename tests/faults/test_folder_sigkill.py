"""A folder output is written whole: SIGKILL a build while it takes in, installs or restores a
folder of a few thousand files, at instants spread over the build; after each kill `posbuild
fsck` passes without `--repair`, no half-written folder shows under its final name, and the
next build ends with exactly the folder a clean build makes, correct by the oracle."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from conftest import Workspace, kill_build_after
from oracle import assert_correct_build

FILES = 1500
KILLS = 12
FOLDER = "posbuild-out/p/many"


def _build_file() -> str:
    return f"""
        genrule(
            name = "big",
            srcs = ["seed"],
            out_dirs = ["many"],
            cmd = "mkdir -p $@/a $@/b && s=$$(cat $(location seed)) && "
                  + "for i in $$(seq {FILES}); do echo $$s $$i > $@/a/f$$i; done && "
                  + "cp $@/a/f1 $@/b/",
        )
        genrule(name = "use", srcs = [":big"], outs = ["n"],
                cmd = "ls $(location :big)/a | wc -l > $@")
    """


def _expected(seed: str) -> dict[str, str]:
    files = {f"a/f{i}": f"{seed} {i}\n" for i in range(1, FILES + 1)}
    return {**files, "b/f1": f"{seed} 1\n"}


def _folder(root: Path) -> dict[str, str] | None:
    top = root / FOLDER
    if not top.exists():
        return None
    return {p.relative_to(top).as_posix(): p.read_text() for p in top.rglob("*") if p.is_file()}


def _timed_build(ws: Workspace) -> float:
    started = time.monotonic()
    ws.ok("-q", "//...")
    return time.monotonic() - started


def test_sigkill_while_a_folder_is_installed_or_restored_leaves_a_sound_state(
        ws: Workspace) -> None:
    ws.write({"p/BUILD": _build_file(), "p/seed": "s0\n"})
    cold = _timed_build(ws)
    shutil.rmtree(ws.root / "posbuild-out")
    restore = _timed_build(ws)
    for kill in range(KILLS):
        seed = f"s{kill % 3}"
        fraction = 0.05 + 0.9 * (kill // 3) / (KILLS // 3 - 1)
        if kill % 3 == 0:  # restore after the output tree was removed
            shutil.rmtree(ws.root / "posbuild-out")
            delay = restore * fraction
        else:  # execute and install over the folder of the build before
            delay = cold * fraction
        ws.write({"p/seed": f"{seed}\n"})
        kill_build_after(ws, delay, "-q", "//...")
        seen = _folder(ws.root)
        # whatever the instant: the old folder, the new one, or none, never a part of one
        assert seen in (None, _expected(seed), _expected(f"s{(kill - 1) % 3}")), (
            f"kill {kill}: a partial folder is visible under its final name")
        check = ws.run("fsck")
        assert check.returncode == 0, f"kill {kill}:\n{check.stdout}{check.stderr}"
        ws.ok("-q", "//...")
        assert _folder(ws.root) == _expected(seed), f"kill {kill}"
        assert ws.out("p/n").strip() == str(FILES)
        assert_correct_build(ws)

"""SIGKILL while large outputs are taken into the store by a link, renamed or linked into
posbuild-out/ and restored: after each kill `posbuild fsck` passes without `--repair`, and the
next build leaves every output with its right bytes, shared with the store."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

from conftest import Workspace, kill_build_after

SIZE = 12 * 1024 * 1024
STEPS = 6
# steps weighed against 1 byte of memory: every sandbox with known sizes goes to disk
ON_DISK = {**os.environ, "POSBUILD_TEST_SANDBOX_MEMORY_FREE": "1"}


def _files() -> dict[str, str]:
    rules = [f'genrule(name = "s0", outs = ["s0.bin"], '
             f'cmd = "head -c {SIZE} /dev/zero | tr \'\\\\0\' x > $@")']
    for step in range(1, STEPS):
        rules.append(f'genrule(name = "s{step}", srcs = [":s{step - 1}"], outs = ["s{step}.bin"], '
                     f'cmd = "tr xyz yzx < $< > $@; echo {step} >> $@")')  # no two alike
    return {"posbuild.toml": "", "p/BUILD": "\n".join(rules) + "\n"}


def _expected(step: int) -> bytes:
    data = b"x" * SIZE
    for made in range(1, step + 1):
        data = data.translate(bytes.maketrans(b"xyz", b"yzx")) + f"{made}\n".encode()
    return hashlib.sha256(data).digest()


def test_sigkill_around_shared_large_outputs_leaves_a_store_fsck_accepts(tmp_path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.write(_files())
    started = time.monotonic()
    assert ws.build("//...", env=ON_DISK).returncode == 0
    duration = time.monotonic() - started
    for index in range(8):
        # every other round from nothing in posbuild-out/ (restores), the rest after a new key
        if index % 2:
            subprocess.run(["rm", "-rf", str(ws.root / "posbuild-out")], check=True)
        else:
            ws.write({"p/BUILD": _files()["p/BUILD"].replace("> $@", f"> $@; : {index}", 1)})
        kill_build_after(ws, duration * (index + 1) / 9, "-q", "//...", env=ON_DISK)
        check = ws.run("fsck")
        assert check.returncode == 0, f"kill {index}:\n{check.stdout}{check.stderr}"
        disk = ws.root / ".posbuild" / "sandbox"  # the killed build's sandboxes on disk: swept
        assert not [p.name for p in disk.iterdir() if p.name[0].isdigit()], index
    built = ws.build("//...", env=ON_DISK)
    assert built.returncode == 0, built.stdout + built.stderr
    for step in range(STEPS):
        out = ws.root / "posbuild-out" / "p" / f"s{step}.bin"
        assert hashlib.sha256(out.read_bytes()).digest() == _expected(step), step
        assert out.stat().st_nlink == 2, step
    assert ws.run("fsck").returncode == 0

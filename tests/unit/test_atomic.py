"""write_atomically: the old content or the new, and never a write through a planted link."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from posbuild.host.atomic import TEMP_PREFIX, write_atomically


def test_it_replaces_the_file_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "state" / "tree"
    write_atomically(target, b"old\n")
    written = write_atomically(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert written.st_ino == target.stat().st_ino
    assert os.listdir(target.parent) == ["tree"]


def test_a_link_at_the_temp_name_is_never_written_through(tmp_path: Path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"original\n")
    target = tmp_path / "tree"
    temp = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-{threading.get_ident()}-tree"
    temp.symlink_to(victim)
    with pytest.raises(OSError):
        write_atomically(target, b"new\n")
    assert victim.read_bytes() == b"original\n"
    assert not target.exists()

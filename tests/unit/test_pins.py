"""pins.py: the pin check trusts the recorded digest of a file whose stat signature is unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import posbuild.core.digest
import posbuild.engine.pins
from posbuild.core.action import Action
from posbuild.core.digest import hash_file
from posbuild.errors import ChecksumMismatch
from posbuild.engine.pins import check_pins, lock_sources
from posbuild.store.upstate import EMPTY, BuildState


def action(label: str, *sources: str) -> Action:
    return Action(label=label, kind="genrule", command="true", inputs=sources, tools=(), outputs=(),
                  env=(),
                  versions=(), timeout=0, tags=(), def_hash=b"d" * 32, deps=(), sources=sources)


def sig(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def pin(root: Path, sources: dict[str, str]) -> None:
    (root / "posbuild.lock").write_text(json.dumps({"format": 1, "sources": sources,
                                                    "environment": {}}))


def no_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: object) -> bytes:
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(posbuild.core.digest, "hash_file", refuse)
    monkeypatch.setattr(posbuild.engine.pins, "hash_file", refuse)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data/raw.csv").write_text("a,b\n")
    return tmp_path


def test_no_lock_file_means_no_check(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_hashing(monkeypatch)
    assert check_pins(root, [action("//a:a", "data/raw.csv")], EMPTY) == 0


def test_unchanged_signature_uses_the_recorded_digest(root: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    digest = hash_file(root / "data/raw.csv")
    pin(root, {"data/raw.csv": digest.hex()})
    state = BuildState(b"", {}, {"data/raw.csv": sig(root / "data/raw.csv")},
                       {"data/raw.csv": digest})
    no_hashing(monkeypatch)
    assert check_pins(root, [action("//a:a", "data/raw.csv")], state) == 1


def test_recorded_digest_is_what_is_compared(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an unchanged signature the file is not read: the recorded digest decides."""
    pin(root, {"data/raw.csv": "00" * 32})
    state = BuildState(b"", {}, {"data/raw.csv": sig(root / "data/raw.csv")},
                       {"data/raw.csv": b"\x11" * 32})
    no_hashing(monkeypatch)
    with pytest.raises(ChecksumMismatch) as caught:
        check_pins(root, [action("//a:a", "data/raw.csv")], state)
    assert caught.value.render() == (
        f"ORCH-03 checksum inconsistency: data/raw.csv is pinned in posbuild.lock to {'00' * 32} "
        f"but hashes to {'11' * 32}; run `posbuild lock` to accept the change")


def test_changed_signature_hashes_the_file(root: Path) -> None:
    old = hash_file(root / "data/raw.csv")
    pin(root, {"data/raw.csv": old.hex()})
    state = BuildState(b"", {}, {"data/raw.csv": sig(root / "data/raw.csv")}, {"data/raw.csv": old})
    (root / "data/raw.csv").write_text("a,b,c\n")
    with pytest.raises(ChecksumMismatch) as caught:
        check_pins(root, [action("//a:a", "data/raw.csv")], state)
    assert f"to {old.hex()} but hashes to {hash_file(root / 'data/raw.csv').hex()};" \
            in caught.value.detail
    assert caught.value.exit_code == 13


def test_unknown_file_is_hashed(root: Path) -> None:
    pin(root, {"data/raw.csv": hash_file(root / "data/raw.csv").hex()})
    assert check_pins(root, [action("//a:a", "data/raw.csv")], EMPTY) == 1


def test_pins_of_files_not_read_are_ignored(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin(root, {"data/raw.csv": "00" * 32, "data/gone.csv": "00" * 32})
    no_hashing(monkeypatch)
    assert check_pins(root, [action("//a:a", "data/other.csv")], EMPTY) == 0


def test_several_mismatches_name_the_first_and_count_the_rest(root: Path) -> None:
    (root / "data/b.csv").write_text("b\n")
    pin(root, {"data/raw.csv": "00" * 32, "data/b.csv": "00" * 32})
    with pytest.raises(ChecksumMismatch) as caught:
        check_pins(root, [action("//a:a", "data/raw.csv", "data/b.csv")], EMPTY)
    assert caught.value.detail.startswith("data/b.csv is pinned")
    assert "(and 1 more pinned file changed)" in caught.value.detail


def test_lock_sources_pins_and_keeps_environment(root: Path) -> None:
    (root / "posbuild.lock").write_text(json.dumps({"format": 1, "sources": {"data/x": "00" * 32},
                                                    "environment": {"hash": "ff" * 32}}))
    assert lock_sources(root, [action("//a:a", "data/raw.csv")]) == (1, 1)
    data = json.loads((root / "posbuild.lock").read_text())
    assert data == {"format": 1,
                    "sources": {"data/raw.csv": hash_file(root / "data/raw.csv").hex()},
                    "environment": {"hash": "ff" * 32}}

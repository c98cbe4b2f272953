"""Large data: where a large action's sandbox goes (decided from sizes known before staging),
how a large file enters the store (a link, not a copy), and how a blob shared with posbuild-out/
that an edit changed is found and dropped rather than served."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from posbuild.core.action import Action
from posbuild.core.digest import hash_bytes
from posbuild.core.records import ActionResult, FileState, OutputFile
from posbuild.engine.filestate import FileStates
from posbuild.engine.footprint import expected_bytes
from posbuild.engine.products import BuildProducts
from posbuild.errors import ChecksumMismatch
from posbuild.exec import placement
from posbuild.exec.placement import SPARE, in_memory, needs_disk
from posbuild.exec.sandbox import LocalSpawner
from posbuild.store.lmdbstore import Store
from posbuild.store.materialize import SHARE_LIMIT, BlobChanged, Materializer
from posbuild.store.upstate import BuildState

MiB = 1 << 20


def _action(inputs: tuple[str, ...] = (), outputs: tuple[str, ...] = ("posbuild-out/o",),
            command: str = "true") -> Action:
    return Action(label="//pkg:big", kind="genrule", command=command, inputs=inputs, tools=(),
                  outputs=outputs, env=(), versions=(), timeout=0, tags=(), def_hash=b"\0" * 32,
                  deps=(), sources=inputs, resources=(1, 0, 0))


# -- where a sandbox goes --------------------------------------------------------------------

def test_an_action_that_fits_with_room_to_spare_stays_in_memory() -> None:
    assert not needs_disk(100 * MiB, 8 << 30)
    assert not needs_disk(0, SPARE + 1)


def test_an_action_larger_than_the_free_memory_or_its_spare_goes_to_disk() -> None:
    assert needs_disk(30 << 30, 12 << 30)  # a 30 GB BAM, 12 GB of /dev/shm
    # it would fit, but not with half as much again and the spare left over
    assert needs_disk(1 << 30, (1 << 30) + (1 << 29) + SPARE - 1)
    assert not needs_disk(1 << 30, (1 << 30) + (1 << 29) + SPARE)


def test_dev_shm_is_memory_and_a_temp_folder_on_disk_is_not(tmp_path: Path) -> None:
    if not os.path.isdir("/dev/shm") or not in_memory("/dev/shm"):
        pytest.skip("no memory file system at /dev/shm here")
    assert in_memory("/dev/shm/posbuild-x/y")  # a path not made yet: by its mount point
    if in_memory(str(tmp_path)):
        pytest.skip("the temp folder is on a memory file system here")
    assert not in_memory(str(tmp_path / "ws" / ".posbuild" / "sandbox"))


def test_expected_bytes_are_input_sizes_now_plus_output_sizes_at_the_last_run(
        tmp_path: Path) -> None:
    previous = BuildState(b"", {}, {"gen/old.bin": (1, 700, 1, 1), "posbuild-out/o": (1, 50, 2, 2)},
                          {"gen/old.bin": b"d" * 32, "posbuild-out/o": b"e" * 32})
    products = BuildProducts(previous)
    products.produced["gen/new.bin"] = FileState((1, 3000, 3, 3), b"f" * 32)
    files = FileStates(tmp_path, _NoMemo())
    (tmp_path / "src.txt").write_bytes(b"s" * 11)
    files.state("src.txt")  # looked at for the key, as the rebuilder does
    action = _action(inputs=("src.txt", "gen/new.bin", "gen/old.bin"),
                     outputs=("posbuild-out/o", "posbuild-out/never-built"))
    assert expected_bytes(action, products, files) == 11 + 3000 + 700 + 50


class _NoMemo:
    def get_memo(self, path: str) -> None:
        return None


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "in.bin").write_bytes(b"i" * 1000)
    return root


def _sandbox_of(spawner: LocalSpawner, action: Action) -> str:
    result = spawner.run(action)
    try:
        assert result.exit_code == 0, result.stderr
        return os.path.dirname(str(result.exec_root))
    finally:
        spawner.remove(result)


def test_the_spawner_runs_a_large_action_under_the_disk_base(workspace: Path, tmp_path: Path,
                                                            monkeypatch) -> None:
    if not in_memory("/dev/shm"):
        pytest.skip("no memory file system at /dev/shm here")
    memory = Path("/dev/shm") / f"posbuild-test-{os.getpid()}"
    disk = tmp_path / "disk"
    spawner = LocalSpawner(workspace, memory, disk_base=disk)
    spawner.clear_stale()
    monkeypatch.setenv(placement.MEMORY_FREE_VARIABLE, str(300 * MiB))
    sizes = {"small": 1000, "large": 40 * MiB}  # 40 MiB and half again + SPARE > 300 MiB
    spawner.expect_sizes(lambda action: sizes[action.command.split()[-1]])
    try:
        small = _action(inputs=("pkg/in.bin",), command="echo small")
        large = _action(inputs=("pkg/in.bin",), command="echo large")
        assert _sandbox_of(spawner, small).startswith(str(memory) + "/")
        assert _sandbox_of(spawner, large).startswith(str(disk) + "/")
        assert f"{os.getpid()}.owner" in os.listdir(disk)  # claimed, as the memory base is
    finally:
        spawner.close()
        import shutil
        shutil.rmtree(memory, ignore_errors=True)
    assert f"{os.getpid()}.owner" not in os.listdir(disk)


def test_without_a_disk_base_nothing_is_weighed(workspace: Path, tmp_path: Path) -> None:
    spawner = LocalSpawner(workspace, tmp_path / "base")
    spawner.expect_sizes(lambda action: pytest.fail("weighed"))  # type: ignore[arg-type]
    spawner.clear_stale()
    try:
        assert _sandbox_of(spawner, _action(command="true")).startswith(str(tmp_path / "base"))
    finally:
        spawner.close()


# -- into the store and back out -------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / ".posbuild" / "store")
    yield opened
    opened.close()


def test_a_file_with_one_name_enters_the_store_by_a_link(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "out.bin"
    source.write_bytes(b"z" * (2 * MiB))
    digest = hash_bytes(source.read_bytes())
    fd = os.open(source, os.O_RDONLY)
    try:
        store.store_external(digest, Path(f"/proc/self/fd/{fd}"), take=True)
    finally:
        os.close(fd)
    blob = store.external_path(digest)
    assert os.path.samefile(blob, source)
    assert blob.stat().st_mode & 0o777 == 0o444


def test_a_file_with_other_names_is_copied_into_the_store(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "out.bin"
    source.write_bytes(b"z" * (2 * MiB))
    os.link(source, tmp_path / "another-name")  # a link the action made: it could change the blob
    digest = hash_bytes(source.read_bytes())
    store.store_external(digest, source, take=True)
    blob = store.external_path(digest)
    assert not os.path.samefile(blob, source)
    assert blob.read_bytes() == source.read_bytes()


def _stored(store: Store, tmp_path: Path, data: bytes) -> OutputFile:
    source = tmp_path / "made.bin"
    source.write_bytes(data)
    digest = hash_bytes(data)
    store.store_external(digest, source)
    source.unlink()
    output = OutputFile("posbuild-out/big.bin", digest, len(data), False)
    store.commit(result=(b"k" * 32, ActionResult((output,), 0, hash_bytes(b""), hash_bytes(b""))),
                 blobs=[(digest, None), (hash_bytes(b""), b"")])
    return output


def test_a_large_restore_shares_the_blob_file_without_reading_it_into_memory(
        store: Store, tmp_path: Path, monkeypatch) -> None:
    output = _stored(store, tmp_path, b"q" * (SHARE_LIMIT + 1))
    materializer = Materializer(tmp_path, store, tmp_path / ".posbuild" / "tmp")
    materializer.clear_temp()
    monkeypatch.setattr(store, "get_blob", lambda digest: pytest.fail("read into memory"))
    materializer.restore(output)
    target = tmp_path / "posbuild-out" / "big.bin"
    assert os.path.samefile(target, store.external_path(output.digest))
    assert os.listdir(tmp_path / ".posbuild" / "tmp") == []


def test_a_shared_blob_an_edit_changed_is_dropped_with_its_results(store: Store,
                                                                  tmp_path: Path) -> None:
    output = _stored(store, tmp_path, b"q" * (SHARE_LIMIT + 1))
    materializer = Materializer(tmp_path, store, tmp_path / ".posbuild" / "tmp")
    materializer.clear_temp()
    materializer.restore(output)
    target = tmp_path / "posbuild-out" / "big.bin"
    os.chmod(target, 0o644)
    with open(target, "r+b") as handle:  # in place: the store's file changes too
        handle.write(b"EDIT")
    with pytest.raises(BlobChanged, match="changed in place"):
        materializer.restore(output)
    assert not store.has_blob(output.digest) and store.get_result(b"k" * 32) is None
    assert not store.external_path(output.digest).exists()


def test_a_corrupt_blob_nobody_shares_stays_an_orch_03(store: Store, tmp_path: Path) -> None:
    output = _stored(store, tmp_path, b"q" * (SHARE_LIMIT + 1))
    blob = store.external_path(output.digest)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as handle:
        handle.write(b"ROT")
    materializer = Materializer(tmp_path, store, tmp_path / ".posbuild" / "tmp")
    materializer.clear_temp()
    with pytest.raises(ChecksumMismatch) as raised:
        materializer.restore(output)
    assert not isinstance(raised.value, BlobChanged)
    assert store.has_blob(output.digest)  # fsck --repair decides, as for any corrupt blob

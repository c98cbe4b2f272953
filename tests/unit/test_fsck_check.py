"""fsck.check on a real Store in a temp folder: what each kind of damage reads as, and what repair
removes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from posbuild.workspace.config import Config
from posbuild.core.digest import hash_bytes
from posbuild.engine.fsck import FsckReport, Problem, check, repaired_line, summary
from posbuild.core.records import ActionResult, FileState, OutputFile, pack_manifest, signature
from posbuild.exec.sandbox import LocalSpawner
from posbuild.store.lmdbstore import _INLINE, INLINE_LIMIT, Store

OUT_PATH = "posbuild-out/pkg/out.txt"
OUT = b"the output\n"
OUT_DIGEST = hash_bytes(OUT)
LOG = b"ran\n"
EMPTY = hash_bytes(b"")
KEY = hash_bytes(b"an action key")
RESULT = ActionResult((OutputFile(OUT_PATH, OUT_DIGEST, len(OUT), False),), 0, hash_bytes(LOG),
                      EMPTY)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    root = tmp_path / "ws"
    root.mkdir()
    return Config(root=root, jobs=1, build_file_names=("BUILD",),
                  store_dir=root / ".posbuild" / "store",
                  env_pass=(), sandbox_dir=root / ".posbuild" / "sandbox")


@pytest.fixture
def store(config: Config) -> Iterator[Store]:
    opened = Store(config.store_dir)
    yield opened
    opened.close()


def built(config: Config, store: Store) -> Path:
    """The store and posbuild-out/ after one action wrote OUT, as a build leaves them."""
    target = config.root / OUT_PATH
    target.parent.mkdir(parents=True)
    target.write_bytes(OUT)
    os.chmod(target, 0o444)
    memo = FileState(signature(os.stat(target)), OUT_DIGEST)
    store.commit((KEY, RESULT), [(OUT_DIGEST, OUT), (hash_bytes(LOG), LOG), (EMPTY, b"")],
                 [(OUT_PATH, memo)])
    store.add_generation("2026-01-01T00:00:00+00:00", ("//...",),
                         pack_manifest({OUT_PATH: (OUT_DIGEST, len(OUT), False)}), 1, len(OUT))
    return target


def codes(report: FsckReport) -> list[tuple[str | None, str, str]]:
    return [(p.code, p.kind, p.subject) for p in report.problems]


def put_row(store: Store, digest: bytes, row: bytes | None) -> None:
    """Overwrite (or with None, delete) a blob row behind the store's back."""
    with store._env.begin(write=True) as txn:
        db = store._env.open_db(b"blobs", txn=txn)
        if row is None:
            txn.delete(digest, db=db)
        else:
            txn.put(digest, row, db=db)


# ---- a healthy store ---------------------------------------------------------------------------

def test_a_healthy_store_and_tree_have_no_problems(config, store):
    built(config, store)
    report = check(config, store, repair=False)
    assert report.problems == ()
    assert (report.blobs_checked, report.results_checked, report.outputs_checked) == (4, 1, 1)
    assert report.bytes_checked == len(OUT) + len(LOG) + len(
        pack_manifest({OUT_PATH: (OUT_DIGEST, len(OUT), False)}))
    assert summary(
        report) == (f"fsck: checked 4 blobs ({report.bytes_checked} bytes), 1 action result, "
                               f"1 output: no problems")


def test_no_store_and_no_outputs_is_nothing_to_check(config):
    report = check(config, None, repair=False)
    assert report.problems == () and report.blobs_checked == 0


def test_without_a_store_every_output_is_unknown(config):
    (config.root / "posbuild-out").mkdir()
    (config.root / "posbuild-out/stray.txt").write_text("?")
    report = check(config, None, repair=True)
    assert codes(report) == [("ORCH-06", "output", "posbuild-out/stray.txt")]
    assert report.remaining == () and report.repaired.outputs == 1
    assert not (config.root / "posbuild-out/stray.txt").exists()


# ---- ORCH-03: bytes that do not hash to their digest ----------------------------------------

def test_a_corrupt_inline_blob_is_orch03_and_repair_removes_it_with_its_results(config, store):
    built(config, store)
    put_row(store, OUT_DIGEST, _INLINE + b"the outpuT\n")
    report = check(config, store, repair=False)
    assert report.problems[0] == Problem("ORCH-03", "blob", OUT_DIGEST.hex(),
                                         "stored bytes hash to "
                                         f"{hash_bytes(b'the outpuT' + bytes([10])).hex()}")
    assert [p.code for p in report.remaining] == ["ORCH-03"]
    fixed = check(config, store, repair=True)
    assert (fixed.repaired.blobs, fixed.repaired.results, fixed.repaired.outputs) == (1, 1, 0)
    assert fixed.remaining == ()
    assert not store.has_blob(OUT_DIGEST) and store.get_result(KEY) is None
    assert (config.root / OUT_PATH).read_bytes() == OUT  # the intact copy in posbuild-out/ stays
    again = check(config, store, repair=False)
    assert again.errors == ()
    assert {(p.kind, p.subject) for p in again.warnings} == {
        ("generation", "1"), ("blob", hash_bytes(LOG).hex()), ("blob", EMPTY.hex())}


def test_a_large_blob_whose_file_is_corrupt_or_gone_is_orch03(config, store, tmp_path):
    big = b"x" * (INLINE_LIMIT + 1)
    digest = hash_bytes(big)
    source = tmp_path / "big"
    source.write_bytes(big)
    store.store_external(digest, source)
    store.commit(blobs=[(digest, None)])
    path = store.external_path(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"y" + big[1:])
    assert codes(check(config, store, repair=False))[0] == ("ORCH-03", "blob", digest.hex())
    path.unlink()
    report = check(config, store, repair=False)
    assert report.problems[0].detail == (
        f"its file .posbuild/store/cas/{digest.hex()[:2]}/{digest.hex()} is missing")
    check(config, store, repair=True)
    assert not store.has_blob(digest)


def test_an_output_changed_in_place_is_orch03(config, store):
    target = built(config, store)
    os.chmod(target, 0o644)
    with open(target, "r+b") as handle:
        handle.write(b"T")
    report = check(config, store, repair=False)
    changed = hash_bytes(b"The output" + bytes([10]))
    assert report.problems == (
        Problem("ORCH-03", "output", OUT_PATH,
                f"bytes hash to {changed.hex()}, recorded {OUT_DIGEST.hex()}"),)
    fixed = check(config, store, repair=True)
    assert fixed.repaired.outputs == 1 and not target.exists() and store.get_memo(OUT_PATH) is None
    assert check(config, store, repair=False).problems == ()


def test_an_output_replaced_by_a_rename_reads_as_an_interrupted_build(config, store):
    target = built(config, store)
    temp = target.with_name("new")
    temp.write_bytes(b"newer bytes\n")
    os.replace(temp, target)
    (problem,) = check(config, store, repair=False).problems
    assert (problem.code, problem.kind, problem.subject) == ("ORCH-06", "output", OUT_PATH)
    assert problem.detail.startswith("replaced since posbuild wrote it")


def test_an_output_without_memo_row_is_checked_against_the_latest_manifest(config, store):
    target = built(config, store)
    store.remove(memo=[OUT_PATH])
    assert check(config, store, repair=False).problems == ()
    os.chmod(target, 0o644)
    target.write_bytes(b"other\n")
    assert codes(check(config, store, repair=False)) == [("ORCH-03", "output", OUT_PATH)]


# ---- ORCH-06: dangling rows and leftovers --------------------------------------------------

def test_a_result_whose_blob_is_gone_is_dangling(config, store):
    built(config, store)
    put_row(store, hash_bytes(LOG), None)
    report = check(config, store, repair=False)
    assert report.problems == (Problem("ORCH-06", "result", KEY.hex(),
                                       f"references blob {hash_bytes(LOG).hex()} (stdout), which "
                                       "is not in the store"),)
    fixed = check(config, store, repair=True)
    assert fixed.repaired.results == 1 and store.get_result(KEY) is None
    assert check(config, store, repair=False).errors == ()


def test_a_generation_whose_manifest_is_gone_is_orch06_and_repair_drops_it(config, store):
    built(config, store)
    manifest = store.latest_generation().manifest
    put_row(store, manifest, None)
    assert codes(check(config, store, repair=False)) == [("ORCH-06", "generation", "1")]
    check(config, store, repair=True)
    assert store.generations() == []


def test_a_generation_whose_manifest_is_corrupt_goes_with_the_blob(config, store):
    built(config, store)
    manifest = store.latest_generation().manifest
    put_row(store, manifest, _INLINE + b"\x80")
    report = check(config, store, repair=True)
    assert codes(report) == [("ORCH-03", "blob", manifest.hex())]
    assert report.repaired.generations == 1 and store.generations() == []


def test_files_under_cas_without_a_row_and_temp_files_are_swept_as_leftovers_of_a_killed_build(
    config, store):
    """The workspace's own store is written only under the workspace lock fsck holds: a temp
    file or a blob file without a row there is what a killed build left, not corruption."""
    orphan = store.external_path(hash_bytes(b"never committed"))
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"never committed")
    temp = orphan.parent / ".tmp-abc123"
    temp.write_bytes(b"half")
    report = check(config, store, repair=False)
    assert report.problems == () and report.swept == 2
    assert not orphan.exists() and not temp.exists()


def test_temp_files_and_sandboxes_of_dead_processes_are_swept_and_a_live_build_s_are_left(
    config, store):
    (config.state_dir / "tmp").mkdir()
    (config.state_dir / "tmp" / "out.txt.140").write_text("half")
    (config.state_dir / "graphs").mkdir()
    (config.state_dir / "graphs" / ".tmp-999999999-1-x.state").write_text("half")  # no such process
    (config.state_dir / "graphs" / f".tmp-{os.getpid()}-1-y.state").write_text("being written")
    live = LocalSpawner(config.root, config.sandbox_dir)
    live.clear_stale()  # this process claims its sandboxes: `<pid>.owner`, locked while it lives
    sandbox = config.sandbox_dir / "123-0" / "exec"  # a dead process's: no owner mark held
    sandbox.mkdir(parents=True)
    os.chmod(sandbox, 0o555)
    (config.sandbox_dir / f"{os.getpid()}-0" / "exec").mkdir(parents=True)
    try:
        report = check(config, store, repair=False)
        assert report.problems == () and report.swept == 3
        assert sorted(os.listdir(config.sandbox_dir)) == [f"{os.getpid()}-0",
                                                          f"{os.getpid()}.owner", "CACHEDIR.TAG"]
        assert os.listdir(config.state_dir / "graphs") == [f".tmp-{os.getpid()}-1-y.state"]
        assert os.listdir(config.state_dir / "tmp") == []
    finally:
        live.close()
    assert check(config, store, repair=False).swept == 1  # the owner is gone now: its sandbox goes


def test_repair_invalidates_the_up_to_date_state(config, store):
    built(config, store)
    graphs = config.state_dir / "graphs"
    graphs.mkdir()
    (graphs / "abc.state").write_bytes(b"state")
    (graphs / "abc.graph").write_bytes(b"graph")
    (config.state_dir / "tree").write_bytes(b"clean\n")
    put_row(store, hash_bytes(LOG), None)
    report = check(config, store, repair=True)
    assert report.repaired.state_files == 1
    assert not (graphs / "abc.state").exists() and (graphs / "abc.graph").exists()
    assert (config.state_dir / "tree").read_bytes() != b"clean\n"


def test_a_leftover_that_cannot_be_deleted_stays_a_problem(config, store, monkeypatch):
    (config.state_dir / "tmp").mkdir()
    stuck = config.state_dir / "tmp" / "stuck"
    stuck.write_text("x")
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == stuck:
            raise PermissionError(13, "Permission denied")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert [p.subject for p in check(config, store, repair=False).errors] == [".posbuild/tmp/stuck"]
    report = check(config, store, repair=True)
    assert [(p.subject, why) for p, why in report.repaired.failed] == [
        (".posbuild/tmp/stuck", f"cannot delete {stuck}: Permission denied")]
    assert [p.subject for p in report.remaining] == [".posbuild/tmp/stuck"]


# ---- warnings --------------------------------------------------------------------------------

def test_an_unreferenced_blob_is_only_a_warning(config, store):
    built(config, store)
    store.commit(blobs=[(hash_bytes(b"loose"), b"loose")])
    report = check(config, store, repair=False)
    assert report.problems == (Problem(None, "blob", hash_bytes(b"loose").hex(),
                                       "unreferenced blob; `posbuild gc` reclaims it"),)
    assert report.remaining == ()
    assert summary(report).endswith(": no problems, 1 warning")
    repaired = check(config, store, repair=True)
    assert repaired_line(repaired.repaired) == "repaired: nothing to repair"
    assert store.has_blob(hash_bytes(b"loose"))

"""Claiming a folder posbuild makes: two processes making the same new store at once both get it.

Two workspaces whose first builds start together share a new `[cache] dir`: one makes the folder
and writes its mark (a temp file renamed into place), while the other finds the folder already
there. The second must not take the half-written mark for a stranger's file and refuse the store.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
from pathlib import Path

from posbuild.errors import WorkspaceError
from posbuild.host.owned import MARKER, STORE, claim, is_marked, is_store


def test_a_mark_being_written_by_another_process_is_not_a_strangers_file(tmp_path: Path) -> None:
    store = tmp_path / "shared-store"
    store.mkdir()
    (store / f".{MARKER}.4242").write_bytes(b"half of a mark")  # another process, mid-write
    claim(store, STORE, is_store)
    assert is_marked(store, STORE)


def test_a_strangers_file_is_still_refused(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8")
    try:
        claim(folder, STORE, is_store)
    except WorkspaceError as error:
        assert "holds files posbuild did not make" in str(error)
    else:
        raise AssertionError("a folder of someone else's files was claimed")
    assert not is_marked(folder, STORE)


def _claim(folder: str, start: multiprocessing.synchronize.Barrier,
           results: multiprocessing.queues.Queue) -> None:
    start.wait()
    try:
        claim(Path(folder), STORE, is_store)
        results.put("ok")
    except WorkspaceError as error:
        results.put(str(error))


def test_two_processes_making_one_new_store_at_once_both_succeed(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for round_ in range(40):
        folder = str(tmp_path / f"store-{round_}")
        start, results = context.Barrier(2), context.Queue()
        racers = [context.Process(target=_claim, args=(folder, start, results))
                  for _ in range(2)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(30)
        assert [results.get(timeout=5) for _ in racers] == ["ok", "ok"]
        assert is_marked(Path(folder), STORE)

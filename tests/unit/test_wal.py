"""The write-ahead log: frames survive their writer, torn or stale frames end the log, locks tell
the living."""

from __future__ import annotations

import os
from pathlib import Path

from posbuild.store.wal import WriteAheadLog, dead_logs, has_dead_logs


def _replayed(folder: Path) -> list[bytes]:
    dead, _ = dead_logs(folder)
    frames = [payload for log in dead for payload in log.payloads]
    for log in dead:
        log.release()
    return frames


def test_a_live_writer_s_log_is_not_dead(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path)
    log.append(b"one")
    assert not has_dead_logs(tmp_path)
    dead, live = dead_logs(tmp_path)
    assert dead == [] and live == {os.getpid()}
    log.close(delete=False)  # the lock goes as if the process had died
    assert has_dead_logs(tmp_path) and _replayed(tmp_path) == [b"one"]


def test_frames_after_a_clear_replace_the_applied_ones_and_stale_frames_are_ignored(
    tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path)
    for payload in (b"first" * 10, b"second" * 10, b"third" * 10):
        log.append(payload)
    log.clear()
    log.close(delete=False)
    # everything was applied: nothing to replay, though the bytes remain
    assert _replayed(tmp_path) == []


def test_a_new_round_overwrites_from_the_start_and_ends_before_the_old_round(
    tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path)
    for payload in (b"a" * 40, b"b" * 40, b"c" * 40):
        log.append(payload)
    log.clear()
    log.append(b"d" * 40)  # covers the old first frame exactly; the old second and third follow it
    log.close(delete=False)
    assert _replayed(tmp_path) == [b"d" * 40]


def test_a_torn_last_frame_ends_the_log(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path)
    log.append(b"whole")
    log.append(b"torn frame")
    os.truncate(log.path, os.path.getsize(log.path) - 2)
    log.close(delete=False)
    assert _replayed(tmp_path) == [b"whole"]


def test_a_damaged_frame_ends_the_log(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path)
    log.append(b"whole")
    log.append(b"flipped")
    log.append(b"after")
    data = bytearray(log.path.read_bytes())
    data[12 + 5 + 12] ^= 1  # the first byte of the second payload
    log.path.write_bytes(bytes(data))
    log.close(delete=False)
    assert _replayed(tmp_path) == [b"whole"]


def test_a_log_its_maker_never_named_is_swept(tmp_path: Path) -> None:
    (tmp_path / "123-abc.wal.new").write_bytes(b"")  # a process died between making and naming it
    log = WriteAheadLog(tmp_path)
    assert dead_logs(tmp_path) == ([], {os.getpid()})
    assert sorted(p.name for p in tmp_path.iterdir()) == [log.path.name]
    log.close()

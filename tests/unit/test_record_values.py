"""records.py: the values the store keeps keep their stored bytes when their types change."""

from __future__ import annotations

import msgpack
import pytest

from posbuild.core.records import ExecutionRecord, RecordState

FIELDS = dict(build_id="3", label="//pkg:a", key=b"k" * 32,
              started="2026-01-01T00:00:00.000000+00:00",
              ended="2026-01-01T00:00:01.000000+00:00", duration=1.0,
              inputs=(("pkg/a.c", b"d" * 32),),
              versions=(), outputs=(), usage=None, exit_code=0, error_code="", env_hash=b"e" * 32)


def stored(state: str) -> bytes:
    """A record as the store has always held it: a msgpack map in field order, the state a
    string."""
    row = {"build_id": "3", "label": "//pkg:a", "state": state, **{k: v for k, v in FIELDS.items()
                                                                    if k not in (
                                                                        "build_id", "label")}}
    row.update(slot=0, command="", env=(), worker="", host="", remote_started="", remote_ended="")
    return msgpack.packb(row, use_bin_type=True)


@pytest.mark.parametrize("state", list(RecordState))
def test_a_record_state_is_stored_as_its_old_string(state: RecordState) -> None:
    record = ExecutionRecord(state=state, **FIELDS)  # type: ignore[arg-type]
    assert record.pack() == stored(state.value)
    assert ExecutionRecord.unpack(stored(state.value)) == record


def test_a_record_of_an_unknown_state_does_not_read() -> None:
    with pytest.raises(ValueError):
        ExecutionRecord.unpack(stored("MAYBE"))


def test_what_each_state_says() -> None:
    assert {s for s in RecordState if s.ran()} == {RecordState.SUCCESS, RecordState.FAILED}
    assert {s for s in RecordState if s.produced()} == {RecordState.SUCCESS, RecordState.CACHED}

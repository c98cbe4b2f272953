"""A transfer the remote cut short is the remote going down, not a blob with wrong bytes:
`HTTPResponse.read(n)` returns what came before the connection closed without saying so."""

from __future__ import annotations

import http.client
import io
from pathlib import Path

import pytest

from posbuild.store.remote import _read_at_most, _stream_to


class _CutResponse:
    """A response whose Content-Length announced more than the connection delivered."""

    def __init__(self, delivered: bytes, announced: int) -> None:
        self._body = io.BytesIO(delivered)
        self.length: int | None = announced

    def read(self, amount: int) -> bytes:
        data = self._body.read(amount)
        if self.length is not None:
            self.length -= len(data)
        return data


def test_a_cut_small_body_is_an_incomplete_read() -> None:
    with pytest.raises(http.client.IncompleteRead):
        _read_at_most(_CutResponse(b"half", 8), 100)  # type: ignore[arg-type]
    assert _read_at_most(_CutResponse(b"whole", 5), 100) == b"whole"  # type: ignore[arg-type]


def test_a_cut_streamed_body_is_an_incomplete_read(tmp_path: Path) -> None:
    with pytest.raises(http.client.IncompleteRead):
        _stream_to(_CutResponse(b"x" * 1000, 5000), tmp_path / "blob", 10_000)  # type: ignore[arg-type]
    _stream_to(_CutResponse(b"x" * 1000, 1000), tmp_path / "blob", 10_000)  # type: ignore[arg-type]
    assert (tmp_path / "blob").read_bytes() == b"x" * 1000

"""Framed reads from libp2p streams: what each reader takes, and what it leaves for the next.

A relay's STATUS OK is followed at once by the relayed connection's first bytes, which may sit
in the same Yamux frame batch (seen as flaky circuit setups once TCP reads came in chunks): the
reader of the STATUS must not take them.
"""

from __future__ import annotations

import pytest
from p2pchat.node.p2p.streams import (
    StreamEnded,
    read_frame,
    read_frame_exactly,
    read_single_frame,
)
from p2pchat.node.wire.framing import FrameDecoder, FrameError, FrameTooLarge, frame


class _BufferedStream:
    """A stream holding ``data``; a read returns up to ``n`` bytes of it, as py-libp2p's do."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)

    async def read(self, n: int | None = None) -> bytes:
        size = len(self.data) if n is None or n < 0 else n
        taken = bytes(self.data[:size])
        del self.data[:size]
        return taken


async def test_an_exact_read_leaves_the_bytes_after_the_frame_in_the_stream() -> None:
    status = frame(b"\x08\x01" + b"s" * 300)  # a two-byte length prefix
    stream = _BufferedStream(status + b"/multistream/1.0.0\n")
    assert await read_frame_exactly(stream, 4096) == b"\x08\x01" + b"s" * 300  # type: ignore[arg-type]
    assert bytes(stream.data) == b"/multistream/1.0.0\n"


async def test_an_exact_read_refuses_oversized_and_cut_frames() -> None:
    with pytest.raises(FrameTooLarge):
        await read_frame_exactly(_BufferedStream(frame(b"x" * 5000)), 4096)  # type: ignore[arg-type]
    with pytest.raises(StreamEnded):
        await read_frame_exactly(_BufferedStream(frame(b"cut")[:-1]), 4096)  # type: ignore[arg-type]


async def test_a_single_frame_read_refuses_what_follows_and_a_frame_read_keeps_it() -> None:
    two = frame(b"first") + frame(b"second")
    with pytest.raises(FrameError):
        await read_single_frame(_BufferedStream(two), 4096)  # type: ignore[arg-type]
    stream, decoder = _BufferedStream(two), FrameDecoder(4096)
    assert await read_frame(stream, decoder) == b"first"  # type: ignore[arg-type]
    assert await read_frame(stream, decoder) == b"second"  # type: ignore[arg-type]


def test_bytes_wanted_counts_down_to_the_end_of_the_frame() -> None:
    decoder = FrameDecoder(4096)
    assert decoder.bytes_wanted == 1  # nothing yet: the length comes first
    assert decoder.next_frame(b"\x85") is None
    assert decoder.bytes_wanted == 1  # the length continues
    assert decoder.next_frame(b"\x01") is None  # 133 bytes announced
    assert decoder.bytes_wanted == 133
    assert decoder.next_frame(b"x" * 100) is None
    assert decoder.bytes_wanted == 33
    assert decoder.next_frame(b"x" * 33) == b"x" * 133
    assert decoder.bytes_wanted == 1

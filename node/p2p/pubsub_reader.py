"""Pubsub RPCs read from a stream in whole chunks (a py-libp2p trap not in the notes).

py-libp2p reads each pubsub RPC's varint length one byte per ``stream.read(1)``, then the body
with another read. Every read of a py-libp2p stream goes through the stream, Yamux and its
window bookkeeping and takes two or three trio locks, each a trip through trio's run loop: a
chat message cost a receiving peer three reads and about ten trips before it was parsed.

:mod:`~p2pchat.node.p2p.patches` installs :func:`read_rpc` as the reader the library's pubsub
uses: one read takes whatever
the stream has (up to :data:`READ_CHUNK` bytes), and every RPC in it is served from a
per-stream :class:`~p2pchat.node.wire.framing.FrameDecoder` before the stream is read again.
Limits and errors stay the library's: an RPC announced over the limit raises
``MessageTooLarge`` before anything is buffered, a malformed length raises ``ParseError``, and
the end of the stream raises what the stream raises. An RPC served from the buffer is still a
checkpoint, as a stream read is: handed over back to back, a burst's RPCs reached the
processing task in one late heap instead of flowing (see :mod:`p2pchat.node.p2p.tcp_reads`).
Re-check on every library upgrade (``tests/test_host_perf_traps.py`` fails if the library stops
calling the reader).
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

import trio
from libp2p.abc import INetStream
from libp2p.exceptions import ParseError
from libp2p.io.exceptions import IncompleteReadError, MessageTooLarge
from p2pchat.node.wire.framing import FrameDecoder, FrameError, FrameTooLarge

READ_CHUNK = 64 * 1024

_decoders: WeakKeyDictionary[INetStream, FrameDecoder] = WeakKeyDictionary()


async def read_rpc(stream: INetStream, max_length: int) -> bytes:
    """The next varint-prefixed RPC of ``stream``, of at most ``max_length`` bytes.

    Raises:
        MessageTooLarge: the RPC is announced over ``max_length``.
        ParseError: a malformed length prefix.
        IncompleteReadError: the stream ended inside an RPC (or returned no bytes).
    """
    decoder = _decoders.get(stream)
    if decoder is None:
        decoder = _decoders[stream] = FrameDecoder(max_length)
    try:
        complete = decoder.next_frame()
        if complete is not None:
            await trio.lowlevel.checkpoint()  # buffered: no read, but still a checkpoint
            return complete
        while complete is None:
            chunk = await stream.read(READ_CHUNK)
            if not chunk:
                raise IncompleteReadError(
                    "stream ended inside a pubsub RPC",
                    expected_bytes=1,
                    received_bytes=0,
                )
            complete = decoder.next_frame(chunk)
    except FrameTooLarge as error:
        raise MessageTooLarge(str(error)) from error
    except FrameError as error:
        raise ParseError(str(error)) from error
    return complete

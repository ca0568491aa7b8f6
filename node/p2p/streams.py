"""Reading framed messages from libp2p streams, and where a stream came from.

py-libp2p's ``stream.read(n)`` returns up to ``n`` bytes (trap 14): protocols must frame their
messages themselves. :func:`read_frame` does it with the sans-IO decoder of
:mod:`p2pchat.node.wire.framing`, bounded in size and time.
"""

from __future__ import annotations

from dataclasses import dataclass

from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamReset
from p2pchat.node.wire.framing import FrameDecoder, FrameError

READ_CHUNK = 4096

Stream = INetStream
"""A libp2p stream, for code outside the host layer that handles one (read, write, close)."""


class StreamEnded(FrameError):
    """The other end closed the stream before a whole frame arrived."""


async def read_frame(stream: INetStream, decoder: FrameDecoder) -> bytes:
    """The next frame of ``stream`` (callers bound the wait with their own deadline). Bytes read
    past it stay in ``decoder`` for the next call, so a peer that sends its next request before
    reading our answer is served in order; the decoder holds at most one read beyond a frame,
    and a stream is read only while no whole frame is buffered.

    Raises:
        StreamEnded: the stream ended first.
        FrameError: a malformed or oversized frame.
    """
    complete = decoder.next_frame()
    while complete is None:
        complete = decoder.next_frame(await _read_some(stream, READ_CHUNK))
    return complete


async def read_frame_exactly(stream: INetStream, max_frame_bytes: int) -> bytes:
    """The frame ``stream`` carries next, read without taking a byte past it: what follows
    belongs to the stream's next reader (a relay's STATUS OK, then the relayed connection,
    whose first bytes may arrive with it). Costs a read per length byte.

    Raises:
        StreamEnded: the stream ended first.
        FrameError: a malformed or oversized frame.
    """
    decoder = FrameDecoder(max_frame_bytes)
    complete = None
    while complete is None:
        complete = decoder.next_frame(await _read_some(stream, decoder.bytes_wanted))
    return complete


async def _read_some(stream: INetStream, n: int) -> bytes:
    """1 to ``n`` bytes of ``stream``.

    Raises:
        StreamEnded: the stream has ended.
    """
    try:
        chunk: bytes = await stream.read(n)
    except (StreamEOF, StreamReset, StreamClosed):
        # py-libp2p ends a stream by raising, not by returning b"" as its interface says:
        # unmapped, a client closing its history stream failed the handler with a traceback.
        chunk = b""
    if not chunk:
        raise StreamEnded("the stream ended before a whole frame")
    return chunk


async def read_single_frame(stream: INetStream, max_frame_bytes: int) -> bytes:
    """The one frame ``stream`` carries next where nothing may follow it unasked: a message
    answered before the peer may speak again. Bytes seen past it are an error, never silently
    dropped. (A frame that other bytes may follow at once: :func:`read_frame_exactly`.)

    Raises:
        StreamEnded: the stream ended first.
        FrameError: a malformed or oversized frame, or bytes after it.
    """
    decoder = FrameDecoder(max_frame_bytes)
    complete = await read_frame(stream, decoder)
    if decoder.buffered:
        raise FrameError("more than one message where one was expected")
    return complete


@dataclass(frozen=True)
class StreamOrigin:
    """Who opened a stream, and from which IP address (None when not known, e.g. relayed)."""

    peer_id: str
    remote_ip: str | None


def stream_origin(stream: INetStream) -> StreamOrigin:
    """Describe the remote end of ``stream``."""
    remote = stream.get_remote_address()
    return StreamOrigin(
        peer_id=str(stream.muxed_conn.peer_id),
        remote_ip=str(remote[0]) if remote else None,
    )


async def write_quietly(stream: INetStream, data: bytes) -> None:
    """Write ``data`` unless the other end is gone (then there is nobody to tell)."""
    try:
        await stream.write(data)
    except Exception:  # reset, closed or broken underneath: all mean "gone"
        return


async def close_quietly(stream: INetStream) -> None:
    """Close ``stream``; one already reset or closed is left as it is."""
    try:
        await stream.close()
    except Exception:  # already gone
        return


async def reset_quietly(stream: INetStream) -> None:
    """Reset ``stream``; one already reset or closed is left as it is."""
    try:
        await stream.reset()
    except Exception:  # already gone
        return

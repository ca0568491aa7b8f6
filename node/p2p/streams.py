"""The project's stream: what protocol code outside the host layer reads, writes and closes.

py-libp2p's streams raise a dozen library exception types (and a few of trio's) and report
the end of a stream by raising where their interface promises ``b""``. :class:`Stream` wraps
one and maps every library failure once, here, to the small hierarchy below, so protocol
modules catch the project's errors and never import ``libp2p``:

- :class:`StreamError`: the base; any stream that failed (``except StreamError`` = "gone");
- :class:`StreamEnded`: the other end finished (a read found no more bytes), or the stream
  ended some other way before what was awaited arrived; its subclasses say which:
- :class:`StreamReset`: reset by either end, or broken underneath (its connection failed);
- :class:`StreamIdle`: nothing whole arrived within a reader's deadline
  (:func:`read_frame_within`, for the read deadline every served protocol needs);
- :class:`StreamClosed`: closed for writing (a write after our own close);
- :class:`StreamTimeout`: a stream could not be opened in the library's negotiation time;
- :class:`StreamRefused`: a stream could not be opened: the peer speaks none of the
  protocols, is not connected and cannot be dialled, or is not a PeerId.

py-libp2p 0.8.1's Yamux reports a reset from the other end as a clean end of stream (it forgets
the stream when the RST arrives): :meth:`Stream.read` tells them apart.

py-libp2p's ``stream.read(n)`` returns up to ``n`` bytes (trap 14): protocols must frame their
messages themselves. :func:`read_frame` does it with the sans-IO decoder of
:mod:`p2pchat.node.wire.framing`, bounded in size and time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio
from libp2p.abc import INetStream
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.connection.raw_connection import ConnectionType, RawConnection
from libp2p.network.stream.exceptions import StreamClosed as LibraryStreamClosed
from libp2p.network.stream.exceptions import StreamReset as LibraryStreamReset
from libp2p.stream_muxer.exceptions import MuxedStreamClosed, MuxedStreamReset
from p2pchat.node.errors import P2PChatError
from p2pchat.node.wire.framing import FrameDecoder, FrameError

READ_CHUNK = 4096


# --- the project's stream errors ----------------------------------------------------------------


class StreamError(P2PChatError):
    """A stream failed: it ended, was reset or closed, or could not be opened."""


class StreamEnded(StreamError):
    """The stream is over for this read: the other end closed its side (no more bytes will
    come), or, in a subclass, it was reset or closed. Frame readers raise it when the stream
    ends before a whole frame."""


class StreamReset(StreamEnded):
    """The stream was reset by either end, or broke underneath (its connection failed)."""


class StreamIdle(StreamEnded):
    """The other end sent no whole message within the reader's deadline
    (:func:`read_frame_within`): the stream is over for that reader, which resets it."""


class StreamClosed(StreamEnded):
    """The stream is closed for writing (we closed it), so nothing more can be written."""


class StreamTimeout(StreamError):
    """A stream could not be opened in time (the protocol negotiation did not finish)."""


class StreamRefused(StreamError):
    """A stream could not be opened: the peer speaks none of the protocols asked for, or is not
    connected and could not be dialled, or the PeerId is not one."""


# The failures py-libp2p's stream operations raise: its own hierarchy, and trio's broken and
# closed resources (which its transports mostly, but not everywhere, translate). A ValueError,
# which the library re-raises unmapped for QUIC streams only (not a transport p2pchat uses), is
# left alone: here it would be a bug, and a bug keeps its traceback.
_LIBRARY_ERRORS: tuple[type[BaseException], ...] = (
    BaseLibp2pError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    ConnectionError,
    EOFError,
)


def _mapped(error: BaseException, what: str) -> StreamError:
    """The project's error for a library ``error`` raised by the stream operation ``what``."""
    if isinstance(error, LibraryStreamReset | MuxedStreamReset):
        return StreamReset(f"{what}: the stream was reset")
    if isinstance(error, LibraryStreamClosed | MuxedStreamClosed):
        return StreamClosed(f"{what}: the stream is closed")
    if isinstance(error, EOFError):  # the library's StreamEOF and MuxedStreamEOF among them
        return StreamEnded(f"{what}: the stream has ended")
    return StreamReset(f"{what}: the stream broke: {error or type(error).__name__}")


# --- what carries a connection ------------------------------------------------------------------


def transport_label(layer: Any) -> str:
    """``p2p-circuit``, ``websocket``, ``tcp``, ``quic`` or ``other``: what carries ``layer``
    (a muxed, secured or raw connection), found by walking down the layers beneath it."""
    for _ in range(8):
        if (
            isinstance(layer, RawConnection)
            and layer.get_connection_type() == ConnectionType.RELAYED
        ):
            return "p2p-circuit"
        name = type(layer).__name__.lower()
        if "websocket" in name:
            return "websocket"
        if "tcp" in name:
            return "tcp"
        if "quic" in name:  # QUICConnection: secured and muxed in one layer
            return "quic"
        layer = (
            getattr(layer, "secured_conn", None)
            or getattr(layer, "conn", None)
            or getattr(layer, "stream", None)
        )
        if layer is None:
            break
    return "other"


# --- the stream ---------------------------------------------------------------------------------


class Stream:
    """One libp2p stream, as protocol code sees it.

    Reads and writes cost one await of the library's own (a relay pumps every byte through
    them); the remote end is described lazily. Every operation raises only
    :class:`StreamError` subclasses for the stream's failures; cancellation passes through.
    Built by the host layer (:class:`~p2pchat.node.p2p.host.P2PHost`) around the library's
    stream, never by protocol code.
    """

    __slots__ = ("_library",)

    def __init__(self, library_stream: INetStream) -> None:
        self._library = library_stream

    @property
    def library_stream(self) -> INetStream:
        """The wrapped py-libp2p stream, for the host layer (``node/p2p``) only: the relay
        client turns a circuit's stream into a libp2p connection."""
        return self._library

    async def read(self, max_bytes: int) -> bytes:
        """1 to ``max_bytes`` bytes, as soon as some have arrived (never ``b""``).

        Raises:
            StreamEnded: the other end closed its side and every byte has been read.
            StreamReset: the stream was reset, or its connection broke.
        """
        try:
            data: bytes = await self._library.read(max_bytes)
        except _LIBRARY_ERRORS as error:
            if isinstance(error, EOFError) and self._was_reset():
                raise StreamReset("read: the stream was reset") from None
            raise _mapped(error, "read") from None
        if not data:  # the library's interface's own way of saying "ended", which mplex keeps
            raise StreamEnded("read: the stream has ended")
        return data

    async def write(self, data: bytes) -> None:
        """Send all of ``data``.

        Raises:
            StreamClosed: the stream was closed for writing.
            StreamReset: the stream was reset, or its connection broke.
        """
        try:
            await self._library.write(data)
        except _LIBRARY_ERRORS as error:
            raise _mapped(error, "write") from None

    async def close(self) -> None:
        """Close our side: the other end reads to the end of what was written, then ends.

        Raises:
            StreamError: closing failed (the stream broke underneath).
        """
        try:
            await self._library.close()
        except _LIBRARY_ERRORS as error:
            raise _mapped(error, "close") from None

    async def reset(self) -> None:
        """Abort the stream both ways; unread and unsent bytes are dropped.

        Raises:
            StreamError: the library failed to forget the stream.
        """
        try:
            await self._library.reset()
        except _LIBRARY_ERRORS as error:
            raise _mapped(error, "reset") from None

    def _was_reset(self) -> bool:
        # Yamux forgets a stream when its RST arrives, and a read of a forgotten stream raises
        # EOF: a reset from the other end would pass for a clean end. The stream itself still
        # knows (``reset_received``, also set by a local reset).
        muxed = getattr(self._library, "muxed_stream", None)
        return bool(getattr(muxed, "reset_received", False))

    @property
    def remote_peer(self) -> str:
        """The PeerId of the other end, as text."""
        return str(self._library.muxed_conn.peer_id)

    @property
    def relayed(self) -> bool:
        """Whether the stream runs over a relayed connection (a circuit through a relay)."""
        return transport_label(self._library.muxed_conn) == "p2p-circuit"

    @property
    def remote_ip(self) -> str | None:
        """The IP address the other end's connection comes from; None when not known, or
        relayed (the address beneath a circuit is the relay's, not the peer's)."""
        if self.relayed:
            return None
        remote = self._library.get_remote_address()
        return str(remote[0]) if remote else None

    @property
    def protocol(self) -> str | None:
        """The protocol negotiated for the stream (None until negotiated)."""
        protocol = self._library.get_protocol()
        return str(protocol) if protocol is not None else None

    def __repr__(self) -> str:
        return f"<Stream {self.protocol} with {self.remote_peer}>"


# --- framed reads -------------------------------------------------------------------------------


async def read_frame(stream: Stream, decoder: FrameDecoder) -> bytes:
    """The next frame of ``stream`` (callers bound the wait with their own deadline). Bytes read
    past it stay in ``decoder`` for the next call, so a peer that sends its next request before
    reading our answer is served in order; the decoder holds at most one read beyond a frame,
    and a stream is read only while no whole frame is buffered.

    Raises:
        StreamEnded: the stream ended first (closed, or :class:`StreamReset`).
        FrameError: a malformed or oversized frame.
    """
    complete = decoder.next_frame()
    while complete is None:
        complete = decoder.next_frame(await stream.read(READ_CHUNK))
    return complete


async def read_frame_within(stream: Stream, decoder: FrameDecoder, seconds: float) -> bytes:
    """:func:`read_frame` with a read deadline: the next frame, if it arrives whole within
    ``seconds``; else the stream is reset and :class:`StreamIdle` raised. For every protocol
    stream a remote peer opens: one that sends half a frame, or nothing, and holds the stream,
    must not hold it (or its handler's task) longer than this.

    Raises:
        StreamIdle: no whole frame within ``seconds`` (the stream is reset).
        StreamEnded: the stream ended first (closed, or :class:`StreamReset`).
        FrameError: a malformed or oversized frame.
    """
    with trio.move_on_after(seconds):
        return await read_frame(stream, decoder)
    await reset_quietly(stream)
    raise StreamIdle(f"read: no whole message within {seconds:g} s")


async def read_frame_exactly(stream: Stream, max_frame_bytes: int) -> bytes:
    """The frame ``stream`` carries next, read without taking a byte past it: what follows
    belongs to the stream's next reader (a relay's STATUS OK, then the relayed connection,
    whose first bytes may arrive with it). Costs a read per length byte.

    Raises:
        StreamEnded: the stream ended first (closed, or :class:`StreamReset`).
        FrameError: a malformed or oversized frame.
    """
    decoder = FrameDecoder(max_frame_bytes)
    complete = None
    while complete is None:
        complete = decoder.next_frame(await stream.read(decoder.bytes_wanted))
    return complete


async def read_single_frame(stream: Stream, max_frame_bytes: int) -> bytes:
    """The one frame ``stream`` carries next where nothing may follow it unasked: a message
    answered before the peer may speak again. Bytes seen past it are an error, never silently
    dropped. (A frame that other bytes may follow at once: :func:`read_frame_exactly`.)

    Raises:
        StreamEnded: the stream ended first (closed, or :class:`StreamReset`).
        FrameError: a malformed or oversized frame, or bytes after it.
    """
    decoder = FrameDecoder(max_frame_bytes)
    complete = await read_frame(stream, decoder)
    if decoder.buffered:
        raise FrameError("more than one message where one was expected")
    return complete


# --- where a stream came from -------------------------------------------------------------------


@dataclass(frozen=True)
class StreamOrigin:
    """Who opened a stream, and from which IP address (None when not known, e.g. relayed)."""

    peer_id: str
    remote_ip: str | None


def stream_origin(stream: Stream) -> StreamOrigin:
    """Describe the remote end of ``stream``."""
    return StreamOrigin(peer_id=stream.remote_peer, remote_ip=stream.remote_ip)


# --- best-effort endings ------------------------------------------------------------------------


async def write_quietly(stream: Stream, data: bytes) -> None:
    """Write ``data`` unless the other end is gone (then there is nobody to tell)."""
    try:
        await stream.write(data)
    except StreamError:
        return


async def close_quietly(stream: Stream) -> None:
    """Close ``stream``; one already reset or closed is left as it is."""
    try:
        await stream.close()
    except StreamError:
        return


async def reset_quietly(stream: Stream) -> None:
    """Reset ``stream``; one already reset or closed is left as it is."""
    try:
        await stream.reset()
    except StreamError:
        return

"""Yamux's receive window and stream limits enforced, for every inbound frame (issue #18).

py-libp2p 0.8.1's Yamux (a trap not in the notes) grants each stream a receive window, but
does not enforce it: a DATA frame beyond the window is appended to the stream's buffer anyway
(the library logs "peer exceeded receive window" and clamps the window at 0). A peer that
ignores the window and keeps sending to a stream nobody reads grew a node from 113 MB to
1.78 GB. It also admits any number of inbound streams, answers every ping at once, and hands
each stream opened-and-reset to the swarm (a task and a negotiation each).

:class:`YamuxFrameGuard` stands between a Yamux connection and its secured connection: the
library's frame loop reads every frame header through it, and the guard judges each header
(:class:`YamuxInbound`, sans-IO) before the library sees it:

- DATA beyond the credit granted to its stream (the window the library itself keeps:
  ``recv_window``, raised before each WINDOW_UPDATE is sent), or past the connection's buffer
  bound: the connection is closed with GO_AWAY "protocol error". That is go-yamux's answer to a
  window overrun (``ErrRecvWindowExceeded`` ends the session), and the only sound one: the
  peer's muxer state can no longer be trusted, and resetting one stream would leave it free to
  do the same on the next; the frame is refused before its body is read.
- a new inbound stream over the connection's limit or open rate: refused as go-yamux refuses
  one over ``MaxIncomingStreams``: an RST back, nothing allocated (the library sees a no-op);
- a ping beyond the connection's budget: not answered;
- a version or type no yamux speaker sends: the connection is closed;
- a connection refused more than its budget allows: closed;
- bytes that cannot be read at all (a Noise message failing authentication): the library
  closes the connection; the guard counts it (``yamux_protocol``).

Refused frames reach the library as no-ops: a WINDOW_UPDATE for stream 0, or a DATA frame of the
same length for stream 0, whose body the library reads and drops (stream 0 never exists).
Installed per connection by the host (:func:`guard_yamux`), not by a patch: the library builds
its Yamux itself, whatever class the muxer options name, so the host wraps the connection it
returns before the connection starts reading.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import Enum
from typing import Any, Protocol

import trio
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.connection.exceptions import RawConnError
from libp2p.stream_muxer.yamux.yamux import (
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_PROTOCOL_ERROR,
    HEADER_SIZE,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    YAMUX_HEADER_FORMAT,
    Yamux,
)
from p2pchat.node.p2p.stream_limits import YAMUX_INITIAL_WINDOW, InboundOpens, StreamLimits
from p2pchat.node.p2p.whole_writes import write_whole

Report = Callable[[str], None]
Dropped = Callable[[str, int], None]  # told (reason, size) of unread bytes dropped
_HEADER = struct.Struct(YAMUX_HEADER_FORMAT)
NOOP = _HEADER.pack(0, TYPE_WINDOW_UPDATE, 0, 0, 0)
PRUNE_EVERY = 0.25  # seconds between two recounts of a full connection's live streams


class Action(Enum):
    """What becomes of an inbound frame."""

    PASS = "pass"  # to the library as it is
    DROP = "drop"  # the library sees a no-op
    REFUSE = "refuse"  # a no-op, and an RST for the stream back to the peer
    CLOSE = "close"  # GO_AWAY (protocol error) and the connection is closed


class YamuxView(Protocol):
    """What the guard reads of the library's connection state."""

    def credit(self, stream_id: int) -> int | None:
        """Bytes the stream may still receive (its receive window); None: unknown stream."""

    def is_live(self, stream_id: int) -> bool:
        """Whether the stream is known and not closed."""

    def buffered(self) -> int:
        """Bytes received on every stream of the connection and not read yet."""


class YamuxInbound:
    """The judge of one connection's inbound frame headers (sans-IO)."""

    def __init__(self, limits: StreamLimits, now: float) -> None:
        self._limits = limits
        self.opens = InboundOpens(limits, now)
        self._inbound: set[int] = set()  # streams the peer opened, maybe closed since
        self._pruned_at = -PRUNE_EVERY
        # Bytes received since the buffered bytes were last counted: the true count is at most
        # the last count plus these, so the O(streams) count runs only near the bound.
        self._counted = 0
        self._since_count = 0

    def judge(self, header: bytes, view: YamuxView, now: float) -> tuple[Action, str | None]:
        """The action for the frame starting with ``header`` (12 bytes), and the limit behind
        it (None when the frame passes or is simply dropped)."""
        version, kind, flags, stream_id, length = _HEADER.unpack(header)
        if version != 0 or kind > TYPE_GO_AWAY:
            return Action.CLOSE, self.opens.refused("yamux_protocol")
        if kind == TYPE_PING:
            if flags & FLAG_SYN and self.opens.ping(now) is not None:
                return self._refused(Action.DROP, "yamux_ping_rate")
            return Action.PASS, None
        if kind == TYPE_GO_AWAY:
            return Action.PASS, None
        if flags & FLAG_SYN and view.credit(stream_id) is None:
            return self._opening(stream_id, flags, kind, length, view, now)
        if kind == TYPE_DATA and length:
            return self._data(stream_id, length, view)
        return Action.PASS, None

    def _opening(
        self, stream_id: int, flags: int, kind: int, length: int, view: YamuxView, now: float
    ) -> tuple[Action, str | None]:
        if kind == TYPE_DATA and length > YAMUX_INITIAL_WINDOW:
            return Action.CLOSE, self.opens.refused("yamux_window")
        refused = self.opens.admit(self._live(view, now), now)
        if refused is not None:
            return self._refused(Action.REFUSE, refused)
        if flags & FLAG_RST:
            return Action.DROP, None  # opened and reset at once: nothing to deliver
        self._inbound.add(stream_id)
        if kind == TYPE_DATA and length:
            return self._data(stream_id, length, view)
        return Action.PASS, None

    def _data(self, stream_id: int, length: int, view: YamuxView) -> tuple[Action, str | None]:
        credit = view.credit(stream_id)
        # A stream we forgot (reset, refused) may still have a window's worth in flight; the
        # library drops it unread.
        if length > (YAMUX_INITIAL_WINDOW if credit is None else credit):
            return Action.CLOSE, self.opens.refused("yamux_window")
        bound = self._limits.connection_buffer_bytes
        if self._counted + self._since_count + length > bound:
            self._counted, self._since_count = view.buffered(), 0
            if self._counted + length > bound:
                return Action.CLOSE, self.opens.refused("yamux_connection_buffer")
        self._since_count += length
        return Action.PASS, None

    def _live(self, view: YamuxView, now: float) -> int:
        full = len(self._inbound) >= self._limits.streams_per_connection
        if full and now - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = now
            self._inbound = {sid for sid in self._inbound if view.is_live(sid)}
        return len(self._inbound)

    def _refused(self, action: Action, limit: str) -> tuple[Action, str | None]:
        if self.opens.exhausted:
            return Action.CLOSE, "refusals_per_connection"
        return action, limit


class _LibraryView:
    """:class:`YamuxView` of a py-libp2p Yamux connection."""

    def __init__(self, muxer: Yamux) -> None:
        self._muxer = muxer

    def credit(self, stream_id: int) -> int | None:
        stream = self._muxer.streams.get(stream_id)
        return None if stream is None else int(stream.recv_window)

    def is_live(self, stream_id: int) -> bool:
        stream = self._muxer.streams.get(stream_id)
        return stream is not None and not stream.closed

    def buffered(self) -> int:
        return sum(len(buffer) for buffer in self._muxer.stream_buffers.values())


# How a secured connection says it ended (or was closed under the reader): not a peer's fault.
_CLOSED: tuple[type[BaseException], ...] = (
    BaseLibp2pError,
    EOFError,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


class YamuxFrameGuard:
    """The secured connection as the library's Yamux reads it: whole frame headers, judged
    (see the module docstring); everything else is the secured connection's own."""

    def __init__(
        self, muxer: Yamux, limits: StreamLimits, report: Report, dropped: Dropped
    ) -> None:
        self.secured_conn = muxer.secured_conn  # also what transport_label() walks down
        self._muxer = muxer
        self._view = _LibraryView(muxer)
        self._judge = YamuxInbound(limits, trio.current_time())
        self._report = report
        self.unread_dropped = dropped  # (yamux_unread calls it for each stream it empties)
        self._body_left = 0  # bytes of the current DATA frame's body still to pass
        self._pending = b""  # the rest of a judged header the library has not read yet

    def __getattr__(self, name: str) -> Any:
        return getattr(self.secured_conn, name)

    async def write(self, data: bytes) -> None:
        """Write ``data`` (whole frames, under the library's write lock) to the secured
        connection, whole even if the caller is cancelled meanwhile.

        Trap (not in the notes): the library's Noise encrypts a message, using its nonce,
        before it awaits the socket; a write cancelled there leaves the message unsent or half
        sent, and the peer's next decryption fails: its Yamux reading ends, and with it the
        whole connection. A relay cancels one direction of a circuit's copy when the other ends
        (:mod:`p2pchat.roles.relay.hop`), and the peer it was writing to lost its connection to
        the relay, its reservation with it. So the write is shielded from the caller's
        cancellation (:func:`~p2pchat.node.p2p.whole_writes.write_whole`), for at most
        :data:`~p2pchat.node.p2p.whole_writes.WRITE_SECONDS`; past that, what was sent is a broken
        message, and the connection is closed.

        Raises:
            RawConnError: the write did not finish in time (the connection is closed).
        """
        secured = self.secured_conn
        await write_whole(lambda: secured.write(data), secured.close, "yamux")

    async def read(self, n: int | None = None) -> bytes:
        try:
            return await self._read(n)
        except _CLOSED:
            raise
        except Exception:
            # Not the connection ending: bytes that cannot be read (a Noise message that fails
            # authentication). The library closes the connection; this counts it.
            self._report("yamux_protocol")
            raise

    async def _read(self, n: int | None) -> bytes:
        if self._pending:
            return self._take_pending(n)
        if self._body_left:
            data: bytes = await self.secured_conn.read(
                self._body_left if n is None or n < 0 else min(n, self._body_left)
            )
            self._body_left -= len(data)
            return data
        header = await self._read_header()
        if header is None:
            return b""  # the connection ended (a partial header included): the library sees EOF
        self._pending = await self._judged(header)
        return self._take_pending(n)

    def _take_pending(self, n: int | None) -> bytes:
        size = len(self._pending) if n is None or n < 0 else n
        out, self._pending = self._pending[:size], self._pending[size:]
        return out

    async def _read_header(self) -> bytes | None:
        header = b""
        while len(header) < HEADER_SIZE:
            chunk: bytes = await self.secured_conn.read(HEADER_SIZE - len(header))
            if not chunk:
                return None
            header += chunk
        return header

    async def _judged(self, header: bytes) -> bytes:
        """The header the library gets for ``header``, once its action is carried out."""
        action, limit = self._judge.judge(header, self._view, trio.current_time())
        if limit is not None:
            self._report(limit)
        _, kind, _, stream_id, length = _HEADER.unpack(header)
        if action is Action.CLOSE:
            await self._go_away()
            raise RawConnError(f"yamux peer closed by limit {limit}")
        if kind == TYPE_DATA:
            self._body_left = length
        if action is Action.PASS:
            return header
        if action is Action.REFUSE:
            await self._muxer._write_frame(
                _HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0)
            )
        # The body, if any, still comes: as a DATA frame of stream 0, which the library
        # reads and drops.
        return _HEADER.pack(0, TYPE_DATA, 0, 0, length) if kind == TYPE_DATA else NOOP

    async def _go_away(self) -> None:
        try:
            await self._muxer._write_frame(
                _HEADER.pack(0, TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR)
            )
        except Exception:  # the connection may be broken already: it is closed either way
            return


def guard_yamux(muxer: Yamux, limits: StreamLimits, report: Report, dropped: Dropped) -> None:
    """Put a :class:`YamuxFrameGuard` under ``muxer``, before it starts reading; ``dropped``
    is told the unread bytes dropped of each reset or abandoned stream
    (:mod:`~p2pchat.node.p2p.yamux_unread`)."""
    if isinstance(muxer.secured_conn, YamuxFrameGuard):
        return
    muxer.secured_conn = YamuxFrameGuard(muxer, limits, report, dropped)

"""Bytes a peer sent on a Yamux stream that nobody will read: dropped at once, as go-yamux
drops them (issue #18).

py-libp2p 0.8.1 (a trap not in the notes) keeps a finished stream in its connection's tables,
with every byte the peer sent and nobody read, until its stale-stream sweeper reclaims it: 60 s
after the stream closed at the earliest, 90 s at the latest. That applies to

- a stream **reset** by either side: nothing can read it any more (a read of a reset stream is an
  error in every muxer; go-yamux's ``Read`` answers ``ErrStreamReset`` and frees the buffer at
  the RST);
- a stream whose **handler has returned** after closing its side: nobody holds it any more (in
  go-libp2p the handler's stream, buffer and all, is garbage once the handler returns).

A peer that opens streams, fills each window with bytes we never read (a protocol we do not
speak, or identify, which answers and closes without reading) and resets or closes them made a
node hold each connection's whole buffer bound (32 MiB) until that bound closed the connection,
again and again: +250-265 MiB for 2 PeerIds on 4 connections each in 10 s.

:func:`dropping_unread` wraps ``Yamux._finalize_stream_locked``, which the library calls for
every stream it finalizes (our ``reset()`` and ``close()``, a RST or FIN received on any frame
type): a reset stream's unread bytes, or an abandoned one's, go first, so the library forgets the
stream at once. :func:`abandon` is how the host says a handler has returned
(:mod:`~p2pchat.node.p2p.inbound_streams`): if the stream's side is closed, its unread bytes go
now and whatever comes until the peer closes goes at its close. A stream still open on our side
keeps its bytes (a handler may hand its stream on, as the stop protocol does to a relayed
connection); those stay charged to the connection's buffer bound
(:mod:`~p2pchat.node.p2p.yamux_guard`). The bytes dropped are reported to the connection's
guard by reason (``reset``, ``abandoned``), which counts them
(``p2pchat_yamux_unread_dropped_bytes_total``). Installed by :mod:`~p2pchat.node.p2p.patches`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import trio
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from p2pchat.node.p2p.yamux_guard import YamuxFrameGuard

Finalize = Callable[..., None]

REASONS = ("reset", "abandoned")
"""Why unread bytes were dropped: the ``reason`` label values."""

# Streams whose handler returned with our side closed: nobody will read them.
_abandoned: weakref.WeakSet[YamuxStream] = weakref.WeakSet()


def dropping_unread(original: Finalize) -> Finalize:
    """``Yamux._finalize_stream_locked`` that first drops the unread bytes of a reset or
    abandoned stream."""

    def finalize(self: Yamux, stream: YamuxStream, *, fully_closed: bool, **kwargs: Any) -> None:
        reason = "reset" if stream.reset_received else "abandoned" if stream in _abandoned else None
        if reason is not None:
            buffer = self.stream_buffers.get(stream.stream_id)
            if buffer:
                dropped = len(buffer)
                buffer.clear()
                if isinstance(self.secured_conn, YamuxFrameGuard):
                    self.secured_conn.unread_dropped(reason, dropped)
        original(self, stream, fully_closed=fully_closed, **kwargs)

    return finalize


async def abandon(stream: object) -> None:
    """The handler of ``stream`` (a library stream) has returned: if our side of it is closed,
    nobody will read it; drop what it holds unread, and what comes until it ends."""
    muxed = getattr(stream, "muxed_stream", stream)
    if not isinstance(muxed, YamuxStream) or not muxed.send_closed:
        return
    _abandoned.add(muxed)
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        await muxed.conn._finalize_stream(muxed, fully_closed=muxed.closed)

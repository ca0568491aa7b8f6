"""A reset Yamux stream's unread bytes dropped at once, as go-yamux drops them (issue #18).

py-libp2p 0.8.1 (a trap not in the notes) keeps a stream reset by either side in its
connection's tables, with every byte the peer sent and nobody read, until its stale-stream
sweeper reclaims it: 60 s after the reset at the earliest, 90 s at the latest. Nothing can read
those bytes any more that would use them (a read of a reset stream is an error in every muxer;
go-yamux's ``Read`` answers ``ErrStreamReset`` and frees the buffer at the RST). A peer that
opens streams, fills each window with bytes we never read (a protocol we do not speak) and
resets them made a node hold each connection's whole buffer bound (32 MiB) until that bound
closed the connection, again and again: +265 MiB for 2 PeerIds on 4 connections each in 10 s.

:func:`dropping_reset_buffers` wraps ``Yamux._finalize_stream_locked``, which the library
calls for every stream it finalizes (our ``reset()``, and a RST received on any frame type):
when the stream was reset, its unread bytes go first, so the library forgets the stream at
once. Streams closed by FIN keep their bytes (a half-closed stream may still be read); those
stay charged to the connection's buffer bound (:mod:`~p2pchat.node.p2p.yamux_guard`).
The bytes dropped are reported to the connection's guard, which counts them
(``p2pchat_yamux_reset_unread_bytes_total``). Installed by :mod:`~p2pchat.node.p2p.patches`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from p2pchat.node.p2p.yamux_guard import YamuxFrameGuard

Finalize = Callable[..., None]


def dropping_reset_buffers(original: Finalize) -> Finalize:
    """``Yamux._finalize_stream_locked`` that first drops a reset stream's unread bytes."""

    def finalize(self: Yamux, stream: YamuxStream, *, fully_closed: bool, **kwargs: Any) -> None:
        if stream.reset_received:
            buffer = self.stream_buffers.get(stream.stream_id)
            if buffer:
                dropped = len(buffer)
                buffer.clear()
                if isinstance(self.secured_conn, YamuxFrameGuard):
                    self.secured_conn.unread_dropped(dropped)
        original(self, stream, fully_closed=fully_closed, **kwargs)

    return finalize

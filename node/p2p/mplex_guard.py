"""Mplex's inbound streams bounded (issue #18).

Mplex has no flow control. py-libp2p 0.8.1 already does what go-mplex does against a peer that
sends faster than a stream is read: a stream's queue holds one chunk, and a stream whose reader
does not take it within 5 s is reset (that reset is counted here as ``mplex_stream_buffer``);
a frame is at most 1 MiB. What it does not bound (traps not in the notes):

- inbound streams: any number, each a stream, a queue and a negotiation task (the audit's
  50,000 streams doubled a node's RSS) -> a NewStream over the connection's limit or open rate
  is answered with a reset and nothing is allocated; a connection refused too often is closed;
- a stream's name (the NewStream body, up to 1 MiB, kept for the stream's life, and decoded as
  UTF-8 in the muxer's read loop, where a decoding error is not caught) -> a name over
  :data:`MAX_NAME_BYTES` or not UTF-8 is replaced by the channel number.

Installed per connection by the host (:func:`guard_mplex`), on the instance, before it starts
reading.
"""

from __future__ import annotations

from collections.abc import Callable

import trio
from libp2p.stream_muxer.mplex.constants import HeaderTags
from libp2p.stream_muxer.mplex.datastructures import StreamID
from libp2p.stream_muxer.mplex.exceptions import MplexUnavailable
from libp2p.stream_muxer.mplex.mplex import Mplex
from p2pchat.node.p2p.stream_limits import InboundOpens, StreamLimits

Report = Callable[[str], None]
MAX_NAME_BYTES = 64
PRUNE_EVERY = 0.25  # seconds between two recounts of a full connection's live streams


def stream_name(stream_id: StreamID, message: bytes) -> bytes:
    """The name a new stream keeps: the peer's, if short and UTF-8, else its channel number."""
    if len(message) <= MAX_NAME_BYTES:
        try:
            message.decode()
            return message
        except UnicodeDecodeError:
            pass
    return str(stream_id.channel_id).encode()


def guard_mplex(muxer: Mplex, limits: StreamLimits, report: Report) -> None:
    """Bound ``muxer``'s inbound streams (see the module docstring)."""
    if getattr(muxer, "_p2pchat_guarded", False):
        return
    muxer._p2pchat_guarded = True
    opens = InboundOpens(limits, trio.current_time())
    inbound: set[StreamID] = set()
    pruned_at = [-PRUNE_EVERY]
    open_stream = muxer._handle_new_stream
    deliver = muxer._handle_message

    def live(now: float) -> int:
        nonlocal inbound
        if len(inbound) >= limits.streams_per_connection and now - pruned_at[0] >= PRUNE_EVERY:
            pruned_at[0] = now
            inbound = {sid for sid in inbound if sid in muxer.streams}
        return len(inbound)

    async def handle_new_stream(stream_id: StreamID, message: bytes) -> None:
        now = trio.current_time()
        refused = opens.admit(live(now), now)
        if refused is None:
            inbound.add(stream_id)
            await open_stream(stream_id, stream_name(stream_id, message))
            return
        report(refused)
        if opens.exhausted:
            report("refusals_per_connection")
            raise MplexUnavailable(f"mplex peer closed by limit {refused}")
        await muxer.send_message(HeaderTags.ResetReceiver, None, stream_id)

    async def handle_message(stream_id: StreamID, message: bytes) -> None:
        stream = muxer.streams.get(stream_id)
        was_reset = stream is not None and stream.event_reset.is_set()
        await deliver(stream_id, message)
        if stream is not None and not was_reset and stream.event_reset.is_set():
            report("mplex_stream_buffer")  # the library reset it: its reader fell behind

    muxer._handle_new_stream = handle_new_stream
    muxer._handle_message = handle_message

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
  :data:`MAX_NAME_BYTES` or not UTF-8 is replaced by the channel number;
- its read loop lets any error but a few escape: a Noise message that fails authentication (one
  bad frame from any peer) ended the read loop's service with an exception and took the whole
  node down -> any error reading or handling a frame closes that connection (``mplex_protocol``);
- its writes are not serialized: two streams writing at once encrypt their Noise messages in
  one order and may send them in another, which the other end cannot decrypt (the very error
  above) -> writes go one at a time.

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
from p2pchat.node.p2p.whole_writes import write_whole

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
    handle_frame = muxer._handle_incoming_message
    write = muxer.write_to_stream
    writing = trio.Lock()

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

    async def handle_incoming_message() -> None:
        try:
            await handle_frame()
        except MplexUnavailable:
            raise
        except Exception as error:  # undecryptable, or a frame the library chokes on: this
            # connection is over, the node is not
            report("mplex_protocol")
            raise MplexUnavailable(f"mplex connection closed: {error!r}") from None

    async def write_to_stream(data: bytes) -> None:
        async with writing:  # (cancelled while waiting for it: nothing written, nothing broken)
            await write_whole(lambda: write(data), muxer.secured_conn.close, "mplex")

    muxer._handle_new_stream = handle_new_stream
    muxer._handle_message = handle_message
    muxer._handle_incoming_message = handle_incoming_message
    muxer.write_to_stream = write_to_stream

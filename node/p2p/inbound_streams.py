"""Every inbound stream admitted, negotiated and served within bounds (issue #18): the streams
(the connections are admitted in :mod:`p2pchat.node.p2p.inbound`).

py-libp2p 0.8.1 (traps not in the notes) negotiates each inbound stream's protocol with
multistream-select, reading each message with an unbounded length (a peer that announces a
1 GB protocol id and keeps sending grew a node to 1.62 GB), taking any number of proposals and
``ls`` requests, for 30 s; it admits any number of streams per peer and per protocol (its
resource manager counts streams for the whole host only). Its handlers bound their own reads
(identify push: 10 s; ping: 10 s idle and 2 streams per peer; pubsub: bounded RPCs on one
long-lived stream per peer), but only by the library's choice: the host holds the one-message
handler to ``handler_timeout`` too, so an upgrade cannot drop that bound unnoticed.

:func:`install` replaces the swarm's handler of inbound streams (the library host's
``_swarm_stream_handler``, set on the swarm instance) with :func:`serve_inbound`'s:

1. the stream counts against its peer's inbound streams (``streams_per_peer``), before any byte
   is read, so never-ending negotiations are bounded in number too;
2. multistream-select runs within a deadline (``negotiation_timeout``), each message of at most
   ``negotiation_max_bytes`` (go-multistream: 1024), at most ``negotiation_max_proposals``
   proposals (``ls`` included);
3. the negotiated stream counts against the peer's streams on that protocol
   (``streams_per_protocol``);
4. the protocol's handler runs (guarded, see :func:`~p2pchat.node.p2p.host.guard_handler`),
   within ``handler_timeout`` for the library handlers that read one message
   (:data:`ONE_MESSAGE_HANDLERS`); the project's own handlers bound their reads themselves
   (each reads framed messages within its own deadline);
5. once the handler returned, a stream it closed is abandoned: what the peer sent and nobody
   read is dropped (:func:`~p2pchat.node.p2p.yamux_unread.abandon`).

Exceeding any of these resets the stream and is reported by its limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import trio
from libp2p.abc import IHost, INetStream
from libp2p.identity.identify_push.identify_push import ID_PUSH
from libp2p.protocol_muxer.multiselect import MULTISELECT_PROTOCOL_ID, PROTOCOL_NOT_FOUND_MSG
from p2pchat.node.p2p.stream_limits import PeerStreams, StreamLimits
from p2pchat.node.p2p.streams import (
    Stream,
    StreamError,
    close_quietly,
    read_frame_exactly,
    reset_quietly,
)
from p2pchat.node.p2p.yamux_unread import abandon
from p2pchat.node.wire.framing import FrameError, FrameTooLarge, frame

Report = Callable[[str], None]
Handler = Callable[[INetStream], Awaitable[None]]

ONE_MESSAGE_HANDLERS = frozenset({str(ID_PUSH)})
"""Library handlers that read one message and end: run within ``handler_timeout``."""


class NegotiationFailed(Exception):
    """The peer broke a negotiation bound (``limit``), or is not speaking multistream-select
    (``negotiation_malformed``)."""

    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit


def message(text: str) -> bytes:
    """One multistream-select message: ``text`` and a newline, length-prefixed."""
    return frame(text.encode() + b"\n")


async def negotiate(stream: Stream, protocols: Mapping[str, object], limits: StreamLimits) -> str:
    """The protocol the peer picks on ``stream`` among ``protocols`` (the listener's side of
    multistream-select), reading nothing past the peer's last proposal.

    Raises:
        NegotiationFailed: a bound was broken, or the peer does not speak the protocol.
        StreamError: the stream ended or broke.
        trio.TooSlowError: never (the caller's deadline raises it).
    """
    await stream.write(message(MULTISELECT_PROTOCOL_ID))
    if await _read_text(stream, limits) != MULTISELECT_PROTOCOL_ID:
        raise NegotiationFailed("negotiation_malformed")
    for _ in range(limits.negotiation_max_proposals):
        proposal = await _read_text(stream, limits)
        if proposal in protocols:
            await stream.write(message(proposal))
            return proposal
        if proposal == "ls":
            await stream.write(message("".join(f"{name}\n" for name in protocols)))
        else:
            await stream.write(message(PROTOCOL_NOT_FOUND_MSG))
    raise NegotiationFailed("negotiation_proposals")


async def _read_text(stream: Stream, limits: StreamLimits) -> str:
    try:
        payload = await read_frame_exactly(stream, limits.negotiation_max_bytes + 1)
    except FrameTooLarge:
        raise NegotiationFailed("negotiation_bytes") from None
    except FrameError:
        raise NegotiationFailed("negotiation_malformed") from None
    if not payload.endswith(b"\n"):
        raise NegotiationFailed("negotiation_malformed")
    try:
        return payload[:-1].decode()
    except UnicodeDecodeError:
        raise NegotiationFailed("negotiation_malformed") from None


def serve_inbound(
    handlers: Callable[[], Mapping[str, Handler]], limits: StreamLimits, report: Report
) -> Callable[[INetStream], Awaitable[None]]:
    """The handler of every inbound stream: admit, negotiate, admit again, serve (see the
    module docstring). ``handlers`` gives the protocol handlers registered now."""
    counts = PeerStreams(limits)

    async def handle(library_stream: INetStream) -> None:
        stream = Stream(library_stream)
        peer = stream.remote_peer
        refused = counts.open(peer)
        if refused is not None:
            report(refused)
            await reset_quietly(stream)
            return
        try:
            await _negotiate_and_serve(stream, peer, handlers(), counts, limits, report)
        finally:
            counts.close(peer)

    handle.counts = counts  # type: ignore[attr-defined]  # for tests: the live counts
    return handle


async def _negotiate_and_serve(
    stream: Stream,
    peer: str,
    handlers: Mapping[str, Handler],
    counts: PeerStreams,
    limits: StreamLimits,
    report: Report,
) -> None:
    try:
        with trio.fail_after(limits.negotiation_timeout):
            protocol = await negotiate(stream, handlers, limits)
    except trio.TooSlowError:
        report("negotiation_deadline")
        await reset_quietly(stream)
        return
    except NegotiationFailed as failure:
        report(failure.limit)
        await reset_quietly(stream)
        return
    except StreamError:
        await reset_quietly(stream)
        return
    refused = counts.negotiated(peer, protocol)
    if refused is not None:
        report(refused)
        await reset_quietly(stream)
        return
    try:
        library_stream = stream.library_stream
        library_stream.set_protocol(protocol)
        handler = handlers[protocol]
        if protocol not in ONE_MESSAGE_HANDLERS:
            await handler(library_stream)
            return
        with trio.move_on_after(limits.handler_timeout) as timer:
            await handler(library_stream)
        if timer.cancelled_caught:
            report("handler_deadline")
            await reset_quietly(stream)
        else:  # the library's handler leaves its stream open when the message was bad
            await close_quietly(stream)
    finally:
        counts.finished(peer, protocol)
        # Done with: what the peer sent and the handler did not read is nobody's now.
        await abandon(stream.library_stream)


def install(host: IHost, limits: StreamLimits, report: Report) -> None:
    """Serve ``host``'s inbound streams with :func:`serve_inbound` (instead of the library
    host's own negotiation)."""
    multiselect = host.get_mux()

    def handlers() -> Mapping[str, Handler]:
        return {
            str(protocol): handler
            for protocol, handler in multiselect.handlers.items()
            if protocol is not None and handler is not None
        }

    host.get_network().set_stream_handler(serve_inbound(handlers, limits, report))

"""QUIC (``/udp/<port>/quic-v1``): the py-libp2p QUIC transport's configuration, bounded by the
node's own limits.

py-libp2p 0.8.1's QUIC transport (aioquic) brings its own TLS handshake (the libp2p TLS
certificate extension carries the identity key; no Noise) and its own streams (no Yamux or
mplex), so neither the Noise-only security options nor the muxer guards
(:mod:`~p2pchat.node.p2p.muxer_guards`) apply to it. What a remote peer may make this node hold
through a QUIC connection is bounded here instead, from the same :class:`StreamLimits`:

- inbound streams per connection: the library admits 1000 (``MAX_INCOMING_STREAMS``) ->
  ``streams_per_connection``, as on Yamux;
- multistream negotiation on a stream: the library waits 30 s -> ``negotiation_timeout``;
- opening a stream, which waits for the peer's stream credit (trap 39,
  :mod:`~p2pchat.node.p2p.quic_streams`): the library waits 30 s -> ``negotiation_timeout``;
- a read that waits (trap 38): the library gives up after 30 s (``STREAM_READ_TIMEOUT``) and
  resets the stream -> no limit, as on Yamux and TCP. A quiet room's GossipSub stream carries
  nothing for minutes; at 30 s the library reset the peer's stream to us, and go-libp2p-pubsub
  then dropped our subscription with its dead stream, so it never sent us the room's messages
  again. Each protocol of the node bounds its own waits (``read_frame_within``), as it must
  on Yamux.

Connections themselves go through the same gate as TCP and WebSocket ones (the swarm's inbound
handler, :mod:`~p2pchat.node.p2p.inbound`): per address, per peer and in total; their handshakes
are admitted by :func:`gate_handshakes` (trap 36, below).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from libp2p.transport.quic.config import QUICTransportConfig
from libp2p.transport.quic.listener import QUICListener
from libp2p.transport.quic.transport import QUICTransport
from p2pchat.node.p2p.admission import PER_IP, TRANSIENT_FULL, AdmissionLimits
from p2pchat.node.p2p.stream_limits import StreamLimits


@dataclass
class ChatQuicConfig(QUICTransportConfig):  # type: ignore[misc]  # untyped library
    """The library's QUIC config, telling the host of streams reset by a bound of ours
    (:func:`p2pchat.node.p2p.quic_streams.resetting_an_overflowing_stream`)."""

    stream_limit_exceeded: Callable[[str], None] | None = None


def quic_config(
    streams: StreamLimits,
    stream_limit_exceeded: Callable[[str], None] | None = None,
    **connection: Any,
) -> QUICTransportConfig:
    """The swarm's connection config (``connection``: :class:`ConnectionConfig`'s fields), as a
    QUIC transport config whose stream limits are ``streams``' (a stream reset by one of them
    is told to ``stream_limit_exceeded``)."""
    return ChatQuicConfig(
        stream_limit_exceeded=stream_limit_exceeded,
        **connection,
        max_concurrent_streams=streams.streams_per_connection,
        MAX_INCOMING_STREAMS=streams.streams_per_connection,
        NEGOTIATE_TIMEOUT=streams.negotiation_timeout,
        STREAM_OPEN_TIMEOUT=streams.negotiation_timeout,
        STREAM_READ_TIMEOUT=math.inf,
    )


# --- trap 36: handshakes ------------------------------------------------------------------------
#
# The library's QUIC listener starts a TLS handshake (a key exchange and a signature, about 14 ms
# of CPU here) for every Initial packet, from any source address, with no per-address limit;
# it keeps up to 256 of them (evicting the oldest, an honest one included) for about 40 s. So a
# new handshake counts against the inbound admission limits here: at most ``transient``
# handshakes in all, at most ``per_ip`` per address group (loopback exempt, as for TCP).
# Established connections then pass the swarm's inbound gate like TCP ones (per address, per
# peer, in total). A spoofed source address is not stopped by a per-address limit (QUIC's Retry
# would validate it; the library's listener has none): such a flood holds the ``transient``
# handshake slots, never more, and TCP and WebSocket are untouched by it.

Refused = Callable[[str, str], None]
"""Told of each refused handshake: the reason (an admission reason) and the address group."""


def handshake_refusal(
    pending: Sequence[str | None], ip: str, limits: AdmissionLimits
) -> str | None:
    """Why a new QUIC handshake from ``ip`` is refused while handshakes from ``pending`` (their
    source IPs; None: unknown) are in progress, or None to admit it."""
    if len(pending) >= limits.transient:
        return TRANSIENT_FULL
    if limits.exempt(ip):
        return None
    group = limits.group_of(ip)
    if sum(1 for other in pending if limits.group_of(other) == group) >= limits.per_ip:
        return PER_IP
    return None


def gate_handshakes(transport: QUICTransport, limits: AdmissionLimits, refused: Refused) -> None:
    """Every listener ``transport`` creates from now on admits a new handshake only within
    ``limits`` (:func:`handshake_refusal`); a refused one is dropped before anything is
    allocated for it (the client retransmits, then gives up) and told to ``refused``."""
    create_listener = transport.create_listener

    def gated_create_listener(handler: Any) -> QUICListener:
        listener = create_listener(handler)
        _gate_listener(listener, limits, refused)
        return listener

    transport.create_listener = gated_create_listener


def _gate_listener(listener: QUICListener, limits: AdmissionLimits, refused: Refused) -> None:
    handle_new = listener._handle_new_connection
    registry = listener._registry

    async def gated(data: bytes, addr: tuple[str, int], packet_info: Any) -> Any:
        # Read without the registry's lock: trio switches tasks only at an await.
        pending = [registry._connection_id_to_addr.get(cid) for cid in registry._pending]
        ips = [str(where[0]) if where else None for where in pending]
        reason = handshake_refusal(ips, str(addr[0]), limits)
        if reason is not None:
            refused(reason, limits.group_of(str(addr[0])))
            return None
        return await handle_new(data, addr, packet_info)

    listener._handle_new_connection = gated

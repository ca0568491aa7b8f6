"""QUIC (``/udp/<port>/quic-v1``): the py-libp2p QUIC transport's configuration, bounded by the
node's own limits.

py-libp2p 0.8.1's QUIC transport (aioquic) brings its own TLS handshake (the libp2p TLS
certificate extension carries the identity key; no Noise) and its own streams (no Yamux or
mplex), so neither the Noise-only security options nor the muxer guards
(:mod:`~p2pchat.node.p2p.muxer_guards`) apply to it. What a remote peer may make this node hold
through a QUIC connection is bounded here instead, from the same :class:`StreamLimits`:

- inbound streams per connection: the library admits 1000 (``MAX_INCOMING_STREAMS``) ->
  ``streams_per_connection``, as on Yamux;
- multistream negotiation on a stream: the library waits 30 s -> ``negotiation_timeout``.

Connections themselves go through the same gate as TCP and WebSocket ones (the swarm's inbound
handler, :mod:`~p2pchat.node.p2p.inbound`): per address, per peer and in total.
"""

from __future__ import annotations

from typing import Any

from libp2p.transport.quic.config import QUICTransportConfig
from p2pchat.node.p2p.stream_limits import StreamLimits


def quic_config(streams: StreamLimits, **connection: Any) -> QUICTransportConfig:
    """The swarm's connection config (``connection``: :class:`ConnectionConfig`'s fields), as a
    QUIC transport config whose stream limits are ``streams``'."""
    return QUICTransportConfig(
        **connection,
        max_concurrent_streams=streams.streams_per_connection,
        MAX_INCOMING_STREAMS=streams.streams_per_connection,
        NEGOTIATE_TIMEOUT=streams.negotiation_timeout,
    )

"""Limits on what a remote peer may make this node hold through streams: the numbers, and the
sans-IO bookkeeping that applies them (no sockets, no library objects; the clock is passed in).

The anchors are go-libp2p's resource manager defaults (``limit_defaults.go``: a peer may hold
256 inbound streams, 64 of them on one protocol) and go-yamux (initial stream window 256 KiB,
window at most 16 MiB, ``MaxIncomingStreams`` 1000, accept backlog 256), go-multistream
(protocol ids of at most 1024 bytes) and go-libp2p's 10 s stream negotiation timeout. What
differs, and why:

- streams per connection: 256, not go-yamux's 1000: a Python stream costs a task and a few KiB
  more than a goroutine, and the host keeps one connection per peer, so go's 256 per peer binds
  first there anyway;
- no limit on one protocol's streams from all peers together (go: 512 inbound): a few sybil
  PeerIds would fill it and lock every honest peer out of that protocol; the per-peer limits and
  the host's system-wide stream cap (the library's resource manager) bound the total instead;
- stream opens per connection are rate-limited (go has no such limit): an open-and-reset flood
  frees each stream at once, so no count binds it, yet each one costs a task and a negotiation;
- a connection that keeps being refused (:attr:`StreamLimits.refusals_per_connection`) is closed:
  refusals cost the attacker nothing, parsing its frames costs us CPU.

:mod:`~p2pchat.node.p2p.yamux_guard`, :mod:`~p2pchat.node.p2p.mplex_guard` and
:mod:`~p2pchat.node.p2p.inbound_streams` apply these; every refusal is reported by its
``limit`` name (:data:`LIMITS`), which is what the metric
``p2pchat_stream_limit_exceeded_total`` counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from p2pchat.node.ratelimit import TokenBucket

_Key = TypeVar("_Key")

KIB = 1024
MIB = 1024 * KIB

YAMUX_INITIAL_WINDOW = 256 * KIB  # the yamux spec's initial stream window, both ways

LIMITS = (
    "yamux_window",  # DATA beyond the receive window granted: the connection is closed
    "yamux_connection_buffer",  # unread bytes of one connection over the bound: closed
    "yamux_protocol",  # a frame no yamux speaker sends, or unreadable bytes: closed
    "yamux_ping_rate",  # pings beyond the budget: not answered
    "streams_per_connection",  # inbound stream refused (reset at once, nothing allocated)
    "stream_open_rate",  # inbound stream refused: opened too fast
    "refusals_per_connection",  # a connection refused too often: closed
    "mplex_stream_buffer",  # an mplex stream whose reader fell behind: reset (as go-mplex)
    "quic_stream_buffer",  # a QUIC stream whose reader fell behind by 2 MiB: reset
    "mplex_protocol",  # an mplex frame that cannot be read (undecryptable, malformed): closed
    "streams_per_peer",  # inbound stream reset before negotiation
    "streams_per_protocol",  # inbound stream reset after negotiation (per protocol, per peer)
    "negotiation_deadline",  # multistream-select did not finish in time: reset
    "negotiation_bytes",  # a multistream message over the bound: reset
    "negotiation_proposals",  # too many protocols proposed (or "ls") on one stream: reset
    "negotiation_malformed",  # not multistream-select: reset
    "handler_deadline",  # a library handler (identify push) held its stream too long: reset
)
"""Every ``limit`` label value, fixed: what a refusal is counted by."""


@dataclass(frozen=True)
class StreamLimits:
    """The limits, as the host applies them (built from the config's ``streams:`` section)."""

    streams_per_connection: int = 256
    streams_per_peer: int = 256
    streams_per_protocol_per_peer: int = 64
    stream_open_rate: float = 64.0  # inbound opens per second, per connection
    stream_open_burst: int = 256
    connection_buffer_bytes: int = 32 * MIB  # unread bytes of all streams of one connection
    ping_rate: float = 2.0  # yamux pings answered per second, per connection
    ping_burst: int = 16
    refusals_per_connection: int = 1024
    negotiation_timeout: float = 10.0
    negotiation_max_bytes: int = 1024  # one multistream message (a protocol id)
    negotiation_max_proposals: int = 8
    handler_timeout: float = 10.0  # library handlers that read one message (identify push)


class InboundOpens:
    """One connection's inbound stream opens: the count of live streams it opened and its
    open rate, and how often it was refused.

    ``live`` is the caller's count of the connection's live inbound streams (the muxer knows
    them); :meth:`admit` answers None (admitted) or the ``limit`` refusing the stream.
    """

    def __init__(self, limits: StreamLimits, now: float) -> None:
        self._limits = limits
        self._opens = TokenBucket(limits.stream_open_rate, limits.stream_open_burst, now)
        self._pings = TokenBucket(limits.ping_rate, limits.ping_burst, now)
        self.refusals = 0

    def admit(self, live: int, now: float) -> str | None:
        """Whether a new inbound stream may open now, ``live`` being open already."""
        if live >= self._limits.streams_per_connection:
            return self.refused("streams_per_connection")
        if not self._opens.take(now):
            return self.refused("stream_open_rate")
        return None

    def ping(self, now: float) -> str | None:
        """Whether a ping from the peer may be answered now."""
        return None if self._pings.take(now) else self.refused("yamux_ping_rate")

    def refused(self, limit: str) -> str:
        """Note one refusal by ``limit``; return it."""
        self.refusals += 1
        return limit

    @property
    def exhausted(self) -> bool:
        """Whether the connection was refused more than its budget allows: close it."""
        return self.refusals > self._limits.refusals_per_connection


class PeerStreams:
    """Live inbound streams per peer and per (peer, protocol). Bounded: an entry exists only
    while the peer holds a stream, so by the host's connection limit times the stream limits."""

    def __init__(self, limits: StreamLimits) -> None:
        self._limits = limits
        self._by_peer: dict[str, int] = {}
        self._by_protocol: dict[tuple[str, str], int] = {}

    def open(self, peer: str) -> str | None:
        """Count a new inbound stream of ``peer``: None, or ``streams_per_peer`` (not counted)."""
        held = self._by_peer.get(peer, 0)
        if held >= self._limits.streams_per_peer:
            return "streams_per_peer"
        self._by_peer[peer] = held + 1
        return None

    def close(self, peer: str) -> None:
        """A stream counted by :meth:`open` is over."""
        _decrement(self._by_peer, peer)

    def negotiated(self, peer: str, protocol: str) -> str | None:
        """Count ``peer``'s stream on ``protocol``: None, or ``streams_per_protocol``."""
        key = (peer, protocol)
        held = self._by_protocol.get(key, 0)
        if held >= self._limits.streams_per_protocol_per_peer:
            return "streams_per_protocol"
        self._by_protocol[key] = held + 1
        return None

    def finished(self, peer: str, protocol: str) -> None:
        """A stream counted by :meth:`negotiated` is over."""
        _decrement(self._by_protocol, (peer, protocol))

    def held(self, peer: str) -> int:
        """How many inbound streams ``peer`` holds now."""
        return self._by_peer.get(peer, 0)

    def __len__(self) -> int:
        return len(self._by_peer) + len(self._by_protocol)


def _decrement(counts: dict[_Key, int], key: _Key) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)

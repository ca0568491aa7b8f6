"""What each relayed connection of ours has used of its circuit's limit, and the host-side moves
of a circuit renewal (issue #21, must-have 3).

A relay resets a circuit once it has carried ``data`` bytes in either direction or ``duration``
seconds have passed (the limit is in its HOP STATUS to the dialler, its STOP CONNECT to the
destination). Both ends of a relayed connection see every byte of the circuit: the raw
connection beneath Noise and the muxer reads and writes them, so :class:`CountedStream` counts
them there, exactly what the relay counts. :class:`CircuitLedger` keeps one
:class:`CircuitUsage` per relayed connection, by its muxed connection, for
:mod:`p2pchat.node.circuit_renewal` to open the next circuit before the relay resets this one.

Bounded by the connections themselves: an entry is added per relayed connection (admitted by
the dial and relayed admission limits) and dropped when its connection is seen closed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
from libp2p.abc import INetConn, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.protocol_muxer.multiselect_client import MultiselectClient
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from p2pchat.node.p2p.streams import transport_label
from p2pchat.node.wire.circuit import Limit

NEGOTIATE_SECONDS = 10  # a protocol negotiation on a chosen connection, at most


@dataclass
class CircuitUsage:
    """One relayed connection: through which relay, whether we dialled it, its limit (None: the
    relay named none), when it opened (trio time) and the bytes it carried each way."""

    peer: str
    relay: str
    outbound: bool
    limit: Limit | None
    opened: float = field(default_factory=trio.current_time)
    sent: int = 0
    received: int = 0
    renewals: int = 0  # next circuits tried for this one (circuit renewal)
    retry_at: float = 0.0  # not tried again before (trio time)

    def used(self, now: float) -> float:
        """The largest share of a limit used so far (0.0 without a limit; 1.0: reset is due)."""
        shares = [0.0]
        if self.limit is not None and self.limit.data:
            shares += [self.sent / self.limit.data, self.received / self.limit.data]
        if self.limit is not None and self.limit.duration:
            shares.append((now - self.opened) / self.limit.duration)
        return max(shares)


class CountedStream:
    """A relayed stream that counts what passes into ``usage``; everything else is the
    wrapped library stream's (the raw connection calls read, write, close and the address
    getters)."""

    def __init__(self, stream: INetStream, usage: CircuitUsage) -> None:
        self._stream = stream
        self._usage = usage

    async def read(self, n: int | None = None) -> bytes:
        data: bytes = await self._stream.read(n)
        self._usage.received += len(data)
        return data

    async def write(self, data: bytes) -> None:
        await self._stream.write(data)
        self._usage.sent += len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class CircuitLedger:
    """The usage of every open relayed connection, by its muxed connection."""

    def __init__(self) -> None:
        self._by_muxed: dict[int, tuple[object, CircuitUsage]] = {}

    def add(self, muxed: object, usage: CircuitUsage) -> None:
        """``muxed`` (a relayed connection just upgraded) carries ``usage``'s circuit."""
        self._prune()
        self._by_muxed[id(muxed)] = (muxed, usage)

    def usage_of(self, conn: INetConn) -> CircuitUsage | None:
        """The usage of the swarm connection ``conn``; None if it is not a relayed one of ours."""
        entry = self._by_muxed.get(id(conn.muxed_conn))
        return entry[1] if entry is not None and entry[0] is conn.muxed_conn else None

    def usage_of_muxed(self, muxed: object) -> CircuitUsage | None:
        """The usage of the relayed connection whose muxed connection is ``muxed`` (a stream's
        ``muxed_conn``); None if it is not a relayed one of ours."""
        entry = self._by_muxed.get(id(muxed))
        return entry[1] if entry is not None and entry[0] is muxed else None

    def _prune(self) -> None:
        for key, (muxed, _) in list(self._by_muxed.items()):
            if getattr(muxed, "is_closed", False):
                del self._by_muxed[key]

    def __len__(self) -> int:
        self._prune()
        return len(self._by_muxed)


def connections_to(network: Any, peer: str) -> list[INetConn]:
    """The swarm's open connections to ``peer`` (empty for a malformed id)."""
    try:
        return [c for c in network.get_connections(ID.from_base58(peer)) if not c.is_closed]
    except ValueError:
        return []


async def new_stream_on(conn: INetConn, protocols: Sequence[str]) -> INetStream:
    """A stream on this very connection (the swarm would pick the "best" one: the busiest of
    several relayed ones, which is the old circuit), negotiated to the first of ``protocols``
    the peer speaks. Raises whatever the muxer or the negotiation raise."""
    stream = await conn.new_stream()
    try:
        selected = await MultiselectClient().select_one_of(
            [TProtocol(p) for p in protocols],
            MultiselectCommunicator(stream),
            NEGOTIATE_SECONDS,
        )
    except BaseException:
        with trio.CancelScope(shield=True), contextlib.suppress(Exception):
            await stream.reset()  # (suppressed: already gone with its connection)
        raise
    stream.set_protocol(selected)
    return stream


def sparing_relayed(library_trim: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """The swarm's per-peer trim (``Swarm._trim_connections``), skipped for a peer one of whose
    connections is relayed.

    With ``max_connections_per_peer=1`` (trap 4) the swarm closes a peer's older connection as
    soon as a second one registers (unless it is under 20 s old): the next circuit killed the
    current one before our pubsub stream had moved, so what was on its way was lost. Relayed
    connections end by themselves (the relay's limits; the renewal and the relayed->direct
    handover close the old one once its successor carries the conversation), and how many a
    peer may hold is bounded by the dial and relayed admission limits."""

    def trim(swarm: Any, peer_id: Any) -> None:
        if any(
            transport_label(conn.muxed_conn) == "p2p-circuit"
            for conn in swarm.connections.get(peer_id, ())
        ):
            return
        library_trim(swarm, peer_id)

    return trim

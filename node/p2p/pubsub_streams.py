"""The pubsub streams a peer opened to us, by peer: which connections its sending lives on.

GossipSub keeps one outbound stream per peer, and libraries differ in when they open another
(issue #20, bug 1): go-libp2p-pubsub and py-libp2p open a new one when theirs dies while the
peer is still connected; js-gossipsub opens one only on a new connection or when a new stream of
ours arrives while it has none. So after a relayed connection is replaced by a direct one, what
matters for hearing a peer is where *its* stream is, which only the receiving side sees: the
pubsub registers every inbound pubsub stream here while it reads it
(:meth:`~p2pchat.node.p2p.pubsub._ChatPubsub.stream_handler`).

Bounded by the streams themselves: an entry lives exactly as long as the library reads that
stream, and inbound streams per peer and protocol are capped by the stream limits
(:mod:`~p2pchat.node.p2p.stream_limits`).

The other way, :class:`OutboundStreamCounts` counts the pubsub streams *we* opened on each
connection, because a receiver may accept only so many over a connection's life:
rust-libp2p-gossipsub (0.50, read in its ``handler.rs``) counts every inbound stream of a
connection and, at the fifth (``MAX_SUBSTREAM_ATTEMPTS``), disables GossipSub on that
connection for good: it refuses our streams and sends nothing more there. So no more than
:data:`STREAMS_PER_CONNECTION` of ours go to one connection (the library's first stream, a move
off a relay and a respawn after a failed stream count too); renewals stop there.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

import trio
from libp2p.abc import INetStream
from libp2p.peer.id import ID
from p2pchat.node.p2p.streams import transport_label


def _open(stream: INetStream) -> bool:
    return not getattr(stream.muxed_conn, "is_closed", False)


class InboundStreams:
    """The live inbound pubsub streams of each peer."""

    def __init__(self) -> None:
        self._by_peer: dict[ID, set[INetStream]] = {}
        # peer -> set when one of its streams ends next (asked for by a waiter, dropped when set)
        self._ends: dict[ID, trio.Event] = {}

    def add(self, peer: ID, stream: INetStream) -> None:
        """``peer`` opened ``stream`` and it is being read."""
        self._by_peer.setdefault(peer, set()).add(stream)

    def remove(self, peer: ID, stream: INetStream) -> None:
        """``stream`` of ``peer`` is no longer read (it ended, or failed)."""
        streams = self._by_peer.get(peer)
        if streams is None:
            return
        streams.discard(stream)
        if not streams:
            del self._by_peer[peer]
        ended = self._ends.pop(peer, None)
        if ended is not None:
            ended.set()

    def next_end(self, peer: ID) -> trio.Event:
        """An event set when one of ``peer``'s streams ends next (at most one kept per peer)."""
        ended = self._ends.get(peer)
        if ended is None:
            ended = self._ends[peer] = trio.Event()
        return ended

    def transports(self, peer: ID) -> list[str]:
        """The transports (``tcp``, ``ws``, ``p2p-circuit``, ...) of the connections ``peer``'s
        live inbound pubsub streams are on, one entry per stream; empty if it has none."""
        return sorted(
            transport_label(stream.muxed_conn)
            for stream in self._by_peer.get(peer, ())
            if _open(stream)
        )

    def on_connection(self, peer: ID, conn: object) -> bool:
        """Whether one of ``peer``'s live inbound pubsub streams is on the swarm connection
        ``conn`` (its muxed connection)."""
        muxed = getattr(conn, "muxed_conn", None)
        return any(
            stream.muxed_conn is muxed and _open(stream) for stream in self._by_peer.get(peer, ())
        )

    def __len__(self) -> int:
        return sum(len(streams) for streams in self._by_peer.values())


STREAMS_PER_CONNECTION = 4
"""Pubsub streams we open on one connection at most by choice (renewals): one under the fifth
at which rust-libp2p-gossipsub disables itself on the connection (see the module docstring)."""


class OutboundStreamCounts:
    """How many pubsub streams we opened on each connection (its muxed connection), for as
    long as the connection lives: bounded by the connections themselves (weak keys)."""

    def __init__(self) -> None:
        self._by_conn: WeakKeyDictionary[object, int] = WeakKeyDictionary()

    def opened(self, stream: INetStream) -> None:
        """We opened ``stream`` (negotiated: the remote counts it)."""
        conn = stream.muxed_conn
        self._by_conn[conn] = self._by_conn.get(conn, 0) + 1

    def on(self, stream: INetStream) -> int:
        """How many pubsub streams we opened on ``stream``'s connection, itself included."""
        return self._by_conn.get(stream.muxed_conn, 0)

    def room_beside(self, stream: INetStream) -> bool:
        """Whether one more stream of ours on ``stream``'s connection stays within
        :data:`STREAMS_PER_CONNECTION`."""
        return self.on(stream) < STREAMS_PER_CONNECTION

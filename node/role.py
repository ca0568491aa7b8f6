"""What a role is: an independent module that declares what it serves and runs as a node task.

Modelled on rust-libp2p's NetworkBehaviour composed into a Swarm: the node owns the host, the
store and the metrics. Each enabled role is built from its own settings, picked from the config
(:meth:`Role.from_config`); when the node runs it gets a :class:`NodeContext`, registers its
protocols and runs as a child of the node's nursery. Neither the whole config nor the database
reaches a role. Roles never import each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, Self

import structlog
import trio
from p2pchat.node.config import Config
from p2pchat.node.history import History
from p2pchat.node.metrics import NodeMetrics
from p2pchat.node.p2p.host import P2PHost
from p2pchat.node.p2p.pubsub import Gossip, GossipObserver, NodeGossip
from p2pchat.node.rendezvous import Rendezvous
from p2pchat.node.store import KeyValue


@dataclass(frozen=True)
class NodeContext:
    """Everything a role may use of the running node; nothing here exposes py-libp2p or the
    database directly, and a role's settings come at its creation, not from here."""

    host: P2PHost
    metrics: NodeMetrics
    log: structlog.stdlib.BoundLogger
    # The keys of one namespace of the node's store (``<namespace>/...`` on disk), for the
    # small things a role keeps; the node's own namespaces are refused (ValueError).
    keys: Callable[[str], KeyValue]
    store_size: Callable[[], int]  # bytes the node's store occupies on disk
    request_stop: Callable[[], None]  # ends the node cleanly, as SIGTERM does (e.g. on /quit)
    # PeerId -> how discovery found it: "mdns" (on the LAN) or "dht" (room rendezvous)
    discovered_peers: Callable[[], Mapping[str, str]]
    # Tells a watcher (PeerId, how) of each peer discovery finds from now on.
    watch_discoveries: Callable[[Callable[[str, str], None]], None] = lambda watcher: None
    rendezvous: Rendezvous | None = None  # room rendezvous through the DHT, when it runs
    # The DHT's peer routing, when it runs: the addresses the network knows for a PeerId
    # (:meth:`~p2pchat.node.p2p.dht.Dht.find_peer`; raises DhtError).
    find_peer: Callable[[str], Awaitable[list[str]]] | None = None
    reachability: Callable[[], str] = lambda: "unknown"  # AutoNAT: unknown, public, private
    relays: Callable[[], list[str]] = list  # relays holding a reservation for this node
    # The bound operator endpoint (/metrics, /healthz, /readyz) as ``http://host:port``, with
    # the real port when port 0 was configured; None when metrics are off.
    metrics_address: Callable[[], str | None] = lambda: None
    # Set once the node listens, after every role has started: what a role shows its user
    # (addresses, a "ready" line) waits for it.
    listening: trio.Event = field(default_factory=trio.Event)
    # The node's one pubsub and its message history, when a role in rooms runs (``in_rooms``).
    gossip: NodeGossip | None = None
    history: History | None = None

    def peer_roles(self, peer_id: str) -> frozenset[str] | None:
        """The p2pchat roles a peer says it runs (``{"bootstrap"}``, ``{"archiver", "relay"}``,
        ``{"peer"}``...), from its identify; None while no identify was received from it or
        when it is not a p2pchat node (js-libp2p, go-libp2p, a malformed agent). The host's
        :class:`~p2pchat.node.p2p.host.IdentifyReceived` events (``host.watch_identify``)
        carry the same, each time a peer identifies. A claim, for showing only."""
        return self.host.peer_roles(peer_id)

    def rooms(self, observer: GossipObserver) -> tuple[Gossip, History]:
        """The node's pubsub as this role uses it (its drops told to ``observer``), and the
        node's history. Only for roles with ``in_rooms``."""
        if self.gossip is None or self.history is None:
            raise RuntimeError("rooms are only for roles with in_rooms = True")
        return self.gossip.handle(observer), self.history


class Role(Protocol):
    """A role of the node.

    The CLI builds each role with :meth:`from_config`, which keeps only the settings the role
    uses (its config section, the few node facts it shows); the node then runs it with a
    :class:`NodeContext`.

    A role that is ``in_rooms`` (chat rooms: GossipSub topics and their history) uses the
    node's one pubsub and history (:meth:`NodeContext.rooms`); the node runs them only when
    such a role is on.

    ``run`` registers the role's protocol handlers, calls ``task_status.started()`` once it
    serves, then runs until cancelled. The node opens its listeners only after every role has
    started (``ctx.listening`` is set then). It must not return early unless it has nothing
    left to do, and must leave nothing running when cancelled (structured concurrency).
    """

    name: ClassVar[str]
    protocols: ClassVar[Sequence[str]]
    in_rooms: ClassVar[bool]

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """The role with its settings taken from ``config`` (validated already)."""
        ...

    async def run(
        self, ctx: NodeContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...

"""Prometheus metrics: observers that turn node events into series.

Protocol modules never import this package: each declares what it reports as a small observer
protocol of its own (``RendezvousObserver``, ``AutoNatClientObserver``, ``StoreServerObserver``,
...), and the classes here implement them, one per concern, each defining its series on the
node's registry. :class:`NodeMetrics` composes them; the composition root (``runtime``) hands
each capability its group. Roles define their own series in ``roles/<role>/metrics.py`` on
:attr:`NodeMetrics.registry`.

Names follow go-libp2p where a series exists there (operators already have dashboards for them),
``p2pchat_*`` otherwise. Label values are bounded: never a peer id or an address. Each node owns a
registry, so several nodes in one process (tests) do not collide.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from p2pchat.node.metrics.autonat import AutoNatMetrics
from p2pchat.node.metrics.autorelay import AutoRelayMetrics
from p2pchat.node.metrics.connections import ConnectionMetrics
from p2pchat.node.metrics.dht import DhtMetrics
from p2pchat.node.metrics.history import CatchUpMetrics, StoreClientMetrics, StoreServerMetrics
from p2pchat.node.metrics.holepunch import HolePunchMetrics
from p2pchat.node.metrics.pubsub import PubsubMetrics
from p2pchat.node.metrics.status import StatusMetrics
from p2pchat.node.metrics.swarm import SwarmMetrics
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = [
    "CONTENT_TYPE",
    "AutoNatMetrics",
    "AutoRelayMetrics",
    "CatchUpMetrics",
    "ConnectionMetrics",
    "DhtMetrics",
    "HolePunchMetrics",
    "NodeMetrics",
    "PubsubMetrics",
    "StatusMetrics",
    "StoreClientMetrics",
    "StoreServerMetrics",
    "SwarmMetrics",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST


class NodeMetrics:
    """The node's registry and its series, grouped per concern.

    The groups every node exports are registered at once; the history groups on first use, so
    that only a node serving or fetching history exports their series (each is registered once
    per node, however many roles use it).
    """

    def __init__(self, roles: Sequence[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.status = StatusMetrics(self.registry, roles)
        self.swarm = SwarmMetrics(self.registry)
        self.connections = ConnectionMetrics(self.registry)
        self.pubsub = PubsubMetrics(self.registry)
        self.dht = DhtMetrics(self.registry)
        self.autonat = AutoNatMetrics(self.registry)
        self.autorelay = AutoRelayMetrics(self.registry)
        self.holepunch = HolePunchMetrics(self.registry)

    @cached_property
    def history_server(self) -> StoreServerMetrics:
        """The history protocol served from the local store."""
        return StoreServerMetrics(self.registry)

    @cached_property
    def history_client(self) -> StoreClientMetrics:
        """History queries this node sends."""
        return StoreClientMetrics(self.registry)

    @cached_property
    def catch_up(self) -> CatchUpMetrics:
        """Catch-ups: what they stored, and their sources' failures and gaps."""
        return CatchUpMetrics(self.registry)

    def render(self) -> bytes:
        """The Prometheus text exposition of every series in the registry."""
        return generate_latest(self.registry)

"""The node's capabilities in one list: what each is, the config that switches it on, and when
it starts (:data:`PARTS`).

The composition root (:func:`p2pchat.node.runtime.run_node`) starts the parts of the ``start``
phase in this order, then the roles, then opens the listeners (a peer that connects must find
every protocol served: trap 25), then starts the parts of the ``listening`` phase. A part is
built from the :class:`Wiring`, the node's shared pieces, and may leave what it provides there
for the parts after it and for the roles (:meth:`Wiring.context`).

To add a capability: write a class with ``run(*, task_status)`` (:class:`Capability`), give it
a config switch, and add a :class:`Part` here, where its dependencies are already built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import structlog
import trio
from p2pchat.node.autonat import AutoNatClient, AutoNatServer, Reachability
from p2pchat.node.autorelay import AutoRelay
from p2pchat.node.capability import Capability
from p2pchat.node.circuit_renewal import CircuitRenewal
from p2pchat.node.config import Config, DhtSection, PubsubSection
from p2pchat.node.discovery import DiscoveryConnector
from p2pchat.node.history import History
from p2pchat.node.holepunch import HolePunch
from p2pchat.node.keepalive import group_by_peer, keep_connected
from p2pchat.node.metrics import NodeMetrics
from p2pchat.node.p2p.dht import Dht, KadLimits
from p2pchat.node.p2p.dialback import DialBack
from p2pchat.node.p2p.host import P2PHost
from p2pchat.node.p2p.kad_inbound import InboundLimits
from p2pchat.node.p2p.kad_providers import ProviderLimits
from p2pchat.node.p2p.mdns import run_mdns
from p2pchat.node.p2p.pubsub import NodeGossip, PubsubLimits
from p2pchat.node.p2p.scoring import ScoreSettings
from p2pchat.node.p2p.sender_budget import BudgetSettings
from p2pchat.node.punch_backoff import PunchBackoff
from p2pchat.node.relay_handover import RelayHandover
from p2pchat.node.rendezvous import ArchiverFinder, Rendezvous
from p2pchat.node.role import NodeContext, Role
from p2pchat.node.store import Store
from p2pchat.node.store_server import StoreServer

Phase = Literal["start", "listening"]


@dataclass
class Wiring:
    """What the parts are built from, and what the parts built so far provide."""

    config: Config
    roles: Sequence[Role]
    host: P2PHost
    store: Store
    metrics: NodeMetrics
    log: structlog.stdlib.BoundLogger
    connector: DiscoveryConnector
    dht: Dht | None = None
    rendezvous: Rendezvous | None = None
    autonat: AutoNatClient | None = None
    autorelay: AutoRelay | None = None
    gossip: NodeGossip | None = None
    history: History | None = None
    metrics_address: str | None = None  # the bound operator endpoint, http://host:port
    started: list[str] = field(default_factory=list)  # the parts running, in start order

    def reachability(self) -> Reachability:
        """AutoNAT's verdict on this node ("unknown" while not probing)."""
        return self.autonat.reachability if self.autonat is not None else "unknown"

    def relays(self) -> list[str]:
        """The relays holding a reservation for this node."""
        return self.autorelay.relays if self.autorelay is not None else []

    def context(self, request_stop: Callable[[], None]) -> NodeContext:
        """What the roles get of the node."""
        return NodeContext(
            self.host,
            self.metrics,
            self.log,
            keys=self.store.namespace,
            store_size=self.store.size_bytes,
            request_stop=request_stop,
            discovered_peers=lambda: dict(self.connector.discovered),
            watch_discoveries=self.connector.watch,
            rendezvous=self.rendezvous,
            find_peer=self.dht.find_peer if self.dht is not None else None,
            reachability=self.reachability,
            relays=self.relays,
            metrics_address=lambda: self.metrics_address,
            gossip=self.gossip,
            history=self.history,
        )


@dataclass(frozen=True)
class Part:
    """One capability: its name, the config that switches it on (for people), the test of
    that config, how to build it, and the phase it starts in."""

    name: str
    switch: str
    enabled: Callable[[Config, Sequence[Role]], bool]
    build: Callable[[Wiring], Capability]
    phase: Phase = "start"


def _in_rooms(roles: Sequence[Role]) -> bool:
    return any(role.in_rooms for role in roles)


def _kad_limits(settings: DhtSection) -> KadLimits:
    return KadLimits(
        providers=ProviderLimits(
            per_key=settings.max_providers_per_key,
            per_peer=settings.max_providers_per_peer,
            total=settings.max_provider_records,
            addrs_per_provider=settings.max_addrs_per_provider,
            ttl=settings.provider_ttl,
        ),
        inbound=InboundLimits(
            max_streams=settings.max_inbound_streams,
            max_streams_per_peer=settings.max_inbound_streams_per_peer,
            read_timeout=settings.read_timeout,
            max_message_bytes=settings.max_message_bytes,
            requests_per_second=settings.requests_per_second,
            request_burst=settings.request_burst,
        ),
    )


def _dht(w: Wiring) -> Capability:
    dht = w.dht = Dht(
        w.host,
        server=w.config.dht.server_mode(w.config.roles),
        limits=_kad_limits(w.config.dht),
        observer=w.metrics.dht,
    )
    w.metrics.dht.measure_routing_table(dht.routing_table_size)
    w.metrics.dht.measure_store(dht.provider_records, dht.inbound_streams)
    w.rendezvous = Rendezvous(
        dht,
        partial(w.connector.found, via="dht"),
        w.config.dht,
        w.metrics.dht,
        w.log,
        advertised=w.host.advertised_addrs,
    )
    return dht


class _AutoNatService:
    """Answers AutoNAT dial-back requests, dialling back from a throwaway identity."""

    def __init__(self, w: Wiring) -> None:
        self._w = w

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        dial_back = DialBack()
        async with trio.open_nursery() as nursery:
            await nursery.start(dial_back.run)
            AutoNatServer(
                self._w.host,
                dial_back,
                self._w.metrics.autonat,
                self._w.log,
                self._w.config.autonat,
            ).install()
            task_status.started()


def _autonat(w: Wiring) -> Capability:
    w.autonat = AutoNatClient(w.host, w.config.autonat.probe_interval, w.metrics.autonat, w.log)
    return w.autonat


def _autorelay(w: Wiring) -> Capability:
    w.autorelay = AutoRelay(
        w.host,
        w.config.autorelay,
        w.reachability,
        w.metrics.autorelay,
        w.log,
        rendezvous=w.rendezvous,
    )
    return w.autorelay


def _holepunch(w: Wiring) -> Capability:
    handover = RelayHandover(
        w.host,
        lambda: w.gossip,  # built after this part (rooms), None in a node without rooms
        w.metrics.holepunch,
        w.log,
        keep_max=w.config.holepunch.keep_relayed_max,
    )
    backoff = PunchBackoff(w.config.holepunch.give_up_after, w.config.holepunch.retry_after)
    return HolePunch(w.host, w.metrics.holepunch, w.log, after_direct=handover.run, backoff=backoff)


def _circuit_renewal(w: Wiring) -> Capability:
    return CircuitRenewal(
        w.host,
        lambda: w.gossip,  # built after this part (rooms), None in a node without rooms
        w.metrics.holepunch,
        w.log,
        renew_at=w.config.autorelay.renew_circuits_at,
    )


def pubsub_limits(section: PubsubSection) -> PubsubLimits:
    """The pubsub's limits from the ``pubsub`` config section."""
    return PubsubLimits(
        budget=BudgetSettings(
            rate=section.sender_rate,
            burst=section.sender_burst,
            new_rate=section.new_sender_rate,
            new_burst=section.new_sender_burst,
            max_senders=section.max_senders_per_room,
        ),
        scoring=(
            ScoreSettings(ip_colocation_threshold=section.ip_colocation_threshold)
            if section.scoring
            else None
        ),
        max_subscriptions_per_peer=section.max_subscriptions_per_peer,
        max_topics=section.max_topics,
        max_graft_prune=section.max_graft_prune,
        max_ihave_messages=section.max_ihave_messages,
        max_ihave_length=section.max_ihave_length,
        max_iwant_length=section.max_iwant_length,
    )


def _rooms(w: Wiring) -> Capability:
    w.history = History(w.store)
    w.gossip = NodeGossip(
        w.host,
        px_observer=w.metrics.swarm,
        limits=pubsub_limits(w.config.pubsub),
        observer=w.metrics.pubsub,
        # with no renewal, there is no next circuit to wait for
        hold_for_next_circuit=w.config.autorelay.renew_circuits_at > 0,
    )
    return w.gossip


class _HistoryServer:
    """Answers history queries from the node's history (``history.serve``; archivers always)."""

    def __init__(self, w: Wiring) -> None:
        self._w = w

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        w = self._w
        assert w.history is not None  # the rooms part comes first
        StoreServer(
            w.host,
            w.history,
            w.metrics.history_server,
            w.log,
            w.config.history,
        ).install()
        task_status.started()
        await trio.sleep_forever()  # handlers only: nothing to run


def _discovery(w: Wiring) -> Capability:
    return w.connector


class _Mdns:
    """Announces this node on the LAN and reports the peers found there to discovery."""

    def __init__(self, w: Wiring) -> None:
        self._w = w

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await run_mdns(self._w.host, self._w.connector.found, task_status=task_status)


class _BootstrapDials:
    """Keeps the configured bootstrap peers connected, re-dialling with backoff."""

    def __init__(self, w: Wiring) -> None:
        self._w = w

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        w = self._w
        async with trio.open_nursery() as nursery:
            # Several direct addresses of one peer are dialled together: raced, QUIC first.
            for peer_addr, *also in group_by_peer(w.config.node.bootstrap):
                nursery.start_soon(
                    partial(
                        keep_connected,
                        w.host,
                        peer_addr,
                        also=also,
                        what="bootstrap",
                        backoff_max=w.config.node.bootstrap_backoff_max,
                        log=w.log,
                        on_dial=w.metrics.swarm.bootstrap_dial,
                    )
                )
            task_status.started()


def _archivers(w: Wiring) -> Capability:
    assert w.rendezvous is not None  # the dht part comes first
    return ArchiverFinder(
        w.host,
        w.rendezvous,
        w.config.history.catchup_sources,
        w.config.dht.lookup_interval_max,
        w.log,
    )


def _finds_archivers(config: Config) -> bool:
    """Chat peers that catch up look for archivers in the DHT (unless told not to)."""
    history = config.history
    return (
        config.dht.enabled
        and history.catchup
        and history.discover_archivers
        and "peer" in config.roles
    )


PARTS: tuple[Part, ...] = (
    Part("dht", "dht.enabled", lambda c, roles: c.dht.enabled, _dht),
    Part(
        "autonat-server",
        "autonat.service",
        lambda c, roles: c.autonat.serves(c.roles),
        _AutoNatService,
    ),
    Part("autonat", "autonat.probe", lambda c, roles: c.autonat.probe, _autonat),
    Part("autorelay", "autorelay.mode", lambda c, roles: True, _autorelay),
    Part("holepunch", "holepunch.enabled", lambda c, roles: c.holepunch.enabled, _holepunch),
    Part(
        "circuit-renewal",
        "autorelay.renew_circuits_at > 0",
        lambda c, roles: c.autorelay.renew_circuits_at > 0,
        _circuit_renewal,
    ),
    Part("rooms", "a role in rooms (peer, archiver)", lambda c, roles: _in_rooms(roles), _rooms),
    Part(
        "history-server",
        "history.serve (archivers always)",
        lambda c, roles: _in_rooms(roles) and c.history.serves(c.roles),
        _HistoryServer,
    ),
    Part(
        "discovery",
        "discovery.mdns or dht.enabled",
        lambda c, roles: c.discovery.mdns or c.dht.enabled,
        _discovery,
        phase="listening",
    ),
    Part("mdns", "discovery.mdns", lambda c, roles: c.discovery.mdns, _Mdns, phase="listening"),
    Part(
        "bootstrap",
        "node.bootstrap",
        lambda c, roles: bool(c.node.bootstrap),
        _BootstrapDials,
        phase="listening",
    ),
    Part(
        "archiver-discovery",
        "history.discover_archivers, with dht.enabled and history.catchup (chat peers)",
        lambda c, roles: _finds_archivers(c),
        _archivers,
        phase="listening",
    ),
)


async def start_parts(nursery: trio.Nursery, wiring: Wiring, phase: Phase) -> None:
    """Build and start, in order, every part of ``phase`` that the config switches on; each
    has reported started when this returns."""
    for part in PARTS:
        if part.phase == phase and part.enabled(wiring.config, wiring.roles):
            await nursery.start(part.build(wiring).run)
            wiring.started.append(part.name)

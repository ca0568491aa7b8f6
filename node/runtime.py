"""The node: owns the host, the store, the metrics endpoint and the roles, in one nursery.

Lifecycle: open the store, start the operator endpoint and the host, start every role (each
reports ``started``), bind the listeners (only now: a peer that connects must find every
protocol served), dial bootstrap peers and start discovery; then the node is ready:
``/readyz`` turns 200 and a ``node ready`` log line lists the bound addresses. SIGINT or
SIGTERM cancels everything; the store is closed last. A watchdog ends the process if shutdown
takes longer than :data:`SHUTDOWN_GRACE` seconds.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import structlog
import trio
from p2pchat.node.autonat import AutoNatClient, AutoNatServer
from p2pchat.node.autorelay import AutoRelay
from p2pchat.node.config import Config
from p2pchat.node.discovery import DiscoveryConnector
from p2pchat.node.errors import EXIT_RUNTIME
from p2pchat.node.history import History
from p2pchat.node.holepunch import HolePunch
from p2pchat.node.http import make_app, serve_http
from p2pchat.node.keepalive import keep_connected
from p2pchat.node.logs import get_logger
from p2pchat.node.metrics import CONTENT_TYPE, NodeMetrics
from p2pchat.node.p2p.dht import Dht
from p2pchat.node.p2p.dialback import DialBack
from p2pchat.node.p2p.host import ConnectionInfo, HostObserver, HostSettings, P2PHost
from p2pchat.node.p2p.identity import Identity
from p2pchat.node.p2p.mdns import run_mdns
from p2pchat.node.p2p.pubsub import NodeGossip
from p2pchat.node.rendezvous import Rendezvous
from p2pchat.node.role import NodeContext, Role
from p2pchat.node.store import Store
from p2pchat.node.store_server import StoreServer

SHUTDOWN_GRACE = 4.0


@dataclass
class _Observer:
    """The host's observer: logs each event and forwards it to the metrics."""

    metrics: HostObserver
    log: structlog.stdlib.BoundLogger

    def connection_opened(self, info: ConnectionInfo) -> None:
        self.metrics.connection_opened(info)
        self.log.info(
            "peer connected", remote=info.peer_id, dir=info.direction, transport=info.transport
        )

    def connection_closed(self, info: ConnectionInfo) -> None:
        self.metrics.connection_closed(info)
        self.log.info("peer disconnected", remote=info.peer_id, dir=info.direction)

    def handler_failed(self, protocol: str, error: BaseException) -> None:
        self.metrics.handler_failed(protocol, error)
        self.log.error(
            "stream handler failed; stream reset, node continues",
            protocol=protocol,
            error=f"{type(error).__name__}: {error}",
            exc_info=error,
        )


@dataclass
class _Readiness:
    ready: bool = False


def host_settings(config: Config) -> HostSettings:
    """The host layer's settings from the node section of the config."""
    node = config.node
    return HostSettings(
        listen=node.listen,
        announce=node.announce,
        muxers=node.muxers,
        max_connections=node.max_connections,
        dial_timeout=node.dial_timeout,
    )


async def _stop_on_signal(
    cancel_scope: trio.CancelScope,
    log: structlog.stdlib.BoundLogger,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("stopping", signal=signal.Signals(signum).name)
            _arm_watchdog(log)
            cancel_scope.cancel()
            return


def _arm_watchdog(log: structlog.stdlib.BoundLogger) -> None:
    """Guarantee the process ends even if a library task ignores cancellation."""

    def expire() -> None:
        log.error("shutdown took too long; exiting", grace_seconds=SHUTDOWN_GRACE)
        os._exit(EXIT_RUNTIME)

    timer = threading.Timer(SHUTDOWN_GRACE, expire)
    timer.daemon = True
    timer.start()


async def run_node(config: Config, identity: Identity, roles: Sequence[Role]) -> None:
    """Run the node until SIGINT or SIGTERM.

    Raises:
        StartupError: a listener or the metrics endpoint could not be bound.
        StoreError: the store cannot be opened.
    """
    log = get_logger("p2pchat.node")
    metrics = NodeMetrics(list(config.roles))
    readiness = _Readiness()
    store = Store.open(config.data_dir() / "store")
    try:
        host = P2PHost(identity, host_settings(config), _Observer(metrics.swarm, log))
        async with trio.open_nursery() as nursery:
            await nursery.start(_stop_on_signal, nursery.cancel_scope, log)
            metrics_addr = None
            if config.metrics.enabled:
                app = make_app(metrics.render, CONTENT_TYPE, lambda: readiness.ready)
                metrics_addr = await nursery.start(serve_http, config.metrics.listen, app)
            # Listening waits until every role has installed its protocol handlers (trap 25).
            async with host.run(listen=False):
                connector = DiscoveryConnector(
                    host,
                    config.discovery.max_peers,
                    log,
                    max_remembered=config.discovery.max_remembered_peers,
                )
                rendezvous = None
                async with trio.open_nursery() as roles_nursery:
                    if config.dht.enabled:
                        dht = Dht(host, server=config.dht.server_mode(config.roles))
                        await roles_nursery.start(dht.run)
                        metrics.dht.measure_routing_table(dht.routing_table_size)
                        rendezvous = Rendezvous(
                            dht,
                            partial(connector.found, via="dht"),
                            config.dht,
                            metrics.dht,
                            log,
                            advertised=host.advertised_addrs,
                        )
                    if config.autonat.serves(config.roles):
                        dial_back = DialBack()
                        await roles_nursery.start(dial_back.run)
                        AutoNatServer(host, dial_back, metrics.autonat, log).install()
                    autonat = AutoNatClient(
                        host, config.autonat.probe_interval, metrics.autonat, log
                    )
                    if config.autonat.probe:
                        roles_nursery.start_soon(autonat.run)
                    autorelay = AutoRelay(
                        host,
                        config.autorelay,
                        lambda: autonat.reachability,
                        metrics.autorelay,
                        log,
                        rendezvous=rendezvous,
                    )
                    await roles_nursery.start(autorelay.run)
                    if config.holepunch.enabled:
                        await roles_nursery.start(HolePunch(host, metrics, log).run)
                    # Rooms: one pubsub and one history for every role in them.
                    gossip, history = None, None
                    if any(role.in_rooms for role in roles):
                        history = History(store)
                        gossip = NodeGossip(host)
                        await roles_nursery.start(gossip.run)
                    if history is not None and config.history.serves(config.roles):
                        StoreServer(
                            host,
                            history,
                            metrics.history_server,
                            log,
                            rate=config.history.rate,
                            burst=config.history.burst,
                        ).install()
                    context = NodeContext(
                        config,
                        host,
                        store,
                        metrics,
                        log,
                        request_stop=nursery.cancel_scope.cancel,
                        discovered_peers=lambda: dict(connector.discovered),
                        watch_discoveries=connector.watch,
                        rendezvous=rendezvous,
                        reachability=lambda: autonat.reachability,
                        relays=lambda: autorelay.relays,
                        gossip=gossip,
                        history=history,
                    )
                    for role in roles:
                        await roles_nursery.start(role.run, context)
                    await host.listen()
                    context.listening.set()
                    if config.discovery.mdns or config.dht.enabled:
                        roles_nursery.start_soon(connector.run)
                    if config.discovery.mdns:
                        await roles_nursery.start(run_mdns, host, connector.found)
                    for peer_addr in config.node.bootstrap:
                        roles_nursery.start_soon(
                            partial(
                                keep_connected,
                                host,
                                peer_addr,
                                what="bootstrap",
                                backoff_max=config.node.bootstrap_backoff_max,
                                log=log,
                                on_dial=metrics.swarm.bootstrap_dial,
                            )
                        )
                    # Everything allocated so far (py-libp2p alone is ~85 MB of objects) lives
                    # as long as the process: keep it out of the collector's full passes, each
                    # of which took 25-75 ms of loop time over those objects.
                    gc.freeze()
                    readiness.ready = True
                    metrics.status.node_ready()
                    log.info(
                        "node ready",
                        roles=list(config.roles),
                        listen=host.listen_addrs(),
                        advertised=host.advertised_addrs(),
                        metrics=metrics_addr,
                        data_dir=str(config.data_dir()),
                    )
    finally:
        store.close()
        log.info("stopped")

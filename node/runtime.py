"""The node: owns the host, the store, the metrics endpoint and the roles, in one nursery.

Lifecycle: open the store, start the operator endpoint and the host, start the capabilities
switched on (:data:`p2pchat.node.parts.PARTS`, in order) and every role (each reports
``started``), bind the listeners (only now: a peer that connects must find every protocol
served), start the parts that need listeners (discovery, mDNS, bootstrap dials); then the node
is ready:
``/readyz`` turns 200 and a ``node ready`` log line lists the bound addresses. SIGINT or
SIGTERM cancels everything; the store is closed last. A watchdog ends the process if shutdown
takes longer than :data:`SHUTDOWN_GRACE` seconds.

Everything the node writes is private: the process umask gains 077 for the node's life, so the
store's files, rotated logs, the input history and exports are created unreadable by group and
others whatever umask the node was started with; what loading the identity had to tighten in
the data dir (:func:`p2pchat.node.p2p.identity.make_private`) is logged once, as a warning.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import structlog
import trio
from p2pchat.node import __version__
from p2pchat.node.config import Config
from p2pchat.node.discovery import DiscoveryConnector
from p2pchat.node.errors import EXIT_RUNTIME
from p2pchat.node.http import make_app, serve_http
from p2pchat.node.ids import addr_peer
from p2pchat.node.logs import get_logger
from p2pchat.node.metrics import CONTENT_TYPE, NodeMetrics
from p2pchat.node.p2p.admission import AdmissionLimits
from p2pchat.node.p2p.agent import agent_version
from p2pchat.node.p2p.dial_admission import DialLimits
from p2pchat.node.p2p.host import (
    ConnectionInfo,
    HostObserver,
    HostSettings,
    IdentifyReceived,
    P2PHost,
)
from p2pchat.node.p2p.identity import Identity
from p2pchat.node.p2p.peerstore_bounds import PeerstoreLimits
from p2pchat.node.p2p.stream_limits import StreamLimits
from p2pchat.node.parts import Wiring, start_parts
from p2pchat.node.refusals import RefusalCount
from p2pchat.node.role import Role
from p2pchat.node.store import Store

SHUTDOWN_GRACE = 4.0
# The collector's thresholds once the node is ready (CPython's: 700, 10, 10). A young pass every
# 700 allocations promotes objects that live a few milliseconds (a relayed message's frames,
# tasks and buffers) into the oldest generation, where they die by refcount but still count
# towards its next full pass: a relay carrying 1,000 conversations ran a full pass over ~800k
# live objects, 0.4-1.2 s of frozen loop, every 1.5-10 s, collecting nothing (tests/bench/
# relay_capacity.py, README Measurements). A young pass every 20,000 allocations lets them die
# young; the young passes cost about the same in all.
GC_THRESHOLDS = (20_000, 10, 10)
# Bits the node's umask always holds: no file or directory it creates is group/other accessible.
PRIVATE_UMASK = 0o077


@dataclass
class _Observer:
    """The host's observer: logs each event and forwards it to the metrics."""

    metrics: HostObserver
    log: structlog.stdlib.BoundLogger
    refusals: RefusalCount = field(default_factory=lambda: RefusalCount(every=10.0))

    def connection_opened(self, info: ConnectionInfo) -> None:
        self.metrics.connection_opened(info)
        self.log.info(
            "peer connected", remote=info.peer_id, dir=info.direction, transport=info.transport
        )

    def connection_closed(self, info: ConnectionInfo) -> None:
        self.metrics.connection_closed(info)
        self.log.info("peer disconnected", remote=info.peer_id, dir=info.direction)

    def stream_limit_exceeded(self, limit: str) -> None:
        self.metrics.stream_limit_exceeded(limit)
        suppressed = self.refusals.note(limit)
        if suppressed is not None:
            self.log.warning(
                "stream limit exceeded; refused", limit=limit, more_since_last=suppressed
            )

    def peerstore_refused(self, reason: str) -> None:
        self.metrics.peerstore_refused(reason)
        suppressed = self.refusals.note(f"peerstore:{reason}")
        if suppressed is not None:
            self.log.info(
                "peerstore bound reached; record refused or evicted",
                reason=reason,
                more_since_last=suppressed,
            )

    def peerstore_peers(self, count: int) -> None:
        self.metrics.peerstore_peers(count)

    def unread_dropped(self, reason: str, size: int) -> None:
        self.metrics.unread_dropped(reason, size)  # not a refusal: honest peers do it too

    def handler_failed(self, protocol: str, error: BaseException) -> None:
        self.metrics.handler_failed(protocol, error)
        self.log.error(
            "stream handler failed; stream reset, node continues",
            protocol=protocol,
            error=f"{type(error).__name__}: {error}",
            exc_info=error,
        )


def _log_identified(log: structlog.stdlib.BoundLogger, event: IdentifyReceived) -> None:
    """What a peer said it is: its p2pchat roles (None: not a p2pchat node)."""
    roles = None if event.roles is None else sorted(event.roles)
    log.info("peer identified", remote=event.peer_id, roles=roles)


def _log_tightened(log: structlog.stdlib.BoundLogger, identity: Identity) -> None:
    """One warning if the data dir (or what is in it) was open to others until this start."""
    tightened = identity.tightened
    if tightened is None or not tightened.changed:
        return
    if tightened.left_open is not None:
        log.warning(
            "data dir is root's and open to others; what the node keeps in it is private",
            data_dir=str(tightened.data_dir),
            mode=f"{tightened.left_open:03o}",
            entries_tightened=tightened.entries,
        )
        return
    log.warning(
        "data dir was open to others; made private",
        data_dir=str(tightened.data_dir),
        was_mode=None if tightened.was_mode is None else f"{tightened.was_mode:03o}",
        entries_tightened=tightened.entries,
        entries_left=tightened.left,
    )


@dataclass
class _Readiness:
    ready: bool = False


def host_settings(config: Config) -> HostSettings:
    """The host layer's settings from the node section of the config; identify tells peers
    this node's roles (:mod:`p2pchat.node.p2p.agent`)."""
    node = config.node
    connections = config.connections
    return HostSettings(
        listen=node.listen,
        announce=node.announce,
        muxers=node.muxers,
        max_connections=node.max_connections,
        dial_timeout=node.dial_timeout,
        quic_head_start=node.quic_head_start,
        agent_version=agent_version(__version__, config.roles),
        connections=AdmissionLimits(
            per_ip=connections.per_ip,
            per_peer=connections.per_peer,
            transient=connections.transient,
            transient_deadline=connections.transient_deadline,
            handshake_max_bytes=connections.handshake_max_bytes,
            ipv4_prefix=connections.ipv4_prefix,
            ipv6_prefix=connections.ipv6_prefix,
            per_ip_exempt=tuple(connections.per_ip_exempt),
        ),
        streams=StreamLimits(**config.streams.model_dump()),
        dials=DialLimits(
            max_outbound=connections.max_outbound,
            outbound_per_peer=connections.outbound_per_peer,
            dials_in_flight=connections.dials_in_flight,
            dials_per_peer=connections.dials_per_peer,
            direct_in_flight=connections.direct_in_flight,
            relayed=connections.relayed,
            relayed_per_relay=connections.relayed_per_relay,
            relayed_per_peer=connections.relayed_per_peer,
        ),
        peerstore=PeerstoreLimits(**config.peerstore.model_dump()),
        protected_peers=_configured_peer_ids(config),
    )


def _configured_peer_ids(config: Config) -> tuple[str, ...]:
    """The PeerIds of the configured bootstrap and relay peers (the peerstore keeps them)."""
    addrs = [*config.node.bootstrap, *config.autorelay.relays]
    return tuple(addr_peer(addr) for addr in addrs if "/p2p/" in addr)


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
    _log_tightened(log, identity)
    metrics = NodeMetrics(list(config.roles))
    readiness = _Readiness()
    # Before the store opens: RocksDB creates its files 0644 under the usual umask 022.
    previous_umask = os.umask(PRIVATE_UMASK)
    os.umask(previous_umask | PRIVATE_UMASK)
    try:
        await _run(config, identity, roles, log, metrics, readiness)
    finally:
        os.umask(previous_umask)  # for an embedding process (tests run the node in-process)


async def _run(
    config: Config,
    identity: Identity,
    roles: Sequence[Role],
    log: structlog.stdlib.BoundLogger,
    metrics: NodeMetrics,
    readiness: _Readiness,
) -> None:
    store = Store.open(config.data_dir() / "store", identity.at_rest)
    try:
        host = P2PHost(
            identity,
            host_settings(config),
            _Observer(metrics.swarm, log),
            metrics.connections,
            race_observer=metrics.connections,
        )
        host.watch_identify(partial(_log_identified, log))
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
                wiring = Wiring(config, roles, host, store, metrics, log, connector)
                if metrics_addr is not None:
                    wiring.metrics_address = f"http://{metrics_addr}"
                async with trio.open_nursery() as parts_nursery:
                    await start_parts(parts_nursery, wiring, "start")
                    context = wiring.context(request_stop=nursery.cancel_scope.cancel)
                    for role in roles:
                        await parts_nursery.start(role.run, context)
                    await host.listen()
                    context.listening.set()
                    await start_parts(parts_nursery, wiring, "listening")
                    # Everything allocated so far (py-libp2p alone is ~85 MB of objects) lives
                    # as long as the process: keep it out of the collector's full passes, each
                    # of which took 25-75 ms of loop time over those objects.
                    gc.freeze()
                    gc.set_threshold(*GC_THRESHOLDS)
                    readiness.ready = True
                    metrics.status.node_ready()
                    log.info(
                        "node ready",
                        roles=list(config.roles),
                        capabilities=wiring.started,
                        listen=host.listen_addrs(),
                        advertised=host.advertised_addrs(),
                        metrics=metrics_addr,
                        data_dir=str(config.data_dir()),
                    )
    finally:
        store.close()
        log.info("stopped")

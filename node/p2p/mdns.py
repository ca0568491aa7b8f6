"""mDNS discovery on the LAN (libp2p mDNS spec), without py-libp2p's traps (trap 8).

py-libp2p's ``MDNSDiscovery`` blocks the event loop for ~1.6 s when created and when it
registers (zeroconf's constructor and service registration are synchronous), reports
discoveries on zeroconf's own thread, and never connects to what it finds. Here the blocking
calls run in a worker thread, discoveries are handed to the trio loop through its token, and
the caller decides whom to connect (see ``p2pchat.node.discovery``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import trio
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.discovery.mdns.mdns import MDNSDiscovery
from libp2p.peer.peerinfo import PeerInfo
from p2pchat.node.p2p.host import P2PHost

DiscoveredPeer = tuple[str, list[str]]  # (peer id, multiaddrs ending in /p2p/<id>)


async def run_mdns(
    host: P2PHost,
    found: Callable[[DiscoveredPeer], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Announce this node and report LAN peers to ``found`` (on the trio loop) until cancelled."""
    token = trio.lowlevel.current_trio_token()
    me = host.peer_id

    def on_discovered(info: PeerInfo) -> None:  # runs on zeroconf's thread
        peer = str(info.peer_id)
        if peer == me:
            return
        addrs = [
            f"{addr}/p2p/{peer}" if "/p2p/" not in str(addr) else str(addr) for addr in info.addrs
        ]
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(found, (peer, addrs))

    advertised = host.advertised_addrs()
    ports = [addr.split("/tcp/")[1].split("/")[0] for addr in advertised if "/tcp/" in addr]
    libp2p_host = host.libp2p_host

    def start() -> MDNSDiscovery:
        discovery = MDNSDiscovery(
            libp2p_host.get_network(),
            port=int(ports[0]) if ports else 0,
            listen_addrs=advertised,
            host=libp2p_host,
        )
        # Not discovery.start(): it also spawns a trio *system* task for cleanup, outside any
        # nursery (trap 15); the cleanup runs in this task's loop below instead.
        discovery.broadcaster.register()
        return discovery

    peerDiscovery.register_peer_discovered_handler(on_discovered)
    try:
        discovery = await trio.to_thread.run_sync(start)
        try:
            task_status.started()
            while True:
                await trio.sleep(discovery.cleanup_interval)
                discovery.listener.cleanup_stale_entries(max_age=discovery.ttl * 2)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await trio.to_thread.run_sync(discovery.stop, abandon_on_cancel=True)
    finally:
        peerDiscovery.unregister_peer_discovered_handler(on_discovered)

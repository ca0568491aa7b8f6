"""Connects the peers that discovery finds (mDNS on the LAN, room rendezvous in the DHT), up
to a bound, without dial storms.

Discovery only reports; this decides: a found peer is dialled if we are not already connected
to it, fewer than ``max_peers`` peers are connected, and a dial at the same addresses did not
fail in the last :data:`RETRY_AFTER` seconds (new addresses, a relay reservation made since,
are dialled at once). Dials run one at a time, so a LAN full of peers cannot trigger a storm of
simultaneous handshakes.

What it remembers per peer (how it was found, when a dial failed) is bounded: the newest
``max_remembered`` peers of each (:data:`MAX_REMEMBERED` by default). Forgetting a peer costs
at most a second "discovered" notice or an early redial, never unbounded memory.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import structlog
import trio
from p2pchat.node.bounded import BoundedDict
from p2pchat.node.p2p.host import DialError, P2PHost

RETRY_AFTER = 30.0
QUEUE_SIZE = 256
MAX_REMEMBERED = 1024  # peers whose discovery and last failed dial are remembered


class DiscoveryConnector:
    """Receives discovered peers (:meth:`found`) and dials them from :meth:`run`."""

    def __init__(
        self,
        host: P2PHost,
        max_peers: int,
        log: structlog.stdlib.BoundLogger,
        max_remembered: int = MAX_REMEMBERED,
    ) -> None:
        self._host = host
        self._max_peers = max_peers
        self._log = log
        self._send, self._receive = trio.open_memory_channel[tuple[str, list[str], str]](QUEUE_SIZE)
        # PeerId -> when a dial of it failed, and the addresses that failed
        self._failed_at: BoundedDict[str, tuple[float, frozenset[str]]] = BoundedDict(
            max_remembered
        )
        # PeerId -> how it was first found (the newest max_remembered peers)
        self.discovered: BoundedDict[str, str] = BoundedDict(max_remembered)
        self._watchers: list[Callable[[str, str], None]] = []

    def watch(self, watcher: Callable[[str, str], None]) -> None:
        """Tell ``watcher`` (PeerId, how) of every peer discovered from now on, once each while
        it is remembered; it must not block."""
        self._watchers.append(watcher)

    def found(self, peer: tuple[str, list[str]], via: str = "mdns") -> None:
        """Report a peer (PeerId, addresses) that discovery ``via`` ("mdns", "dht") found; call
        from the trio loop. Excess reports are dropped."""
        with contextlib.suppress(trio.WouldBlock):
            self._send.send_nowait((*peer, via))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Dial discovered peers until cancelled."""
        task_status.started()
        async for peer_id, addrs, via in self._receive:
            if peer_id not in self.discovered:
                self.discovered[peer_id] = via
                self._log.info("peer discovered", remote=peer_id, addrs=addrs, via=via)
                for watcher in self._watchers:
                    watcher(peer_id, via)
            else:
                self.discovered.touch(peer_id)  # still around: forget newcomers first
            if self._host.is_connected(peer_id):
                continue
            if len(self._host.connected_peers()) >= self._max_peers:
                continue
            failed_at, failed_addrs = self._failed_at.get(peer_id, (float("-inf"), frozenset()))
            if time.monotonic() - failed_at < RETRY_AFTER:
                # Only addresses not tried lately (a relay reservation made since) are dialled.
                addrs = [addr for addr in addrs if addr not in failed_addrs]
                if not addrs:
                    continue
            else:
                failed_addrs = frozenset()
            for addr in addrs:
                try:
                    await self._host.connect(addr)
                    break
                except DialError as error:
                    self._log.debug("discovered peer not reachable", addr=addr, error=str(error))
            else:
                self._failed_at[peer_id] = (time.monotonic(), failed_addrs | frozenset(addrs))

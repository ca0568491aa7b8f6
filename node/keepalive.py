"""Staying connected to a peer the config names (a bootstrap node, a relay)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog
import trio
from p2pchat.node.ids import addr_peer
from p2pchat.node.p2p.host import DialError, P2PHost

FIRST_BACKOFF = 1.0
CHECK_INTERVAL = 1.0


def group_by_peer(addrs: Sequence[str]) -> list[list[str]]:
    """``addrs`` grouped by the PeerId they end in, in order of first appearance: several
    direct addresses of one peer are dialled as one (:meth:`P2PHost.connect`'s ``also``).
    A circuit address stays alone (it is dialled through its relay)."""
    groups: dict[str, list[str]] = {}
    for index, addr in enumerate(addrs):
        key = addr if "/p2p-circuit" in addr else addr_peer(addr)
        groups.setdefault(key or str(index), []).append(addr)
    return list(groups.values())


async def keep_connected(
    host: P2PHost,
    peer_addr: str,
    *,
    also: Sequence[str] = (),
    what: str,
    backoff_max: float,
    log: structlog.stdlib.BoundLogger,
    on_dial: Callable[[bool], None] = lambda succeeded: None,
) -> None:
    """Dial ``peer_addr``, and re-dial it with exponential backoff (from 1 s to
    ``backoff_max``) whenever it is disconnected, until cancelled. ``what`` names the peer in
    the logs (``"bootstrap"``: "bootstrap dial failed"); ``on_dial`` hears each outcome."""
    backoff = FIRST_BACKOFF
    peer_id: str | None = None
    while True:
        if peer_id is not None and host.is_connected(peer_id):
            backoff = FIRST_BACKOFF
            await trio.sleep(CHECK_INTERVAL)
            continue
        try:
            peer_id = await host.connect(peer_addr, also=also)
        except DialError as error:
            on_dial(False)
            log.warning(f"{what} dial failed", addr=peer_addr, error=str(error), retry_in=backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, backoff_max)
            continue
        on_dial(True)
        log.info(f"{what} peer connected", addr=peer_addr)

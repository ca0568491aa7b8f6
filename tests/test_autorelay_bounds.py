"""AutoRelay's memory of relays that failed stays bounded however many relays the DHT names
(a relay announcement costs its author nothing but a fresh key)."""

from __future__ import annotations

import structlog
from p2pchat.node.autorelay import MAX_REMEMBERED_RELAYS, AutoRelay, QuietAutoRelayObserver
from p2pchat.node.config import AutoRelaySection
from p2pchat.node.p2p.host import DialError

from tests.peer_ids import fresh_peer_ids

FLOOD = 10_000


class _UnreachableHost:
    def __init__(self) -> None:
        self.dials = 0

    def is_connected(self, peer: str) -> bool:
        return False

    async def connect(self, addr: str) -> str:
        self.dials += 1
        raise DialError(f"{addr}: unreachable")


class _FloodingRendezvous:
    """A DHT whose relay key names ``FLOOD`` fresh relays, each at an unreachable address."""

    def __init__(self) -> None:
        self.relays = [
            (peer, [f"/ip4/127.0.0.1/tcp/9/p2p/{peer}"]) for peer in fresh_peer_ids(FLOOD)
        ]

    async def find(self, what: str, key: bytes) -> list[tuple[str, list[str]]]:
        return self.relays


async def test_relays_that_failed_are_remembered_up_to_the_bound() -> None:
    host = _UnreachableHost()
    rendezvous = _FloodingRendezvous()
    autorelay = AutoRelay(
        host,  # type: ignore[arg-type]
        AutoRelaySection(mode="on"),
        lambda: "private",
        QuietAutoRelayObserver(),
        structlog.get_logger(),
        rendezvous=rendezvous,  # type: ignore[arg-type]
    )
    await autorelay._find_relays()
    assert host.dials == FLOOD  # each tried once, none reachable
    assert len(autorelay._retry_at) == MAX_REMEMBERED_RELAYS
    assert (
        list(autorelay._retry_at)
        == [peer for peer, _ in rendezvous.relays][-MAX_REMEMBERED_RELAYS:]
    )

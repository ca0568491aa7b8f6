"""The discovery connector's memory of peers stays bounded however many peers are found."""

from __future__ import annotations

import structlog
import trio
import trio.testing
from p2pchat.node.discovery import MAX_REMEMBERED, DiscoveryConnector
from p2pchat.node.p2p.host import DialError

from tests.peer_ids import fresh_peer_ids

FLOOD = 10_000


class _UnreachableHost:
    """Connected to nobody; every dial fails."""

    def __init__(self) -> None:
        self.dialled: list[str] = []

    def is_connected(self, peer: str) -> bool:
        return False

    def connected_peers(self) -> list[str]:
        return []

    async def connect(self, addr: str) -> None:
        self.dialled.append(addr)
        raise DialError(f"{addr}: unreachable")


async def test_a_flood_of_fresh_peers_is_remembered_up_to_the_bound() -> None:
    host = _UnreachableHost()
    connector = DiscoveryConnector(host, 50, structlog.get_logger())  # type: ignore[arg-type]
    peers = list(fresh_peer_ids(FLOOD))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connector.run)
        for n, peer in enumerate(peers):
            connector.found((peer, [f"/ip4/10.0.0.1/tcp/{n}"]), via="dht")
            if n % 100 == 99:
                await trio.testing.wait_all_tasks_blocked()
                assert len(connector.discovered) <= MAX_REMEMBERED
                assert len(connector._failed_at) <= MAX_REMEMBERED
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(host.dialled) == FLOOD  # every one was still dialled once
    assert list(connector.discovered) == peers[-MAX_REMEMBERED:]
    assert list(connector._failed_at) == peers[-MAX_REMEMBERED:]
    assert set(connector.discovered.values()) == {"dht"}


async def test_a_peer_found_again_is_kept_over_newcomers_and_not_redialled_early() -> None:
    host = _UnreachableHost()
    connector = DiscoveryConnector(host, 50, structlog.get_logger(), max_remembered=3)  # type: ignore[arg-type]
    known, *newcomers = list(fresh_peer_ids(4))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connector.run)
        connector.found((known, ["/ip4/10.0.0.1/tcp/1"]))
        for peer in newcomers[:2]:
            connector.found((peer, ["/ip4/10.0.0.2/tcp/1"]))
        connector.found((known, ["/ip4/10.0.0.1/tcp/1"]))  # within RETRY_AFTER: not dialled
        connector.found((newcomers[2], ["/ip4/10.0.0.3/tcp/1"]))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert host.dialled.count("/ip4/10.0.0.1/tcp/1") == 1
    assert list(connector.discovered) == [newcomers[1], known, newcomers[2]]
    assert connector.discovered[known] == "mdns"


async def test_watchers_are_told_of_each_peer_once_when_it_is_first_found() -> None:
    host = _UnreachableHost()
    connector = DiscoveryConnector(host, 50, structlog.get_logger())  # type: ignore[arg-type]
    told: list[tuple[str, str]] = []
    connector.watch(lambda peer, via: told.append((peer, via)))
    first, second = fresh_peer_ids(2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connector.run)
        connector.found((first, ["/ip4/10.0.0.1/tcp/1"]), via="mdns")
        connector.found((first, ["/ip4/10.0.0.1/tcp/1"]), via="mdns")
        connector.found((second, ["/ip4/10.0.0.2/tcp/1"]), via="dht")
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert told == [(first, "mdns"), (second, "dht")]


async def test_a_peer_found_again_at_new_addresses_is_dialled_at_once() -> None:
    # A peer's first DHT record can predate its relay reservation: the circuit address it
    # gains must not wait out the failure of the address it had before.
    host = _UnreachableHost()
    connector = DiscoveryConnector(host, 50, structlog.get_logger())  # type: ignore[arg-type]
    (peer,) = fresh_peer_ids(1)
    circuit = f"/ip4/10.0.0.9/tcp/1/p2p/{peer}/p2p-circuit/p2p/{peer}"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connector.run)
        connector.found((peer, ["/ip4/10.0.0.1/tcp/1"]), via="dht")
        connector.found((peer, ["/ip4/10.0.0.1/tcp/1"]), via="dht")  # same: not again
        connector.found((peer, [circuit, "/ip4/10.0.0.1/tcp/1"]), via="dht")
        connector.found((peer, ["/ip4/10.0.0.1/tcp/1", circuit]), via="dht")  # reordered: no
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert host.dialled == ["/ip4/10.0.0.1/tcp/1", circuit]  # each address once

"""AutoNAT's client while no server is connected: it looks for one on news (a connection, an
identify), not on a clock. It used to list every connected peer's protocols once a second for
as long as none of them served AutoNAT (a relay's or a busy peer's hundreds of connections).

A host stand-in with trio's virtual clock: the loop is the client's own, only the host is
faked (what is measured is how often the client asks the host, which no process shows).
"""

from __future__ import annotations

from typing import Any, cast

import structlog
import trio
import trio.testing
from p2pchat.node.autonat import IDLE_LOOK, AutoNatClient
from p2pchat.node.p2p.host import ConnectionInfo, IdentifyReceived, P2PHost
from p2pchat.node.p2p.streams import StreamError
from p2pchat.node.wire.autonat import PROTOCOL_ID

PLAIN = [f"12D3KooWPlain{n}" for n in range(50)]  # connected peers, none an AutoNAT server
SERVER = "12D3KooWServer"
IDLE = 600.0  # virtual seconds without news


class _Host:
    """What the client asks of the host; counts the protocol look-ups."""

    peer_id = "12D3KooWHvSs5mX5hyDWzLsT5qTTXqKw5ftBnzEBqhnUzNLtW8TJ"  # any valid PeerId

    def __init__(self) -> None:
        self.peers = list(PLAIN)
        self.protocols: dict[str, list[str]] = {p: ["/meshsub/1.1.0"] for p in PLAIN}
        self.lookups = 0
        self.asked: list[str] = []
        self.identify_watchers: list[Any] = []
        self.connection_watchers: list[Any] = []

    def connected_peers(self) -> list[str]:
        return list(self.peers)

    def peer_protocols(self, peer: str) -> list[str]:
        self.lookups += 1
        return self.protocols.get(peer, [])

    def watch_identify(self, watcher: Any) -> None:
        self.identify_watchers.append(watcher)

    def watch_connections(self, watcher: Any) -> None:
        self.connection_watchers.append(watcher)

    def advertised_addrs(self) -> list[str]:
        return ["/ip4/127.0.0.1/tcp/4001"]

    async def new_stream(self, peer: str, protocols: list[str]) -> Any:
        self.asked.append(peer)
        raise StreamError("no stream in this test")


class _Outcomes:
    def __init__(self) -> None:
        self.answers: list[str] = []

    def probe_answered(self, outcome: str) -> None:
        self.answers.append(outcome)

    def reachability_decided(self, reachability: str) -> None:
        pass


def test_without_a_server_the_client_looks_on_news_not_every_second() -> None:
    host, outcomes = _Host(), _Outcomes()
    client = AutoNatClient(cast(P2PHost, host), 300.0, outcomes, structlog.get_logger())
    seen: dict[str, int] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await trio.sleep(IDLE)
            seen["idle"] = host.lookups
            # A server connects: the connection, then its identify. Probed within seconds.
            host.peers.append(SERVER)
            for watcher in host.connection_watchers:
                watcher.connection_opened(
                    ConnectionInfo(SERVER, "inbound", "tcp", "/noise", "/yamux/1.0.0")
                )
            await trio.sleep(0.1)
            host.protocols[SERVER] = [PROTOCOL_ID]
            for watcher in host.identify_watchers:
                watcher(IdentifyReceived(SERVER, (PROTOCOL_ID,)))
            await trio.sleep(5)
            seen["asked"] = len(host.asked)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # One look every IDLE_LOOK seconds (and one at the start), each over the 50 peers; it was
    # one look a second: 600 x 50 = 30,000.
    assert seen["idle"] <= (IDLE / IDLE_LOOK + 2) * len(PLAIN), seen
    assert seen["asked"] == 1 and outcomes.answers == ["error"]

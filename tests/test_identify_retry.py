"""Trap 44: py-libp2p identifies a new connection's peer once and gives up silently; the host
identifies a peer left unidentified again (node/p2p/identify_retry.py). Two real hosts over
TCP on 127.0.0.1; the peer refuses its first identify request (resets the stream), as a failed
read or an answer that came too late ends the library's identify."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from libp2p.identity.identify import identify as identify_module
from libp2p.network.stream.net_stream import INetStream
from p2pchat.node.p2p.host import HostSettings, IdentifyReceived, P2PHost
from p2pchat.node.p2p.identify_retry import IdentifyRetry
from p2pchat.node.p2p.identity import load_or_create_identity

from tests.test_host import RecordingObserver, loopback_addr, wait_until

TCP = ("/ip4/127.0.0.1/tcp/0",)


@asynccontextmanager
async def host(data_dir: Path, schedule: Sequence[float]) -> AsyncIterator[P2PHost]:
    settings = HostSettings(listen=TCP, identify_retry_schedule=schedule)
    running = P2PHost(load_or_create_identity(data_dir), settings, RecordingObserver())
    async with running.run():
        yield running


class RefusingFirstIdentify:
    """``peer``'s identify handler, resetting the first request and answering the others."""

    def __init__(self, peer: P2PHost) -> None:
        self.requests = 0
        self._answer = identify_module.identify_handler_for(peer.libp2p_host)
        peer.libp2p_host.set_stream_handler(identify_module.ID, self._handle)

    async def _handle(self, stream: INetStream) -> None:
        self.requests += 1
        if self.requests == 1:
            await stream.reset()
            return
        await self._answer(stream)


async def identified_by(
    a: P2PHost, b: P2PHost, refusing: RefusingFirstIdentify, within: float = 20
) -> bool:
    """Connect ``a`` to ``b``; whether ``a`` is told ``b``'s protocols ``within`` seconds of
    ``b`` refusing its first identify."""
    received: list[IdentifyReceived] = []
    a.watch_identify(received.append)
    await a.connect(loopback_addr(b))
    await wait_until(lambda: refusing.requests >= 1)
    with trio.move_on_after(within):
        while not any(e.peer_id == b.peer_id for e in received):
            await trio.sleep(0.05)
        return True
    return False


async def test_a_peer_whose_identify_failed_is_identified_again(tmp_path: Path) -> None:
    async with host(tmp_path / "a", (0.5, 1.0)) as a, host(tmp_path / "b", ()) as b:
        refusing = RefusingFirstIdentify(b)
        assert await identified_by(a, b, refusing)
        assert refusing.requests == 2 and a.identify_retry.retried == 1
        assert a.peer_protocols(b.peer_id)


async def test_without_the_retry_the_library_leaves_the_peer_unidentified(tmp_path: Path) -> None:
    """The negative control: the library's own behaviour (schedule empty)."""
    async with host(tmp_path / "a", ()) as a, host(tmp_path / "b", ()) as b:
        refusing = RefusingFirstIdentify(b)
        assert not await identified_by(a, b, refusing, within=5)  # 10 times the retry's delay
        assert refusing.requests == 1 and not a.peer_protocols(b.peer_id)
        assert a.is_connected(b.peer_id)  # connected all along, unidentified


async def test_a_peer_identified_or_gone_is_not_asked_again(tmp_path: Path) -> None:
    async with host(tmp_path / "a", (0.3, 0.3)) as a, host(tmp_path / "b", ()) as b:
        await a.connect(loopback_addr(b))
        await wait_until(lambda: a.peer_protocols(b.peer_id))
        await trio.sleep(1.0)  # past the whole schedule
        assert a.identify_retry.retried == 0


async def test_watches_are_bounded_and_each_ends_with_its_schedule() -> None:
    """At most ``max_watches`` peers are watched at once: connections from peers coming and
    going faster than the schedule ends cannot pile watches up."""
    asked: list[str] = []

    async def identify(peer: str) -> None:
        asked.append(peer)

    retry = IdentifyRetry(lambda peer: False, lambda peer: True, identify, (0.2,), max_watches=2)
    async with trio.open_nursery() as nursery:
        retry.start(nursery)
        for peer in ("p1", "p2", "p3", "p1"):
            retry.connection_opened(peer)
        assert retry.watching == 2 and retry.unwatched == 1
    assert sorted(asked) == ["p1", "p2"] and retry.watching == 0

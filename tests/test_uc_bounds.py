"""The bounds of roles/peer/uc.py that need many peers or many files to reach, driven in
process with a stand-in host and pubsub (the wire and the transfers run against real processes
in tests/test_uc.py): announcements remembered, files shared, discovery dials per minute and at
once, and records without a dialable address."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, cast

import structlog
import trio
from p2pchat.node.config import UcSection
from p2pchat.node.p2p.host import P2PHost
from p2pchat.node.p2p.multiaddr_bytes import to_bytes
from p2pchat.node.p2p.peer_keys import public_key_bytes
from p2pchat.node.p2p.pubsub import GossipMessage
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.wire import uc as wire
from p2pchat.roles.peer.events import ChatEvent
from p2pchat.roles.peer.uc import UcPeer

ME = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
# Ed25519 PeerIds (their keys inline), each a different peer.
PEERS = [
    "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp",
    "12D3KooWHHzSeKaY8xuZVzkLbKFfvNgPPeKhFBGrMbNzbm5akpqu",
    "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5nVBJ2a2oJbr6f1vpXy",
    "12D3KooWNWfmkxm5Qe8cX9CgeD5JM1SUnEcNhq59PecLMDxGGsWm",
]


class FakeHost:
    peer_id = ME

    def __init__(self) -> None:
        self.dialled: list[str] = []
        self.release = trio.Event()

    def is_connected(self, peer: str) -> bool:
        return False

    async def connect(self, addr: str) -> str:
        self.dialled.append(addr)
        await self.release.wait()
        return addr

    def advertised_addrs(self) -> list[str]:
        return [f"/ip4/127.0.0.1/tcp/4001/p2p/{ME}"]


class FakeGossip:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, data: bytes) -> None:
        self.published.append((topic, data))

    def has_subscribers(self, topic: str) -> bool:
        return True


class Counts:
    def __init__(self) -> None:
        self.refused: collections.Counter[str] = collections.Counter()
        self.done: collections.Counter[str] = collections.Counter()

    def uc_refused(self, reason: str) -> None:
        self.refused[reason] += 1

    def uc_done(self, what: str) -> None:
        self.done[what] += 1


def make(tmp_path: Path, **settings: Any) -> tuple[UcPeer, FakeHost, FakeGossip, Counts]:
    host, gossip, counts = FakeHost(), FakeGossip(), Counts()
    events: list[ChatEvent] = []
    peer = UcPeer(
        cast(P2PHost, host),
        cast(Any, gossip),
        UcSection(enabled=True, dial_private_addresses=True, **settings),
        tmp_path,
        events.append,
        counts,
        RefusalLog(structlog.get_logger(), "test"),
    )
    return peer, host, gossip, counts


def message(topic: str, data: bytes, sender: str, seqno: int = 1) -> GossipMessage:
    return GossipMessage(topic, data, sender, seqno.to_bytes(8, "big"), b"")


def record(peer: str, *addrs: str) -> bytes:
    key = public_key_bytes(peer)
    assert key is not None
    return wire.encode_peer(wire.PeerRecord(key, tuple(to_bytes(a) or b"" for a in addrs)))


def test_announcements_remembered_are_bounded(tmp_path: Path) -> None:
    peer, _, _, _ = make(tmp_path, max_announced_files=3)
    for n in range(5):
        peer.files.announced(message("universal-connectivity-file", f"id-{n}".encode(), PEERS[0]))
    assert list(peer.files._announced) == ["id-2", "id-3", "id-4"]


async def test_files_shared_are_bounded(tmp_path: Path) -> None:
    peer, _, gossip, _ = make(tmp_path, max_shared_files=2)
    path = tmp_path / "f"
    path.write_bytes(b"x")
    for _ in range(3):
        await peer.send_file(str(path))
    assert len(peer.files._shared) == 2
    assert len(gossip.published) == 3  # each announced


async def test_discovery_dials_are_bounded_per_minute_and_at_once(tmp_path: Path) -> None:
    peer, host, _, counts = make(tmp_path, discovery_dials_per_minute=3)
    discovery = peer.discovery
    assert discovery is not None
    async with trio.open_nursery() as nursery:
        discovery.nursery = nursery
        for n, sender in enumerate(PEERS):
            data = record(sender, "/ip4/127.0.0.1/tcp/4001")
            discovery.announced(message(wire.DISCOVERY_TOPIC, data, sender, n))
        await trio.testing.wait_all_tasks_blocked()
        # Two dials at once; the third peer found both taken; the fourth one more.
        assert len(host.dialled) == 2
        assert counts.refused["dial_busy"] == 2
        host.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert counts.done["peer_dialled"] == 2
        # The bucket held 3 for the minute: one more dial, then dial_rate.
        discovery.announced(
            message(wire.DISCOVERY_TOPIC, record(PEERS[2], "/ip4/127.0.0.1/tcp/1"), PEERS[2], 9)
        )
        discovery.announced(
            message(wire.DISCOVERY_TOPIC, record(PEERS[3], "/ip4/127.0.0.1/tcp/1"), PEERS[3], 9)
        )
        await trio.testing.wait_all_tasks_blocked()
        assert len(host.dialled) == 3
        assert counts.refused["dial_rate"] == 1
        # A peer dialled a moment ago is not dialled again.
        discovery.announced(
            message(wire.DISCOVERY_TOPIC, record(PEERS[0], "/ip4/127.0.0.1/tcp/1"), PEERS[0], 10)
        )
        assert len(host.dialled) == 3 and counts.refused["dial_rate"] == 1


def test_a_record_without_a_dialable_address_is_refused(tmp_path: Path) -> None:
    peer, host, _, counts = make(tmp_path)
    discovery = peer.discovery
    assert discovery is not None
    data = record(PEERS[0], "/ip4/1.2.3.4/udp/1/quic-v1", f"/ip4/1.2.3.4/tcp/1/p2p/{PEERS[1]}")
    discovery.announced(message(wire.DISCOVERY_TOPIC, data, PEERS[0]))
    assert counts.refused["no_dialable_address"] == 1 and host.dialled == []

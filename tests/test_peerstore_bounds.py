"""The bounded peerstore (node/p2p/peerstore_bounds.py), driven directly: no network, a fake
clock, connections told by a set."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStore, PeerStoreError, create_signed_peer_record
from multiaddr import Multiaddr
from p2pchat.node.config import Config
from p2pchat.node.p2p.host import HostSettings, P2PHost
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.p2p.peerstore_bounds import BoundedPeerStore, PeerstoreLimits

from tests.test_host import LOOPBACK, RecordingObserver, loopback_addr, wait_until

LIMITS = PeerstoreLimits(
    max_peers=8,
    max_addrs_per_peer=4,
    max_protocols_per_peer=4,
    max_protocol_chars=32,
    max_metadata_keys=2,
    max_metadata_chars=16,
    max_record_bytes=1024,
    learned_ttl=60.0,
    disconnected_ttl=120.0,
    sweep_interval=10.0,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.count = 0

    def peerstore_refused(self, reason: str) -> None:
        self.reasons.append(reason)

    def peerstore_peers(self, count: int) -> None:
        self.count = count


def invented() -> ID:
    return ID(b"\x00\x24\x08\x01\x12\x20" + os.urandom(32))


def addr(port: int) -> Multiaddr:
    return Multiaddr(f"/ip4/10.0.0.1/tcp/{port}")


def store(
    live: set[ID] | None = None, protected: tuple[ID, ...] = ()
) -> tuple[BoundedPeerStore, Recorder, Clock]:
    recorder, clock = Recorder(), Clock()
    connected = live if live is not None else set()
    peerstore = BoundedPeerStore(
        LIMITS, recorder, protected=protected, is_live=connected.__contains__, clock=clock
    )
    return peerstore, recorder, clock


def test_past_max_peers_the_least_recently_seen_record_goes_first() -> None:
    peerstore, recorder, clock = store()
    peers = [invented() for _ in range(20)]
    for i, peer in enumerate(peers):
        clock.now += 1
        peerstore.add_addrs(peer, [addr(4000 + i)], 3600)
    assert peerstore.held() == LIMITS.max_peers
    assert set(peerstore.peer_ids()) == set(peers[-LIMITS.max_peers :])
    assert recorder.reasons.count("lru") == 20 - LIMITS.max_peers
    assert recorder.count == LIMITS.max_peers


def test_connected_configured_and_own_peers_are_never_evicted() -> None:
    live: set[ID] = set()
    own, bootstrap = invented(), invented()
    peerstore, recorder, _ = store(live, protected=(own, bootstrap))
    peerstore.add_addrs(own, [addr(1)], 0)
    peerstore.add_addrs(bootstrap, [addr(2)], 0)
    connected = [invented() for _ in range(3)]
    for peer in connected:
        live.add(peer)
        peerstore.add_addrs(peer, [addr(3)], 7200)
        peerstore.add_protocols(peer, ["/meshsub/1.1.0"])
    for _ in range(100):  # a flood of invented PeerIds, the first peers the oldest
        peerstore.add_addrs(invented(), [addr(9)], 3600)
    kept = set(peerstore.peer_ids())
    assert {own, bootstrap, *connected} <= kept
    assert peerstore.held() == LIMITS.max_peers
    assert peerstore.get_protocols(connected[0]) == ["/meshsub/1.1.0"]
    assert set(recorder.reasons) == {"lru"}


def test_when_every_record_is_kept_a_newcomer_is_not_stored() -> None:
    live: set[ID] = set()
    peerstore, recorder, _ = store(live)
    for _ in range(LIMITS.max_peers):
        peer = invented()
        live.add(peer)
        peerstore.add_addrs(peer, [addr(1)], 0)
    stranger = invented()
    peerstore.add_addrs(stranger, [addr(2)], 3600)
    peerstore.add_protocols(stranger, ["/x"])
    peerstore.put(stranger, "AgentVersion", "x")
    assert not peerstore.has_peer(stranger)
    assert peerstore.held() == LIMITS.max_peers
    assert recorder.reasons == ["peers"] * 3


def test_addresses_per_peer_are_bounded_deduplicated_and_short() -> None:
    peerstore, recorder, _ = store()
    peer = invented()
    peerstore.add_addrs(peer, [addr(1), addr(1), addr(2)], 3600)
    peerstore.add_addrs(peer, [addr(p) for p in range(1, 100)], 3600)
    assert peerstore.addrs(peer) == [addr(1), addr(2), addr(3), addr(4)]
    assert recorder.reasons == ["addrs"]
    long_one = Multiaddr("/ip4/10.0.0.1/tcp/1" * 40)  # 280 bytes
    other = invented()
    peerstore.add_addrs(other, [long_one, addr(7)], 3600)
    assert peerstore.addrs(other) == [addr(7)]
    assert recorder.reasons[-1] == "addr_size"


def test_protocols_are_deduplicated_bounded_and_short() -> None:
    peerstore, recorder, _ = store()
    peer = invented()
    for _ in range(50):  # identify push, again and again: the library appends duplicates
        peerstore.add_protocols(peer, ["/a", "/b"])
    assert peerstore.get_protocols(peer) == ["/a", "/b"]
    peerstore.add_protocols(peer, ["/" + "x" * 100, "/c", "/d", "/e", "/f"])
    assert peerstore.get_protocols(peer) == ["/a", "/b", "/c", "/d"]
    assert recorder.reasons == ["protocol_name", "protocols"]
    peerstore.set_protocols(peer, [f"/p{i}" for i in range(10)])
    assert len(peerstore.get_protocols(peer)) == LIMITS.max_protocols_per_peer


def test_metadata_is_cut_and_bounded_in_keys() -> None:
    peerstore, recorder, _ = store()
    peer = invented()
    peerstore.put(peer, "AgentVersion", "p2pchat/" + "z" * 1000)
    assert peerstore.get(peer, "AgentVersion") == ("p2pchat/" + "z" * 1000)[:16]
    peerstore.put(peer, "ProtocolVersion", "ipfs/0.1.0")
    peerstore.put(peer, "Third", "refused")
    with pytest.raises(PeerStoreError):
        peerstore.get(peer, "Third")
    peerstore.put(peer, "AgentVersion", "again")  # a key already held may change
    assert peerstore.get(peer, "AgentVersion") == "again"
    assert recorder.reasons == ["metadata", "metadata"]


def test_signed_records_are_bounded_in_size_and_forgeries_make_no_record() -> None:
    peerstore, recorder, _ = store()
    keys = create_new_key_pair()
    peer = ID.from_pubkey(keys.public_key)
    small = create_signed_peer_record(peer, [addr(1)], keys.private_key)
    assert peerstore.consume_peer_record(small, 7200)
    assert peerstore.addrs(peer) == [addr(1)]
    many = [Multiaddr(f"/ip6/2001:db8::{i:x}/tcp/{i + 1}") for i in range(60)]
    big = create_signed_peer_record(peer, many, keys.private_key)
    assert not peerstore.consume_peer_record(big, 7200)
    assert recorder.reasons == ["record"]
    other = create_new_key_pair()
    forged = create_signed_peer_record(invented(), [addr(2)], other.private_key)
    assert not peerstore.consume_peer_record(forged, 7200)
    assert peerstore.held() == 1
    with pytest.raises(PeerStoreError):
        peerstore.add_pubkey(invented(), other.public_key)
    assert peerstore.held() == 1


def test_records_of_unconnected_peers_expire_and_naming_them_again_does_not_renew() -> None:
    live: set[ID] = set()
    bootstrap = invented()
    peerstore, recorder, clock = store(live, protected=(bootstrap,))
    learned, met = invented(), invented()
    peerstore.add_addrs(bootstrap, [addr(1)], 0)
    peerstore.add_addrs(learned, [addr(2)], 3600)
    live.add(met)
    peerstore.add_addrs(met, [addr(3)], 7200)
    clock.now += 30
    peerstore.add_addrs(learned, [addr(2)], 3600)  # named again by a third party
    peerstore.sweep()  # met is seen connected now
    live.discard(met)
    clock.now += 31  # learned: 61 s since it was first named
    peerstore.add_addrs(invented(), [addr(4)], 3600)  # a write sweeps (interval passed)
    assert not peerstore.has_peer(learned)
    assert peerstore.has_peer(met) and peerstore.has_peer(bootstrap)
    clock.now += 90  # met: 121 s since last seen connected
    assert peerstore.sweep() == 2  # met (121 s unseen) and the newcomer (named 90 s ago)
    assert peerstore.has_peer(bootstrap)
    assert recorder.reasons.count("expired") == 3


def test_a_short_connection_counts_as_met_from_its_end() -> None:
    peerstore, _, clock = store()
    peer = invented()
    peerstore.add_addrs(peer, [addr(1)], 7200)
    clock.now += 50  # connected and gone between two sweeps
    peerstore.disconnected(peer)
    clock.now += 60  # past learned_ttl from its making, within disconnected_ttl of its end
    assert peerstore.sweep() == 0
    clock.now += 60
    assert peerstore.sweep() == 1


def test_writes_from_another_thread_meet_sweeps_and_evictions_safely() -> None:
    # The library's mDNS listener writes from zeroconf's thread.
    peerstore = BoundedPeerStore(PeerstoreLimits(max_peers=64, learned_ttl=0.0, sweep_interval=0.0))
    errors: list[BaseException] = []

    def write(count: int) -> None:
        try:
            for i in range(count):
                peerstore.add_addrs(invented(), [addr(i % 60000 + 1)], 120)
        except BaseException as error:
            errors.append(error)

    other = threading.Thread(target=write, args=(20_000,))
    other.start()
    while other.is_alive():
        peerstore.sweep()
        write(50)
    other.join()
    assert not errors
    assert peerstore.held() <= 64


def test_the_library_store_evicts_its_first_peers_and_grows_protocols_unbounded() -> None:
    """Trap 32 as the library has it (fails when an upgrade fixes it: re-check the bounds)."""
    library = PeerStore(max_peers=8)
    bootstrap = invented()
    library.add_addrs(bootstrap, [addr(1)], 0)
    for _ in range(8):
        library.add_addrs(invented(), [addr(2)], 3600)
    assert not library.has_peer(bootstrap)  # the first peer met is the first to go
    for _ in range(20):
        library.add_protocols(invented(), ["/a"])  # past max_peers: nothing checks
    assert len(library.peer_ids()) == 28
    peer = invented()
    for _ in range(50):
        library.add_protocols(peer, ["/a", "/b"])
    assert len(library.get_protocols(peer)) == 100


def test_the_config_keeps_room_for_every_connection() -> None:
    Config.model_validate({"peerstore": {"max_peers": 301}})
    with pytest.raises(ValueError, match=r"peerstore\.max_peers must be greater"):
        Config.model_validate({"peerstore": {"max_peers": 300}})
    with pytest.raises(ValueError, match=r"peerstore\.max_peers must be greater"):
        Config.model_validate({"node": {"max_connections": 5000}})


async def test_a_host_sweeps_what_strangers_named_and_keeps_its_connected_peers(
    tmp_path: Path,
) -> None:
    limits = PeerstoreLimits(learned_ttl=0.5, disconnected_ttl=0.5, sweep_interval=0.1)
    me = P2PHost(
        load_or_create_identity(tmp_path / "me"),
        HostSettings(listen=LOOPBACK[:1], peerstore=limits),
        RecordingObserver(),
    )
    other = P2PHost(
        load_or_create_identity(tmp_path / "other"),
        HostSettings(listen=LOOPBACK[:1]),
        RecordingObserver(),
    )
    async with me.run(), other.run():
        peerstore = me.libp2p_host.get_peerstore()
        assert isinstance(peerstore, BoundedPeerStore)
        await me.connect(loopback_addr(other))
        named = invented()
        peerstore.add_addrs(named, [addr(1)], 3600)  # as a Kad answer would
        await wait_until(lambda: not peerstore.has_peer(named))
        assert peerstore.has_peer(ID.from_base58(other.peer_id))  # connected: kept
        await me.disconnect(other.peer_id)
        await wait_until(lambda: not peerstore.has_peer(ID.from_base58(other.peer_id)))
        assert peerstore.has_peer(ID.from_base58(me.peer_id))  # our own: kept

"""The peerstore under attack: a real chat peer (DHT on, room lookups every 2 s at most) that two
honest peers chat through, and attackers that make it record PeerIds they invent
(:mod:`tests.hostile.peerstore_attacks`): Kad servers whose every answer names 1,500 invented
peers (ten with 100 addresses each), and one peer identifying with 800 addresses, a signed
record of over 8 KiB and 400 protocols.

Asserts the number of records held (``p2pchat_peerstore_peers``) within
``peerstore.max_peers`` while the attack names many times more, each per-peer bound counted
(``p2pchat_peerstore_refused_total``), the honest peers still chatting through the victim,
its records of them kept (their roles still shown), no invented peer in its Kad routing table
(``p2pchat_dht_refused_total{reason="table_unidentified"}``), its RSS bound and its fds back.
"""

from __future__ import annotations

import time
from pathlib import Path

from p2pchat.node.p2p.kad_answers import MAX_CLOSER_PEERS

from tests.conftest import NodeProcess, node_env, start_node
from tests.hostile.harness import (
    MIN_DELIVERY,
    Footprint,
    HonestChat,
    chat_peer,
    report,
    wait_room_peers,
)
from tests.hostile.peerstore_attacks import LieTally, start
from tests.test_autorelay import command

HELD = "p2pchat_peerstore_peers"
REFUSED = "p2pchat_peerstore_refused_total"
MAX_PEERS = 64  # the lookups of the attack name several times as many
DEFAULT_MAX_CONNECTIONS = 300  # node.max_connections, which max_peers must exceed
ATTACK_SECONDS = 12.0
# Seconds between the victim's room lookups at most: each asks the liars (at 2 s, before their
# answers were cut to 20 peers, the victim was kept busy and held honest messages up to 24 s;
# tests/hostile/test_kad_answers.py).
LOOKUP_INTERVAL = 2.0


def victim_node(
    path: Path, nodes: list[NodeProcess], max_peers: int, lookup_interval: float = LOOKUP_INTERVAL
) -> NodeProcess:
    env = {
        "P2PCHAT_PEERSTORE__MAX_PEERS": str(max_peers),
        "P2PCHAT_DHT__LOOKUP_INTERVAL_MAX": str(lookup_interval),
    }
    if max_peers <= DEFAULT_MAX_CONNECTIONS:  # every connected peer keeps its record
        env["P2PCHAT_NODE__MAX_CONNECTIONS"] = str(max_peers // 2)
    node = start_node(path, "--json", env=node_env(**env))
    nodes.append(node)
    node.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    return node


def test_invented_peers_stay_within_the_peerstore_bound_and_honest_peers_chat(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    victim = victim_node(tmp_path / "victim", nodes, MAX_PEERS)
    chat = HonestChat.through(victim, tmp_path, nodes)
    peak_held = 0.0
    with Footprint(victim.proc.pid) as footprint:
        attacker = start(tmp_path / "mallory", victim.addr(), liars=2)
        try:
            chat.start(rate=5.0)
            deadline = time.monotonic() + ATTACK_SECONDS
            while time.monotonic() < deadline:
                peak_held = max(peak_held, victim.metric(HELD))
                time.sleep(0.5)
            delivery = chat.stop()
            assert attacker.running
        finally:
            attacker.stop()
        footprint.assert_fds_back()
    # Each answer names 1,500 peers; the victim takes the first 20 of each (kad_answers), and
    # keeps those of FIND_NODE answers in its peerstore.
    assert isinstance(attacker.tally, LieTally)
    named = attacker.tally.find_node * MAX_CLOSER_PEERS
    assert named >= 2 * MAX_PEERS, f"the victim asked the liars {attacker.tally.find_node} times"
    held_after = victim.metric(HELD)
    assert 0 < peak_held <= MAX_PEERS
    assert held_after <= MAX_PEERS
    # The connected honest peers kept their records (py-libp2p's own bound evicts the peers it
    # met first: what they said in identify, their roles included, was gone).
    shown = {p["peer"]: p["roles"] for p in command(victim, "/peers", "peers")["peers"]}
    assert shown[chat.sender.peer_id] == shown[chat.receiver.peer_id] == ["peer"], shown
    # Each invented PeerId past the bound took the place of an older one (some answers may
    # have been cut short by the victim's 256 KiB read bound: half is the floor).
    assert victim.metric(REFUSED, reason="lru") >= (named - MAX_PEERS) // 2
    for reason in ("addrs", "protocols", "protocol_name", "record"):
        assert victim.metric(REFUSED, reason=reason) >= 1, reason
    # Nor do they enter the Kad routing table unless identify showed them serving the DHT
    # (without that check: 4,805 of the invented peers in the table, ten with 100 addresses).
    table = victim.metric("p2pchat_dht_routing_table_peers")
    assert table <= 2, f"{table} peers in the routing table: only the two liars identified"
    assert victim.metric("p2pchat_dht_refused_total", reason="table_unidentified") >= 1
    assert chat.sent >= 20
    assert delivery >= MIN_DELIVERY, f"{chat.delivered} of {chat.sent} delivered"
    footprint.assert_rss_below(footprint.baseline_rss_mib + 40)
    report(
        "invented PeerIds: Kad answers naming 1,500 each (10 with 100 addresses; 20 taken), "
        "a fat identify (800 addresses, 400 protocols)",
        footprint,
        delivery,
        sent=chat.sent,
        peers_held_peak=peak_held,
        peers_named=named,
        kad_routing_table=table,
        max_peers=MAX_PEERS,
        metric=f"{REFUSED}{{reason=lru|addrs|protocols|protocol_name|record}}, "
        "p2pchat_dht_refused_total{reason=table_unidentified}",
    )


def test_a_record_past_the_bound_costs_no_message(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    # An honest sender announcing 40 addresses signs a record of about 1 KiB; the victim keeps
    # records of 512 bytes at most. The library drops every pubsub RPC whose record the
    # peerstore refuses, subscriptions and messages with it, and counts nothing: the victim
    # never knew the sender was in the room (without the fix: "room never had 2 others").
    victim = chat_peer(tmp_path / "victim", nodes, P2PCHAT_PEERSTORE__MAX_RECORD_BYTES="512")
    announced = ",".join(f"/dns4/host{n}.example.org/tcp/4001" for n in range(40))
    sender = chat_peer(
        tmp_path / "honest-a",
        nodes,
        "--bootstrap",
        victim.addr(),
        dht=False,
        P2PCHAT_NODE__ANNOUNCE=announced,
    )
    receiver = chat_peer(tmp_path / "honest-b", nodes, "--bootstrap", victim.addr(), dht=False)
    wait_room_peers(victim, 2)
    wait_room_peers(receiver, 1)
    chat = HonestChat(sender, receiver)
    chat.warm_up()
    chat.start(rate=5.0)
    time.sleep(5)
    delivery = chat.stop()
    assert victim.metric(REFUSED, reason="record") >= 1
    assert chat.sent >= 10
    assert delivery >= MIN_DELIVERY, f"{chat.delivered} of {chat.sent} delivered"

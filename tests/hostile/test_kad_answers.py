"""Kad answers that name 1,500 peers each, against a chat peer that relays two honest peers'
chat and looks its room up every 2 s (:mod:`tests.hostile.peerstore_attacks`' liars, six).

py-libp2p walks each answer's peers with list lookups, quadratic and without a checkpoint:
each lying answer held the victim's only thread for a second or more, and with six liars asked
every 2 s the victim was busy without pause (py-spy: 85% of its samples in the library's walk
of the answers). The honest messages it relayed were never dropped (no counter moved), only
held until the liars left: 27, 47 and 46 of ~59 arrived within the test's 15 s drain in three
runs, the rest 17-26 s late. Answers are now cut to the 20 closer peers (and 20 providers) a
Kademlia server sends (:mod:`p2pchat.node.p2p.kad_answers`).

Asserts honest delivery during the attack, each cut counted
(``p2pchat_dht_refused_total{reason="closer_peers"}``), the victim's RSS bound and its fds back.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import NodeProcess
from tests.hostile.harness import MIN_DELIVERY, Footprint, HonestChat, report
from tests.hostile.peerstore_attacks import CLOSER, start
from tests.hostile.test_peerstore import victim_node

LIARS = 6
MAX_PEERS = 512  # the peerstore is not what this attack is about
LOOKUP_INTERVAL = 2.0
ATTACK_SECONDS = 12.0
CUT = "p2pchat_dht_refused_total"


def test_lying_kad_answers_hold_no_honest_message(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    victim = victim_node(tmp_path / "victim", nodes, MAX_PEERS, lookup_interval=LOOKUP_INTERVAL)
    chat = HonestChat.through(victim, tmp_path, nodes)
    with Footprint(victim.proc.pid) as footprint:
        attacker = start(tmp_path / "mallory", victim.addr(), liars=LIARS)
        try:
            chat.start(rate=5.0)
            time.sleep(ATTACK_SECONDS)
            delivery = chat.stop()
            assert attacker.running
        finally:
            attacker.stop()
        footprint.assert_fds_back()
    assert chat.sent >= 20
    assert delivery >= MIN_DELIVERY, f"{chat.delivered} of {chat.sent} delivered"
    answers = attacker.tally.sent
    cut = victim.metric(CUT, reason="closer_peers")
    # Every lying answer the victim read was cut (some may still be in flight at the end).
    assert cut >= 1 and cut >= answers - LIARS, f"{cut} of {answers} answers cut"
    footprint.assert_rss_below(footprint.baseline_rss_mib + 40)
    report(
        f"Kad answers naming {CLOSER:,} peers each, {LIARS} liars, room lookups every "
        f"{LOOKUP_INTERVAL:g} s",
        footprint,
        delivery,
        sent=chat.sent,
        lying_answers=answers,
        answers_cut=cut,
        metric=f'{CUT}{{reason="closer_peers"}}',
    )

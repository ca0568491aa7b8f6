"""Hostile suite: unread data of reset Yamux streams (issue #18).

py-libp2p 0.8.1 keeps the unread bytes of a stream reset by either side for 60-90 s (its
stale-stream sweeper's grace), charged to nothing but the connection's buffer bound: a peer
that opens streams, fills their window with bytes the victim never reads (a protocol it does not
speak) and resets them made the victim hold each connection's 32 MiB until that bound closed
the connection, and then did it again (before the fix: see the commit). The host drops a reset
stream's unread bytes at once, as go-yamux does (``node/p2p/yamux_resets.py``), and counts them
in ``p2pchat_yamux_reset_unread_bytes_total``.

The attack comes from several PeerIds, each on several connections at once (a peer's unread
bytes are bounded per connection, times its connections), while two honest peers chat through
the victim.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.conftest import NodeProcess
from tests.hostile import mux_attacks
from tests.hostile.harness import MIN_DELIVERY, Footprint, HonestChat, chat_peer, report

pytestmark = pytest.mark.slow

RSS_MARGIN_MIB = 48.0  # over the victim's RSS when the attack starts
ATTACK_SECONDS = 10.0
DROPPED = "p2pchat_yamux_reset_unread_bytes_total"


@pytest.fixture
def line(tmp_path: Path) -> Iterator[tuple[NodeProcess, HonestChat]]:
    """The victim, and the honest chat through it."""
    nodes: list[NodeProcess] = []
    try:
        victim = chat_peer(tmp_path / "victim", nodes)
        chat = HonestChat.through(victim, tmp_path, nodes)
        yield victim, chat
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.proc.kill()


def test_unread_data_of_reset_streams_is_dropped_at_once(
    line: tuple[NodeProcess, HonestChat],
) -> None:
    victim, chat = line
    with Footprint(victim.proc.pid) as footprint:
        chat.start(rate=5.0)
        figures = trio.run(mux_attacks.send_and_reset, victim.addr(), ATTACK_SECONDS, 2, 4)
        delivery = chat.stop()
    dropped_mib = round(victim.metric(DROPPED) / 2**20, 1)
    report(
        "yamux streams filled and reset", footprint, delivery, **figures, dropped_mib=dropped_mib
    )
    assert victim.proc.poll() is None, "the victim died"
    assert figures["sent_mib"] > 4 * RSS_MARGIN_MIB, "the attack sent too little to tell"
    footprint.assert_rss_below(footprint.baseline_rss_mib + RSS_MARGIN_MIB)
    footprint.assert_fds_back()
    assert chat.sent >= 10
    assert delivery >= MIN_DELIVERY, f"{chat.delivered} of {chat.sent} honest messages delivered"
    # Most of what was sent was dropped as its stream was reset (the rest the victim's
    # negotiation read, or was still in flight when the attack ended).
    assert dropped_mib > figures["sent_mib"] / 2, figures

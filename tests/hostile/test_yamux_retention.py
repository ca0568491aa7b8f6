"""Hostile suite: bytes a peer sends on Yamux streams that nobody reads (issue #18).

py-libp2p 0.8.1 keeps the unread bytes of a finished stream (reset by either side, or closed
by both) for 60-90 s (its stale-stream sweeper's grace), charged to nothing but the
connection's buffer bound: a peer that opens streams, fills their window with bytes the victim
never reads and resets or closes them made the victim hold each connection's 32 MiB until that
bound closed the connection, and then did it again on the next one. The host drops them at
once, as go-yamux does (``node/p2p/yamux_unread.py``): at the reset, or when the stream's
handler has returned with its side closed; counted in
``p2pchat_yamux_unread_dropped_bytes_total{reason}``.

Each attack comes from 2 PeerIds, each on 4 connections at once (a peer's unread bytes are
bounded per connection, times its connections), while two honest peers chat through the
victim. Without the fix: +250-265 MiB in 10 s, connections closed by the buffer bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from p2pchat.node.wire.framing import encode_uvarint

from tests.conftest import NodeProcess
from tests.hostile import mux_attacks
from tests.hostile.harness import MIN_DELIVERY, Footprint, HonestChat, chat_peer, report
from tests.hostile.test_kad import bootstrap, first_member, late_joiner_meets

pytestmark = pytest.mark.slow

RSS_MARGIN_MIB = 48.0  # over the victim's RSS when the attack starts
ATTACK_SECONDS = 10.0
KAD_ATTACK_SECONDS = 15.0  # a late joiner meets its room through the victim meanwhile
DROPPED = "p2pchat_yamux_unread_dropped_bytes_total"
BUFFER_BOUND = "yamux_connection_buffer"


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, HonestChat]]:
    """The victim, and the honest chat through it (started once for the module)."""
    path: Path = tmp_path_factory.mktemp("retention")
    nodes: list[NodeProcess] = []
    try:
        victim = chat_peer(path / "victim", nodes)
        chat = HonestChat.through(victim, path, nodes)
        yield victim, chat
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.proc.kill()


@pytest.mark.parametrize(
    ("protocol", "ending", "reason"),
    [
        # A protocol the victim does not speak; half reset by the attacker, half by the victim
        # (the zeros after the proposal are not multistream-select).
        (b"/p2pchat/no-such-protocol/1.0.0", "reset", "reset"),
        # Identify: the victim answers and closes, never reading what the peer sent (with FIN).
        (b"/ipfs/id/1.0.0", "fin", "abandoned"),
    ],
    ids=["reset", "closed-unread"],
)
def test_bytes_nobody_reads_are_dropped_when_their_stream_ends(
    line: tuple[NodeProcess, HonestChat], protocol: bytes, ending: str, reason: str
) -> None:
    victim, honest = line
    dropped_before = victim.metric(DROPPED, reason=reason)
    closed_before = victim.metric("p2pchat_stream_limit_exceeded_total", limit=BUFFER_BOUND)
    chat = HonestChat(honest.sender, honest.receiver)
    with Footprint(victim.proc.pid) as footprint:
        chat.start(rate=5.0)
        figures = trio.run(
            mux_attacks.send_and_reset, victim.addr(), ATTACK_SECONDS, 2, 4, protocol, ending
        )
        delivery = chat.stop()
    dropped_mib = round((victim.metric(DROPPED, reason=reason) - dropped_before) / 2**20, 1)
    closed = victim.metric("p2pchat_stream_limit_exceeded_total", limit=BUFFER_BOUND)
    report(
        f"yamux streams filled with 256 KiB nobody reads, then {ending} (2 PeerIds x 4 conns)",
        footprint,
        delivery,
        **figures,
        dropped_mib=dropped_mib,
        closed_by_buffer_bound=closed - closed_before,
    )
    assert victim.proc.poll() is None, "the victim died"
    assert figures["sent_mib"] > 4 * RSS_MARGIN_MIB, "the attack sent too little to tell"
    footprint.assert_rss_below(footprint.baseline_rss_mib + RSS_MARGIN_MIB)
    footprint.assert_fds_back()
    assert chat.sent >= 10
    assert delivery >= MIN_DELIVERY, f"{chat.delivered} of {chat.sent} honest messages delivered"
    # Most of what was sent was dropped as its stream ended (the rest the victim read while
    # negotiating, or was still in flight when the attack ended).
    assert dropped_mib > figures["sent_mib"] / 2, figures


def test_refused_kad_frames_cost_a_bootstrap_nothing_once_reset(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # A previous measurement: refused 1 MiB Kad frames, each with its stream's window of body
    # sent, took a node to +380 MiB before the stream guards; the refusal resets the stream.
    victim = bootstrap(tmp_path / "victim", nodes)
    first = first_member(tmp_path, nodes, victim)
    dropped_before = victim.metric(DROPPED, reason="reset")
    outcome: dict[str, Any] = {}

    def attack() -> None:
        outcome.update(
            trio.run(
                mux_attacks.send_and_reset,
                victim.addr(),
                KAD_ATTACK_SECONDS,
                2,
                4,
                b"/ipfs/kad/1.0.0",
                "reset",
                encode_uvarint(1024 * 1024),
            )
        )

    with Footprint(victim.proc.pid) as footprint:
        attacker = threading.Thread(target=attack, daemon=True)
        attacker.start()
        time.sleep(2.0)  # the attack is under way when the joiner comes
        took = late_joiner_meets(tmp_path, nodes, victim, first)
        assert attacker.is_alive(), "the meeting ended after the attack, not during it"
        attacker.join()
    dropped_mib = round((victim.metric(DROPPED, reason="reset") - dropped_before) / 2**20, 1)
    refused = victim.metric("p2pchat_dht_refused_total", reason="frame_size")
    report(
        "Kad 1 MiB frames with 256 KiB of body each, refused and reset (2 PeerIds x 4 conns)",
        footprint,
        None,
        **outcome,
        dropped_mib=dropped_mib,
        frame_size_refusals=refused,
        late_joiner_met_s=round(took, 1),
    )
    assert victim.proc.poll() is None, "the victim died"
    assert outcome["sent_mib"] > 4 * RSS_MARGIN_MIB, "the attack sent too little to tell"
    footprint.assert_rss_below(footprint.baseline_rss_mib + RSS_MARGIN_MIB)
    footprint.assert_fds_back()
    # Not asserted: how many frames were refused as too large (reported above). Whether the
    # victim reads a stream's length prefix before the attacker's reset arrives depends on the
    # scheduling (0 of 4,896 in a clean-clone CI run, hundreds in others); either way the
    # stream's bytes must be dropped, which is what is asserted.
    assert dropped_mib > outcome["sent_mib"] / 2, outcome

"""Hostile suite: attacks on the muxers and on stream negotiation (issue #18).

One victim chat peer for the module, with two honest peers chatting through it
(:meth:`HonestChat.through`); each test attacks it from an in-process py-libp2p host speaking
raw Yamux or Mplex frames (``mux_attacks``) for a few seconds while the honest peers chat, then
asserts the victim's RSS stayed under its baseline plus :data:`RSS_MARGIN_MIB`, its fds came
back, honest delivery was at least 99%, and the limit that refused the attack was counted in
``p2pchat_stream_limit_exceeded_total``. Without the guards (``node/p2p/yamux_guard.py``,
``mplex_guard.py``, ``inbound.py``) the window overrun took the victim past 1.3 GiB in 8 s, the
endless protocol id past 1.6 GiB, the Mplex flood to +245 MiB, and no metric counted anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio
from p2pchat.node.p2p.stream_limits import LIMITS as ALL_LIMITS
from p2pchat.node.wire.store_query import PROTOCOL_ID as STORE_QUERY

from tests.conftest import NodeProcess, wait_metric
from tests.hostile import mux_attacks
from tests.hostile.harness import MIN_DELIVERY, Footprint, HonestChat, chat_peer, report

pytestmark = pytest.mark.slow

RSS_MARGIN_MIB = 48.0  # over the victim's RSS when the attack starts
ATTACK_SECONDS = 8.0
LIMITS = "p2pchat_stream_limit_exceeded_total"


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, HonestChat]]:
    """The victim, and the honest chat through it (started once for the module)."""
    path = tmp_path_factory.mktemp("muxers")
    nodes: list[NodeProcess] = []
    try:
        victim = chat_peer(path / "victim", nodes)
        chat = HonestChat.through(victim, path, nodes)
        yield victim, chat
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.proc.kill()


def attacked(
    line: tuple[NodeProcess, HonestChat],
    name: str,
    attack: Callable[[str], Awaitable[dict[str, Any]]],
    limits: tuple[str, ...],
) -> dict[str, Any]:
    """Run ``attack`` against the victim while the honest peers chat; assert the bounds, and
    that each of ``limits`` counted something; print the HOSTILE line. Returns the figures."""
    victim, honest = line
    before = {limit: victim.metric(LIMITS, limit=limit) for limit in limits}
    logged_before = refusals_logged(victim)
    chat = HonestChat(honest.sender, honest.receiver)
    with Footprint(victim.proc.pid) as footprint:
        chat.start(rate=5.0)
        figures = trio.run(attack, victim.addr())
        delivery = chat.stop()
    counted = {limit: victim.metric(LIMITS, limit=limit) - before[limit] for limit in limits}
    report(name, footprint, delivery, **figures, counted=counted)
    assert victim.proc.poll() is None, "the victim died"
    footprint.assert_rss_below(footprint.baseline_rss_mib + RSS_MARGIN_MIB)
    footprint.assert_fds_back()
    assert chat.sent >= 10
    assert delivery >= MIN_DELIVERY, f"{chat.delivered} of {chat.sent} honest messages delivered"
    for limit, count in counted.items():
        assert count > 0, f"no refusal counted by {limit}: {counted}"
    # Logged, and rate-limited: at most once per 10 s per limit (an attack lasts under 20 s).
    logged = refusals_logged(victim) - logged_before
    assert (1 if limits else 0) <= logged <= 3 * len(ALL_LIMITS), f"{logged} refusal log lines"
    return figures


def refusals_logged(victim: NodeProcess) -> int:
    """How many refusal log lines the victim wrote so far."""
    return sum("stream limit exceeded; refused" in line for line in list(victim.raw_stderr))


def test_a_yamux_peer_sending_past_its_window_loses_its_connection(
    line: tuple[NodeProcess, HonestChat],
) -> None:
    figures = attacked(
        line,
        "yamux window overrun",
        lambda addr: mux_attacks.window_overrun(addr, ATTACK_SECONDS),
        ("yamux_window",),
    )
    # (the last connection may be cut by the attack's end)
    assert figures["closed_by_victim"] >= figures["connections"] - 1 >= 1
    assert figures["sent_mib_per_connection"] < 64, "the victim kept reading past the window"


def test_yamux_open_and_reset_floods_are_refused_and_their_connections_closed(
    line: tuple[NodeProcess, HonestChat],
) -> None:
    attacked(
        line,
        "yamux open-and-reset flood",
        lambda addr: mux_attacks.yamux_open_and_reset(addr, ATTACK_SECONDS),
        ("streams_per_connection", "refusals_per_connection"),
    )


def test_mplex_stream_floods_are_refused_and_their_connections_closed(
    line: tuple[NodeProcess, HonestChat],
) -> None:
    attacked(
        line,
        "mplex stream flood",
        lambda addr: mux_attacks.mplex_stream_flood(addr, ATTACK_SECONDS),
        ("streams_per_connection", "refusals_per_connection"),
    )


def test_a_yamux_ping_flood_is_not_answered_beyond_its_budget(
    line: tuple[NodeProcess, HonestChat],
) -> None:
    figures = attacked(
        line,
        "yamux ping flood",
        lambda addr: mux_attacks.ping_flood(addr, ATTACK_SECONDS),
        ("yamux_ping_rate", "refusals_per_connection"),
    )
    assert figures["closed_by_victim"] >= figures["connections"] - 1 >= 1


def test_never_ending_negotiations_are_cut_by_size_count_and_deadline(
    line: tuple[NodeProcess, HonestChat],
) -> None:
    figures = attacked(
        line,
        "endless multistream negotiations",
        lambda addr: mux_attacks.endless_negotiations(addr, 5.0),
        ("negotiation_bytes", "negotiation_proposals", "negotiation_deadline"),
    )
    assert figures["huge_id_sent_mib"] < 4, "the victim kept reading an oversized protocol id"
    assert figures["silent_streams_ended_by_victim"] == 32


def test_varint_and_length_bombs_end_their_streams(
    line: tuple[NodeProcess, HonestChat],
) -> None:
    victim, _ = line
    protocols = [STORE_QUERY, "/ipfs/id/push/1.0.0"]
    bad_queries = victim.metric("p2pchat_store_queries_total", status="bad_request")
    figures = attacked(
        line,
        "varint and length bombs",
        lambda addr: mux_attacks.length_bombs(addr, protocols, 5.0),
        ("negotiation_bytes", "negotiation_malformed"),
    )
    assert figures["ended_by_victim"] == figures["bomb_streams"]
    # The history protocol answered each of its bombs BAD_REQUEST (and ended the stream).
    assert victim.metric("p2pchat_store_queries_total", status="bad_request") > bad_queries


def test_an_mplex_stream_nobody_reads_is_reset_when_its_reader_falls_behind(
    line: tuple[NodeProcess, HonestChat],
) -> None:
    figures = attacked(
        line,
        "mplex data to an unread stream",
        lambda addr: mux_attacks.mplex_unread_stream(addr, ATTACK_SECONDS),
        ("mplex_stream_buffer",),
    )
    assert figures["streams"] >= 2  # each one was reset, and the next began


@pytest.mark.parametrize("muxer", ["yamux", "mplex"])
def test_an_undecryptable_noise_message_closes_its_connection_not_the_node(
    line: tuple[NodeProcess, HonestChat], muxer: str
) -> None:
    figures = attacked(
        line,
        f"garbled Noise message ({muxer})",
        lambda addr: mux_attacks.garbled_noise(addr, muxer, 5.0),
        (f"{muxer}_protocol",),
    )
    assert figures["closed_by_victim"] >= figures["connections"] - 1 >= 1


def test_a_peer_holds_64_streams_of_one_protocol_and_one_message_handlers_end_in_time(
    line: tuple[NodeProcess, HonestChat],
) -> None:
    figures = attacked(
        line,
        "100 identify-push streams held silent",
        lambda addr: mux_attacks.held_streams(addr, "/ipfs/id/push/1.0.0", 100, 20),
        ("streams_per_protocol", "handler_deadline"),
    )
    # 36 over the per-protocol limit are reset at once; the 64 served (identify push reads
    # one message) are reset by the handler deadline, 10 s later.
    assert figures["ended"] == 100
    assert figures["ended_within_5s"] == 100 - 64
    assert figures["ended_after_9s"] == 64


def test_a_peer_that_goes_away_and_goes_on_is_closed_at_once(
    line: tuple[NodeProcess, HonestChat],
) -> None:
    victim, _ = line
    closed_before = victim.metric("libp2p_swarm_connections_closed_total", dir="inbound")
    figures = attacked(
        line,
        "yamux GO_AWAY, then streams and data",
        lambda addr: mux_attacks.go_away_and_go_on(addr, 5.0),
        (),  # no limit: the library ends the session at GO_AWAY and reads nothing after it
    )
    assert figures["closed_by_victim"] >= figures["connections"] - 1 >= 1
    # Counted once the victim's swarm has noticed its last close (a CI run read it one early).
    wait_metric(
        victim,
        "libp2p_swarm_connections_closed_total",
        closed_before + figures["closed_by_victim"],
        dir="inbound",
    )

"""Services denied cheaply (#18): history serving, archiver room admission, relay circuits
and AutoNAT, each attacked by many PeerIds from one address while an honest peer from another
address group is still served.

Each test asserts the victim's RSS bound, its fds back to baseline once the attackers left,
that the honest peer was served during the attack, and the metric that counted the refusals;
each prints one HOSTILE line (see tests/hostile/harness.py).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import multiaddr
import trio
from p2pchat.node.p2p.circuit import CircuitError, request_circuit
from p2pchat.node.p2p.host import P2PHost
from p2pchat.node.p2p.identity import peer_id_bytes
from p2pchat.node.p2p.streams import Stream, StreamError, read_single_frame
from p2pchat.node.wire.autonat import MAX_MESSAGE_BYTES as AUTONAT_MAX_BYTES
from p2pchat.node.wire.autonat import PROTOCOL_ID as AUTONAT_PROTOCOL_ID
from p2pchat.node.wire.autonat import DialRequest, DialResponse, decode_response
from p2pchat.node.wire.autonat import Status as AutoNatStatus
from p2pchat.node.wire.autonat import encode as encode_autonat
from p2pchat.node.wire.circuit import Status as RelayStatus
from p2pchat.node.wire.store_query import PROTOCOL_ID, Query, Status

from tests.conftest import NodeProcess, node_env, start_node
from tests.history_fixtures import ROOM, ask, fill_store, reply_decoder, signed_message, signer
from tests.hostile.harness import Footprint, chat_peer, report, wait_room_peers
from tests.hostile.services_attacks import (
    VICTIM_LISTEN,
    announce_rooms,
    honest_host,
    peers,
    require_ipv6_loopback,
)
from tests.test_relay import accept_into, reserve_status

REFUSALS = "p2pchat_store_refusals_total"
MIB = 1024**2


def archiver_with_history(
    tmp_path: Path, nodes: list[NodeProcess], count: int, text_bytes: int, **env: str
) -> NodeProcess:
    """An archiver (listening on 127.0.0.1 and ::1) holding ``count`` messages of ROOM."""
    key = signer(tmp_path / "signer")
    start = int(time.time() * 1000) - 3_600_000
    text = "x" * text_bytes
    messages = [signed_message(key, ROOM, n, start + n, text=text) for n in range(1, count + 1)]
    fill_store(tmp_path / "archiver", messages)
    victim = start_node(
        tmp_path / "archiver",
        "--role",
        "archiver",
        "--listen",
        VICTIM_LISTEN,
        env=node_env(**env),
    )
    nodes.append(victim)
    return victim


async def honest_page(host: P2PHost, victim: NodeProcess, limit: int) -> int:
    """One honest history query from ``host``: the number of messages it got (asserts OK)."""
    with trio.fail_after(30):
        stream = await host.new_stream(victim.peer_id, [PROTOCOL_ID])
        reply = await ask(stream, reply_decoder(), Query(1, ROOM, limit=limit))
        await stream.close()
    assert reply.status is Status.OK, f"honest query refused: {reply.status_text}"
    return len(reply.entries)


# --- history serving ----------------------------------------------------------------------------


async def test_held_history_streams_do_not_starve_an_honest_query(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # The audit: 256 held streams (64 PeerIds x 4) made every honest query UNAVAILABLE for as
    # long as they were held. Now one address group holds at most 32 of them.
    require_ipv6_loopback()
    victim = archiver_with_history(tmp_path, nodes, 50, 100)
    held: list[Stream] = []
    with Footprint(victim.proc.pid) as footprint:
        async with peers(tmp_path, "holder", 64, victim) as attackers:
            for host in attackers:
                for _ in range(4):
                    with contextlib.suppress(StreamError):
                        held.append(await host.new_stream(victim.peer_id, [PROTOCOL_ID]))
            async with honest_host(tmp_path, victim) as honest:
                got = await honest_page(honest, victim, 50)
            refused = victim.metric(REFUSALS, reason="group_streams")
            streams = victim.metric("p2pchat_store_query_streams")
            # Held without a query, the admitted streams are closed by the read deadline
            # (history.read_timeout, 10 s) while their holders are still connected.
            with trio.fail_after(45):
                while victim.metric("p2pchat_store_query_streams") > 0:
                    await trio.sleep(0.5)
            timed_out = victim.metric(REFUSALS, reason="read_timeout")
        await trio.to_thread.run_sync(footprint.assert_fds_back)
    assert got == 50
    # Every held stream was either refused at once or admitted and then closed by the read
    # deadline (on a slow machine a slot freed by the deadline may be taken by a later one).
    assert refused + timed_out == 256, (refused, timed_out)
    assert streams <= 32 and refused >= 256 - 2 * 32
    footprint.assert_rss_below(footprint.baseline_rss_mib + 60)
    report(
        "held history streams (64 PeerIds x 4)",
        footprint,
        None,
        honest_served=True,
        streams_served_during_attack=streams,
        refused_group_streams=refused,
        closed_read_timeout=timed_out,
    )


async def test_a_full_history_server_takes_an_idle_stream_back_for_another_group(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # All of max_streams held by one address group: a newcomer from another group takes the
    # slot of the longest-idle of them rather than being refused.
    require_ipv6_loopback()
    victim = archiver_with_history(tmp_path, nodes, 20, 100, P2PCHAT_HISTORY__MAX_STREAMS="8")
    held: list[Stream] = []
    with Footprint(victim.proc.pid) as footprint:
        async with peers(tmp_path, "holder", 2, victim) as attackers:
            for host in attackers:
                for _ in range(4):
                    held.append(await host.new_stream(victim.peer_id, [PROTOCOL_ID]))
            with trio.fail_after(30):
                while victim.metric("p2pchat_store_query_streams") < 8:
                    await trio.sleep(0.2)
            async with honest_host(tmp_path, victim) as honest:
                got = await honest_page(honest, victim, 20)
            evicted = victim.metric(REFUSALS, reason="evicted")
        await trio.to_thread.run_sync(footprint.assert_fds_back)
    assert got == 20 and evicted == 1
    footprint.assert_rss_below(footprint.baseline_rss_mib + 60)
    report(
        "all history streams held by one group (max_streams 8)",
        footprint,
        None,
        honest_served=True,
        evicted=evicted,
    )


async def test_a_page_pull_flood_is_bounded_in_bytes_and_an_honest_query_is_answered(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # The audit: 20 PeerIds asking for 500-message pages pulled 2 GB out of an archiver for
    # 33 KB of queries. Now one address group gets group_bytes_burst (8 MiB) plus
    # group_bytes_rate (2 MiB/s), whatever the number of PeerIds.
    require_ipv6_loopback()
    victim = archiver_with_history(
        tmp_path, nodes, 1000, 4000, P2PCHAT_HISTORY__RATE="1000", P2PCHAT_HISTORY__BURST="1000"
    )
    attack_seconds = 8.0
    pulled = [0]
    queries = [0]

    async def pull(host: P2PHost) -> None:
        stream = await host.new_stream(victim.peer_id, [PROTOCOL_ID])
        decoder = reply_decoder()
        while True:
            queries[0] += 1
            reply = await ask(stream, decoder, Query(queries[0], ROOM, limit=500))
            pulled[0] += sum(len(e.envelope) for e in reply.entries)
            if reply.status is Status.TOO_MANY_REQUESTS:
                await trio.sleep(0.05)  # ignores the retry hint: keeps asking

    with Footprint(victim.proc.pid) as footprint:
        async with peers(tmp_path, "puller", 20, victim) as attackers:
            began = time.monotonic()
            async with trio.open_nursery() as nursery:
                for host in attackers:
                    nursery.start_soon(pull, host)
                await trio.sleep(attack_seconds / 2)
                async with honest_host(tmp_path, victim) as honest:
                    got = await honest_page(honest, victim, 500)
                await trio.sleep(attack_seconds / 2)
                nursery.cancel_scope.cancel()
            took = time.monotonic() - began
            refused = victim.metric(REFUSALS, reason="group_bytes") + victim.metric(
                REFUSALS, reason="peer_bytes"
            )
        await trio.to_thread.run_sync(footprint.assert_fds_back)
    # The group's budget over the attack, plus one page of debt per puller in flight.
    bound = 8 * MIB + 2 * MIB * took + 20 * 2 * MIB
    assert pulled[0] <= bound, f"{pulled[0] / MIB:.0f} MiB pulled in {took:.0f} s"
    assert got >= 400  # the honest query got its page (at most 2 MiB of it)
    assert refused > 0
    footprint.assert_rss_below(footprint.baseline_rss_mib + 150)
    report(
        "history page-pull flood (20 PeerIds, 500-message pages)",
        footprint,
        None,
        honest_served=True,
        pulled_mib=round(pulled[0] / MIB, 1),
        attack_seconds=round(took, 1),
        queries=queries[0],
        refused_bytes=refused,
    )


# --- relay circuits -----------------------------------------------------------------------------


async def test_one_requester_cannot_hold_all_circuits_to_a_reserved_peer(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # The audit: one attacker holding a peer's 16 circuits made it unreachable through the
    # relay. Now one requester holds 4 of them, one address group 8.
    require_ipv6_loopback()
    relay = start_node(
        tmp_path / "relay",
        "--role",
        "relay",
        "--listen",
        VICTIM_LISTEN,
        env=node_env(P2PCHAT_AUTONAT__SERVICE="off"),
    )
    nodes.append(relay)
    held: list[Stream] = []
    refused: list[RelayStatus | None] = []
    with Footprint(relay.proc.pid) as footprint:
        async with peers(tmp_path, "dst", 1, relay) as (destination,):
            accepted_send, accepted = trio.open_memory_channel[Stream](64)
            accept_into(destination, accepted_send)
            assert await reserve_status(destination, relay) == RelayStatus.OK
            async with peers(tmp_path, "hog", 4, relay) as hogs:
                for hog in hogs:  # each tries to take all 16
                    for _ in range(16):
                        try:
                            stream, _ = await request_circuit(
                                hog, relay.peer_id, destination.peer_id
                            )
                            held.append(stream)
                        except CircuitError as error:
                            refused.append(error.status)
                async with honest_host(tmp_path, relay) as honest:
                    with trio.fail_after(30):
                        stream, _ = await request_circuit(
                            honest, relay.peer_id, destination.peer_id
                        )
                        await stream.write(b"ping")
                        # The destination's end of the honest circuit is the last accepted.
                        far_end = None
                        for _ in range(len(held) + 1):
                            far_end = await accepted.receive()
                        assert far_end is not None
                        assert await far_end.read(4) == b"ping"
                    await stream.close()
                shares = relay.metric(
                    "libp2p_relaysvc_connection_rejections_total", reason="source_share"
                ) + relay.metric(
                    "libp2p_relaysvc_connection_rejections_total", reason="group_share"
                )
                for end in held:
                    await end.reset()
        await trio.to_thread.run_sync(footprint.assert_fds_back)
    assert len(held) == 8, f"{len(held)} circuits held by one address group"
    assert shares == len(refused) == 4 * 16 - 8
    footprint.assert_rss_below(footprint.baseline_rss_mib + 60)
    report(
        "circuit hogging (4 PeerIds x 16 circuits to one reserved peer)",
        footprint,
        None,
        honest_served=True,
        circuits_held_by_attackers=len(held),
        refused_share=shares,
    )


# --- AutoNAT ------------------------------------------------------------------------------------


async def dial_request(host: P2PHost, server: NodeProcess) -> DialResponse:
    """One AutoNAT dial-back request from ``host`` for its own listen addresses."""
    addrs = tuple(
        multiaddr.Multiaddr(addr.split("/p2p/")[0]).to_bytes() for addr in host.listen_addrs()
    )
    with trio.fail_after(45):
        stream = await host.new_stream(server.peer_id, [AUTONAT_PROTOCOL_ID])
        await stream.write(encode_autonat(DialRequest(peer_id_bytes(host.peer_id), addrs)))
        response = decode_response(await read_single_frame(stream, AUTONAT_MAX_BYTES))
        await stream.close()
    return response


async def test_many_peer_ids_of_one_host_cannot_spend_autonat_for_everyone(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # The audit: 12 PeerIds x 3 requests spent the server's 30 dial-backs a minute, and every
    # other peer was refused for the rest of the minute. Now one address group gets 8.
    require_ipv6_loopback()
    server = start_node(tmp_path / "server", "--role", "relay", "--listen", VICTIM_LISTEN)
    nodes.append(server)
    answers: list[AutoNatStatus] = []

    async def spend(host: P2PHost) -> None:
        for _ in range(3):
            answers.append((await dial_request(host, server)).status)

    with Footprint(server.proc.pid) as footprint:
        async with peers(tmp_path, "sybil", 12, server) as sybils:
            async with trio.open_nursery() as nursery:
                for host in sybils:
                    nursery.start_soon(spend, host)
            async with honest_host(tmp_path, server) as honest:
                verdict = await dial_request(honest, server)
            refused = server.metric("p2pchat_autonat_refusals_total", reason="group_limit")
        await trio.to_thread.run_sync(footprint.assert_fds_back)
    assert verdict.status is AutoNatStatus.OK, verdict.text
    assert answers.count(AutoNatStatus.E_DIAL_REFUSED) == 36 - 8 == refused
    footprint.assert_rss_below(footprint.baseline_rss_mib + 60)
    report(
        "AutoNAT window exhaustion (12 PeerIds x 3 requests)",
        footprint,
        None,
        honest_served=True,
        attacker_dialbacks=answers.count(AutoNatStatus.OK),
        refused_group_limit=refused,
    )


# --- archiver room admission --------------------------------------------------------------------


async def test_junk_room_names_from_many_peer_ids_do_not_keep_a_real_room_out(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # The audit: 12 PeerIds announcing 100 room names each filled an all_rooms archiver's
    # max_rooms with junk until restart. Now a room is archived once two of its members are
    # heard; names announced wait their turn and, never heard, expire after the probation.
    archiver = start_node(
        tmp_path / "archiver",
        "--role",
        "archiver",
        env=node_env(
            P2PCHAT_ARCHIVER__ALL_ROOMS="true",
            P2PCHAT_ARCHIVER__MAX_ROOMS="50",
            P2PCHAT_ARCHIVER__PROBATION="8",
            P2PCHAT_DHT__ENABLED="false",
        ),
    )
    nodes.append(archiver)
    with Footprint(archiver.proc.pid) as footprint:
        async with peers(tmp_path, "namer", 12, archiver) as namers:
            announcements = [
                await announce_rooms(host, archiver, [f"junk-{n}-{k}" for k in range(100)])
                for n, host in enumerate(namers)
            ]
            await trio.sleep(2)  # the junk is heard of before the real room
            real = [
                chat_peer(
                    tmp_path / name,
                    nodes,
                    "--room",
                    "real-room",
                    "--bootstrap",
                    archiver.addr(),
                    dht=False,
                )
                for name in ("alice", "bob")
            ]
            for peer in real:
                await trio.to_thread.run_sync(wait_room_peers, peer, 1)
            with trio.fail_after(60):
                while not archiver.metric(
                    "p2pchat_archive_room_admissions_total", outcome="admitted"
                ):
                    for n, peer in enumerate(real):
                        peer.say(f"hello from {n}")
                    await trio.sleep(1)
                while not archiver.metric(
                    "p2pchat_archive_room_admissions_total", outcome="expired"
                ):
                    await trio.sleep(0.5)
            rooms = archiver.metric("p2pchat_archive_rooms")
            inserted = archiver.metric("p2pchat_archive_inserted_total")
            expired = archiver.metric("p2pchat_archive_room_admissions_total", outcome="expired")
            for stream in announcements:
                await stream.reset()
        for peer in real:
            peer.stop()
        await trio.to_thread.run_sync(footprint.assert_fds_back)
    assert rooms == 2, f"{rooms} rooms archived: the default room and real-room only"
    assert inserted >= 2
    assert expired > 0
    footprint.assert_rss_below(footprint.baseline_rss_mib + 80)
    report(
        "junk room announcements (12 PeerIds x 100 names)",
        footprint,
        None,
        honest_served=True,
        rooms_archived=rooms,
        junk_expired=expired,
        real_room_messages_archived=inserted,
    )

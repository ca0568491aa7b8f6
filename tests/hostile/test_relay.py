"""Hostile suite: reservation and circuit floods at a relay (issue #18).

Many PeerIds from 127.0.0.1 (one address group) reserve, renew their reservations over and over,
and open circuits to every reserved peer they know of (each other, and an honest peer from
``::1``), sending a little on each and resetting it, or holding it; meanwhile an honest peer from
``::1`` reserves, and another reaches it through the relay. The limits that hold them
(``roles/relay/limits.py``: 8 reservations per address group, 16 circuits per peer, 4 per
requester and 8 per requester address group to one reserved peer, 128 KiB and 120 s per
circuit) are unit-tested in tests/test_relay_limits.py and one by one in tests/test_relay.py;
this test asserts what they add up to under a flood: the relay's RSS bound, its fds back once
the attackers left, the metrics that counted the refusals, and the honest peers served.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from pathlib import Path

import trio
from p2pchat.node.p2p.circuit import (
    CircuitError,
    accept_circuit,
    request_circuit,
    request_reservation,
)
from p2pchat.node.p2p.host import P2PHost, Stream
from p2pchat.node.wire.circuit import STOP_PROTOCOL_ID
from p2pchat.node.wire.circuit import Status as RelayStatus

from tests.conftest import NodeProcess, node_env, start_node
from tests.hostile.harness import MIN_DELIVERY, Footprint, HonestChat, report, wait_room_peers
from tests.hostile.services_attacks import (
    VICTIM_LISTEN,
    honest_host,
    peers,
    require_ipv6_loopback,
)
from tests.test_autorelay import connection_kind, relayed_peer, tcp_circuit

ATTACKERS = 24  # PeerIds, all from 127.0.0.1 (as the honest chat peers: one address group)
ATTACK_SECONDS = 10.0
RSS_MARGIN_MIB = 60.0  # over the relay's RSS when the attack starts (24 connections, circuits)
RESERVATIONS = "libp2p_relaysvc_reservations_total"
RESERVATION_REJECTIONS = "libp2p_relaysvc_reservation_rejections_total"
CONNECTIONS = "libp2p_relaysvc_connections_total"
CONNECTION_REJECTIONS = "libp2p_relaysvc_connection_rejections_total"


def serve_stop(host: P2PHost, on_data: Callable[[bytes], None] = lambda data: None) -> None:
    """Accept every circuit relayed to ``host`` and read it to its end, telling ``on_data``
    what each one carried."""

    async def handle(stream: Stream) -> None:
        with contextlib.suppress(Exception):  # reset by the source, or by the relay's limits
            await accept_circuit(stream)
            received = b""
            while chunk := await stream.read(65536):
                received += chunk
                if len(received) >= 64:
                    on_data(received)
                    received = b""
            on_data(received)

    host.set_stream_handler(STOP_PROTOCOL_ID, handle)


async def reserve(host: P2PHost, relay: NodeProcess) -> RelayStatus:
    """Reserve (or renew): OK, or the relay's refusal."""
    try:
        await request_reservation(host, relay.peer_id)
    except CircuitError as error:
        return error.status or RelayStatus.MALFORMED_MESSAGE
    return RelayStatus.OK


async def attacker(
    host: P2PHost,
    relay: NodeProcess,
    targets: list[str],
    figures: dict[str, int],
    end: float,
) -> None:
    """Reserve, then until ``end``: renew, open a circuit to a random reserved peer, send 4 KiB
    and reset it, or hold it (one in four, up to 8); each held circuit is reset at the end."""
    serve_stop(host)
    if await reserve(host, relay) is RelayStatus.OK:
        figures["reserved"] += 1
        targets.append(host.peer_id)
    held: list[Stream] = []
    try:
        while trio.current_time() < end:
            if await reserve(host, relay) is RelayStatus.OK:
                figures["renewed"] += 1
            target = random.choice([t for t in targets if t != host.peer_id] or targets)
            try:
                with trio.fail_after(10):
                    stream, _ = await request_circuit(host, relay.peer_id, target)
            except (CircuitError, trio.TooSlowError):
                figures["circuits_refused"] += 1
                continue
            figures["circuits_opened"] += 1
            with contextlib.suppress(Exception):
                await stream.write(b"x" * 4096)
            if len(held) < 8 and random.random() < 0.25:
                held.append(stream)
            else:
                await stream.reset()
            await trio.sleep(0.02)
    finally:
        with trio.CancelScope(shield=True):
            for stream in held:
                with contextlib.suppress(Exception):
                    await stream.reset()


async def honest_exchange(source: P2PHost, relay: NodeProcess, target: str, text: bytes) -> None:
    """``source`` reaches ``target`` through ``relay`` and sends ``text`` (within 30 s)."""
    with trio.fail_after(30):
        stream, _ = await request_circuit(source, relay.peer_id, target)
        await stream.write(text)
        await stream.close()


async def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.05)


def chat_through(relay: NodeProcess, tmp_path: Path, nodes: list[NodeProcess]) -> HonestChat:
    """Two honest chat peers whose one connection runs through ``relay``: the receiver reserves
    a slot (before the attack: it comes from the attackers' address) and the sender knows
    nothing but its circuit address (no hole punching, no DHT)."""
    quiet = {"P2PCHAT_HOLEPUNCH__ENABLED": "false", "P2PCHAT_DHT__ENABLED": "false"}
    receiver = relayed_peer(
        tmp_path / "chat-receiver", nodes, P2PCHAT_AUTORELAY__RELAYS=relay.addr(), **quiet
    )
    circuit = f"{tcp_circuit(receiver, relay)}/p2p/{receiver.peer_id}"
    sender = start_node(
        tmp_path / "chat-sender", "--json", "--bootstrap", circuit, env=node_env(**quiet)
    )
    nodes.append(sender)
    wait_room_peers(sender, 1)
    wait_room_peers(receiver, 1)
    chat = HonestChat(sender, receiver)
    chat.warm_up()
    return chat


async def test_a_reservation_and_circuit_flood_leaves_the_relay_bounded_and_serving(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
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
    chat = chat_through(relay, tmp_path, nodes)
    before = {
        "ip_limit": relay.metric(RESERVATION_REJECTIONS, reason="ip_limit"),
        "renewed": relay.metric(RESERVATIONS, type="renewed"),
    }
    figures = dict.fromkeys(("reserved", "renewed", "circuits_opened", "circuits_refused"), 0)
    heard: list[bytes] = []
    honest_sent = 0
    with Footprint(relay.proc.pid) as footprint:
        chat.start(rate=5.0)
        async with (
            peers(tmp_path, "attacker", ATTACKERS, relay) as attackers,
            honest_host(tmp_path / "dst", relay) as destination,
        ):
            serve_stop(destination, heard.append)
            targets: list[str] = []
            end = trio.current_time() + ATTACK_SECONDS
            async with trio.open_nursery() as nursery:
                for host in attackers:
                    nursery.start_soon(attacker, host, relay, targets, figures, end)
                # The honest peer (another address group) reserves during the attack...
                await trio.sleep(1.0)
                assert await reserve(destination, relay) is RelayStatus.OK
                targets.append(destination.peer_id)
                # ... and another honest peer reaches it through the relay, again and again.
                async with honest_host(tmp_path / "src", relay) as source:
                    while trio.current_time() < end:
                        text = b"honest %d " % honest_sent + b"." * 64
                        await honest_exchange(source, relay, destination.peer_id, text)
                        honest_sent += 1
                        await trio.sleep(0.3)
                    await wait_for(
                        lambda: sum(d.startswith(b"honest") for d in heard) >= honest_sent
                    )
        delivery = await trio.to_thread.run_sync(chat.stop)
        await trio.to_thread.run_sync(footprint.assert_fds_back)
    honest_heard = sum(d.startswith(b"honest") for d in heard)
    refused = {
        reason: relay.metric(CONNECTION_REJECTIONS, reason=reason)
        for reason in ("circuit_limit", "source_share", "group_share", "no_reservation")
    }
    ip_limit = relay.metric(RESERVATION_REJECTIONS, reason="ip_limit") - before["ip_limit"]
    renewed = relay.metric(RESERVATIONS, type="renewed") - before["renewed"]
    report(
        f"relay reservation and circuit flood ({ATTACKERS} PeerIds from one address)",
        footprint,
        delivery,
        **figures,
        honest_circuits_reached=f"{honest_heard}/{honest_sent}",
        ip_limit_refusals=ip_limit,
        circuit_refusals=refused,
        circuits_relayed=relay.metric(CONNECTIONS, type="opened"),
    )
    assert relay.proc.poll() is None, "the relay died"
    footprint.assert_rss_below(footprint.baseline_rss_mib + RSS_MARGIN_MIB)
    # One address group holds 8 reservations (the honest chat peer reserved one first); the
    # other PeerIds were refused, each time.
    assert figures["reserved"] == 7, figures
    assert ip_limit >= ATTACKERS - 7
    assert renewed >= figures["renewed"] > 0
    assert figures["circuits_opened"] > 100, figures
    assert figures["circuits_refused"] > 0 and sum(refused.values()) > 0, refused
    # The honest peers were served throughout: every circuit reached the reserved one, and
    # the chat through the relay went on.
    assert honest_sent >= 5
    assert honest_heard == honest_sent
    assert chat.sent >= 10
    assert delivery >= MIN_DELIVERY, f"{chat.delivered} of {chat.sent} chat messages delivered"
    assert connection_kind(chat.sender, chat.receiver.peer_id) == "relayed"

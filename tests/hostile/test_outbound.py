"""Dials strangers cause, and relayed connections a relay brings: bounded (#18, gap 2).

A chat peer victim holds a reservation on a real ``p2pchat --role relay`` process whose
circuit limits are lifted (a relay decides what it delivers: the victim must not rely on it),
while two honest peers chat through the victim over direct connections.

- **Dials**: attacker PeerIds connect to the victim through the relay, each claiming 8
  addresses (listeners of the test that accept and never answer) and DCUtR: the victim, which
  received a relayed connection, dials every claimed address to go direct. py-libp2p bounds
  these dials only by the swarm's total (300, shared with inbound connections). By default
  ``direct_in_flight`` (32) bounds them and leaves the other outbound slots to the node's own
  dials; a small ``max_outbound`` (8) binds first, in flight and established together.
- **Relayed flood**: 30 attacker PeerIds open full connections (Noise, Yamux, identify) to the
  victim through the relay and hold them. Without a bound, the victim takes them all (the
  swarm does not count them; inbound admission never sees them). ``relayed_per_relay`` (8
  here) bounds them; a slot freed is given to the next.
- **Silent circuits from one PeerId**: circuits whose source never starts Noise. Two
  (``relayed_per_peer``) are taken, the next refused at its CONNECT; each is closed at the
  transient deadline and its slot given back.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
from p2pchat.node.p2p.circuit import CircuitError, request_circuit
from p2pchat.node.p2p.dial_admission import DialLimits

from tests.conftest import NodeProcess, node_env, start_node
from tests.hostile.harness import WAIT, Footprint, HonestChat, chat_peer, report
from tests.hostile.outbound_attacks import Circuits, Sinks, attackers, connect_through
from tests.test_host import wait_until

REFUSED = "p2pchat_connections_refused_total"
RSS_BOUND_MIB = 180.0  # a chat peer idles at ~110-120 MiB
MAX_OUTBOUND = 8
RELAYED_PER_RELAY = 8
# The relay delivers whatever it is asked to (its own per-peer limits lifted).
OPEN_RELAY = {
    "P2PCHAT_RELAY__MAX_CIRCUITS": "128",
    "P2PCHAT_RELAY__MAX_CIRCUITS_PER_SOURCE": "128",
    "P2PCHAT_RELAY__MAX_CIRCUITS_PER_SOURCE_GROUP": "128",
    "P2PCHAT_RELAY__CIRCUIT_DURATION": "3600",
    "P2PCHAT_RELAY__CIRCUIT_DATA": "67108864",
}


def relayed_victim(
    tmp_path: Path, nodes: list[NodeProcess], **env: str
) -> tuple[NodeProcess, NodeProcess]:
    """A relay, and a chat peer victim (P2PCHAT_* settings ``env``) holding a reservation
    on it."""
    relay = start_node(tmp_path / "relay", "--role", "relay", env=node_env(**OPEN_RELAY))
    nodes.append(relay)
    victim = chat_peer(
        tmp_path / "victim",
        nodes,
        dht=False,
        P2PCHAT_AUTORELAY__MODE="on",
        P2PCHAT_AUTORELAY__RELAYS=relay.addr(),
        **env,
    )
    deadline = time.monotonic() + WAIT
    while victim.metric("p2pchat_autorelay_reservations") < 1:
        assert time.monotonic() < deadline, "no reservation on the relay"
        time.sleep(0.1)
    return relay, victim


async def metric(node: NodeProcess, name: str, **labels: str) -> float:
    return await trio.to_thread.run_sync(lambda: node.metric(name, **labels))


@pytest.mark.parametrize(
    ("env", "bound", "reason"),
    [
        # Defaults: DCUtR's dials stop at direct_in_flight (32); the node's own dials keep
        # the other outbound slots (none is refused for the total).
        ({}, DialLimits().direct_in_flight, "direct_in_flight"),
        # A small total: it binds first (the victim's connection to the relay takes a slot).
        (
            {"P2PCHAT_CONNECTIONS__MAX_OUTBOUND": str(MAX_OUTBOUND)},
            MAX_OUTBOUND - 1,
            "outbound_total",
        ),
    ],
    ids=["defaults", "max_outbound"],
)
async def test_dials_a_stranger_asks_for_are_bounded(
    tmp_path: Path, nodes: list[NodeProcess], env: dict[str, str], bound: int, reason: str
) -> None:
    relay, victim = relayed_victim(tmp_path, nodes, **env)
    chat = HonestChat.through(victim, tmp_path, nodes)
    sinks = Sinks()
    tally = Circuits()
    count = 12  # x 8 addresses: 96 dials wanted at once
    async with trio.open_nursery() as nursery:
        await nursery.start(sinks.serve, 8)
        with Footprint(victim.proc.pid) as footprint:
            chat.start(rate=5.0)
            async with attackers(tmp_path, count, sinks.addrs, dcutr=True) as hosts:
                async with trio.open_nursery() as dialling:
                    for host in hosts:
                        dialling.start_soon(
                            connect_through,
                            host,
                            relay.addr(),
                            relay.peer_id,
                            victim.peer_id,
                            tally,
                        )
                # The victim dials (for 5 s, its direct-dial timeout), refused beyond its bound.
                await trio.sleep(8)
            delivery = await trio.to_thread.run_sync(chat.stop)
            refused = await metric(victim, REFUSED, reason=reason)
            total_refused = await metric(victim, REFUSED, reason="outbound_total")
            await wait_until(lambda: sinks.open == 0, timeout=60)
            footprint.assert_fds_back()
        nursery.cancel_scope.cancel()
    assert tally.connected == count, tally  # every stranger got its relayed connection
    assert sinks.accepted > 0  # the victim did dial what they claimed
    assert sinks.peak <= bound, sinks.peak
    assert refused > 0
    if reason == "direct_in_flight":
        assert total_refused == 0  # the node's own dials were never short of a slot
    assert delivery >= 0.99, f"{chat.delivered} of {chat.sent} delivered during the attack"
    footprint.assert_rss_below(RSS_BOUND_MIB)
    report(
        f"{count} PeerIds via a relay, each naming 8 silent addresses (DCUtR direct dial), "
        + ("defaults" if not env else f"max_outbound {MAX_OUTBOUND}"),
        footprint,
        delivery,
        dials_wanted=count * 8,
        dials_reached_sinks=sinks.accepted,
        peak_dials_in_flight=sinks.peak,
        **{f"refused_{reason}": refused},
    )


async def test_relayed_connections_are_bounded_per_relay(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    relay, victim = relayed_victim(
        tmp_path, nodes, P2PCHAT_CONNECTIONS__RELAYED_PER_RELAY=str(RELAYED_PER_RELAY)
    )
    chat = HonestChat.through(victim, tmp_path, nodes)
    first, late = Circuits(), Circuits()
    count = 30
    with Footprint(victim.proc.pid) as footprint:
        chat.start(rate=5.0)
        async with attackers(tmp_path, count) as hosts:
            async with trio.open_nursery() as dialling:
                for host in hosts:
                    dialling.start_soon(
                        connect_through, host, relay.addr(), relay.peer_id, victim.peer_id, first
                    )
            held = await metric(victim, REFUSED, reason="relayed_per_relay")
            # A slot given back is taken again: one attacker leaves, a late one gets in.
            connected = [h for h in hosts if h.is_connected(victim.peer_id)]
            await connected[0].disconnect(victim.peer_id)
            async with attackers(tmp_path / "late", 1) as (newcomer,):
                with trio.fail_after(60):
                    while not late.connected:
                        await connect_through(
                            newcomer, relay.addr(), relay.peer_id, victim.peer_id, late
                        )
                        await trio.sleep(0.5)
            await trio.sleep(3)
        delivery = await trio.to_thread.run_sync(chat.stop)
        footprint.assert_fds_back()
    assert first.connected + first.refused == count
    assert first.connected <= RELAYED_PER_RELAY, first
    assert held >= count - RELAYED_PER_RELAY
    assert delivery >= 0.99, f"{chat.delivered} of {chat.sent} delivered during the attack"
    footprint.assert_rss_below(RSS_BOUND_MIB)
    report(
        f"relayed flood: {count} PeerIds open full connections through one relay",
        footprint,
        delivery,
        relayed_connected=first.connected,
        refused_relayed_per_relay=held,
    )


async def test_silent_circuits_of_one_peer_are_bounded_and_cut_at_the_deadline(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    relay, victim = relayed_victim(tmp_path, nodes, P2PCHAT_CONNECTIONS__TRANSIENT_DEADLINE="4")
    chat = HonestChat.through(victim, tmp_path, nodes)
    with Footprint(victim.proc.pid) as footprint:
        chat.start(rate=5.0)
        async with attackers(tmp_path, 1) as (attacker,):
            await attacker.connect(relay.addr())
            held = [await request_circuit(attacker, relay.peer_id, victim.peer_id) for _ in "ab"]
            with pytest.raises(CircuitError):
                await request_circuit(attacker, relay.peer_id, victim.peer_id)
            per_peer = await metric(victim, REFUSED, reason="relayed_per_peer")
            with trio.fail_after(WAIT):
                while await metric(victim, REFUSED, reason="relayed_deadline") < 2:
                    await trio.sleep(0.2)
            # Both were cut at the deadline: their slots are back.
            again, _ = await request_circuit(attacker, relay.peer_id, victim.peer_id)
            for stream, _ in held:
                await stream.close()
            await again.close()
        delivery = await trio.to_thread.run_sync(chat.stop)
        footprint.assert_fds_back()
    assert per_peer == 1
    assert delivery >= 0.99, f"{chat.delivered} of {chat.sent} delivered during the attack"
    footprint.assert_rss_below(RSS_BOUND_MIB)
    report(
        "silent circuits from one PeerId (no Noise), transient deadline 4 s",
        footprint,
        delivery,
        refused_relayed_per_peer=per_peer,
        cut_relayed_deadline=2,
    )

"""Floods in rooms (#18) against a real chat peer: a validly signing sender and 20 sybils, a
flood within a wide-open budget against the history, junk subscriptions from many PeerIds,
GRAFT/PRUNE and IHAVE/IWANT floods.

Every test keeps two honest peers chatting through the victim (their only path to each other)
and asserts: the victim's RSS under a stated bound, its fds back once the attackers leave,
honest delivery >= 99% during the attack, and the metrics that counted the attack.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio

from tests.bench.chat import cpu_seconds
from tests.conftest import NodeProcess, node_env, start_node
from tests.hostile.harness import MIN_DELIVERY, Footprint, HonestChat, chat_peer, report
from tests.hostile.rooms_attacks import (
    attackers,
    control,
    flood_for,
    flood_rpcs,
    subscriptions,
    sybils,
)
from tests.test_archive_durability import served_ids
from tests.test_chat_attacks import ROOM
from tests.test_host import running_host

ATTACK_SECONDS = 10.0
RSS_SLACK_MIB = 60.0  # the victim's RSS may grow this much over its baseline during an attack
HONEST_RATE = 5.0


# Negative controls: ROOMS_VICTIM_ENV="P2PCHAT_PUBSUB__SCORING=false,..." overrides the victim's
# settings (the limit under test turned off, the test must fail).
OVERRIDES = dict(
    item.split("=", 1) for item in os.environ.get("ROOMS_VICTIM_ENV", "").split(",") if item
)


def victim_peer(path: Path, nodes: list[NodeProcess], **settings: str) -> NodeProcess:
    return chat_peer(path, nodes, **{**settings, **OVERRIDES})


def dropped(victim: NodeProcess, reason: str) -> float:
    return victim.metric("p2pchat_messages_dropped_total", reason=reason)


def control_dropped(victim: NodeProcess, limit: str) -> float:
    return victim.metric("p2pchat_pubsub_control_dropped_total", limit=limit)


def stored_texts(victim: NodeProcess) -> list[str]:
    """The texts of the victim's room history (``/history``), oldest first."""
    victim.drain_events()
    victim.say("/history 5000")
    texts: list[str] = []
    while True:
        event = victim.next_event(
            lambda e: e["type"] == "history_end" or (e["type"] == "message" and e["history"]),
            timeout=60,
        )
        if event["type"] == "history_end":
            return texts
        texts.append(event["text"])


async def test_a_flooding_sender_and_20_sybils_get_their_budget_and_are_graylisted(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    victim = victim_peer(tmp_path / "victim", nodes)
    chat = HonestChat.through(victim, tmp_path, nodes)
    honest_before = chat.receiver.metric("p2pchat_messages_received_total")
    cpu_before = cpu_seconds(victim)
    with Footprint(victim.proc.pid) as footprint:
        async with attackers(tmp_path, victim.addr(), victim.peer_id) as [mallory]:
            signers = [mallory.identity, *sybils(tmp_path, 20)]
            rpcs = list(flood_rpcs(signers, per_signer=500))  # 10,500 signed messages
            chat.start(rate=HONEST_RATE)
            written = await flood_for(mallory, rpcs, ATTACK_SECONDS)
            await trio.sleep(1)
            graylisted = victim.metric("p2pchat_pubsub_graylisted_peers")
        delivery = await trio.to_thread.run_sync(chat.stop)
    victim_cpu_s = round(cpu_seconds(victim) - cpu_before, 2)
    received = victim.metric("p2pchat_messages_received_total")
    flood_stored = received - chat.sent - 1  # all but the honest ones (and the warm-up)
    forwarded = chat.receiver.metric("p2pchat_messages_received_total") - honest_before
    flood_forwarded = forwarded - chat.delivered
    # The budget's bound: each sender its burst plus its rate for the attack; new senders (all
    # through one forwarder) at most 20 at once plus 2 per second.
    seconds = ATTACK_SECONDS + 2
    senders = min(len(signers), 20 + 2 * seconds)
    budget_bound = senders * (50 + 5 * seconds)
    report(
        "room flood: 1 sender + 20 sybils",
        footprint,
        delivery,
        victim_cpu_s=victim_cpu_s,
        offered=written * 50,
        flood_stored=flood_stored,
        flood_forwarded=flood_forwarded,
        dropped_flood=dropped(victim, "flood"),
        dropped_new_senders=dropped(victim, "flood_new_senders"),
        ignored_graylisted=control_dropped(victim, "graylisted"),
    )
    assert written * 50 >= 2000, "the attacker could not even send its flood"
    assert delivery >= MIN_DELIVERY, f"{chat.delivered} of {chat.sent} honest messages"
    assert flood_stored <= budget_bound
    assert flood_stored < written * 50 / 4  # most of the flood never got in
    assert flood_forwarded <= flood_stored  # only what the victim admitted went on
    assert dropped(victim, "flood") + dropped(victim, "flood_new_senders") > 0
    assert victim.metric("p2pchat_pubsub_penalties_total", reason="flood") > 0
    assert graylisted >= 1  # the flooder: everything it sends is ignored now
    assert control_dropped(victim, "graylisted") > 0
    footprint.assert_rss_below(footprint.baseline_rss_mib + RSS_SLACK_MIB)
    footprint.assert_fds_back()


async def test_a_flood_within_its_budget_cannot_push_honest_history_out(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # Defence in depth: with the budget wide open and scoring off, one sender's flood fills the
    # room's history past its cap; the largest holder pays, the honest messages stay.
    victim = victim_peer(
        tmp_path / "victim",
        nodes,
        P2PCHAT_PUBSUB__SENDER_RATE="100000",
        P2PCHAT_PUBSUB__SENDER_BURST="1000000",
        P2PCHAT_PUBSUB__SCORING="false",
        P2PCHAT_CHAT__HISTORY_MAX_MESSAGES="200",
        P2PCHAT_CHAT__HISTORY_SENDER_SHARE="0.1",
    )
    chat = HonestChat.through(victim, tmp_path, nodes)
    cpu_before = cpu_seconds(victim)
    with Footprint(victim.proc.pid) as footprint:
        async with attackers(tmp_path, victim.addr(), victim.peer_id) as [mallory]:
            rpcs = list(flood_rpcs([mallory.identity], per_signer=800, per_rpc=10))
            chat.start(rate=2.0)
            await trio.sleep(2)  # honest messages first: the oldest, the first to go
            await flood_for(mallory, rpcs, ATTACK_SECONDS)  # 80 msg/s, 4x the room's cap
            await trio.sleep(2)
        delivery = await trio.to_thread.run_sync(chat.stop)
    victim_cpu_s = round(cpu_seconds(victim) - cpu_before, 2)
    texts = await trio.to_thread.run_sync(stored_texts, victim)
    honest = [text for text in texts if text.startswith("honest ") or text == "warm-up"]
    report(
        "room flood within budget vs history (cap 200)",
        footprint,
        delivery,
        victim_cpu_s=victim_cpu_s,
        stored=len(texts),
        honest_stored=len(honest),
        honest_sent=chat.sent + 1,
    )
    assert delivery >= MIN_DELIVERY
    assert sum(text.startswith("flood ") for text in texts) > 100  # the flood did fill it
    assert len(honest) == chat.sent + 1, "honest messages were pushed out of the history"
    footprint.assert_rss_below(footprint.baseline_rss_mib + RSS_SLACK_MIB)
    footprint.assert_fds_back()


async def test_junk_subscriptions_from_many_peer_ids_are_bounded(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    victim = victim_peer(tmp_path / "victim", nodes)
    chat = HonestChat.through(victim, tmp_path, nodes)
    cpu_before = cpu_seconds(victim)
    with Footprint(victim.proc.pid) as footprint:
        async with attackers(tmp_path, victim.addr(), victim.peer_id, count=8) as crew:
            chat.start(rate=HONEST_RATE)
            deadline = time.monotonic() + ATTACK_SECONDS
            round_ = 0
            while time.monotonic() < deadline:
                for n, attacker in enumerate(crew):
                    junk = [f"junk-{n}-{round_}-{i}" for i in range(500)]
                    await attacker.send(subscriptions(junk))
                    await attacker.send(subscriptions(junk, subscribe=False))
                round_ += 1
                await trio.sleep(0.05)
            topics_dropped = control_dropped(victim, "subscriptions_per_peer")
            topics_dropped += control_dropped(victim, "topics_total")
        delivery = await trio.to_thread.run_sync(chat.stop)
    victim_cpu_s = round(cpu_seconds(victim) - cpu_before, 2)
    report(
        "junk subscriptions: 8 PeerIds x 500 topics, churned",
        footprint,
        delivery,
        victim_cpu_s=victim_cpu_s,
        offered=round_ * len(crew) * 1000,
        ignored=topics_dropped,
        graylisted=control_dropped(victim, "graylisted"),
    )
    assert delivery >= MIN_DELIVERY
    assert topics_dropped > 0
    assert victim.metric("p2pchat_pubsub_penalties_total", reason="control_flood") > 0
    footprint.assert_rss_below(footprint.baseline_rss_mib + RSS_SLACK_MIB)
    footprint.assert_fds_back()


async def test_graft_prune_ihave_and_iwant_floods_are_bounded(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    victim = victim_peer(tmp_path / "victim", nodes)
    chat = HonestChat.through(victim, tmp_path, nodes)
    ids = [os.urandom(20) for _ in range(5000)]
    cpu_before = cpu_seconds(victim)
    with Footprint(victim.proc.pid) as footprint:
        async with attackers(tmp_path, victim.addr(), victim.peer_id) as [mallory]:
            chat.start(rate=HONEST_RATE)
            deadline = time.monotonic() + ATTACK_SECONDS
            sent = 0
            while time.monotonic() < deadline:
                junk = [f"junk-{sent}-{i}" for i in range(50)]
                flood = control(
                    graft=[ROOM] * 100 + junk,
                    prune=[ROOM] * 100 + junk,
                    ihave={ROOM: ids},
                    iwant=ids,
                )
                if not await mallory.send(flood):
                    break
                sent += 1
                await trio.sleep(0.02)
            graylisted = victim.metric("p2pchat_pubsub_graylisted_peers")
        delivery = await trio.to_thread.run_sync(chat.stop)
    victim_cpu_s = round(cpu_seconds(victim) - cpu_before, 2)
    limits = (
        "graft_prune",
        "ihave_messages",
        "ihave_ids",
        "iwant_ids",
        "graylisted",
    )
    counted = {limit: control_dropped(victim, limit) for limit in limits}
    report(
        "GRAFT/PRUNE/IHAVE/IWANT flood",
        footprint,
        delivery,
        victim_cpu_s=victim_cpu_s,
        rpcs=sent,
        **{f"ignored_{limit}": value for limit, value in counted.items()},
    )
    assert delivery >= MIN_DELIVERY
    assert counted["graft_prune"] > 0 and counted["iwant_ids"] > 0
    assert counted["ihave_ids"] + counted["ihave_messages"] > 0
    assert graylisted >= 1 and counted["graylisted"] > 0
    footprint.assert_rss_below(footprint.baseline_rss_mib + RSS_SLACK_MIB)
    footprint.assert_fds_back()


async def test_an_archiver_applies_the_budget_and_keeps_archiving_honest_messages(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    archiver = start_node(tmp_path / "archiver", "--role", "archiver", env=node_env(**OVERRIDES))
    nodes.append(archiver)
    honest = start_node(
        tmp_path / "honest",
        "--json",
        "--bootstrap",
        archiver.addr(),
        env=node_env(P2PCHAT_DHT__ENABLED="false"),
    )
    nodes.append(honest)
    honest.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    deadline = time.monotonic() + 60
    while honest.metric("p2pchat_room_infrastructure_peers") < 1:
        assert time.monotonic() < deadline, "the honest peer never saw the archiver in its room"
        await trio.sleep(0.2)
    said = 0
    cpu_before = cpu_seconds(archiver)
    with Footprint(archiver.proc.pid) as footprint:
        async with attackers(tmp_path, archiver.addr(), archiver.peer_id) as [mallory]:
            signers = [mallory.identity, *sybils(tmp_path, 20)]
            rpcs = list(flood_rpcs(signers, per_signer=400))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood_for, mallory, rpcs, ATTACK_SECONDS)
                while said < ATTACK_SECONDS * HONEST_RATE:
                    honest.say(f"honest {said}")
                    said += 1
                    await trio.sleep(1 / HONEST_RATE)
        honest_ids = {
            bytes.fromhex(event["id"])
            for event in [
                await trio.to_thread.run_sync(
                    lambda: honest.next_event(lambda e: e["type"] == "message" and e["own"])
                )
                for _ in range(said)
            ]
        }
        await trio.sleep(3)  # the archiver's last writes
        async with running_host(tmp_path / "reader") as (reader, _):
            archived = await served_ids(reader, archiver)
    held = archiver.metric("p2pchat_archive_messages")
    flood_dropped = archiver.metric("p2pchat_archive_dropped_total", reason="flood")
    flood_dropped += archiver.metric("p2pchat_archive_dropped_total", reason="flood_new_senders")
    seconds = ATTACK_SECONDS + 4
    budget_bound = min(len(signers), 20 + 2 * seconds) * (50 + 5 * seconds)
    report(
        "room flood at an archiver: 1 sender + 20 sybils",
        footprint,
        None,
        victim_cpu_s=round(cpu_seconds(archiver) - cpu_before, 2),
        offered=len(rpcs) * 50,
        archived=held,
        honest_said=said,
        dropped_flood=flood_dropped,
    )
    missing = len(honest_ids - archived)
    assert not missing, f"{missing} of {len(honest_ids)} honest messages went unarchived"
    assert flood_dropped > 0
    assert held - said <= budget_bound
    assert held - said < len(rpcs) * 50 / 4
    footprint.assert_rss_below(footprint.baseline_rss_mib + RSS_SLACK_MIB)
    footprint.assert_fds_back()

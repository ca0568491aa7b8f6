"""Catch-up flooded by sybils (#18): a hostile history source serves a returning chat peer a
backlog dominated by sybil senders, and one big sender; the honest history stays.

The source is a real ``p2pchat`` archiver whose store a flooder filled (genuine signed messages
of 200 sybil PeerIds, 10 each, and one PeerId's 500, all newer than the honest ones): it serves
them as an honest archiver would, so every message verifies. The victim is a real chat peer
coming back with 60 messages of Alice's in its history and a cap of 200 messages, while two
honest peers chat through it; the source connects to it, which starts a catch-up. Asserted:
every honest message (the 60 held and the 5 Alice sent while the victim was away) is in the
victim's ``/history``, the room is within its cap, the refusals are counted by reason, honest
delivery through the victim stays >= 99%, its RSS stays under its bound and its fds come
back. Before the charge (the negative control), the catch-up stored all 2,505 new messages and
the trim that followed left 5 of Alice's 65.

Then a source reconnecting: an in-process source serving sybils' genuine messages connects,
is caught up from, disconnects, and again, 8 times; each time a catch-up. Charged per source
(``history.catchup_source_share``), only the first brings newcomers' messages and Alice's
history stays whole; the negative control (the share at 1, a whole cap a day) runs beside it
and shows the trim cutting Alice's.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from p2pchat.node.history import History, StoredMessage
from p2pchat.node.p2p.host import HostSettings, P2PHost, QuietObserver
from p2pchat.node.p2p.identity import ephemeral_identity
from p2pchat.node.p2p.streams import Stream, StreamEnded, read_frame
from p2pchat.node.store import Store
from p2pchat.node.store_server import answer
from p2pchat.node.wire.framing import FrameDecoder
from p2pchat.node.wire.store_query import MAX_QUERY_BYTES, PROTOCOL_ID, decode_query, encode_reply

from tests.conftest import NodeProcess, node_env, start_node
from tests.history_fixtures import ROOM, fill_store, make_messages, signed_message, signer
from tests.hostile.harness import MIN_DELIVERY, WAIT, Footprint, HonestChat, chat_peer, report
from tests.test_archive import history_texts

CAP = 200  # the victim's chat.history_max_messages: a sender's share is 20, newcomers' 20
HELD = 60  # Alice's messages the victim comes back with
AWAY = 5  # Alice's messages sent while it was away
SYBILS = 200
EACH = 10
BIG = 500
RSS_BOUND_MIB = 200.0


def _flood(first_ms: int) -> list[StoredMessage]:
    """SYBILS senders' EACH messages, interleaved, and one sender's BIG, from ``first_ms``."""
    sybils = [ephemeral_identity() for _ in range(SYBILS)]
    flood = [
        signed_message(sybil, ROOM, 1000 + n, first_ms + (n * SYBILS + s) * 10)
        for n in range(EACH)
        for s, sybil in enumerate(sybils)
    ]
    big = ephemeral_identity()
    flood += make_messages(big, ROOM, BIG, first_id=1000, first_ms=first_ms + 5, step_ms=7)
    return flood


def test_sybils_served_by_catch_up_cannot_push_the_honest_history_out(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    now = int(time.time() * 1000)
    alice = signer(tmp_path / "alice")
    held = make_messages(alice, ROOM, HELD, first_ms=now - 7_200_000)
    # Sent in the last few minutes: the live chat makes the victim's newest message "now", and
    # a catch-up asks from history.catchup_overlap_seconds (300) before its newest.
    away = make_messages(alice, ROOM, AWAY, first_id=HELD + 1, first_ms=now - 100_000)
    fill_store(tmp_path / "victim", held)
    fill_store(tmp_path / "source", held + _flood(now - 200_000) + away)
    victim = chat_peer(
        tmp_path / "victim",
        nodes,
        dht=False,
        P2PCHAT_CHAT__HISTORY_MAX_MESSAGES=str(CAP),
    )
    chat = HonestChat.through(victim, tmp_path, nodes)
    with Footprint(victim.proc.pid) as footprint:
        chat.start()
        source = start_node(
            tmp_path / "source",
            "--role",
            "archiver",
            "--bootstrap",
            victim.addr(),
            env=node_env(P2PCHAT_DHT__ENABLED="false"),
        )
        nodes.append(source)
        event = victim.next_event(
            lambda e: e["type"] == "caught_up" and source.peer_id in e["sources"], timeout=WAIT
        )
        texts = history_texts(victim, CAP + 10)
        delivery = chat.stop()
    source.stop()
    footprint.assert_fds_back()
    honest = [f"message {n}" for n in range(1, HELD + AWAY + 1)]
    kept = sum(text in texts for text in honest)
    refused = {
        reason: victim.metric("p2pchat_history_catchup_refused_total", reason=reason)
        for reason in ("sender_share", "newcomers")
    }
    report(
        "catch-up: 200 sybils x 10 + 1 sender x 500 served to a returning peer (cap 200)",
        footprint,
        delivery,
        honest_kept=f"{kept}/{len(honest)}",
        stored=event["count"],
        history=len(texts),
        refused=refused,
    )
    assert kept == len(honest), f"honest messages pushed out: {len(honest) - kept}"
    assert len(texts) <= CAP
    # The big sender brought its share (20) and no more; the newcomers (200 sybils and it)
    # shared 10% of the cap: 20, one each.
    assert refused == {"sender_share": BIG - 20, "newcomers": SYBILS * EACH + 20 - 20}
    assert event["count"] == AWAY + 20
    assert delivery >= MIN_DELIVERY
    footprint.assert_rss_below(RSS_BOUND_MIB)


# The reconnecting source (#18): every connection of a source starts a catch-up.
RECONNECT_CAP = 1000  # a sender's share and the newcomers' share per catch-up: 100 each
RECONNECT_HELD = 300  # Alice's: over her share, so the trim's first choice
RECONNECTS = 8


@asynccontextmanager
async def hostile_source(data_dir: Path) -> AsyncIterator[P2PHost]:
    """An in-process history source serving the store in ``data_dir`` as an honest archiver
    would (every message genuine and signed): what makes it hostile is whom it serves and how
    often it comes back."""
    store = Store.open(data_dir / "store")
    history = History(store)
    host = P2PHost(
        ephemeral_identity(), HostSettings(listen=["/ip4/127.0.0.1/tcp/0"]), QuietObserver()
    )

    async def serve(stream: Stream) -> None:
        decoder = FrameDecoder(MAX_QUERY_BYTES)
        while True:
            try:
                query = decode_query(await read_frame(stream, decoder))
            except StreamEnded:
                return
            await stream.write(encode_reply(answer(history, query)))

    try:
        async with host.run():
            host.set_stream_handler(PROTOCOL_ID, serve)
            yield host
    finally:
        store.close()


def _caught_up_from(node: NodeProcess, source: str, timeout: float = WAIT) -> dict[str, object]:
    """The victim's next "history caught up" log line naming ``source`` (lines consumed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = node.lines.get(timeout=0.2)
        except queue.Empty:
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        node.log.append(entry)
        if entry.get("event") == "history caught up" and source in entry.get("sources", ()):
            return entry
    raise AssertionError(f"no catch-up from {source} within {timeout}s")


@pytest.mark.parametrize("limited", [True, False], ids=["limited", "negative-control"])
async def test_a_source_reconnecting_cannot_bring_newcomers_again_and_again(
    tmp_path: Path, nodes: list[NodeProcess], limited: bool
) -> None:
    now = int(time.time() * 1000)
    alice = signer(tmp_path / "alice")
    held = make_messages(alice, ROOM, RECONNECT_HELD, first_ms=now - 7_200_000)
    fill_store(tmp_path / "victim", held)
    fill_store(tmp_path / "source", held + _flood(now - 200_000)[: SYBILS * EACH])
    victim = chat_peer(
        tmp_path / "victim",
        nodes,
        dht=False,
        P2PCHAT_CHAT__HISTORY_MAX_MESSAGES=str(RECONNECT_CAP),
        # The negative control: a source may bring the whole cap a day, as if unlimited.
        P2PCHAT_HISTORY__CATCHUP_SOURCE_SHARE="0.1" if limited else "1",
    )
    chat = HonestChat.through(victim, tmp_path, nodes)
    with Footprint(victim.proc.pid) as footprint:
        chat.start()
        async with hostile_source(tmp_path / "source") as source:
            for _ in range(RECONNECTS):
                await source.connect(victim.addr())
                await trio.to_thread.run_sync(_caught_up_from, victim, source.peer_id)
                await source.disconnect(victim.peer_id)
        texts = history_texts(victim, RECONNECT_CAP + 10)
        delivery = chat.stop()
    footprint.assert_fds_back()
    kept = sum(f"message {n}" in texts for n in range(1, RECONNECT_HELD + 1))
    refused = {
        reason: victim.metric("p2pchat_history_catchup_refused_total", reason=reason)
        for reason in ("newcomers", "source")
    }
    report(
        f"catch-up: a source reconnecting {RECONNECTS} times, each serving 200 sybils' "
        f"messages (cap {RECONNECT_CAP}){'' if limited else ' [negative control]'}",
        footprint,
        delivery,
        honest_kept=f"{kept}/{RECONNECT_HELD}",
        history=len(texts),
        refused=refused,
    )
    if not limited:  # each catch-up brought the newcomers' 100; over the cap, Alice was cut
        assert kept < RECONNECT_HELD and refused["source"] == 0
        return
    assert kept == RECONNECT_HELD, f"honest messages pushed out: {RECONNECT_HELD - kept}"
    # The first catch-up brought the newcomers' 100; each later one none of its 100.
    assert refused["source"] == (RECONNECTS - 1) * 100
    assert len(texts) <= RECONNECT_CAP
    assert delivery >= MIN_DELIVERY
    footprint.assert_rss_below(RSS_BOUND_MIB)

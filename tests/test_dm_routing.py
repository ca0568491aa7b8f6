"""Direct messages to peers that are not connected, and to peers that do not answer, between
real ``p2pchat --json`` processes on 127.0.0.1 (issue #19): a recipient known only to a
bootstrap node is found through the DHT's peer routing and dialled; a recipient that is
connected but does not answer (a stopped process) delays no message to another peer, and its
own messages arrive in the order they were sent once it answers again."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio
from p2pchat.node.p2p.host import HostSettings, P2PHost, QuietObserver, Stream
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.wire import dm

from tests.conftest import NodeProcess, node_env, start_node, wait_metric
from tests.hostile.harness import Footprint, report
from tests.test_dm import WAIT, connected, direct_from, msg
from tests.test_json_contract import answer, chat_peer

RSS_BOUND_MIB = 200  # the victim's; a chat peer idles near 125 MiB


def test_msg_reaches_a_peer_known_only_to_a_bootstrap_through_the_dht_even_after_it_moved(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    bootstrap = start_node(tmp_path / "bootstrap", "--role", "bootstrap", env=node_env())
    nodes.append(bootstrap)
    # Different rooms: A and B never meet through room rendezvous; each knows only the
    # bootstrap, and mDNS is off (node_env).
    a, _ = chat_peer(tmp_path / "a", nodes, "--bootstrap", bootstrap.addr(), "--room", "ra")
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", bootstrap.addr(), "--room", "rb")
    connected(a, bootstrap)
    connected(b, bootstrap)
    # A's lookup starts from its routing table (the bootstrap, once identify showed it serving
    # the DHT); the bootstrap names B once it knows B's addresses (B announced its room there).
    wait_metric(a, "p2pchat_dht_routing_table_peers", 1)
    wait_metric(b, "p2pchat_rendezvous_provides_total", 1, outcome="accepted")
    assert not any(e["type"] == "connection" and e["peer"] == b.peer_id for e in a.chat), (
        "A met B before the DHT lookup"
    )

    found = msg(a, b.peer_id, "found you", 1)
    assert found["kind"] == "dm_delivered", found
    direct_from(b, a.peer_id, "found you")
    assert a.metric("p2pchat_dm_peer_lookups_total", outcome="found") == 1
    # And back, over the connection the lookup opened.
    assert msg(b, a.peer_id, "so you did", 2)["kind"] == "dm_delivered"
    direct_from(a, b.peer_id, "so you did")

    # B goes away: a message to it waits. B comes back at another port, connected to the
    # bootstrap only: A's retry pass looks it up again and delivers the message.
    assert b.stop() == 0
    nodes.remove(b)
    waiting = msg(a, b.peer_id, "welcome back", 3)
    assert waiting["kind"] == "dm_waiting", waiting
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", bootstrap.addr(), "--room", "rb")
    direct_from(b, a.peer_id, "welcome back")
    delivered = a.next_event(
        lambda e: (
            e["type"] == "notice"
            and e["kind"] == "dm_delivered"
            and e["data"]["id"] == waiting["data"]["id"]
        ),
        timeout=WAIT,
    )
    assert delivered["data"]["peer"] == b.peer_id
    assert a.metric("p2pchat_dm_peer_lookups_total", outcome="found") == 2


def test_msg_to_a_peer_nobody_knows_waits_after_a_bounded_lookup(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    bootstrap = start_node(tmp_path / "bootstrap", "--role", "bootstrap", env=node_env())
    nodes.append(bootstrap)
    a, _ = chat_peer(tmp_path / "a", nodes, "--bootstrap", bootstrap.addr())
    connected(a, bootstrap)
    nobody = "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
    waiting = msg(a, nobody, "anyone?", 1)
    assert waiting["kind"] == "dm_waiting", waiting
    # The lookup asked the bootstrap, which does not know the peer; it ended within its bound.
    wait_metric(a, "p2pchat_dm_peer_lookups_total", 1, outcome="not_found")


async def test_a_peer_that_never_answers_delays_no_message_to_another_peer(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a, _ = chat_peer(tmp_path / "a", nodes)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    connected(a, b)
    # Mallory, connected to A, takes every key-bundle stream and never answers: an exchange
    # with it lasts until its deadline (dm.SEND_SECONDS, 30 s), the connection staying up.
    mallory = load_or_create_identity(tmp_path / "mallory")
    host = P2PHost(mallory, HostSettings(listen=["/ip4/127.0.0.1/tcp/0"]), QuietObserver())
    held: list[Stream] = []

    async def hold(stream: Stream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    host.set_stream_handler(dm.KEYS_PROTOCOL_ID, hold)
    honest = 5
    with Footprint(a.proc.pid) as footprint:
        async with host.run(listen=False):
            await host.connect(a.addr())
            with trio.fail_after(3 * WAIT):
                first = await trio.to_thread.run_sync(msg, a, mallory.peer_id_text, "m", 1)
                assert first["kind"] == "dm_waiting", first
                assert held, "A never asked mallory for its keys"
                # Mallory's exchange still runs (answered "waiting" after 10 s, it goes on):
                # B's messages do not wait for it. With one lock for every peer (the negative
                # control), B's first waited until mallory's deadline, 20 s more: "waiting".
                outcomes = []
                for n in range(honest):
                    to_b = await trio.to_thread.run_sync(msg, a, b.peer_id, f"b {n}", 2 + n)
                    outcomes.append(to_b["kind"])
                    await trio.to_thread.run_sync(direct_from, b, a.peer_id, f"b {n}")
                assert outcomes == ["dm_delivered"] * honest, outcomes
                assert len(held) == 1  # one exchange with mallory at a time, in its queue
        footprint.assert_fds_back()
    report(
        "dm: a recipient that never answers",
        footprint,
        outcomes.count("dm_delivered") / honest,
        silent_exchanges=len(held),
    )
    footprint.assert_rss_below(RSS_BOUND_MIB)


def test_an_unanswering_peer_delays_no_other_peer_and_its_messages_keep_their_order(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a, _ = chat_peer(tmp_path / "a", nodes)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    c, _ = chat_peer(tmp_path / "c", nodes, "--bootstrap", a.addr())
    connected(a, b)
    connected(a, c)
    # C stops answering: its process is stopped, its connection to A stays open (the kernel
    # still takes A's bytes), so every exchange with it hangs until its deadline.
    os.kill(c.proc.pid, signal.SIGSTOP)
    try:
        first = msg(a, c.peer_id, "c one", 1)
        assert first["kind"] == "dm_waiting", first
        # C's exchange is still running (the /msg answer came first, after its 10 s): B's
        # message does not wait for it. With one lock for every peer, B's waited until C's
        # deadline (30 s), past the answer's wait: "waiting" (the negative control).
        assert msg(a, b.peer_id, "b meanwhile", 2)["kind"] == "dm_delivered"
        direct_from(b, a.peer_id, "b meanwhile")
        second = msg(a, c.peer_id, "c two", 3)
        assert second["kind"] == "dm_waiting", second
    finally:
        os.kill(c.proc.pid, signal.SIGCONT)
    # C answers again: its two messages arrive, in the order they were sent.
    got = c.next_event(lambda e: e["type"] == "direct", timeout=3 * WAIT)
    assert got["text"] == "c one", got
    got = c.next_event(lambda e: e["type"] == "direct", timeout=3 * WAIT)
    assert got["text"] == "c two", got
    for ident in (first["data"]["id"], second["data"]["id"]):
        a.next_event(
            lambda e, i=ident: (
                e["type"] == "notice" and e["kind"] == "dm_delivered" and e["data"]["id"] == i
            ),
            timeout=3 * WAIT,
        )
    assert answer(a, {"id": "x", "line": "/info"})[-1]["ok"] is True


def test_a_waiting_message_survives_a_restart_of_its_sender(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a, _ = chat_peer(tmp_path / "a", nodes)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    connected(a, b)
    assert msg(a, b.peer_id, "hello", 1)["kind"] == "dm_delivered"
    assert b.stop() == 0
    nodes.remove(b)
    waiting = msg(a, b.peer_id, "kept for you", 2)
    assert waiting["kind"] == "dm_waiting", waiting
    # A stops with the message waiting, and starts again (another port): it still has it.
    assert a.stop() == 0
    nodes.remove(a)
    a, _ = chat_peer(tmp_path / "a", nodes)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    connected(a, b)
    direct_from(b, a.peer_id, "kept for you")
    delivered = a.next_event(
        lambda e: e["type"] == "notice" and e["kind"] == "dm_delivered", timeout=WAIT
    )
    assert delivered["data"]["id"] == waiting["data"]["id"]
    # Delivered, it is gone from the store: the next start sends nothing again.
    assert a.stop() == 0 and b.stop() == 0
    nodes.clear()
    a, _ = chat_peer(tmp_path / "a", nodes)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    connected(a, b)
    assert msg(a, b.peer_id, "and again", 3)["kind"] == "dm_delivered"
    direct_from(b, a.peer_id, "and again")
    texts = [e["text"] for e in b.chat if e["type"] == "direct"]
    assert texts == ["and again"], texts

"""Unlinkable mailbox requests between real ``p2pchat`` processes on 127.0.0.1 (issue #19,
``mailbox.unlinkable``): every deposit and fetch comes from a throwaway identity, so the
archiver never sees the sender's nor the recipient's PeerId; with it off, it sees both (the
negative control). And the archiver's per-address-group bounds hold a flood of deposits and
fetches from 50 fresh PeerIds, which its per-PeerId bounds cannot."""

from __future__ import annotations

import time
from pathlib import Path

import nacl.signing
import pytest
import trio
from p2pchat.node.p2p.peer_keys import peer_id_bytes
from p2pchat.node.p2p.streams import read_frame_within
from p2pchat.node.p2p.throwaway import Throwaway
from p2pchat.node.wire import mailbox
from p2pchat.node.wire.framing import FrameDecoder, frame

from tests.conftest import NodeProcess, node_env, start_node
from tests.test_dm import WAIT, connected, direct_from, msg
from tests.test_dm_mailbox import NO_ROOM, archiver, deposited, wait_metric


def _chat_peer(
    path: Path, nodes: list[NodeProcess], env: dict[str, str], *args: str
) -> NodeProcess:
    node = start_node(path, "--json", *args, env=node_env(**env))
    nodes.append(node)
    node.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    return node


def _seen_by(archived: NodeProcess, peer: str) -> list[str]:
    """Where the archiver shows ``peer``: its log lines naming it, its data dir's files holding
    it (text or binary)."""
    lines = [line for line in archived.raw_stderr if peer in line]
    secrets = [peer.encode(), peer_id_bytes(peer)]
    files = [
        str(path)
        for path in archived.data_dir.rglob("*")
        if path.is_file() and any(s in path.read_bytes() for s in secrets)
    ]
    return lines + files


@pytest.mark.parametrize("unlinkable", [True, False], ids=["unlinkable", "own-identity"])
def test_the_archiver_never_sees_sender_nor_recipient(
    tmp_path: Path, nodes: list[NodeProcess], unlinkable: bool
) -> None:
    """A and B meet without the archiver (B bootstraps through A; the archiver is only in
    their ``mailbox.archivers``); B stops; A's /msg is deposited; A stops; B returns and
    fetches it: shown exactly once. Unlinkable (the default): the archiver's log (it names
    every peer that connects) and data dir never name A nor B, while it logged the throwaway
    connections. Off (the negative control): it names both."""
    x = archiver(tmp_path / "x", nodes)
    env = {
        "P2PCHAT_MAILBOX__ARCHIVERS": x.addr(),
        "P2PCHAT_MAILBOX__UNLINKABLE": str(unlinkable).lower(),
    }
    a = _chat_peer(tmp_path / "a", nodes, env)
    b = _chat_peer(tmp_path / "b", nodes, env, "--bootstrap", a.addr())
    connected(a, b)
    assert msg(a, b.peer_id, "hello while you are here", 1)["kind"] == "dm_delivered"
    direct_from(b, a.peer_id, "hello while you are here")
    sender, recipient = a.peer_id, b.peer_id
    assert b.stop() == 0
    nodes.remove(b)
    text = "deposited from nobody, for nobody"
    waiting = deposited(a, msg(a, recipient, text, 2))
    assert waiting["kind"] == "dm_waiting" and waiting["data"]["deposited"] == 1, waiting
    wait_metric(x, "p2pchat_mailbox_letters", 1)
    routed = a.metric("p2pchat_dm_mail_routes_total", outcome="ok")
    assert a.stop() == 0
    nodes.remove(a)
    b = _chat_peer(tmp_path / "b", nodes, env)  # no bootstrap: the archiver only
    assert b.peer_id == recipient
    direct_from(b, sender, text)
    wait_metric(x, "p2pchat_mailbox_letters", 0)  # read and deleted
    time.sleep(1.0)  # the last delete's connection logged too
    assert [e["text"] for e in b.drain_events() if e["type"] == "direct"] == [text]
    assert b.metric("p2pchat_dm_received_total") == 1
    connections = [line for line in x.raw_stderr if "peer connected" in line]
    if unlinkable:
        assert routed >= 1
        assert b.metric("p2pchat_dm_mail_routes_total", outcome="ok") >= 2  # read, delete
        assert len(connections) >= 3, connections  # a deposit, a read, a delete
        assert _seen_by(x, sender) == []
        assert _seen_by(x, recipient) == []
    else:
        assert routed == 0
        assert _seen_by(x, sender) and _seen_by(x, recipient)
        assert any(sender in line for line in connections)
        assert any(recipient in line for line in connections)


async def test_a_flood_from_50_fresh_peer_ids_meets_the_address_group_bounds(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """50 throwaway identities from 127.0.0.1 (each as a chat peer's unlinkable request is
    made: :class:`~p2pchat.node.p2p.throwaway.Throwaway`) each deposit one letter and make one
    fetch, against an archiver allowing each PeerId one of each at once and next to no refill:
    the per-PeerId buckets never bind, the address group's (10 of each) do; the other 40 of
    each are refused for the rate and counted."""
    x = archiver(
        tmp_path / "x",
        nodes,
        P2PCHAT_MAILBOX__DEPOSIT_RATE="0.001",
        P2PCHAT_MAILBOX__DEPOSIT_BURST="1",
        P2PCHAT_MAILBOX__FETCH_RATE="0.001",
        P2PCHAT_MAILBOX__FETCH_BURST="1",
    )
    route = Throwaway(parallel=4)
    key = nacl.signing.SigningKey.generate()
    address = mailbox.address_of(bytes(key.verify_key))

    def fetch() -> bytes:
        at = int(time.time() * 1000)
        signed = mailbox.fetch_signed_bytes(peer_id_bytes(x.peer_id), at, ())
        return mailbox.encode_request(
            mailbox.Fetch(bytes(key.verify_key), at, key.sign(signed).signature)
        )

    statuses: dict[str, list[mailbox.Status]] = {"deposit": [], "fetch": []}

    async def one(kind: str, payload: bytes) -> None:
        async with route.connection(x.peer_id, [x.addr()]) as host:
            stream = await host.new_stream(x.peer_id, [mailbox.PROTOCOL_ID])
            await stream.write(frame(payload))
            response = mailbox.decode_response(
                await read_frame_within(stream, FrameDecoder(mailbox.MAX_RESPONSE_BYTES), 30)
            )
            statuses[kind].append(response.status)

    with trio.fail_after(WAIT * 4):
        async with trio.open_nursery() as nursery:
            await nursery.start(route.run)
            async with trio.open_nursery() as requests:
                for n in range(50):
                    deposit = mailbox.Deposit(address, n.to_bytes(2, "big") + b"\x01" * 200)
                    requests.start_soon(one, "deposit", mailbox.encode_request(deposit))
                    requests.start_soon(one, "fetch", fetch())
            nursery.cancel_scope.cancel()
    ok, rate = mailbox.Status.OK, mailbox.Status.RATE
    for kind in ("deposit", "fetch"):
        assert sorted(statuses[kind], key=lambda s: s.value) == sorted(
            [ok] * 10 + [rate] * 40, key=lambda s: s.value
        ), (kind, statuses[kind])
    assert x.metric("p2pchat_mailbox_refused_total", reason="rate") == 80
    assert x.metric("p2pchat_mailbox_letters") == 10
    assert NO_ROOM  # the archiver keeps no room of anyone's


def test_a_failed_throwaway_dial_is_counted_never_made_from_the_own_identity(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """A is connected to the archiver as itself (it bootstraps through it), but its configured
    address of the archiver is a dead port: the throwaway dial fails, counted; the letter is not
    deposited over A's own connection instead (the archiver holds none), the message waits."""
    x = archiver(tmp_path / "x", nodes)
    host_port, peer = x.addr().rsplit("/p2p/", 1)
    dead = f"/ip4/127.0.0.1/tcp/1/p2p/{peer}"
    assert host_port != "/ip4/127.0.0.1/tcp/1"
    env = {"P2PCHAT_MAILBOX__ARCHIVERS": dead}
    a = _chat_peer(tmp_path / "a", nodes, env, "--bootstrap", x.addr())
    b = _chat_peer(tmp_path / "b", nodes, env, "--bootstrap", a.addr())
    connected(a, b)
    assert msg(a, b.peer_id, "hello while you are here", 1)["kind"] == "dm_delivered"
    recipient = b.peer_id
    assert b.stop() == 0
    nodes.remove(b)
    waiting = deposited(a, msg(a, recipient, "not through my own connection", 2))
    assert waiting["kind"] == "dm_waiting" and waiting["data"]["deposited"] == 0, waiting
    assert a.metric("p2pchat_dm_mail_routes_total", outcome="failed") >= 1
    assert a.metric("p2pchat_dm_mail_deposits_total", outcome="failed") >= 1
    assert x.metric("p2pchat_mailbox_deposits_total") == 0
    assert x.metric("p2pchat_mailbox_letters") == 0


async def test_throwaway_connections_open_at_once_are_bounded(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """``mailbox.route_parallel``: 8 requests at once through a Throwaway of 2 slots: never more
    than 2 connections open at once (a slot is held until the close ends), all 8 made, each
    from its own PeerId (the archiver names 8 throwaway PeerIds in its connection log)."""
    x = archiver(tmp_path / "x", nodes)
    route = Throwaway(parallel=2)
    open_now = most = done = 0

    async def one() -> None:
        nonlocal open_now, most, done
        async with route.connection(x.peer_id, [x.addr()]) as host:
            open_now += 1
            most = max(most, open_now)
            assert host.is_connected(x.peer_id)
            await trio.sleep(0.3)
            open_now -= 1
        done += 1

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(route.run)
            async with trio.open_nursery() as requests:
                for _ in range(8):
                    requests.start_soon(one)
            nursery.cancel_scope.cancel()
    assert (most, done) == (2, 8)
    await trio.sleep(1.0)
    connected_ids = {
        line.split('"remote": "')[1].split('"')[0]
        for line in x.raw_stderr
        if "peer connected" in line and '"remote": "' in line
    }
    assert len(connected_ids) == 8, connected_ids

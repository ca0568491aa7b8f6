"""universal-connectivity's chat with go-libp2p: our go peer (tests/interop/go, go-libp2p and
go-libp2p-pubsub as UC's go peer uses them: GossipSub, StrictSign) in UC's chat topic, sending
the text as raw bytes as UC's go peer does (``topic.Publish(ctx, []byte(message))``), and a
p2pchat peer with ``uc.enabled``: chat both ways, named as UC names peers. `make interop-go`
builds the go peer; without it this test fails with one line, it never skips."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from p2pchat.node.p2p.multiaddr_bytes import to_bytes
from p2pchat.node.p2p.peer_keys import public_key_bytes
from p2pchat.node.wire import uc

from tests.conftest import NodeProcess, wait_metric
from tests.test_interop_go import GoPeer, go_peer, go_peers
from tests.test_json_contract import answer, seen
from tests.test_uc import ROOM, WAIT, uc_peer

__all__ = ["go_peers"]  # the fixture, used by name


def test_chat_with_a_go_libp2p_peer_in_universal_connectivitys_topic(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer]
) -> None:
    go = go_peer(go_peers, "-topic", uc.CHAT_TOPIC)
    a = uc_peer(tmp_path / "a", nodes, "--bootstrap", go.addr)
    go.wait_topic_peer(a.peer_id)

    # Published again until heard: the go peer may know of A's subscription a moment before
    # A's side of the pubsub is ready for its messages (the go interop tests let the p2pchat
    # peer speak first for that); what is tested here is the payload, not that moment.
    deadline = time.monotonic() + WAIT
    while True:
        go.run(f"publish {b'hello from go'.hex()}", "published")
        try:
            got = a.next_event(
                lambda e: e["type"] == "message" and e["text"] == "hello from go", timeout=3
            )
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    assert got["room"] == ROOM, got
    assert (got["sender"], got["sender_name"]) == (go.peer_id, go.peer_id[-8:]), got

    events = answer(a, {"id": "uc", "line": "/uc héllo from p2pchat"})
    assert [e["own"] for e in events if e["type"] == "message"] == [True], events
    data = "héllo from p2pchat".encode().hex()
    heard = go.next(lambda e: e.get("message", {}).get("data_hex") == data)["message"]
    assert (heard["from"], heard["topic"]) == (a.peer_id, uc.CHAT_TOPIC), heard
    assert a.metric("p2pchat_uc_events_total", what="chat_received") >= 1
    assert a.metric("p2pchat_messages_dropped_total", reason="bad_signature") == 0

    # Over uc.max_text_bytes (4096), and not UTF-8: dropped and counted, never shown; too long
    # to send: one clear line.
    go.run(f"publish {(b'x' * 4097).hex()}", "published")
    go.run("publish " + b"bad \xff bytes".hex(), "published")
    assert wait_metric(a, "p2pchat_uc_refused_total", 1, reason="oversized") == 1
    assert wait_metric(a, "p2pchat_uc_refused_total", 1, reason="malformed") == 1
    assert not [e for e in a.drain_events() if e["type"] == "message" and "x" * 100 in e["text"]]
    events = answer(a, {"id": "long", "line": "/uc " + "y" * 4097})
    assert [e["code"] for e in events if e["type"] == "error"] == ["message_too_long"], events


def test_discovery_records_from_go_libp2p_are_checked_against_their_signer(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer]
) -> None:
    """The go peer publishes on UC's discovery topic, signed with its key (StrictSign): a record
    of its own key is taken (it is connected: nothing to dial), one naming another key is
    dropped as ``wrong_key`` and one over 4 KiB as ``oversized``, none forwarded."""
    go = go_peer(go_peers, "-topic", uc.DISCOVERY_TOPIC)
    a = uc_peer(tmp_path / "a", nodes, "--bootstrap", go.addr)
    go.wait_topic_peer(a.peer_id)
    own_key = public_key_bytes(go.peer_id)
    other_key = public_key_bytes(a.peer_id)
    assert own_key is not None and other_key is not None
    addr = to_bytes("/ip4/127.0.0.1/tcp/9")
    assert addr is not None
    records = [
        uc.encode_peer(uc.PeerRecord(key, addrs))
        for key, addrs in ((own_key, (b"\x00" * 5000,)), (own_key, (addr,)), (other_key, (addr,)))
    ]
    # Published again until heard (the first may precede A's readiness: see above).
    deadline = time.monotonic() + WAIT
    while a.metric("p2pchat_uc_refused_total", reason="wrong_key") < 1:
        assert time.monotonic() < deadline, "no record was refused as wrong_key"
        for data in records:
            go.run(f"publish {data.hex()}", "published")
        time.sleep(2)
    assert a.metric("p2pchat_uc_refused_total", reason="oversized") >= 1
    # The one good record was taken: its sender is connected, so nobody is dialled.
    assert a.metric("p2pchat_uc_events_total", what="peer_dialled") == 0
    assert a.metric("p2pchat_uc_refused_total", reason="no_dialable_address") == 0


def test_files_both_ways_with_go_libp2p_over_ucs_file_protocol(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer]
) -> None:
    """The go peer on UC's file topic (tests/interop/go/uc.go: the protocol as UC's go and rust
    peers frame it) announces a file: a uc_file notice; /get before it serves it is one error
    line, then fetches it whole. A file shared with /send-file is fetched by the go peer."""
    go = go_peer(go_peers, "-topic", uc.file_topic(uc.CHAT_TOPIC))
    a = uc_peer(tmp_path / "a", nodes, "--bootstrap", go.addr)
    go.wait_topic_peer(a.peer_id)
    file_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    deadline = time.monotonic() + WAIT
    while True:  # published again until heard (see above)
        go.run(f"publish {file_id.encode().hex()}", "published")
        try:
            notice = a.next_event(
                lambda e: e["type"] == "notice" and e["kind"] == "uc_file", timeout=3
            )
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    assert notice["data"] == {"id": file_id, "peer": go.peer_id, "room": ROOM}, notice
    events = answer(a, {"id": "get1", "line": f"/get {file_id}"})
    errors = [e for e in events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["not_sent"], events
    assert "\n" not in errors[0]["text"]

    body = os.urandom(300_000)
    go.run(f"ucshare {file_id} {body.hex()}", "ucshared")
    events = answer(a, {"id": "get2", "line": f"/get {file_id}"})
    output = next(e for e in events if e["type"] == "output")
    assert Path(output["data"]["path"]).read_bytes() == body

    mine = tmp_path / "mine.bin"
    mine.write_bytes(os.urandom(200_000))
    shared = answer(a, {"id": "share", "line": f"/send-file {mine}"})
    mine_id = next(e for e in shared if e["type"] == "output")["data"]["id"]
    go.next(lambda e: e.get("message", {}).get("data_hex") == mine_id.encode().hex())
    got = go.run(f"ucget {a.peer_id} {mine_id}", "ucfile")
    assert (got["bytes"], got["sha256"]) == (200_000, hashlib.sha256(mine.read_bytes()).hexdigest())
    assert wait_metric(a, "p2pchat_uc_events_total", 1, what="file_served") == 1


def test_a_go_libp2p_peer_announced_on_the_discovery_topic_is_dialled(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer]
) -> None:
    """The go peer, connected to B only, publishes its record (its key, its TCP address) on
    UC's discovery topic; C, connected to B only, hears it through B and dials the go peer."""
    go = go_peer(go_peers, "-topic", uc.DISCOVERY_TOPIC)
    b = uc_peer(tmp_path / "b", nodes, "--bootstrap", go.addr)
    c = uc_peer(tmp_path / "c", nodes, "--bootstrap", b.addr())
    go.wait_topic_peer(b.peer_id)
    key = public_key_bytes(go.peer_id)
    addr = to_bytes(go.addr.rsplit("/p2p/", 1)[0])
    assert key is not None and addr is not None
    record = uc.encode_peer(uc.PeerRecord(key, (addr,)))
    deadline = time.monotonic() + WAIT
    while c.metric("p2pchat_uc_events_total", what="peer_dialled") < 1:
        assert time.monotonic() < deadline, "C never dialled the go peer"
        go.run(f"publish {record.hex()}", "published")
        time.sleep(2)
    seen(
        c,
        lambda e: e["type"] == "connection" and e["change"] == "opened" and e["peer"] == go.peer_id,
    )
    go.next(lambda e: e.get("connection", {}).get("peer") == c.peer_id)

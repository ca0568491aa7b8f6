"""universal-connectivity (issue #20) between real ``p2pchat --json`` processes on 127.0.0.1:
chat in UC's topic and plain-text payload, a file shared with /send-file and fetched with /get
over ``/universal-connectivity-file/1`` (one over the fetcher's limit refused and counted), a
peer found on UC's discovery topic and dialled, and an in-process peer whose hostile file
requests are refused and counted."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from p2pchat.node.p2p.host import HostSettings, P2PHost, QuietObserver
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.p2p.streams import StreamError, read_frame_within
from p2pchat.node.wire import uc
from p2pchat.node.wire.framing import FrameDecoder, encode_uvarint

from tests.conftest import NodeProcess, node_env, start_node, wait_metric
from tests.test_dm import WAIT, connected
from tests.test_json_contract import answer, seen

ROOM = "uc:" + uc.CHAT_TOPIC


def uc_peer(path: Path, nodes: list[NodeProcess], *args: str, **env: str) -> NodeProcess:
    """A chat peer in UC's room, dialling announced loopback addresses (a test)."""
    settings = {"P2PCHAT_UC__ENABLED": "true", "P2PCHAT_UC__DIAL_PRIVATE_ADDRESSES": "true"}
    settings.update(env)
    node = start_node(path, "--json", *args, env=node_env(**settings))
    nodes.append(node)
    node.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    return node


def say_until_heard(a: NodeProcess, b: NodeProcess, text: str) -> dict[str, Any]:
    """/uc from ``a`` until ``b`` shows it (the first send may precede the subscriptions)."""
    deadline = time.monotonic() + WAIT
    attempt = 0
    while True:
        attempt += 1
        events = answer(a, {"id": f"say{attempt}", "line": f"/uc {text}"})
        own = [e for e in events if e["type"] == "message"]
        assert own and own[0]["own"] is True and own[0]["room"] == ROOM, events
        try:
            return b.next_event(
                lambda e: e["type"] == "message" and e["room"] == ROOM and e["text"] == text,
                timeout=3,
            )
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def test_chat_files_and_discovery_in_universal_connectivitys_room(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a = uc_peer(tmp_path / "a", nodes, P2PCHAT_UC__DISCOVERY_INTERVAL="2")
    # B fetches at most 64 KiB.
    b = uc_peer(tmp_path / "b", nodes, "--bootstrap", a.addr(), P2PCHAT_UC__MAX_FILE_BYTES="65536")
    connected(a, b)

    # Chat both ways: UC's topic, the text as the payload, named as UC names peers.
    got = say_until_heard(a, b, "hello from a")
    assert got["sender"] == a.peer_id and got["sender_name"] == a.peer_id[-8:], got
    assert got["own"] is False
    back = say_until_heard(b, a, "hello from b")
    assert back["sender"] == b.peer_id
    # Scripts send there verbatim too.
    sent = answer(a, {"id": "verbatim", "send": "/not a command", "room": ROOM})
    assert next(e for e in sent if e["type"] == "message")["text"] == "/not a command", sent
    seen(b, lambda e: e["type"] == "message" and e["text"] == "/not a command")
    assert b.metric("p2pchat_uc_events_total", what="chat_received") >= 2

    # A file shared by A is announced, B fetches it over UC's file protocol.
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(40_000))
    shared = answer(a, {"id": "share1", "line": f"/send-file {small}"})
    file_id = next(e for e in shared if e["type"] == "output")["data"]["id"]
    notice = seen(b, lambda e: e["type"] == "notice" and e["kind"] == "uc_file")
    assert notice["data"] == {"id": file_id, "peer": a.peer_id, "room": ROOM}, notice
    fetched = answer(b, {"id": "get1", "line": f"/get {file_id}"})
    output = [e for e in fetched if e["type"] == "output"]
    assert output, fetched
    saved = Path(output[0]["data"]["path"])
    assert saved.parent == tmp_path / "b" / "uc-files"
    assert saved.read_bytes() == small.read_bytes()
    # (counted once the answer is written and closed: B may have read it first)
    assert wait_metric(a, "p2pchat_uc_events_total", 1, what="file_served") == 1
    assert b.metric("p2pchat_uc_events_total", what="file_fetched") == 1

    # One over B's limit: refused before it is buffered, counted, nothing saved.
    large = tmp_path / "large.bin"
    large.write_bytes(os.urandom(100_000))
    shared = answer(a, {"id": "share2", "line": f"/send-file {large}"})
    large_id = next(e for e in shared if e["type"] == "output")["data"]["id"]
    seen(
        b,
        lambda e: e["type"] == "notice" and e["kind"] == "uc_file" and e["data"]["id"] == large_id,
    )
    refused = answer(b, {"id": "get2", "line": f"/get {large_id}"})
    errors = [e for e in refused if e["type"] == "error"]
    assert errors and errors[0]["code"] == "not_sent", refused
    assert b.metric("p2pchat_uc_refused_total", reason="file_too_large") == 1
    assert not (tmp_path / "b" / "uc-files" / large_id).exists()
    # An id nobody announced, a path that is no file, UC's topic as a p2pchat room: one clear
    # line each.
    for ident, line, code in (
        ("get3", "/get nothing-such", "bad_argument"),
        ("share3", f"/send-file {tmp_path}/none", "bad_argument"),
        ("join", f"/join {uc.CHAT_TOPIC}", "invalid_room"),
    ):
        events = answer(b, {"id": ident, "line": line})
        assert [e["code"] for e in events if e["type"] == "error"] == [code], events

    # C knows only B, and is in a p2pchat room of its own (no room rendezvous finds A for it);
    # A's record on UC's discovery topic reaches it through B and C dials A.
    c = uc_peer(
        tmp_path / "c",
        nodes,
        "--bootstrap",
        b.addr(),
        P2PCHAT_CHAT__ROOM="c-alone",
    )
    assert wait_metric(c, "p2pchat_uc_events_total", 1, what="peer_dialled") >= 1
    seen(
        c,
        lambda e: e["type"] == "connection" and e["change"] == "opened" and e["peer"] == a.peer_id,
    )


async def test_hostile_file_requests_are_refused_and_counted(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    victim = uc_peer(
        tmp_path / "victim",
        nodes,
        P2PCHAT_UC__REQUESTS_PER_MINUTE="6",
        P2PCHAT_UC__MAX_TRANSFERS="1",
        P2PCHAT_UC__TRANSFER_TIMEOUT="5",
    )
    mallory = load_or_create_identity(tmp_path / "mallory")
    host = P2PHost(mallory, HostSettings(listen=["/ip4/127.0.0.1/tcp/0"]), QuietObserver())

    async def request(payload: bytes) -> bytes | None:
        """Send ``payload`` on a file stream; the answer frame, or None when reset."""
        try:
            # A reset right after the negotiation may come before its answer is read.
            stream = await host.new_stream(victim.peer_id, [uc.FILE_PROTOCOL])
            await stream.write(payload)
            return await read_frame_within(stream, FrameDecoder(1 << 20), WAIT)
        except StreamError:  # reset by the victim (possibly before our write)
            return None

    async with host.run(listen=False):
        await host.connect(victim.addr())
        # A file id over the limit: refused from its length prefix, before it is buffered.
        assert await request(encode_uvarint(1 << 30)) is None
        # Not UTF-8; then an id nobody shared.
        assert await request(uc.file_request("x")[:1] + b"\xff") is None
        assert await request(uc.file_request("no-such-file")) is None
        assert await request(uc.file_request("again")) is None
        # Half a request, held: it takes the one transfer allowed (uc.max_transfers 1), so the
        # next request is refused as busy; the held one is reset after uc.transfer_timeout.
        held = await host.new_stream(victim.peer_id, [uc.FILE_PROTOCOL])
        await held.write(uc.file_request("held")[:3])
        assert await request(uc.file_request("while-held")) is None
        try:
            await read_frame_within(held, FrameDecoder(1 << 20), WAIT)
            raise AssertionError("the held request was answered")
        except StreamError:
            pass
        # The seventh request in a minute: over the per-peer rate.
        assert await request(uc.file_request("more")) is None
    assert victim.metric("p2pchat_uc_refused_total", reason="bad_file_id") == 2
    assert victim.metric("p2pchat_uc_refused_total", reason="unknown_file") == 2
    assert victim.metric("p2pchat_uc_refused_total", reason="busy") == 1
    assert victim.metric("p2pchat_uc_refused_total", reason="timeout") == 1
    assert victim.metric("p2pchat_uc_refused_total", reason="rate") == 1

"""Direct messages between real ``p2pchat --json`` processes on 127.0.0.1 (issue #19): /msg both
ways over direct TCP and through a relay with the recipient's acknowledgement, a restart that
keeps the session, a lost session re-established, a waiting message sent when its peer returns,
and an in-process attacker whose tampered, replayed, oversized and forged input is dropped,
counted and never shown."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import trio
from p2pchat.node.p2p.host import HostSettings, P2PHost, QuietObserver
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.p2p.peer_keys import peer_id_bytes, signed_by
from p2pchat.node.p2p.streams import read_frame_within
from p2pchat.node.store import Store
from p2pchat.node.wire import dm
from p2pchat.node.wire.framing import FrameDecoder, frame
from p2pchat.roles.peer.dm_crypto import OlmSessions, SessionLimits

from tests.conftest import NodeProcess, node_env, start_node
from tests.test_json_contract import answer, chat_peer

WAIT = 60.0


def direct_from(node: NodeProcess, peer: str, text: str) -> dict[str, Any]:
    """The ``direct`` event of ``text`` with ``peer``: already seen (a live event written while
    an answer was read: a sent message is shown as soon as it is acknowledged, before or after
    the answer to its /msg), or the next one."""

    def matches(e: dict[str, Any]) -> bool:
        return e["type"] == "direct" and e["peer"] == peer and e["text"] == text

    seen = [e for e in node.chat if matches(e)]
    return seen[0] if seen else node.next_event(matches, timeout=WAIT)


def connected(a: NodeProcess, b: NodeProcess) -> None:
    """Wait until ``a`` tells of its connection to ``b`` (``b`` dialled it at its start)."""
    a.next_event(
        lambda e: e["type"] == "connection" and e["change"] == "opened" and e["peer"] == b.peer_id,
        timeout=WAIT,
    )


def msg(node: NodeProcess, to: str, text: str, ident: int) -> dict[str, Any]:
    """/msg ``to`` ``text``: the notice it is answered with."""
    events = answer(node, {"id": ident, "line": f"/msg {to} {text}"})
    assert events[-1]["ok"] is True, events
    notices = [e for e in events if e["type"] == "notice"]
    assert len(notices) == 1, events
    return notices[0]


def test_msg_both_ways_delivered_and_kept_across_a_restart(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a, _ = chat_peer(tmp_path / "a", nodes)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    connected(a, b)

    # A -> B: the first message opens a session from B's signed bundle; B acknowledges it.
    first = msg(a, b.peer_id, "hello b", 1)
    assert first["kind"] == "dm_delivered", first
    got = direct_from(b, a.peer_id, "hello b")
    assert got["own"] is False
    assert direct_from(a, b.peer_id, "hello b")["own"] is True
    # B -> A, by name, in the same session.
    answer(a, {"id": "n", "line": "/name alice"})
    b.next_event(lambda e: e["type"] == "name" and e["peer"] == a.peer_id, timeout=WAIT)
    assert msg(b, "alice", "hello a", 2)["kind"] == "dm_delivered"
    direct_from(a, b.peer_id, "hello a")
    assert a.metric("p2pchat_dm_sent_total", outcome="delivered") == 1
    assert b.metric("p2pchat_dm_received_total") == 1
    assert b.metric("p2pchat_dm_sessions") == 1

    # B restarts: its session with A is read back from its store, nothing is re-established.
    assert b.stop() == 0
    nodes.remove(b)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    connected(a, b)
    assert b.metric("p2pchat_dm_sessions") == 1
    assert msg(b, a.peer_id, "after the restart", 3)["kind"] == "dm_delivered"
    direct_from(a, b.peer_id, "after the restart")
    assert msg(a, b.peer_id, "welcome back", 4)["kind"] == "dm_delivered"
    direct_from(b, a.peer_id, "welcome back")
    assert a.metric("p2pchat_dm_sessions") == 1  # the same one session on both sides
    assert a.metric("p2pchat_dm_dropped_total", reason="undecryptable") == 0
    assert b.metric("p2pchat_dm_dropped_total", reason="undecryptable") == 0

    # B loses its state (a new store, the same identity): A is told NO_SESSION, says so,
    # starts a new session from B's new bundle, and the message is delivered.
    assert b.stop() == 0
    nodes.remove(b)
    (tmp_path / "b2").mkdir(mode=0o700)
    shutil.copy(tmp_path / "b" / "identity.key", tmp_path / "b2" / "identity.key")
    b, _ = chat_peer(tmp_path / "b2", nodes, "--bootstrap", a.addr())
    connected(a, b)
    assert msg(a, b.peer_id, "are you there", 5)["kind"] == "dm_delivered"
    # Said live, while the answer was awaited: answer() passed it over into a.chat.
    assert any(e["type"] == "notice" and e["kind"] == "dm_session" for e in a.chat), a.chat[-8:]
    direct_from(b, a.peer_id, "are you there")
    assert b.metric("p2pchat_dm_dropped_total", reason="undecryptable") == 1


def test_msg_to_an_unreachable_peer_waits_and_is_sent_when_it_returns(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a, _ = chat_peer(tmp_path / "a", nodes)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    connected(a, b)
    assert msg(a, b.peer_id, "first", 1)["kind"] == "dm_delivered"
    assert b.stop() == 0
    nodes.remove(b)
    waiting = msg(a, b.peer_id, "while you were out", 2)
    assert waiting["kind"] == "dm_waiting", waiting
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    connected(a, b)
    direct_from(b, a.peer_id, "while you were out")
    delivered = a.next_event(
        lambda e: e["type"] == "notice" and e["kind"] == "dm_delivered", timeout=WAIT
    )
    assert delivered["data"]["id"] == waiting["data"]["id"]


async def test_tampered_replayed_oversized_and_forged_input_is_dropped(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    victim = start_node(tmp_path / "victim", "--json")
    nodes.append(victim)
    victim.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    mallory = load_or_create_identity(tmp_path / "mallory")
    other = load_or_create_identity(tmp_path / "other")
    store = Store.open(tmp_path / "mallory" / "store")
    host = P2PHost(mallory, HostSettings(listen=["/ip4/127.0.0.1/tcp/0"]), QuietObserver())
    sessions = OlmSessions(
        store.namespace("dm"),
        mallory.peer_id_text,
        peer_id_bytes(mallory.peer_id_text),
        host.sign,
        signed_by,
        SessionLimits(),
    )
    target = victim.peer_id

    async def send(payload: bytes) -> dm.Ack | None:
        """One DM stream: ``payload`` as its frame; the ack, or None if the stream was reset."""
        stream = await host.new_stream(target, [dm.PROTOCOL_ID])
        await stream.write(frame(payload))
        try:
            return dm.decode_ack(await read_frame_within(stream, FrameDecoder(64), 30))
        except Exception:
            return None

    def plaintext(text: str, ident: bytes) -> bytes:
        return dm.encode_plaintext(dm.Plaintext(ident, text, 1))

    try:
        async with host.run(listen=False):
            await host.connect(victim.addr())
            with trio.fail_after(WAIT):
                stream = await host.new_stream(target, [dm.KEYS_PROTOCOL_ID])
                signed = dm.decode_signed_bundle(
                    await read_frame_within(stream, FrameDecoder(dm.MAX_BUNDLE_BYTES), 30)
                )
                bundle = sessions.verified_bundle(target, peer_id_bytes(target), signed)

                genuine = sessions.encrypt(target, plaintext("genuine", b"g" * 16), bundle)
                flipped = bytearray(genuine.ciphertext)
                flipped[len(flipped) // 2] ^= 0x01
                tampered = dm.DirectMessage(genuine.olm_type, bytes(flipped), genuine.sender_bundle)
                ack = await send(dm.encode_message(tampered))
                assert ack is not None and ack.status is dm.AckStatus.NO_SESSION
                # A bundle of mallory's keys claimed by the stream of mallory, but signed by
                # another key: refused before any decryption.
                assert genuine.sender_bundle is not None
                forged = dm.SignedBundle(
                    genuine.sender_bundle.bundle,
                    bytes(other.key_pair.private_key.sign(genuine.sender_bundle.signed_bytes())),
                )
                ack = await send(
                    dm.encode_message(
                        dm.DirectMessage(genuine.olm_type, genuine.ciphertext, forged)
                    )
                )
                assert ack is not None and ack.status is dm.AckStatus.REFUSED
                # The genuine message passes; replayed, it is not shown twice.
                ack = await send(dm.encode_message(genuine))
                assert ack == dm.Ack(dm.AckStatus.DELIVERED, b"g" * 16)
                assert await send(dm.encode_message(genuine)) is not None
                # A frame over chat.dm_max_message_bytes (16 KiB): the stream is reset.
                assert await send(b"\x00" * 20_000) is None
                assert await send(b"\xff\xff garbage") is not None
    finally:
        store.close()

    victim.next_event(lambda e: e["type"] == "direct" and e["text"] == "genuine", timeout=WAIT)
    assert victim.metric("p2pchat_dm_dropped_total", reason="undecryptable") == 2
    assert victim.metric("p2pchat_dm_dropped_total", reason="bad_bundle") == 1
    assert victim.metric("p2pchat_dm_dropped_total", reason="oversized") == 1
    assert victim.metric("p2pchat_dm_dropped_total", reason="malformed") == 1
    assert victim.metric("p2pchat_dm_received_total") == 1
    shown = [e["text"] for e in victim.drain_events() if e["type"] == "direct"]
    assert shown == ["genuine"], shown  # shown once: not the tampered, not the replay


def test_msg_both_ways_through_a_relay(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    from tests.test_autorelay import (
        command,
        connection_kind,
        relay_node,
        relayed_peer,
        tcp_circuit,
    )

    relay = relay_node(tmp_path / "relay", nodes)
    a = relayed_peer(
        tmp_path / "a",
        nodes,
        P2PCHAT_AUTORELAY__RELAYS=relay.addr(),
        P2PCHAT_HOLEPUNCH__ENABLED="false",
    )
    circuit = tcp_circuit(a, relay)
    # B knows nothing but A's address through the relay: the DMs run over the circuit.
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", f"{circuit}/p2p/{a.peer_id}")
    connected(a, b)
    # A's event says A holds the connection; B may not list it yet (one run in six sent the
    # first /msg before B did, and got "peer ID not found"): wait for B's /peers too.
    deadline = time.monotonic() + WAIT
    while a.peer_id not in {p["peer"] for p in command(b, "/peers", "peers")["peers"]}:
        assert time.monotonic() < deadline, "B never listed its connection to A"
        time.sleep(0.2)
    first = msg(b, a.peer_id, "through the relay", 1)
    assert first["kind"] == "dm_delivered", first
    direct_from(a, b.peer_id, "through the relay")
    assert msg(a, b.peer_id, "and back", 2)["kind"] == "dm_delivered"
    direct_from(b, a.peer_id, "and back")
    assert connection_kind(b, a.peer_id) == "relayed"
    assert b.metric("libp2p_swarm_connections_opened_total", transport="p2p-circuit") == 1


def test_no_plaintext_of_a_dm_in_the_logs_or_the_data_dirs(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """A headless recipient logs every chat event, a DM's without its text; neither data dir
    (store: Olm state, sessions) holds the text when DM conversations are not kept (they are
    by default, plaintext until encryption at rest)."""
    secret = "zebra quartz 7731"
    unkept = node_env(P2PCHAT_CHAT__DM_HISTORY="false")
    a = start_node(tmp_path / "a", "--json", env=unkept)
    nodes.append(a)
    a.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    b = start_node(tmp_path / "b", "--bootstrap", a.addr(), env=unkept)  # headless: logged
    nodes.append(b)
    connected(a, b)
    assert msg(a, b.peer_id, secret, 1)["kind"] == "dm_delivered"
    logged = b.wait_for("chat direct", timeout=WAIT)
    assert logged["peer"] == a.peer_id, logged
    assert secret not in json.dumps(logged), logged
    assert a.stop() == 0 and b.stop() == 0
    nodes.clear()
    assert secret not in "".join(b.raw_stderr)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path

"""The secrecy proofs of issue #19, between real ``p2pchat`` processes on 127.0.0.1, with the
test wiretap (tests/secrecy_tap: every byte each tapped process reads from or writes to its
libp2p streams, after Noise and the muxer, recorded in a file):

- forward secrecy: the DirectMessage frames B read from A are captured off B's streams; a copy
  of B's data dir taken after more messages ratcheted (its Olm account and sessions, read with
  vodozemac as an attacker would) decrypts none of the ratcheted messages captured before it,
  and does decrypt one sent after it (so the check can fail). The first messages of a session,
  sent before the recipient answered, are Olm pre-key messages made with B's published
  fallback key: while B keeps that key, a copy of B's state reads them (the documented weaker
  first message, README "Private conversations");
- an observer that is at once a room member, a relay and an archiver (``--role
  peer,relay,archiver``) carries a DM and a private room's conversation between two others:
  neither text is in its stream bytes, its store or its log, while a public room's text is.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import vodozemac
from p2pchat.node.p2p.peer_keys import peer_id_bytes
from p2pchat.node.wire import dm

from tests.conftest import NodeProcess, start_node
from tests.secrecy import all_bytes, decrypting, frames_read, olm_state, streams, tapped_env
from tests.test_dm import connected, direct_from, msg
from tests.test_json_contract import answer, chat_peer
from tests.test_private_rooms import grep, line, notice, said_until_heard

WAIT = 60.0


def tapped_peer(path: Path, nodes: list[NodeProcess], tap: Path, *args: str) -> NodeProcess:
    node = start_node(path, "--json", *args, env=tapped_env(tap))
    nodes.append(node)
    node.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    return node


def captured_from(tap: Path, sender: str) -> list[dm.DirectMessage]:
    """The DirectMessages the tapped node read from ``sender``, in order."""
    return [
        dm.decode_message(data, 1 << 16)
        for peer, data in frames_read(tap, dm.PROTOCOL_ID)
        if peer == sender
    ]


def test_a_snapshot_of_the_recipients_keys_reads_no_earlier_ratcheted_dm_but_a_later_one(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a, _ = chat_peer(tmp_path / "a", nodes)
    before = tmp_path / "b-tap-before.jsonl"
    b = tapped_peer(tmp_path / "b", nodes, before, "--bootstrap", a.addr())
    connected(a, b)
    # A writes first (pre-key messages until B answers), then each change of direction is a
    # new Diffie-Hellman ratchet step; within one direction the chain key moves on per message.
    script = [
        (a, b, "early one"),
        (a, b, "early two"),
        (b, a, "reply one"),
        (a, b, "ratcheted three"),
        (a, b, "ratcheted four"),
        (b, a, "reply two"),
        (a, b, "ratcheted five"),
    ]
    for n, (sender, to, text) in enumerate(script):
        assert msg(sender, to.peer_id, text, n)["kind"] == "dm_delivered"
        direct_from(to, sender.peer_id, text)
    assert b.stop() == 0
    nodes.remove(b)
    captured = captured_from(before, a.peer_id)
    kinds = [m.olm_type for m in captured]
    assert kinds == [dm.OLM_PRE_KEY] * 2 + [dm.OLM_NORMAL] * 3, kinds
    # The wire bytes hold no plaintext (the tap sees what B's streams carried).
    assert b"ratcheted" not in all_bytes(before)

    # The attacker's copy of B's keys as they are now.
    snapshot = tmp_path / "b-snapshot"
    shutil.copytree(tmp_path / "b", snapshot)

    # B back, same data dir: A's next message continues A's current chain.
    after = tmp_path / "b-tap-after.jsonl"
    b = tapped_peer(tmp_path / "b", nodes, after, "--bootstrap", a.addr())
    connected(a, b)
    assert msg(a, b.peer_id, "sent after the snapshot", 99)["kind"] == "dm_delivered"
    direct_from(b, a.peer_id, "sent after the snapshot")
    (later,) = captured_from(after, a.peer_id)
    assert later.olm_type == dm.OLM_NORMAL

    account, sessions = olm_state(snapshot)
    assert sessions
    for message in captured[2:]:
        assert list(decrypting(sessions, message.olm_type, message.ciphertext)) == []
    # The control: the same snapshot reads what was sent after it.
    (plaintext,) = decrypting(sessions, later.olm_type, later.ciphertext)
    assert dm.decode_plaintext(plaintext, 4096).text == "sent after the snapshot"
    # The documented limit: a pre-key message is made with B's fallback key, which B keeps.
    for message, text in zip(captured[:2], ("early one", "early two"), strict=True):
        assert message.sender_bundle is not None
        bundle = dm.decode_bundle(message.sender_bundle, peer_id_bytes(a.peer_id))
        prekey = vodozemac.AnyOlmMessage.from_parts(dm.OLM_PRE_KEY, message.ciphertext)
        pre_key_message = prekey.to_pre_key()
        assert pre_key_message is not None
        _, opened = account.create_inbound_session(
            vodozemac.Curve25519PublicKey.from_bytes(bundle.identity_key), pre_key_message
        )
        assert dm.decode_plaintext(opened, 4096).text == text


def test_a_member_relay_and_archiver_carries_a_dm_and_a_private_room_without_their_text(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    from tests.test_autorelay import CHAT_FRIENDLY, command, relayed_peer, tcp_circuit

    def relayed_kind(node: NodeProcess, peer: str) -> str | None:
        """How ``node``'s /peers shows its connection to ``peer`` (None: not listed yet)."""
        listed = {p["peer"]: p["connection"] for p in command(node, "/peers", "peers")["peers"]}
        return listed.get(peer)

    tap = tmp_path / "observer-tap.jsonl"
    observer = start_node(
        tmp_path / "observer",
        "--role",
        "peer,relay,archiver",
        env=tapped_env(
            tap,
            P2PCHAT_ARCHIVER__ALL_ROOMS="true",
            P2PCHAT_ARCHIVER__ADMIT_SENDERS="1",
            **CHAT_FRIENDLY,
        ),
    )
    nodes.append(observer)  # headless: it logs every chat event it shows
    a = relayed_peer(
        tmp_path / "a",
        nodes,
        "--bootstrap",
        observer.addr(),
        P2PCHAT_AUTORELAY__RELAYS=observer.addr(),
        P2PCHAT_HOLEPUNCH__ENABLED="false",
    )
    circuit = tcp_circuit(a, observer)
    # B knows A only through the observer's relay: the DMs and the room's pubsub between A
    # and B run over the circuit, and B meets the observer through that hop.
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", f"{circuit}/p2p/{a.peer_id}")
    connected(a, b)
    deadline = time.monotonic() + WAIT
    while relayed_kind(b, a.peer_id) != "relayed":
        assert time.monotonic() < deadline, "B never held its relayed connection to A"
        time.sleep(0.3)

    dm_secret, room_secret = "zebra quartz 4417", "walrus cobalt 2093"
    assert msg(a, b.peer_id, f"{dm_secret} there", 1)["kind"] == "dm_delivered"
    direct_from(b, a.peer_id, f"{dm_secret} there")
    assert msg(b, a.peer_id, f"{dm_secret} back", 2)["kind"] == "dm_delivered"
    direct_from(a, b.peer_id, f"{dm_secret} back")
    assert relayed_kind(b, a.peer_id) == "relayed"

    room = notice(line(a, "/create-private hideout", "create"), "private_created")["data"]["room"]
    line(a, f"/invite {b.peer_id}", "invite")
    b.next_event(lambda e: e["type"] == "notice" and e["kind"] == "private_invited", timeout=WAIT)
    said_until_heard(a, room, f"{room_secret} from a", [b])
    said_until_heard(b, room, f"{room_secret} from b", [a])
    # The control: a public room's text, which the observer reads as a member, logs (headless)
    # and archives: each search below finds a text where one is.
    answer(a, {"id": "pub", "send": "public canary 5150", "room": "p2p-chat-default"})
    shown = observer.wait_for("chat message", timeout=WAIT)
    assert shown["text"] == "public canary 5150", shown
    # The archiver takes a room up once it has seen it used: A speaks in the private room
    # until it holds private messages too (the public room gave it one).
    deadline, more = time.monotonic() + WAIT, 0
    while (
        observer.metric("p2pchat_archive_inserted_total") < 4
        or observer.metric("p2pchat_archive_rooms") < 2
    ):
        diagnosis = {
            "inserted": observer.metric("p2pchat_archive_inserted_total"),
            "rooms": observer.metric("p2pchat_archive_rooms"),
        }
        assert time.monotonic() < deadline, diagnosis
        answer(a, {"id": f"more{more}", "send": f"{room_secret} more {more}", "room": room})
        more += 1
        time.sleep(2)
    hop_bytes = sum(
        len(s.raw) for s in streams(tap) if s.protocol and "circuit/relay" in s.protocol
    )
    assert observer.stop() == 0
    nodes.remove(observer)

    wire = all_bytes(tap)
    assert b"public canary 5150" in wire
    assert hop_bytes > 10_000, hop_bytes  # the conversation did go through the observer
    assert grep(tmp_path / "observer", "public canary 5150")
    assert any("public canary 5150" in entry for entry in observer.raw_stderr)
    for secret in (dm_secret, room_secret, "hideout"):
        assert secret.encode() not in wire, secret
        assert not grep(tmp_path / "observer", secret), secret
        assert not any(secret in entry for entry in observer.raw_stderr), secret

"""Sealed offline delivery between real ``p2pchat`` processes on 127.0.0.1 (issue #19): a direct
message to a stopped peer is sealed and deposited with two archivers, the sender stops too, and
the recipient, back, fetches it from the archivers and shows it exactly once; with one of the
two archivers dead it is still delivered; the archivers' data dirs and logs hold neither the
text nor the recipient's PeerId; and an in-process attacker's tampered, oversized, forged and
flooding requests from fresh PeerIds are refused, bounded and counted."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import nacl.public
import nacl.signing
import trio
from p2pchat.node.p2p.host import HostSettings, P2PHost, QuietObserver
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.p2p.peer_keys import peer_id_bytes, signed_by
from p2pchat.node.p2p.streams import Stream, StreamRefused, read_frame_within
from p2pchat.node.store import Store
from p2pchat.node.wire import dm, mailbox
from p2pchat.node.wire.framing import FrameDecoder, frame
from p2pchat.roles.peer.dm_crypto import OlmSessions, SessionLimits

from tests.conftest import NodeProcess, node_env, start_node
from tests.test_dm import WAIT, connected, direct_from, msg
from tests.test_json_contract import chat_peer

# The archivers keep a room nobody joins: nothing of the peers' rooms lands in their stores.
NO_ROOM = "mailbox-test-nobody-here"


def archiver(path: Path, nodes: list[NodeProcess], **env: str) -> NodeProcess:
    node = start_node(
        path, "--role", "archiver", env=node_env(P2PCHAT_ARCHIVER__ROOMS=NO_ROOM, **env)
    )
    nodes.append(node)
    return node


def wait_metric(node: NodeProcess, name: str, value: float, **labels: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if node.metric(name, **labels) == value:
            return
        time.sleep(0.2)
    raise AssertionError(f"{name}{labels} never became {value} (is {node.metric(name, **labels)})")


async def metric_reaches(node: NodeProcess, name: str, value: float, **labels: str) -> None:
    """As :func:`wait_metric`, without blocking trio (an in-process host runs meanwhile)."""
    with trio.fail_after(WAIT):
        while node.metric(name, **labels) != value:
            await trio.sleep(0.2)


def deposited(node: NodeProcess, answered: dict[str, Any]) -> dict[str, Any]:
    """The ``dm_waiting`` that says where a message was deposited: the /msg's answer, or, when
    that came first (``no answer yet``: a slow dial or deposit), the live notice after it."""
    if answered["data"]["reason"] != "no answer yet":
        return answered
    ident = answered["data"]["id"]
    return node.next_event(
        lambda e: e["type"] == "notice" and e["kind"] == "dm_waiting" and e["data"]["id"] == ident,
        timeout=WAIT,
    )


def deposit_while_away(
    tmp_path: Path, nodes: list[NodeProcess], text: str, *more: str
) -> tuple[NodeProcess, NodeProcess, str, str]:
    """Two archivers; A and B meet (A learns B's bundle); B stops; A's /msg ``text`` (then
    ``more``) is deposited with both archivers; A stops. Returns the archivers, A's PeerId and
    B's."""
    x = archiver(tmp_path / "x", nodes)
    y = archiver(tmp_path / "y", nodes)
    archivers = f"{x.addr()},{y.addr()}"
    a, _ = chat_peer(tmp_path / "a", nodes, "--bootstrap", archivers)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", f"{archivers},{a.addr()}")
    connected(a, b)
    assert msg(a, b.peer_id, "hello while you are here", 1)["kind"] == "dm_delivered"
    direct_from(b, a.peer_id, "hello while you are here")
    recipient = b.peer_id
    assert b.stop() == 0
    nodes.remove(b)
    waiting = msg(a, recipient, text, 2)
    waiting = deposited(a, waiting)
    assert waiting["kind"] == "dm_waiting", waiting
    assert waiting["data"]["deposited"] == 2, waiting
    assert "deposited with 2 archivers" in waiting["text"]
    for n, later in enumerate(more, 3):  # behind a waiting one: deposited at once
        got = deposited(a, msg(a, recipient, later, n))
        assert got["data"]["deposited"] == 2, got
    wait_metric(x, "p2pchat_mailbox_letters", 1 + len(more))
    wait_metric(y, "p2pchat_mailbox_letters", 1 + len(more))
    assert a.stop() == 0  # only the archivers can deliver it now
    nodes.remove(a)
    return x, y, a.peer_id, recipient


def test_a_message_to_a_stopped_peer_is_fetched_from_two_archivers_exactly_once(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    text = "sealed for you while you were out"
    texts = [text, "a second one", "and a third"]
    x, y, sender, recipient = deposit_while_away(tmp_path, nodes, *texts)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", f"{x.addr()},{y.addr()}")
    assert b.peer_id == recipient
    shown = direct_from(b, sender, text)
    assert shown["own"] is False
    direct_from(b, sender, texts[-1])
    # Read, then deleted from both archivers; shown once (the second copy is not shown).
    wait_metric(x, "p2pchat_mailbox_letters", 0)
    wait_metric(y, "p2pchat_mailbox_letters", 0)
    # Each once, in the order sent.
    assert [e["text"] for e in b.drain_events() if e["type"] == "direct"] == texts
    assert b.metric("p2pchat_dm_received_total") == 3
    assert b.metric("p2pchat_dm_mail_fetched_total") == 3  # each letter twice: opened once
    for archived in (x, y):
        assert archived.metric("p2pchat_mailbox_deposits_total") == 3
        for said in texts:
            _assert_knows_nothing(archived, said, recipient)


def test_still_delivered_with_one_of_two_archivers_dead(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    text = "one archiver is enough"
    x, y, sender, _ = deposit_while_away(tmp_path, nodes, text)
    assert y.stop() == 0
    nodes.remove(y)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", f"{x.addr()},{y.addr()}")
    direct_from(b, sender, text)
    wait_metric(x, "p2pchat_mailbox_letters", 0)
    assert b.metric("p2pchat_dm_received_total") == 1


def _assert_knows_nothing(archived: NodeProcess, text: str, recipient: str) -> None:
    """Neither the text nor the recipient's PeerId (text or binary) in the data dir; the text in
    no log line, the recipient in no mailbox log line (the connection log names every peer that
    connects, and here the peers bootstrap through the archivers: tests/test_mailbox_unlinkable.py
    keeps them apart)."""
    secrets = [text.encode(), recipient.encode(), peer_id_bytes(recipient)]
    for path in archived.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret not in data, f"{secret!r} found in {path}"
    log = "".join(archived.raw_stderr)
    assert text not in log
    mailbox_lines = [line for line in archived.raw_stderr if "mailbox" in line]
    assert mailbox_lines  # "mailboxes served"
    assert not [line for line in mailbox_lines if recipient in line]


async def test_hostile_deposits_and_fetches_are_bounded_and_counted(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    x = archiver(
        tmp_path / "x",
        nodes,
        P2PCHAT_MAILBOX__MAX_ENTRY_BYTES="1024",
        P2PCHAT_MAILBOX__MAX_ENTRIES_PER_DEPOSITOR="3",
        P2PCHAT_MAILBOX__MAX_ENTRIES_PER_GROUP="5",
        P2PCHAT_MAILBOX__MAX_ENTRIES_PER_MAILBOX="4",
        P2PCHAT_MAILBOX__FETCH_BURST="2",
    )
    auth = nacl.signing.SigningKey.generate()
    address = mailbox.address_of(bytes(auth.verify_key))
    other = mailbox.address_of(bytes(nacl.signing.SigningKey.generate().verify_key))

    async def request(host: P2PHost, payload: bytes) -> mailbox.Response | None:
        stream = await host.new_stream(x.peer_id, [mailbox.PROTOCOL_ID])
        await stream.write(frame(payload))
        try:
            return mailbox.decode_response(
                await read_frame_within(stream, FrameDecoder(mailbox.MAX_RESPONSE_BYTES), 30)
            )
        except Exception:
            return None

    def deposit(to: bytes, size: int = 200) -> bytes:
        return mailbox.encode_request(mailbox.Deposit(to, b"\x01" * size))

    def fetch(key: nacl.signing.SigningKey, at_ms: int | None = None) -> bytes:
        at = int(time.time() * 1000) if at_ms is None else at_ms
        signed = mailbox.fetch_signed_bytes(peer_id_bytes(x.peer_id), at, ())
        return mailbox.encode_request(
            mailbox.Fetch(bytes(key.verify_key), at, key.sign(signed).signature)
        )

    statuses: list[mailbox.Status | None] = []
    with trio.fail_after(WAIT * 2):
        # Three fresh PeerIds from one address: each may hold 3 letters, the group 5, and
        # B's mailbox 4 (the fifth letter goes to another mailbox).
        for n in range(3):
            identity = load_or_create_identity(tmp_path / f"mallory{n}")
            host = P2PHost(identity, HostSettings(listen=["/ip4/127.0.0.1/tcp/0"]), QuietObserver())
            async with host.run(listen=False):
                await host.connect(x.addr())
                for i in range(3):
                    target = other if n == 2 or (n, i) == (1, 1) else address
                    response = await request(host, deposit(target))
                    statuses.append(None if response is None else response.status)
                if n == 0:
                    # Oversized, garbage, a forged fetch, a stale fetch, then the rate.
                    too_big = await request(host, deposit(address, 2000))
                    assert too_big is not None and too_big.status is mailbox.Status.TOO_LARGE
                    garbage = await request(host, b"\xff\xfe not protobuf")
                    assert garbage is not None and garbage.status is mailbox.Status.MALFORMED
                    forged = await request(host, fetch(nacl.signing.SigningKey.generate())[:-1])
                    assert forged is not None and forged.status is mailbox.Status.MALFORMED
                    wrong = mailbox.Fetch(
                        bytes(auth.verify_key), int(time.time() * 1000), b"\0" * 64
                    )
                    refused = await request(host, mailbox.encode_request(wrong))
                    assert refused is not None and refused.status is mailbox.Status.UNAUTHORIZED
                    stale = await request(host, fetch(auth, int(time.time() * 1000) - 3_600_000))
                    assert stale is not None and stale.status is mailbox.Status.UNAUTHORIZED
                if n == 2:
                    # The holder's fetch lists its four letters (another's is not listed).
                    listed = await request(host, fetch(auth))
                    assert listed is not None and listed.status is mailbox.Status.OK
                    assert len(listed.entries) == 4 and not listed.more
                    second = await request(host, fetch(auth))
                    assert second is not None and second.status is mailbox.Status.OK
                    limited = await request(host, fetch(auth))
                    assert limited is not None and limited.status is mailbox.Status.RATE
    ok, full, quota = mailbox.Status.OK, mailbox.Status.FULL, mailbox.Status.QUOTA
    assert statuses == [ok, ok, ok, ok, ok, full, quota, quota, quota], statuses
    assert x.metric("p2pchat_mailbox_letters") == 5
    assert x.metric("p2pchat_mailbox_bytes") == 5 * 200
    assert x.metric("p2pchat_mailboxes") == 2
    assert x.metric("p2pchat_mailbox_refused_total", reason="quota") == 3
    assert x.metric("p2pchat_mailbox_refused_total", reason="mailbox_full") == 1
    assert x.metric("p2pchat_mailbox_refused_total", reason="too_large") == 1
    assert x.metric("p2pchat_mailbox_refused_total", reason="malformed") == 2
    assert x.metric("p2pchat_mailbox_refused_total", reason="unauthorized") == 2
    assert x.metric("p2pchat_mailbox_refused_total", reason="rate") == 1


async def test_bad_letters_in_a_mailbox_are_dropped_counted_and_deleted(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """Anyone who has B's bundle can compute its mailbox: junk, a letter holding garbage, a
    letter whose first message carries a bundle not signed by its sender, and a replay are
    dropped, counted and deleted; the one genuine letter is shown, once."""
    x = archiver(tmp_path / "x", nodes)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", x.addr())
    recipient = b.peer_id
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
    me = peer_id_bytes(mallory.peer_id_text)

    def sealed_to(key: bytes, letter: bytes) -> bytes:
        return bytes(nacl.public.SealedBox(nacl.public.PublicKey(key)).encrypt(letter))

    def letter_of(message: dm.DirectMessage) -> bytes:
        return mailbox.encode_letter(mailbox.Letter(me, dm.encode_message(message)))

    try:
        async with host.run(listen=False):
            with trio.fail_after(WAIT * 2):
                await host.connect(b.addr())
                stream = await host.new_stream(recipient, [dm.KEYS_PROTOCOL_ID])
                signed = dm.decode_signed_bundle(
                    await read_frame_within(stream, FrameDecoder(dm.MAX_BUNDLE_BYTES), 30)
                )
                bundle = sessions.verified_bundle(recipient, peer_id_bytes(recipient), signed)
                assert len(bundle.sealing_key) == 32 and len(bundle.mailbox_key) == 32
                address = mailbox.address_of(bundle.mailbox_key)
                assert b.stop() == 0
                nodes.remove(b)

                def plaintext(text: str, ident: bytes) -> bytes:
                    return dm.encode_plaintext(dm.Plaintext(ident, text, int(time.time() * 1000)))

                genuine = sessions.encrypt(recipient, plaintext("genuine", b"g" * 16), bundle)
                assert genuine.sender_bundle is not None
                forged = dm.DirectMessage(
                    genuine.olm_type,
                    genuine.ciphertext,
                    dm.SignedBundle(
                        genuine.sender_bundle.bundle,
                        bytes(
                            other.key_pair.private_key.sign(genuine.sender_bundle.signed_bytes())
                        ),
                    ),
                )
                letters = [
                    b"\x00" * 120,  # junk: no sealed box opens it
                    sealed_to(bundle.sealing_key, b"\xff\xfe garbage"),  # sealed, not a letter
                    sealed_to(bundle.sealing_key, letter_of(forged)),  # bundle not the sender's
                    sealed_to(bundle.sealing_key, letter_of(genuine)),
                    sealed_to(bundle.sealing_key, letter_of(genuine)),  # replayed, sealed anew
                ]
                await host.connect(x.addr())
                for sealed in letters:
                    stream = await host.new_stream(x.peer_id, [mailbox.PROTOCOL_ID])
                    await stream.write(
                        frame(mailbox.encode_request(mailbox.Deposit(address, sealed)))
                    )
                    response = mailbox.decode_response(
                        await read_frame_within(stream, FrameDecoder(1024), 30)
                    )
                    assert response.status is mailbox.Status.OK
    finally:
        store.close()

    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", x.addr())
    b.next_event(lambda e: e["type"] == "direct" and e["text"] == "genuine", timeout=WAIT)
    wait_metric(x, "p2pchat_mailbox_letters", 0)  # read, the bad ones too, and deleted
    assert b.metric("p2pchat_dm_dropped_total", reason="unsealable") == 1
    assert b.metric("p2pchat_dm_dropped_total", reason="malformed") == 1
    assert b.metric("p2pchat_dm_dropped_total", reason="bad_bundle") == 1
    assert b.metric("p2pchat_dm_dropped_total", reason="undecryptable") == 1
    assert b.metric("p2pchat_dm_received_total") == 1
    shown = [e["text"] for e in b.drain_events() if e["type"] == "direct"]
    assert shown == ["genuine"], shown


async def _when_free(host: P2PHost, archiver: str) -> Stream:
    """A mailbox stream to ``archiver`` (one request at a time here) once it has finished the
    last one: until then it resets a new stream as ``busy``, during the negotiation at times
    (a clean-clone CI run), which the opening reports as refused."""
    for _ in range(100):
        try:
            return await host.new_stream(archiver, [mailbox.PROTOCOL_ID])
        except StreamRefused:
            await trio.sleep(0.1)
    raise AssertionError("the archiver stayed busy for 10 s")


async def test_deposit_rate_streams_wait_and_ttl_bounded_and_counted(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """A real archiver with a 2-letter deposit burst, one request at a time and a 2 s TTL: the
    third deposit is refused for the rate; a second stream while one is held is reset
    (``busy``); a stream that sends nothing is ended after 10 s (``timeout``); the letters
    kept expire and are deleted by the sweep."""
    x = archiver(
        tmp_path / "x",
        nodes,
        P2PCHAT_MAILBOX__DEPOSIT_RATE="0.001",
        P2PCHAT_MAILBOX__DEPOSIT_BURST="2",
        P2PCHAT_MAILBOX__MAX_STREAMS="1",
        P2PCHAT_MAILBOX__TTL="2",
        P2PCHAT_MAILBOX__SWEEP_INTERVAL="0.5",
    )
    identity = load_or_create_identity(tmp_path / "mallory")
    host = P2PHost(identity, HostSettings(listen=["/ip4/127.0.0.1/tcp/0"]), QuietObserver())
    deposit = mailbox.encode_request(mailbox.Deposit(b"a" * 32, b"\x01" * 100))
    statuses = []
    with trio.fail_after(WAIT * 2):
        async with host.run(listen=False):
            await host.connect(x.addr())
            for _ in range(3):
                stream = await _when_free(host, x.peer_id)
                await stream.write(frame(deposit))
                response = mailbox.decode_response(
                    await read_frame_within(stream, FrameDecoder(1024), 30)
                )
                statuses.append(response.status)
            held = await _when_free(host, x.peer_id)  # says nothing
            await held.write(b"\x05")  # half a frame: the archiver has taken the stream
            await trio.sleep(0.5)
            # Reset as busy: at the negotiation (refused here) or after (the read fails).
            with trio.move_on_after(30), contextlib.suppress(Exception):
                other = await host.new_stream(x.peer_id, [mailbox.PROTOCOL_ID])
                await other.write(frame(deposit))
                await read_frame_within(other, FrameDecoder(1024), 30)
            await metric_reaches(x, "p2pchat_mailbox_refused_total", 1, reason="busy")
            await metric_reaches(x, "p2pchat_mailbox_letters", 0)  # expired and swept
            await metric_reaches(x, "p2pchat_mailbox_refused_total", 1, reason="timeout")
    ok, rate = mailbox.Status.OK, mailbox.Status.RATE
    assert statuses == [ok, ok, rate], statuses
    assert x.metric("p2pchat_mailbox_refused_total", reason="rate") == 1
    assert x.metric("p2pchat_mailbox_served_total", outcome="expired") == 2
    assert x.metric("p2pchat_mailbox_bytes") == 0


def test_a_recipient_online_but_unreachable_gets_its_mail_at_the_next_fetch(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """B comes back at another port, connected to the archiver only; A (no DHT) cannot reach it
    and deposits; B, online all along, fetches it at its next periodic fetch."""
    x = archiver(tmp_path / "x", nodes)
    no_dht = node_env(P2PCHAT_DHT__ENABLED="false")
    a = start_node(tmp_path / "a", "--json", "--bootstrap", x.addr(), env=no_dht)
    nodes.append(a)
    a.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", f"{x.addr()},{a.addr()}")
    connected(a, b)
    assert msg(a, b.peer_id, "hello", 1)["kind"] == "dm_delivered"
    assert b.stop() == 0
    nodes.remove(b)
    b = start_node(
        tmp_path / "b",
        "--json",
        "--bootstrap",
        x.addr(),
        env=node_env(P2PCHAT_MAILBOX__FETCH_INTERVAL="2"),
    )
    nodes.append(b)
    b.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    assert b.metric("p2pchat_dm_mail_fetched_total") == 0
    text = "left while you were online elsewhere"
    waiting = msg(a, b.peer_id, text, 2)
    waiting = deposited(a, waiting)
    assert waiting["kind"] == "dm_waiting" and waiting["data"]["deposited"] == 1, waiting
    direct_from(b, a.peer_id, text)
    assert b.metric("p2pchat_dm_mail_fetched_total") == 1


async def test_a_flood_of_deposits_from_fresh_peer_ids_is_bounded_in_memory_and_disk(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """20 fresh PeerIds from one address deposit 50 letters of 1 KiB each, to 1,000 mailboxes:
    the address group's quota keeps 100, every other deposit is refused (quota or rate) and
    counted, and the archiver's memory stays flat."""
    x = archiver(tmp_path / "x", nodes, P2PCHAT_MAILBOX__MAX_ENTRIES_PER_GROUP="100")
    rss_before = x.metric("process_resident_memory_bytes")
    refused = 0
    with trio.fail_after(WAIT * 4):
        for n in range(20):
            identity = load_or_create_identity(tmp_path / f"sybil{n}")
            host = P2PHost(identity, HostSettings(listen=["/ip4/127.0.0.1/tcp/0"]), QuietObserver())
            async with host.run(listen=False):
                await host.connect(x.addr())
                for i in range(50):
                    address = (n * 50 + i).to_bytes(32, "big")
                    stream = await host.new_stream(x.peer_id, [mailbox.PROTOCOL_ID])
                    await stream.write(
                        frame(mailbox.encode_request(mailbox.Deposit(address, b"\x02" * 1024)))
                    )
                    response = mailbox.decode_response(
                        await read_frame_within(stream, FrameDecoder(1024), 30)
                    )
                    refused += response.status is not mailbox.Status.OK
    assert refused == 900
    assert x.metric("p2pchat_mailbox_letters") == 100
    assert x.metric("p2pchat_mailboxes") == 100
    assert x.metric("p2pchat_mailbox_bytes") == 100 * 1024
    counted = sum(
        x.metric("p2pchat_mailbox_refused_total", reason=reason) for reason in ("quota", "rate")
    )
    assert counted == 900
    growth = x.metric("process_resident_memory_bytes") - rss_before
    print(f"archiver RSS growth over 1,000 deposits: {growth / 2**20:.1f} MiB")
    assert growth < 32 * 2**20

"""A direct message still being sent when its sender stops is not lost (issue #19): it is kept
in the waiting store from its first attempt until acknowledged, sent again after the restart,
and shown once by the recipient. Real ``p2pchat --json`` processes on 127.0.0.1; the recipient
is frozen (SIGSTOP) so that the first attempt cannot finish before the sender is killed."""

from __future__ import annotations

import signal
from pathlib import Path

import trio
from p2pchat.node.p2p.host import HostSettings, P2PHost, QuietObserver
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.p2p.peer_keys import peer_id_bytes, signed_by
from p2pchat.node.p2p.streams import read_frame_within
from p2pchat.node.store import Store
from p2pchat.node.wire import dm
from p2pchat.node.wire.framing import FrameDecoder, frame
from p2pchat.roles.peer.dm_crypto import OlmSessions, SessionLimits

from tests.conftest import NodeProcess, start_node
from tests.test_dm import WAIT, connected, direct_from, msg
from tests.test_json_contract import chat_peer


def test_a_message_in_flight_at_shutdown_is_sent_after_the_restart(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    b, _ = chat_peer(tmp_path / "b", nodes)
    a, _ = chat_peer(tmp_path / "a", nodes, "--bootstrap", b.addr())
    connected(b, a)
    assert msg(a, b.peer_id, "warm up", 1)["kind"] == "dm_delivered"
    direct_from(b, a.peer_id, "warm up")

    b.proc.send_signal(signal.SIGSTOP)  # connected, but answers nothing
    try:
        pending = msg(a, b.peer_id, "said as you froze", 2)
        # The send is still running (no answer yet), not refused nor given up.
        assert pending["kind"] == "dm_waiting", pending
        assert pending["data"]["reason"] == "no answer yet", pending
        # Killed outright (a crash, a power cut): a graceful stop would see the exchange fail
        # as its connections close, and keep it waiting even without the waiting store.
        assert a.stop(signal.SIGKILL) == -signal.SIGKILL
        nodes.remove(a)
    finally:
        b.proc.send_signal(signal.SIGCONT)

    a, _ = chat_peer(tmp_path / "a", nodes, "--bootstrap", b.addr())
    got = direct_from(b, a.peer_id, "said as you froze")
    assert got["id"] == pending["data"]["id"]
    delivered = a.next_event(
        lambda e: (
            e["type"] == "notice"
            and e["kind"] == "dm_delivered"
            and e["data"]["id"] == pending["data"]["id"]
        ),
        timeout=WAIT,
    )
    assert delivered["data"]["peer"] == b.peer_id
    # Shown once, whichever copy arrived first (the frozen stream's or the resent one).
    b.drain_events()
    shown = [e for e in b.chat if e["type"] == "direct" and e["text"] == "said as you froze"]
    assert len(shown) == 1, shown
    # Nothing waits any more: a further message goes straight through.
    assert msg(a, b.peer_id, "after", 3)["kind"] == "dm_delivered"


async def test_a_message_resent_after_the_recipient_restarted_is_not_shown_twice(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """The recipient showed a message, its acknowledgement was lost, and it restarted: the
    resend (a new Olm encryption of the same message id) is acknowledged, not shown again (the
    kept conversation knows the id; the ids remembered in memory are gone)."""
    victim = start_node(tmp_path / "victim", "--json")
    nodes.append(victim)
    victim.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    sender = load_or_create_identity(tmp_path / "sender")
    store = Store.open(tmp_path / "sender" / "store")
    host = P2PHost(sender, HostSettings(listen=["/ip4/127.0.0.1/tcp/0"]), QuietObserver())
    sessions = OlmSessions(
        store.namespace("dm"),
        sender.peer_id_text,
        peer_id_bytes(sender.peer_id_text),
        host.sign,
        signed_by,
        SessionLimits(),
    )
    target = victim.peer_id

    async def send(text: str, ident: bytes, bundle: dm.KeyBundle | None = None) -> dm.Ack:
        raw = dm.encode_plaintext(dm.Plaintext(ident, text, 1))
        message = sessions.encrypt(target, raw, bundle)
        stream = await host.new_stream(target, [dm.PROTOCOL_ID])
        await stream.write(frame(dm.encode_message(message)))
        return dm.decode_ack(await read_frame_within(stream, FrameDecoder(64), 30))

    try:
        async with host.run(listen=False):
            with trio.fail_after(WAIT):
                await host.connect(victim.addr())
                stream = await host.new_stream(target, [dm.KEYS_PROTOCOL_ID])
                signed = dm.decode_signed_bundle(
                    await read_frame_within(stream, FrameDecoder(dm.MAX_BUNDLE_BYTES), 30)
                )
                bundle = sessions.verified_bundle(target, peer_id_bytes(target), signed)
                ack = await send("only once", b"o" * 16, bundle)
                assert ack == dm.Ack(dm.AckStatus.DELIVERED, b"o" * 16)
            victim.next_event(
                lambda e: e["type"] == "direct" and e["text"] == "only once", timeout=WAIT
            )
            assert victim.stop() == 0
            nodes.remove(victim)
            victim = start_node(tmp_path / "victim", "--json")
            nodes.append(victim)
            victim.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
            with trio.fail_after(WAIT):
                await host.disconnect(target)  # the old connection, dead with its process
                await host.connect(victim.addr())
                # The resend: acknowledged as delivered (the sender stops sending it)...
                assert await send("only once", b"o" * 16) == dm.Ack(
                    dm.AckStatus.DELIVERED, b"o" * 16
                )
                assert await send("and then this", b"t" * 16) == dm.Ack(
                    dm.AckStatus.DELIVERED, b"t" * 16
                )
    finally:
        store.close()
    victim.next_event(lambda e: e["type"] == "direct" and e["text"] == "and then this", WAIT)
    # ... and not shown again.
    shown = [e["text"] for e in victim.chat if e["type"] == "direct"]
    assert shown == ["and then this"], shown

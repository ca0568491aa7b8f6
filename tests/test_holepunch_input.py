"""Bad DCUtR input against a real ``p2pchat`` peer: an in-process host reaches it through a real
relay process and sends malformed, oversized, out-of-order and length-bomb messages; a DCUtR
stream over a direct connection is refused (nobody may make a peer dial addresses for nothing).
Each exchange is dropped and counted; the peer serves on.
"""

from __future__ import annotations

from pathlib import Path

import trio
from p2pchat.node.p2p.host import P2PHost
from p2pchat.node.p2p.streams import StreamEnded, StreamError
from p2pchat.node.wire.dcutr import MAX_MESSAGE_BYTES, PROTOCOL_ID, Connect, Sync, encode
from p2pchat.node.wire.framing import encode_uvarint, frame

from tests.conftest import NodeProcess, start_node
from tests.test_autorelay import relay_node, relayed_peer, tcp_circuit
from tests.test_host import running_host, wait_until

ERRORS = "p2pchat_holepunch_protocol_errors_total"

BAD_EXCHANGES = {
    "garbage": frame(b"\xff\xfe not protobuf"),
    "unknown type": frame(b"\x08\x07"),  # type = 7
    "sync first": encode(Sync()),
    "oversized": frame(b"\x12" + encode_uvarint(MAX_MESSAGE_BYTES) + bytes(MAX_MESSAGE_BYTES)),
    "length bomb": encode_uvarint(4 << 30) + b"\x00" * 64,
}


async def _exchange(host: P2PHost, peer: str, data: bytes) -> bytes:
    """Open a DCUtR stream to ``peer``, send ``data``, return what comes back before it ends."""
    try:
        stream = await host.new_stream(peer, [PROTOCOL_ID])
        await stream.write(data)
    except StreamError:  # reset already: the peer refused before reading (a direct connection)
        return b""
    received = b""
    with trio.move_on_after(30):
        try:
            while True:
                received += await stream.read(4096)
        except StreamEnded:  # reset (a StreamEnded too): the expected end
            pass
    return received


async def test_malformed_dcutr_messages_are_dropped_and_counted(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    relay = relay_node(tmp_path / "relay", nodes)
    peer = relayed_peer(tmp_path / "peer", nodes, P2PCHAT_AUTORELAY__RELAYS=relay.addr())
    circuit = f"{tcp_circuit(peer, relay)}/p2p/{peer.peer_id}"
    async with running_host(tmp_path / "attacker") as (attacker, _):
        await attacker.connect(circuit)
        for count, (what, data) in enumerate(BAD_EXCHANGES.items(), start=1):
            answer = await _exchange(attacker, peer.peer_id, data)
            assert answer == b"", what
            await wait_until(lambda n=count: peer.metric(ERRORS, side="receiver") == n)
        # A well-formed CONNECT is answered with the peer's own CONNECT over the relay.
        stream = await attacker.new_stream(peer.peer_id, [PROTOCOL_ID])
        await stream.write(encode(Connect((b"\x04\x7f\x00\x00\x01\x06\x00\x01",))))
        with trio.fail_after(30):
            assert await stream.read(4096)
        await stream.reset()
    assert peer.proc.poll() is None
    assert peer.metric("p2pchat_stream_handler_failures_total") == 0


async def test_dcutr_over_a_direct_connection_is_refused(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    peer = start_node(tmp_path / "peer")
    nodes.append(peer)
    async with running_host(tmp_path / "attacker") as (attacker, _):
        await attacker.connect(peer.addr())
        connect = encode(Connect((b"\x04\x7f\x00\x00\x01\x06\x00\x01",)))
        assert await _exchange(attacker, peer.peer_id, connect) == b""
        await wait_until(lambda: peer.metric(ERRORS, side="receiver") == 1)
    assert peer.proc.poll() is None

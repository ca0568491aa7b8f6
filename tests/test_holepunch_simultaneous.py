"""Both sides of a relayed connection initiate a hole punch at once (each dialled the other
through a relay, as room rendezvous makes two reserved peers do): the smaller PeerId initiates,
the other only answers, so the two punches never collide.

A real ``p2pchat`` peer holds a reservation on a real relay process; an in-process host that
speaks DCUtR reaches it through the relay, so the peer initiates; when the peer's CONNECT
arrives, the host initiates too. Its PeerId is chosen smaller or larger than the peer's.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from p2pchat.node.p2p.host import P2PHost
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.p2p.streams import Stream, StreamEnded, StreamError, read_single_frame
from p2pchat.node.wire.dcutr import MAX_MESSAGE_BYTES, PROTOCOL_ID, Connect, decode, encode

from tests.conftest import NodeProcess
from tests.test_autorelay import relay_node, relayed_peer, tcp_circuit
from tests.test_host import running_host, wait_until

ERRORS = "p2pchat_holepunch_protocol_errors_total"
OUTCOMES = "libp2p_holepunch_outcomes_total"
# An address the peer may dial for nothing: a closed port on loopback.
NOWHERE = (b"\x04\x7f\x00\x00\x01\x06\x00\x01",)


def _identity_dir(tmp_path: Path, than: str, smaller: bool) -> Path:
    """A data dir whose identity's PeerId is smaller (or larger) than ``than``."""
    for n in itertools.count():
        path = tmp_path / f"double-{n}"
        if (str(load_or_create_identity(path).peer_id) < than) == smaller:
            return path
    raise AssertionError("unreachable")


@asynccontextmanager
async def _both_initiate(
    tmp_path: Path, nodes: list[NodeProcess], smaller: bool
) -> AsyncIterator[tuple[NodeProcess, P2PHost, Stream]]:
    """(the peer, the host, the peer's DCUtR stream to the host after its CONNECT was read):
    the peer is initiating; the test initiates too (:func:`_initiate`)."""
    relay = relay_node(tmp_path / "relay", nodes)
    peer = relayed_peer(tmp_path / "peer", nodes, P2PCHAT_AUTORELAY__RELAYS=relay.addr())
    circuit = f"{tcp_circuit(peer, relay)}/p2p/{peer.peer_id}"
    # No listen address: the peer's direct dial has nothing to try and it goes on to punch.
    async with running_host(_identity_dir(tmp_path, peer.peer_id, smaller), listen=()) as (
        host,
        _,
    ):
        incoming_send, incoming = trio.open_memory_channel[Stream](1)
        done = trio.Event()

        async def handler(stream: Stream) -> None:
            await incoming_send.send(stream)
            await done.wait()  # the stream stays the test's until the end

        host.set_stream_handler(PROTOCOL_ID, handler)
        await host.connect(circuit)
        with trio.fail_after(60):
            theirs = await incoming.receive()
            assert isinstance(decode(await read_single_frame(theirs, MAX_MESSAGE_BYTES)), Connect)
        try:
            yield peer, host, theirs
        finally:
            done.set()


def _logged(node: NodeProcess, event: str) -> bool:
    """Whether ``node`` has logged ``event`` so far (never waits: the host's event loop runs
    in this thread)."""
    with contextlib.suppress(queue.Empty):
        while True:
            with contextlib.suppress(json.JSONDecodeError):
                node.log.append(json.loads(node.lines.get_nowait()))
    return any(entry.get("event") == event for entry in node.log)


async def _reply(stream: Stream) -> bytes | None:
    """The next frame on ``stream``, or None when the peer ended or reset it."""
    with trio.fail_after(30):
        try:
            return await read_single_frame(stream, MAX_MESSAGE_BYTES)
        except StreamEnded:
            return None


async def _initiate(host: P2PHost, peer: str) -> bytes | None:
    """Open a DCUtR stream to ``peer`` and send a CONNECT: the peer's answer, or None when it
    refused (its reset can land at the stream's opening, our write or our read)."""
    try:
        stream = await host.new_stream(peer, [PROTOCOL_ID])
        await stream.write(encode(Connect(NOWHERE)))
    except StreamError:  # refused, or reset already
        return None
    return await _reply(stream)


async def test_the_smaller_peer_id_goes_on_initiating(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    async with _both_initiate(tmp_path, nodes, smaller=False) as (peer, host, theirs):
        assert host.peer_id > peer.peer_id
        # The peer refuses to answer ours: its own exchange goes on.
        assert await _initiate(host, peer.peer_id) is None
        await theirs.write(encode(Connect(NOWHERE)))  # answer it: the punch proceeds
        assert await _reply(theirs) is not None  # its SYNC
        assert not _logged(peer, "hole punch left to the peer (both initiated)")
    for side in ("initiator", "receiver"):
        assert peer.metric(ERRORS, side=side) == 0
    assert peer.proc.poll() is None


async def test_the_larger_peer_id_answers_instead(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    async with _both_initiate(tmp_path, nodes, smaller=True) as (peer, host, theirs):
        assert host.peer_id < peer.peer_id
        # The peer answers ours with its CONNECT ...
        answer = await _initiate(host, peer.peer_id)
        assert answer is not None and isinstance(decode(answer), Connect)
        # ... and, when we refuse its own exchange, leaves the punch to us without an error.
        await theirs.reset()
        await wait_until(lambda: _logged(peer, "hole punch left to the peer (both initiated)"))
        for side in ("initiator", "receiver"):
            assert peer.metric(ERRORS, side=side) == 0
        for outcome in ("success", "failed", "no_suitable_address"):
            assert peer.metric(OUTCOMES, side="initiator", outcome=outcome) == 0
    assert peer.proc.poll() is None

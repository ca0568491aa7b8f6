"""The host layer's fixes for py-libp2p's per-message costs keep their behaviour.

Each test fails on the unpatched library: a WINDOW_UPDATE per Yamux read (and its tuning
switches read from the environment for every frame), a signed peer record rebuilt for every
pubsub RPC, and one re-verified for every RPC received; an RPC written per message; an O(n)
validation cache; a task started per received message (and a failure in one stopping the
service); our own fresh signatures verified again; a stream read per varint byte of a pubsub
RPC; a socket receive per read of a TCP connection; every peer scored for every message.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from libp2p.exceptions import ParseError
from libp2p.io.exceptions import IncompleteReadError, MessageTooLarge
from libp2p.io.trio import TrioTCPStream
from libp2p.peer.id import ID
from libp2p.pubsub import gossipsub as gossipsub_module
from libp2p.pubsub import pubsub as pubsub_module
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.score import PeerScorer
from libp2p.stream_muxer.yamux.yamux import YamuxStream
from libp2p.tools.anyio_service.trio_manager import TrioManager
from p2pchat.node.p2p import patches, records, rpc_queue
from p2pchat.node.p2p import pubsub as p2pchat_pubsub
from p2pchat.node.wire.framing import encode_uvarint, frame

from tests.test_host import loopback_addr, running_host


@pytest.fixture(autouse=True)
def _library_patched() -> None:
    """The patches are the host's to apply; tests here also use library parts without one."""
    patches.apply()


async def test_yamux_batches_window_updates_like_go_yamux_and_reads_its_switches_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates: list[int] = []
    original = YamuxStream.send_window_update
    switches_read: list[str] = []
    getenv = os.getenv

    def recording_getenv(name: str, default: str | None = None) -> str | None:
        if name.startswith("PY_YAMUX_"):
            switches_read.append(name)
        return getenv(name, default)

    monkeypatch.setattr(os, "getenv", recording_getenv)

    async def counting(self: YamuxStream, delta: int, skip_lock: bool = False) -> None:
        updates.append(delta)
        await original(self, delta, skip_lock=skip_lock)

    monkeypatch.setattr(YamuxStream, "send_window_update", counting)
    async with (
        running_host(tmp_path / "a") as (server, _),
        running_host(tmp_path / "b") as (client, _),
    ):
        received = trio.Event()
        chunks: list[bytes] = []

        async def sink(stream: object) -> None:
            while len(b"".join(chunks)) < 50 * 100:
                chunks.append(await stream.read(100))  # type: ignore[attr-defined]
            received.set()

        server.set_stream_handler("/test/sink/1.0.0", sink)
        await client.connect(loopback_addr(server))
        stream = await client.new_stream(server.peer_id, ["/test/sink/1.0.0"])
        for _ in range(50):
            await stream.write(b"x" * 100)
        with trio.fail_after(20):
            await received.wait()
    # Window-sized updates come with new streams (auto-tuning); an update per 100-byte read would
    # carry 100-byte deltas. 5 KB is far below half a window: go-yamux sends none for them.
    small = [delta for delta in updates if delta <= 50 * 100]
    assert not small, f"{len(small)} small window updates for 50 reads of 100 bytes"
    assert not switches_read, f"the environment read {len(switches_read)} times"


class _FakeHost:
    """Just the peerstore calls the record cache makes."""

    def __init__(self) -> None:
        self.local_record: object = object()

    def get_peerstore(self) -> _FakeHost:
        return self

    def get_local_record(self) -> object:
        return self.local_record

    def get_peer_record(self, peer: ID) -> None:
        return None


def test_our_signed_peer_record_is_built_once_per_refresh_period() -> None:
    calls: list[object] = []

    def build(host: object) -> tuple[bytes, bool]:
        calls.append(host)
        return b"record", True

    send = records.cached_record_sender(build)  # type: ignore[arg-type]
    host = _FakeHost()
    assert send(host) == (b"record", True)  # type: ignore[arg-type]
    for _ in range(100):
        assert send(host) == (b"record", False)  # type: ignore[arg-type]
    assert len(calls) == 1
    # The library issued a new local record (identify does when our addresses change): ours
    # must follow at once, or receivers holding the newer one drop our RPCs (trap 21).
    host.local_record = object()
    send(host)  # type: ignore[arg-type]
    assert len(calls) == 2
    assert pubsub_module.env_to_send_in_RPC.__name__ == "env_to_send_in_rpc"
    assert gossipsub_module.env_to_send_in_RPC.__name__ == "env_to_send_in_rpc"


def test_a_peer_record_is_verified_once_and_a_different_one_again() -> None:
    verdicts = {b"good": True, b"forged": False}
    verified: list[bytes] = []

    def consume(message: rpc_pb2.RPC, host: object, peer: ID) -> bool:
        verified.append(bytes(message.senderRecord))
        return verdicts[bytes(message.senderRecord)]

    check = records.remembering_record_consumer(consume)  # type: ignore[arg-type]
    peer = ID(b"peer-one")
    good, forged = rpc_pb2.RPC(senderRecord=b"good"), rpc_pb2.RPC(senderRecord=b"forged")
    host = _FakeHost()
    assert all(check(good, host, peer) for _ in range(10))  # type: ignore[arg-type]
    assert not check(forged, host, peer)  # type: ignore[arg-type]
    assert not check(forged, host, peer)  # type: ignore[arg-type]  # refusals are not remembered
    assert not check(good, host, ID(b"peer-two")) or verified.count(b"good") == 2  # type: ignore[arg-type]
    assert verified.count(b"good") == 2 and verified.count(b"forged") == 2
    assert pubsub_module.maybe_consume_signed_record.__name__ == "maybe_consume_signed_record"


async def test_yamux_still_moves_more_than_a_window(tmp_path: Path) -> None:
    # With updates only at half a window, a transfer far larger than the window must still
    # complete: the sender is never left without credit.
    total = 4 * 1024 * 1024
    async with (
        running_host(tmp_path / "a") as (server, _),
        running_host(tmp_path / "b") as (client, _),
    ):
        received = 0
        done = trio.Event()

        async def sink(stream: object) -> None:
            nonlocal received
            while received < total:
                received += len(await stream.read(65536))  # type: ignore[attr-defined]
            done.set()

        server.set_stream_handler("/test/bulk/1.0.0", sink)
        await client.connect(loopback_addr(server))
        stream = await client.new_stream(server.peer_id, ["/test/bulk/1.0.0"])
        with trio.fail_after(60):
            for _ in range(total // 16384):
                await stream.write(b"y" * 16384)
            await done.wait()
    assert received == total


class NoDrops:
    def message_dropped(self, topic: str, reason: str) -> None:
        raise AssertionError(f"unexpected drop: {reason}")


@dataclass
class _Room:
    """Two nodes' pubsubs on two connected hosts, both in "room" and in each other's mesh; B's
    messages arrive in ``received``."""

    a: p2pchat_pubsub.NodeGossip
    b: p2pchat_pubsub.NodeGossip
    received: AsyncIterator[list[p2pchat_pubsub.GossipMessage]]

    async def collect(self, until: Callable[[list[bytes]], bool]) -> list[bytes]:
        """The payloads B receives, until ``until`` says enough."""
        got: list[bytes] = []
        with trio.fail_after(60):
            async for batch in self.received:
                got += [message.data for message in batch]
                if until(got):
                    return got
        return got


def _in_mesh(gossip: p2pchat_pubsub.NodeGossip, topic: str, peer: str) -> bool:
    return peer in {str(each) for each in gossip._router.mesh.get(topic, ())}


@asynccontextmanager
async def _room(tmp_path: Path, a_drops: object, b_drops: object) -> AsyncIterator[_Room]:
    async with (
        running_host(tmp_path / "a") as (a_host, _),
        running_host(tmp_path / "b") as (b_host, _),
    ):
        # A 2,000-message burst from one sender measures the pubsub, not the sender budget.
        unbudgeted = p2pchat_pubsub.PubsubLimits(budget=None)
        a = p2pchat_pubsub.NodeGossip(a_host, limits=unbudgeted)
        b = p2pchat_pubsub.NodeGossip(b_host, limits=unbudgeted)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            await a.handle(a_drops).join("room", lambda data: None)  # type: ignore[arg-type]
            received = await b.handle(b_drops).join("room", lambda data: None)  # type: ignore[arg-type]
            await a_host.connect(loopback_addr(b_host))
            # Each in the other's mesh: a message published then goes to the other for sure,
            # however slow the machine is (a subscriber outside the mesh may not get it).
            with trio.fail_after(60):
                while not (
                    _in_mesh(a, "room", b_host.peer_id) and _in_mesh(b, "room", a_host.peer_id)
                ):
                    await trio.sleep(0.05)
            yield _Room(a, b, received)
            nursery.cancel_scope.cancel()


async def test_idontwant_only_for_messages_of_a_kilobyte_or_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent_for: list[bytes] = []
    original = gossipsub_module.GossipSub._emit_idontwant_for_message

    async def recording(self: object, msg_id: bytes, topic_ids: object) -> None:
        sent_for.append(msg_id)
        await original(self, msg_id, topic_ids)

    monkeypatch.setattr(gossipsub_module.GossipSub, "_emit_idontwant_for_message", recording)
    async with _room(tmp_path, NoDrops(), NoDrops()) as room:
        await room.a.publish("room", b"small")
        await room.a.publish("room", b"L" * 2048)
        got = await room.collect(lambda got: len(got) >= 2)
    assert got == [b"small", b"L" * 2048]
    assert len(sent_for) == 2  # the large message, once when A published and once at B


def _rpc(*payloads: bytes) -> rpc_pb2.RPC:
    return rpc_pb2.RPC(publish=[rpc_pb2.Message(data=payload) for payload in payloads])


def _payloads(rpc: rpc_pb2.RPC | None) -> list[bytes]:
    assert rpc is not None
    return [bytes(message.data) for message in rpc.publish]


async def test_rpcs_queued_for_a_peer_leave_merged_in_order_within_the_budget() -> None:
    queue = rpc_queue.CoalescingRpcQueue()
    for n in range(5):
        assert queue.push(_rpc(b"m%d" % n))
    assert len(queue) == 5
    assert _payloads(await queue.pop()) == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert len(queue) == 0

    big = b"x" * (rpc_queue.COALESCE_BYTES // 2 + 1)
    queue.push(_rpc(big))
    queue.push(_rpc(big))
    queue.push(_rpc(b"tail"))
    assert _payloads(await queue.pop()) == [big]  # the second would overflow the budget
    assert len(queue) == 2
    assert _payloads(await queue.pop()) == [big, b"tail"]  # the held one goes first
    queue.push(_rpc(b"last"))
    queue.close()
    assert _payloads(await queue.pop()) == [b"last"]
    assert await queue.pop() is None
    assert pubsub_module.RpcQueue is rpc_queue.CoalescingRpcQueue


async def test_an_rpc_given_back_leaves_first_and_moves_with_the_queue() -> None:
    # The pubsub writer on a nearly spent circuit (node/p2p/circuit_room.py) merges only what
    # fits, and gives back an RPC that does not fit: it must be the next out, here or on the
    # queue's successor (the stream on the next circuit), ahead of everything behind it.
    queue = rpc_queue.CoalescingRpcQueue()
    for n in range(4):
        queue.push(_rpc(b"m%d" % n))
    first = await queue.pop(max_bytes=1)  # merges nothing: the room left was 1 byte
    assert _payloads(first) == [b"m0"]
    queue.put_front(first)
    assert len(queue) == 4
    successor = queue.hand_over()
    assert await queue.pop() is None  # the old writer ends: its successor writes the rest
    assert _payloads(await successor.pop()) == [b"m0"]
    assert _payloads(await successor.pop()) == [b"m1", b"m2", b"m3"]


def test_validation_results_are_bounded_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(p2pchat_pubsub.time, "time", lambda: now[0])
    cache = p2pchat_pubsub._ValidationResults(ttl=10, max_size=3)
    for n in range(4):
        cache.put(b"%d" % n, pubsub_module.ValidationResult(is_valid=True, timestamp=now[0]))
    assert cache.get(b"0") is None  # least recently used, evicted
    assert cache.get(b"1") is not None
    cache.put(b"4", pubsub_module.ValidationResult(is_valid=False, timestamp=now[0]))
    assert cache.get(b"2") is None and cache.get(b"1") is not None  # "1" was used, "2" was not
    now[0] += 11
    assert cache.get(b"4") is None  # expired
    cache.clear_expired()
    assert cache.get(b"1") is None and cache.get(b"3") is None


class _Drops:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def message_dropped(self, topic: str, reason: str) -> None:
        self.reasons.append(reason)


async def test_received_messages_are_handled_in_order_by_one_worker_not_a_task_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    run_task = TrioManager.run_task

    def recording(self: TrioManager, async_fn: object, *args: object, **kwargs: object) -> None:
        started.append(getattr(async_fn, "__name__", ""))
        run_task(self, async_fn, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(TrioManager, "run_task", recording)
    verified: list[bytes] = []
    verify = p2pchat_pubsub.has_valid_signature

    def counting_verify(message: rpc_pb2.Message) -> bool:
        verified.append(bytes(message.data))
        return bool(verify(message))

    monkeypatch.setattr(p2pchat_pubsub, "has_valid_signature", counting_verify)
    drops = _Drops()
    total = 500
    batches = 0

    def count_batches(got: list[bytes]) -> bool:
        nonlocal batches
        batches += 1
        return len(got) >= total

    async with _room(tmp_path, _Drops(), drops) as room:
        for n in range(total):
            await room.a.publish("room", b"%d" % n)
        got = await room.collect(count_batches)
    assert got == [b"%d" % n for n in range(total)]
    assert batches < total  # a burst arrives in batches, so it can be stored in few writes
    assert "push_msg" not in started
    # B verified each message once; A did not verify the signatures it had just made.
    assert sorted(verified) == sorted(got)
    assert drops.reasons == []


async def test_a_message_whose_processing_fails_is_counted_and_the_next_one_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In the library a failure inside a message's task would stop the whole pubsub service.
    publish = gossipsub_module.GossipSub.publish
    failing_router: list[object] = []

    async def failing(self: object, forwarder: ID, message: rpc_pb2.Message) -> None:
        if self in failing_router and message.data == b"poison":
            raise RuntimeError("a bug in the router")
        await publish(self, forwarder, message)

    monkeypatch.setattr(gossipsub_module.GossipSub, "publish", failing)
    drops = _Drops()
    async with _room(tmp_path, _Drops(), drops) as room:
        failing_router.append(room.b._router)
        await room.a.publish("room", b"poison")
        await room.a.publish("room", b"after")
        await room.collect(lambda got: b"after" in got)
    assert drops.reasons == ["internal_error"]


def test_only_an_rpc_over_the_limit_is_split() -> None:
    queue = rpc_queue.CoalescingRpcQueue()
    small = _rpc(b"a", b"b")
    assert queue.split_rpc(small) == [small]
    half = b"x" * (queue.max_message_size // 2 + 16)
    parts = queue.split_rpc(_rpc(half, half))
    assert [_payloads(part) for part in parts] == [[half], [half]]


async def test_the_heartbeat_stays_at_one_second_in_a_small_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # py-libp2p's "adaptive gossip" rates a mesh of fewer than 6 peers unhealthy and then, for
    # "faster recovery", sets the heartbeat to 30-60 s: a chat room of a few peers always is
    # such a mesh, so 30 s after start its meshes were repaired once a minute, and its message
    # cache (5 heartbeats) kept minutes of messages, replayed to every peer that (re)joined
    # (seen in the container NAT lab: a peer back after 40 s got them live, not by catch-up).
    offset = [0.0]
    clock = SimpleNamespace(**vars(time))
    clock.time = lambda: time.time() + offset[0]
    monkeypatch.setattr(gossipsub_module, "time", clock)
    async with _room(tmp_path, NoDrops(), NoDrops()) as room:
        offset[0] = 31.0  # the library's first health update is due at the next heartbeat
        await trio.sleep(2.5)  # a few heartbeats
        for gossip in (room.a, room.b):
            assert gossip._router.heartbeat_interval == 1


class _ChunkedStream:
    """A stream whose reads return the given chunks in turn (then end), counting the reads."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.reads = 0

    async def read(self, n: int | None = None) -> bytes:
        self.reads += 1
        return self.chunks.pop(0) if self.chunks else b""


def _varint_framed(*payloads: bytes) -> bytes:
    return b"".join(map(frame, payloads))


async def test_pubsub_rpcs_that_arrive_together_are_read_with_one_stream_read() -> None:
    read_rpc = pubsub_module.read_varint_prefixed_bytes_limited  # what the library calls
    rpcs = [b"a" * 10, b"b" * 300, b"c"]
    stream = _ChunkedStream(_varint_framed(*rpcs)[:-2], _varint_framed(*rpcs)[-2:])
    assert await read_rpc(stream, 1 << 20) == rpcs[0]
    with trio.testing.assert_checkpoints():  # served from the buffer, yet a checkpoint
        assert await read_rpc(stream, 1 << 20) == rpcs[1]
    assert await read_rpc(stream, 1 << 20) == rpcs[2]
    assert stream.reads == 2  # the library read each varint byte, then each body, alone

    with pytest.raises(MessageTooLarge):
        await read_rpc(_ChunkedStream(encode_uvarint(2_000_000)), 1 << 20)
    with pytest.raises(ParseError):
        await read_rpc(_ChunkedStream(b"\xff" * 11), 1 << 80)
    with pytest.raises(IncompleteReadError):
        await read_rpc(_ChunkedStream(_varint_framed(b"cut short")[:-1]), 1 << 20)


async def test_pubsub_reads_received_rpcs_through_our_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    ours = pubsub_module.read_varint_prefixed_bytes_limited

    async def counting(stream: object, max_length: int) -> bytes:
        calls.append(max_length)
        return await ours(stream, max_length)  # type: ignore[no-any-return]

    monkeypatch.setattr(pubsub_module, "read_varint_prefixed_bytes_limited", counting)
    async with _room(tmp_path, NoDrops(), NoDrops()) as room:
        await room.a.publish("room", b"through the reader")
        assert await room.collect(lambda got: bool(got)) == [b"through the reader"]
    assert calls  # the library still reads RPCs through the module-level name we replace


async def test_a_tcp_stream_serves_small_reads_from_one_receive() -> None:
    sender, receiver = trio.testing.memory_stream_pair()
    receives = 0
    receive_some = receiver.receive_some

    async def counting(max_bytes: int | None = None) -> bytes:
        nonlocal receives
        receives += 1
        return await receive_some(max_bytes)

    receiver.receive_some = counting  # type: ignore[method-assign]
    tcp = TrioTCPStream(receiver)  # type: ignore[arg-type]
    await sender.send_all(b"\x00\x05hello\x00\x03abc")
    # Noise's pattern: an exact read of a 2-byte length, then one of the body.
    assert [await tcp.read(2), await tcp.read(5), await tcp.read(2)] == [
        b"\x00\x05",
        b"hello",
        b"\x00\x03",
    ]
    with trio.testing.assert_checkpoints():  # from the buffer, but a checkpoint as before
        assert await tcp.read(3) == b"abc"
    assert receives == 1  # the library: one receive per read
    await sender.send_all(b"more")
    assert await tcp.read(-1) == b"more"  # -1: what there is, not an end of stream
    await sender.send_all(b"tail")
    await sender.aclose()
    assert await tcp.read(100) == b"tail"
    assert await tcp.read(100) == b""  # the end of the stream, as the library reports it


async def test_no_timestamp_is_kept_per_message_published_or_forwarded(tmp_path: Path) -> None:
    async with _room(tmp_path, NoDrops(), NoDrops()) as room:
        for n in range(50):
            await room.a.publish("room", b"m%d" % n)
        assert len(await room.collect(lambda got: len(got) >= 50)) == 50
        for gossip in (room.a, room.b):  # the publisher, and the receiver that forwarded
            kept = gossip._router.recent_message_deliveries
            assert sum(len(times) for times in kept.values()) == 0  # the library: 50 each


async def test_peers_are_not_scored_for_every_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With all weights at zero (the library's defaults) scores stay 0: scoring only cost CPU.
    calls: list[str] = []
    for method in ("allow_gossip", "is_graylisted", "allow_publish", "on_first_delivery"):
        original = getattr(PeerScorer, method)

        def counting(
            self: PeerScorer, *args: object, _name: str = method, _f: Any = original
        ) -> Any:
            calls.append(_name)
            return _f(self, *args)

        monkeypatch.setattr(PeerScorer, method, counting)
    async with _room(tmp_path, NoDrops(), NoDrops()) as room:
        for n in range(50):
            await room.a.publish("room", b"%d" % n)
        got = await room.collect(lambda got: len(got) >= 50)
    assert len(got) == 50
    assert not calls, f"{len(calls)} scorer calls for 50 messages"

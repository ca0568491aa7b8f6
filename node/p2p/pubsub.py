"""GossipSub for chat rooms, with py-libp2p's lossy defaults fixed (trap 3).

What the library does by default, and what this module does instead:

- ``heartbeat_interval`` 120 s -> 1 s (the spec's value), so meshes form and repair quickly;
- "adaptive gossip" rates any mesh of fewer than 6 peers (every small room) unhealthy and then
  sets the heartbeat to 30-60 s, and the mesh degrees and gossip factor with it -> off: the
  heartbeat stays at 1 s (at 30-60 s the message cache held minutes of messages, replayed to
  every peer that rejoined a room), and the degrees are the ones below;
- spam protection limits every forwarder (and our own publishes) to 10 msg/s per topic and
  silently drops the rest -> off: honest bursts must arrive; abuse is bounded by message size
  limits and validation instead;
- eclipse protection wants mesh peers from 3 distinct IPs -> off: peers of one LAN, one NAT or one
  test machine share an address;
- the per-peer outbound queue and the subscription channel hold 32 messages and drop the rest ->
  :data:`QUEUE_SIZE` (a 2,000-message burst must pass a 3-peer line);
- IDONTWANT is sent for every message, however small -> only from 1 KiB, as go-libp2p does;
- every RPC is its own stream write (one Yamux frame, one Noise encryption, one send() each) ->
  RPCs queued for a peer are merged into one, up to :data:`COALESCE_BYTES`, as go-libp2p's
  ``appendOrMergeRPC`` does;
- peer scoring runs for every message with all weights zero (scores stay 0) -> off, as in
  go-libp2p unless configured;
- the validation-result cache is an LRU kept in a list, O(n) per message -> an O(1) one;
- every received message is processed in a task of its own, and starting a task scans every
  live task of the service (quadratic under a burst) -> one worker processes received messages
  in arrival order (:class:`_ChatPubsub`);
- StrictSign is kept (sign every message, verify every signature), with go-libp2p's rules and
  each sender's key resolved once, not per message (:mod:`~p2pchat.node.p2p.signatures`), and a
  message that fails verification is counted before the library drops it (verified once, not
  twice);
- (trap 23, not in the notes) a peer's pubsub streams stay on the connection they were opened
  on; when it closes while another connection to the peer stays open (a relayed connection
  replaced by a hole-punched one), the library keeps the peer with dead streams and sends into
  them until a write fails, then forgets the peer's subscriptions -> when a direct connection
  to a peer appears, its outbound stream moves there, queue and all (:meth:`_ChatPubsub.move_to`);
- (trap 26, not in the notes) pubsub learns of peers only from connections opened after it was
  created: a peer already connected is never sent our subscriptions, so it never sends us a
  message -> when the pubsub starts, every connected peer is registered, as go-libp2p does;
- (trap 30, not in the notes) GossipSub writes to a peer's stream from its send queue and
  from its own tasks, and Yamux lets another writer in between the frames of a large write:
  the peer got two RPCs interleaved and reset the stream -> one RPC at a time per stream
  (:meth:`_ChatPubsub.write_msg`);
- (trap 27, not in the notes) with adaptive gossip off, the time of every message published
  or forwarded is kept forever (only the health check trims that list) -> dropped after each
  publish (:class:`_ChatGossipSub`).

Roles use :class:`Gossip`; the message they receive is a :class:`GossipMessage` whose
``envelope`` is the signed pubsub message as sent on the wire, so it can be stored and verified
again later (history sync).
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from weakref import WeakKeyDictionary

import structlog
import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.envelope import consume_envelope
from libp2p.peer.id import ID
from libp2p.pubsub import gossipsub as libp2p_gossipsub_module
from libp2p.pubsub import pubsub as libp2p_pubsub_module
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub, ValidationResult
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils import encode_varint_prefixed
from p2pchat.node.p2p import pubsub_reader  # noqa: F401  (imported for its fix; see module)
from p2pchat.node.p2p.host import ConnectionInfo, P2PHost, transport_label
from p2pchat.node.p2p.signatures import has_valid_signature

# Sized for bursts: 4 KiB messages x 8,192 = 32 MiB worst case per queue, bounded.
QUEUE_SIZE = 8192
MAX_RPC_BYTES = 1 << 20  # the spec's (and go-libp2p's) 1 MiB
# Received messages handled back to back, and delivered to a room as one batch, at most: bounds
# the work done between two checkpoints.
MAX_BATCH = 256
MOVE_QUEUE = 256  # direct connections waiting for a pubsub stream move

# The queue sizes are module-level constants and default arguments inside the library, read
# when a subscription or a peer queue is created. One pubsub runs per process, so setting them
# here, once, is safe. Re-check on every library upgrade.
libp2p_pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = QUEUE_SIZE

# Merged RPCs stay far below the receiver's 1 MiB limit and keep one write short.
COALESCE_BYTES = 64 * 1024


class _CoalescingRpcQueue(RpcQueue):  # type: ignore[misc]
    """A peer's outbound queue whose :meth:`pop` merges every RPC already waiting behind the
    first one (up to :data:`COALESCE_BYTES`) into it.

    Under load this turns N stream writes into one; when idle it costs nothing, so latency is
    unchanged. Merging is protobuf ``MergeFrom``: repeated fields (messages, subscriptions,
    control entries) are concatenated in queue order, which is what a receiver would have
    processed anyway. Relies on the base class keeping its items in ``_queue`` (re-check on
    every library upgrade).
    """

    def __init__(self) -> None:
        super().__init__(max_size=QUEUE_SIZE)
        self._held: rpc_pb2.RPC | None = None  # popped, but did not fit the last merge

    def hand_over(self) -> _CoalescingRpcQueue:
        """A new queue holding everything still waiting here, in order; this one is closed, so
        its consumer ends once its current write (if any) is done."""
        successor = _CoalescingRpcQueue()
        if self._held is not None:
            successor.push(self._held)
            self._held = None
        while (item := self._queue.pop()) is not None:
            successor.push(item)
        self.close()
        return successor

    def __len__(self) -> int:
        return int(super().__len__()) + (self._held is not None)

    def split_rpc(self, rpc: rpc_pb2.RPC) -> list[rpc_pb2.RPC]:
        # The library walks every item of every RPC to size it, even one far below the limit.
        if rpc.ByteSize() <= self.max_message_size:
            return [rpc]
        return list(super().split_rpc(rpc))

    async def pop(self) -> rpc_pb2.RPC | None:
        if self._held is not None:
            first, self._held = self._held, None
        else:
            first = await super().pop()
            if first is None:
                return None
        size = first.ByteSize()
        while size < COALESCE_BYTES:
            following = self._queue.pop()
            if following is None:
                break
            following_size = following.ByteSize()
            if size + following_size > COALESCE_BYTES:
                self._held = following
                break
            first.MergeFrom(following)
            size += following_size
        return first


libp2p_pubsub_module.RpcQueue = _CoalescingRpcQueue


class _ValidationResults:
    """The library's validation-result cache (same interface, same LRU and TTL rules) with O(1)
    operations; the library's keeps its LRU order in a list and scans it for every message."""

    def __init__(self, ttl: float, max_size: int) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._results: OrderedDict[bytes, ValidationResult] = OrderedDict()

    def get(self, msg_id: bytes) -> ValidationResult | None:
        result = self._results.get(msg_id)
        if result is None:
            return None
        if time.time() - result.timestamp > self.ttl:
            del self._results[msg_id]
            return None
        self._results.move_to_end(msg_id)
        return result

    def put(self, msg_id: bytes, result: ValidationResult) -> None:
        self._results[msg_id] = result
        self._results.move_to_end(msg_id)
        while len(self._results) > self.max_size:
            self._results.popitem(last=False)

    def clear_expired(self) -> None:
        oldest_kept = time.time() - self.ttl
        while self._results:
            msg_id, result = next(iter(self._results.items()))
            if result.timestamp >= oldest_kept:
                return
            del self._results[msg_id]


# py-libp2p attaches this node's signed peer record to every pubsub RPC it sends and verifies
# the one in every RPC it receives: per message, per peer, an address lookup plus an Ed25519
# verification. Profiles of a relaying peer put that at about a quarter of its CPU. The record
# only changes when our addresses do, so it is rebuilt at most every RECORD_REFRESH_SECONDS, and
# a record byte-identical to one already verified for the same peer is not verified again.
RECORD_REFRESH_SECONDS = 10.0
MAX_REMEMBERED_RECORDS = 10_000


#
# Trap 21 (not in the notes): a receiver drops a whole RPC, subscriptions included, when its
# record is older than one it already has for the sender (identify may have brought a newer
# one). A peer whose addresses changed (a relay reservation) and whose first RPC still carried
# the previous record was then never known to be subscribed. So the cached record is dropped as
# soon as the library issues a new local record (identify does, on address changes), and a
# validly signed but stale record no longer costs the message it came with.


def _cached_record_sender(
    build: Callable[[IHost], tuple[bytes, bool]],
) -> Callable[[IHost], tuple[bytes, bool]]:
    cache: dict[int, tuple[float, bytes, object]] = {}

    def env_to_send_in_rpc(host: IHost) -> tuple[bytes, bool]:
        now = time.monotonic()
        cached = cache.get(id(host))
        local = host.get_peerstore().get_local_record()
        if cached is not None and cached[2] is local and now - cached[0] < RECORD_REFRESH_SECONDS:
            return cached[1], False
        envelope, created = build(host)
        cache[id(host)] = (now, envelope, host.get_peerstore().get_local_record())
        return envelope, created

    return env_to_send_in_rpc


def _is_stale_record(message: rpc_pb2.RPC, host: IHost, peer_id: ID) -> bool:
    """Whether the RPC's record is validly signed by ``peer_id`` but not newer than the one
    already stored for it."""
    stored = host.get_peerstore().get_peer_record(peer_id)
    if stored is None:
        return False
    try:
        _, record = consume_envelope(message.senderRecord, "libp2p-peer-record")
    except Exception:  # bad signature or encoding: not merely stale
        return False
    return bool(record.peer_id == peer_id and record.seq <= stored.record().seq)


def _remembering_record_consumer(
    consume: Callable[[rpc_pb2.RPC, IHost, ID], bool],
) -> Callable[[rpc_pb2.RPC, IHost, ID], bool]:
    verified: dict[ID, bytes] = {}

    def maybe_consume_signed_record(message: rpc_pb2.RPC, host: IHost, peer_id: ID) -> bool:
        if message.HasField("senderRecord") and verified.get(peer_id) == message.senderRecord:
            return True
        accepted = consume(message, host, peer_id)
        if not accepted and message.HasField("senderRecord"):
            return _is_stale_record(message, host, peer_id)
        if accepted and message.HasField("senderRecord"):
            if len(verified) >= MAX_REMEMBERED_RECORDS:
                verified.clear()  # bounded memory; the cost is one more verification per peer
            verified[peer_id] = bytes(message.senderRecord)
        return accepted

    return maybe_consume_signed_record


for _module in (libp2p_pubsub_module, libp2p_gossipsub_module):
    _module.env_to_send_in_RPC = _cached_record_sender(_module.env_to_send_in_RPC)
    _module.maybe_consume_signed_record = _remembering_record_consumer(
        _module.maybe_consume_signed_record
    )


@dataclass(frozen=True, slots=True)
class GossipMessage:
    """A verified message received on (or published to) a topic."""

    topic: str
    data: bytes
    sender: str  # PeerId of the signer (StrictSign: verified)
    seqno: bytes
    envelope: bytes  # the signed pubsub Message protobuf, as on the wire


class GossipObserver(Protocol):
    """Receives pubsub drop events (for metrics)."""

    def message_dropped(self, topic: str, reason: str) -> None: ...


PayloadValidator = Callable[[bytes], str | None]
"""Checks a payload before it is accepted and forwarded: None if valid, else a drop reason."""


@functools.lru_cache(maxsize=4096)
def _peer_id_text(from_id: bytes) -> str:
    # base58 of the same few senders, once per message, was ~5% of a peer's CPU in a burst.
    return str(ID(from_id))


def to_gossip_message(message: rpc_pb2.Message, topic: str) -> GossipMessage:
    """Describe a library pubsub message."""
    return GossipMessage(
        topic=topic,
        data=bytes(message.data),
        sender=_peer_id_text(bytes(message.from_id)),
        seqno=bytes(message.seqno),
        envelope=message.SerializeToString(),
    )


class _ReportingSignatureCheck:
    """Stands in for the library's signature check inside its pubsub module: our check
    (:mod:`~p2pchat.node.p2p.signatures`: go-libp2p's rules, each sender's key resolved once),
    and a failure is reported (for the drop counter) before the library silently drops the
    message. The library calls it after its seen-cache check, so each bad message counts once."""

    def __init__(self) -> None:
        self.observer: GossipObserver | None = None
        # The message this node has just signed and is publishing: verifying our own fresh
        # signature proves nothing and was a sixth of a sending peer's CPU.
        self.signed_here: rpc_pb2.Message | None = None

    def __call__(self, message: rpc_pb2.Message) -> bool:
        if message is self.signed_here:
            self.signed_here = None
            return True
        valid = has_valid_signature(message)
        if not valid and self.observer is not None:
            for topic in message.topicIDs[:1]:
                self.observer.message_dropped(str(topic), "bad_signature")
        return valid


_signature_check = _ReportingSignatureCheck()
libp2p_pubsub_module.signature_validator = _signature_check


log = structlog.get_logger("p2pchat.pubsub")


class _ManagerView:
    """The pubsub service's task manager as :class:`_ChatPubsub` shows it to the library: the
    same in every way, except that starting ``push_msg`` for a received message queues it."""

    def __init__(self, manager: Any, push: Callable[..., Any], enqueue: Callable[..., None]):
        self.wrapped = manager
        self._push = push
        self._enqueue = enqueue

    def run_task(self, async_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if async_fn == self._push:
            self._enqueue(*args)
        else:
            self.wrapped.run_task(async_fn, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


class _ChatPubsub(Pubsub):  # type: ignore[misc]
    """Pubsub whose received messages are validated and forwarded by one worker, in order.

    The library starts a task per received message (``manager.run_task(self.push_msg, ...)``);
    each start scans every live task of the service to find its parent, so a burst of N costs
    O(N^2), and one failing message would stop the whole service. Here they go into a bounded
    queue (:data:`QUEUE_SIZE`; past it a message is dropped and counted as ``queue_full``) that
    :meth:`process_received` drains; a message whose processing fails is logged and counted.
    """

    def __init__(self, *args: Any, observer: GossipObserver, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._observer = observer
        self._received_in, self._received_out = trio.open_memory_channel[
            tuple[ID, rpc_pb2.Message]
        ](QUEUE_SIZE)
        self._view: _ManagerView | None = None
        self._my_id_bytes = self.my_id.to_bytes()
        self._write_locks: WeakKeyDictionary[INetStream, trio.Lock] = WeakKeyDictionary()

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        # Trap 30: besides a peer's send queue, GossipSub writes to the same stream itself
        # (recent and pending messages for a peer that has just subscribed), and Yamux writes
        # a large RPC as several frames, letting other writers in between: the peer read the
        # two RPCs' bytes interleaved, could not parse them, and reset the stream (a restarted
        # archiver then received nothing). One RPC at a time per stream, here.
        lock = self._write_locks.get(stream)
        if lock is None:
            lock = self._write_locks[stream] = trio.Lock()
        try:
            lock.acquire_nowait()  # no extra trip through the run loop when nobody writes
        except trio.WouldBlock:
            await lock.acquire()
        try:
            return bool(await super().write_msg(stream, rpc_msg))
        finally:
            lock.release()

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        # Pubsub.publish signs ``msg`` and hands it straight here; the signature check runs
        # before push_msg's first await, so the mark cannot leak to another message.
        if msg_forwarder == self.my_id and msg.from_id == self._my_id_bytes:
            _signature_check.signed_here = msg
        try:
            await super().push_msg(msg_forwarder, msg)
        finally:
            _signature_check.signed_here = None

    @property
    def manager(self) -> Any:
        real = super().manager
        if self._view is None or self._view.wrapped is not real:
            self._view = _ManagerView(real, self.push_msg, self._enqueue_received)
        return self._view

    def _enqueue_received(self, forwarder: ID, message: rpc_pb2.Message) -> None:
        try:
            self._received_in.send_nowait((forwarder, message))
        except trio.WouldBlock:
            for topic in message.topicIDs[:1]:
                self._observer.message_dropped(str(topic), "queue_full")

    def add_connected_peers(self, peers: Iterable[str]) -> None:
        """Register peers connected before this pubsub existed (trap 26), in the background
        and with the library's retries, exactly as it registers a peer that connects now (a
        peer it has registered meanwhile is skipped)."""
        for peer in peers:
            self.manager.run_task(self._handle_new_peer_with_retry, ID.from_base58(peer))

    async def move_to(self, peer_id: ID) -> bool:
        """Move our outbound stream to ``peer_id`` off a relayed connection, onto the best one
        the swarm now has (a direct one), keeping the messages queued for it (trap 23).

        The new stream starts with the hello (our subscriptions), as any pubsub stream does; the
        peer reads both streams until the old one ends with its connection. Whether it moved.
        """
        old = self.peers.get(peer_id)
        if old is None or transport_label(old.muxed_conn) != "p2p-circuit":
            return False
        stream = await self.host.new_stream(peer_id, self.protocols)
        if (
            transport_label(stream.muxed_conn) == "p2p-circuit"
            or self.peers.get(peer_id) is not old
        ):
            await stream.close()  # nothing better to move to, or the peer re-registered meanwhile
            return False
        await stream.write(encode_varint_prefixed(self.get_hello_packet().SerializeToString()))
        if self.peers.get(peer_id) is not old:
            await stream.close()
            return False
        queue = self.peer_queues.get(peer_id)
        successor = queue.hand_over() if isinstance(queue, _CoalescingRpcQueue) else None
        if successor is None:
            if queue is not None:
                queue.close()
            successor = _CoalescingRpcQueue()
        self.peers[peer_id] = stream
        self.peer_queues[peer_id] = successor
        self.manager.run_task(self.handle_sending_messages, peer_id, stream, successor)
        return True

    async def process_received(self) -> None:
        """Validate, deliver and forward received messages in arrival order until cancelled.

        Messages already queued are processed back to back (up to :data:`MAX_BATCH` between
        checkpoints): their subscribers then receive them together and can store a burst in
        one write instead of one per message.
        """
        while True:
            batch = [await self._received_out.receive()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._received_out.receive_nowait())
                except trio.WouldBlock:
                    break
            for forwarder, message in batch:
                try:
                    await self.push_msg(forwarder, message)
                except Exception:
                    log.warning("processing a received message failed", exc_info=True)
                    for topic in message.topicIDs[:1]:
                        self._observer.message_dropped(str(topic), "internal_error")


IDONTWANT_MIN_BYTES = 1024  # go-libp2p's GossipSubIDontWantMessageThreshold


class _ChatGossipSub(GossipSub):  # type: ignore[misc]
    """GossipSub that sends IDONTWANT only for messages of at least :data:`IDONTWANT_MIN_BYTES`,
    and that does not keep a timestamp of every message forever.

    py-libp2p sends an IDONTWANT control message to every v1.2 mesh peer for every message it
    publishes or forwards, however small, its own included. For chat-sized messages that costs
    more than the duplicate it might save; go-libp2p skips messages under 1 KiB.

    It also appends the time of every message published or forwarded to a per-topic list that
    only adaptive gossip's health check trims; with adaptive gossip off (see the module's
    notes) the list grew by one float per message for the life of the process (trap 27).
    """

    _idontwant_worthy = True

    async def publish(self, msg_forwarder: ID, pubsub_msg: rpc_pb2.Message) -> None:
        # GossipSub.publish reaches its IDONTWANT step without an await in between, so the flag
        # cannot be changed by another task before it is read.
        self._idontwant_worthy = pubsub_msg.ByteSize() >= IDONTWANT_MIN_BYTES
        await super().publish(msg_forwarder, pubsub_msg)
        self.recent_message_deliveries.clear()  # read by adaptive gossip only, which is off

    async def _emit_idontwant_for_message(self, msg_id: bytes, topic_ids: Iterable[str]) -> None:
        if self._idontwant_worthy:
            await super()._emit_idontwant_for_message(msg_id, topic_ids)


class Gossip:
    """The node's GossipSub: join topics, publish, and receive verified messages."""

    def __init__(self, host: P2PHost, observer: GossipObserver) -> None:
        self._host = host
        self._observer = observer
        # peers with a new direct connection, whose stream may have to move off a relay
        self._direct_in, self._direct_out = trio.open_memory_channel[str](MOVE_QUEUE)
        self._router = _ChatGossipSub(
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=1,
            spam_protection_enabled=False,
            eclipse_protection_enabled=False,
            adaptive_gossip_enabled=False,
        )
        # Peer scoring is off, as in go-libp2p unless configured (WithPeerScore): py-libp2p
        # scores every peer for every message forwarded with all weights at zero, so scores
        # stay 0 and no threshold can trip, at 7-10% of a relaying peer's CPU in a burst.
        self._router.scorer = None
        _signature_check.observer = observer  # one pubsub per process
        self._pubsub = _ChatPubsub(
            host.libp2p_host,
            self._router,
            strict_signing=True,
            max_inbound_rpc_size=MAX_RPC_BYTES,
            observer=observer,
        )
        cache = self._pubsub.validation_cache
        self._pubsub.validation_cache = _ValidationResults(cache.ttl, cache.max_size)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the pubsub services until cancelled."""
        async with (
            background_trio_service(self._pubsub),
            background_trio_service(self._router),
        ):
            await self._pubsub.wait_until_ready()
            self._pubsub.add_connected_peers(self._host.connected_peers())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pubsub.process_received)
                nursery.start_soon(self._move_streams)
                self._host.watch_connections(self)
                task_status.started()

    def connection_opened(self, info: ConnectionInfo) -> None:
        if info.transport != "p2p-circuit":
            try:
                self._direct_in.send_nowait(info.peer_id)
            except trio.WouldBlock:  # the library's own recovery remains (trap 23)
                log.warning("pubsub stream move queue full", peer=info.peer_id)

    def connection_closed(self, info: ConnectionInfo) -> None:
        return None

    async def _move_streams(self) -> None:
        async for peer in self._direct_out:
            try:
                if await self._pubsub.move_to(ID.from_base58(peer)):
                    log.info("pubsub stream moved to a direct connection", peer=peer)
            except Exception as error:  # the connection went away meanwhile
                log.info("pubsub stream move failed", peer=peer, error=str(error))

    async def join(
        self, topic: str, validator: PayloadValidator
    ) -> AsyncIterator[list[GossipMessage]]:
        """Subscribe to ``topic``; yield every verified message that passes ``validator``, in
        arrival order, in batches: each batch holds what had arrived when it was taken (at
        least one message, at most :data:`MAX_BATCH`), so a burst can be stored in one write.

        A message the validator rejects is counted with its reason, not delivered and not
        forwarded to other peers. Leaving (:meth:`leave`) ends the iteration.
        """

        def validate(forwarder: ID, message: rpc_pb2.Message) -> bool:
            reason = validator(bytes(message.data))
            if reason is not None:
                self._observer.message_dropped(topic, reason)
                return False
            return True

        self._pubsub.set_topic_validator(topic, validate, False)
        subscription = await self._pubsub.subscribe(topic)
        return _iterate(subscription, topic)

    async def leave(self, topic: str) -> None:
        """Unsubscribe from ``topic``."""
        await self._pubsub.unsubscribe(topic)
        self._pubsub.remove_topic_validator(topic)

    async def publish(self, topic: str, data: bytes) -> None:
        """Sign and publish ``data`` on ``topic`` (to the mesh, or fanout if not joined)."""
        await self._pubsub.publish(topic, data)

    def known_topics(self) -> list[str]:
        """Topics at least one connected peer is subscribed to."""
        return sorted(topic for topic, peers in self._pubsub.peer_topics.items() if peers)

    def has_subscribers(self, topic: str) -> bool:
        """Whether another peer is known to be subscribed to ``topic`` (asked before every
        message sent: cheaper than :meth:`subscribers`)."""
        me = self._pubsub.my_id
        return any(peer != me for peer in self._pubsub.peer_topics.get(topic, ()))

    def subscribers(self, topic: str) -> list[str]:
        """Peers known to be subscribed to ``topic``."""
        return sorted(str(peer) for peer in self._pubsub.peer_topics.get(topic, ()))


async def _iterate(subscription: object, topic: str) -> AsyncIterator[list[GossipMessage]]:
    channel: trio.MemoryReceiveChannel[rpc_pb2.Message]
    channel = subscription.receive_channel  # type: ignore[attr-defined]
    while True:
        try:
            batch = [await channel.receive()]
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return
        ended = False
        while len(batch) < MAX_BATCH and not ended:
            try:
                batch.append(channel.receive_nowait())
            except trio.WouldBlock:
                break
            except (trio.EndOfChannel, trio.ClosedResourceError):
                ended = True
        yield [to_gossip_message(message, topic) for message in batch]
        if ended:
            return

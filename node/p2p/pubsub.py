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
  :data:`~p2pchat.node.p2p.rpc_queue.QUEUE_SIZE` (a 2,000-message burst must pass a 3-peer
  line; installed by :mod:`~p2pchat.node.p2p.patches`);
- IDONTWANT is sent for every message, however small -> only from 1 KiB, as go-libp2p does;
- our own messages go to the mesh only, so a peer that has just joined a room (not yet
  grafted) misses what is sent to it as it joins -> flood publishing, go-libp2p's default: our
  own messages go to every peer in the topic (:meth:`_ChatGossipSub._get_peers_to_send`);
- every RPC is its own stream write (one Yamux frame, one Noise encryption, one send() each) ->
  RPCs queued for a peer are merged into one, as go-libp2p's ``appendOrMergeRPC`` does
  (:mod:`~p2pchat.node.p2p.rpc_queue`);
- peer scoring runs for every message with all weights zero (scores stay 0) -> off, as in
  go-libp2p unless configured;
- the validation-result cache is an LRU kept in a list, O(n) per message -> an O(1) one;
- every received message is processed in a task of its own, and starting a task scans every
  live task of the service (quadratic under a burst) -> one worker processes received messages
  in arrival order (:class:`_ChatPubsub`);
- StrictSign is kept (sign every message, verify every signature), with go-libp2p's rules and
  each sender's key resolved once, not per message (:mod:`~p2pchat.node.p2p.signatures`), and a
  message that fails verification is counted before the library drops it (verified once, not
  twice); the check and its state belong to the pubsub instance, not to the module;
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
- (trap 31, not in the notes) a new peer's hello (our subscriptions) is built and written
  before the peer is listed among those a subscription is announced to: a topic joined or left
  in between never reached it -> sent once it is listed (:meth:`_ChatPubsub._handle_new_peer`);
- (trap 27, not in the notes) with adaptive gossip off, the time of every message published
  or forwarded is kept forever (only the health check trims that list) -> dropped after each
  publish (:class:`_ChatGossipSub`);
- (issue #18, not in the notes) peer exchange: a PRUNE naming up to 16 peers was dialled
  whole, signed records or not, four attempts each, from any peer: a peer could aim us at any
  host and port -> go-libp2p's gates, tighter: only records signed by the peer they name, a
  few per PRUNE and per sender and in all per minute, only while the room's mesh is short of
  peers, only public addresses (or the sender's own loopback or private network), one
  attempt each; every refusal counted and logged (:meth:`_ChatGossipSub._exchange_peers`).

One pubsub runs per node (:class:`NodeGossip`, owned and run by the node); each role gets its
own :class:`Gossip` from it (:meth:`NodeGossip.handle`), with its own drop counters, and joins
rooms with its own validator: several roles (a chat peer and an archiver) can be in one room in
one process. The message a role receives is a :class:`GossipMessage` whose ``envelope`` is the
signed pubsub message as sent on the wire, so it can be stored and verified again later
(history sync). Peers subscribing to and leaving topics are events
(:class:`TopicSubscribed`, :class:`TopicUnsubscribed`; :meth:`NodeGossip.watch_subscriptions`),
as rust-libp2p's ``gossipsub::Event::Subscribed`` / ``Unsubscribed``.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from weakref import WeakKeyDictionary

import multiaddr
import structlog
import trio
from libp2p.abc import INetStream
from libp2p.peer.envelope import consume_envelope
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub, ValidationResult
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils import encode_varint_prefixed
from p2pchat.node.p2p.host import ConnectionInfo, P2PHost, transport_label
from p2pchat.node.p2p.rpc_queue import QUEUE_SIZE, CoalescingRpcQueue
from p2pchat.node.p2p.signatures import current_check, has_valid_signature

MAX_RPC_BYTES = 1 << 20  # the spec's (and go-libp2p's) 1 MiB
# Received messages handled back to back, and delivered to a room as one batch, at most: bounds
# the work done between two checkpoints.
MAX_BATCH = 256
MOVE_QUEUE = 256  # direct connections waiting for a pubsub stream move


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


@dataclass(frozen=True, slots=True)
class GossipMessage:
    """A verified message received on (or published to) a topic."""

    topic: str
    data: bytes
    sender: str  # PeerId of the signer (StrictSign: verified)
    seqno: bytes
    envelope: bytes  # the signed pubsub Message protobuf, as on the wire


@dataclass(frozen=True, slots=True)
class TopicSubscribed:
    """A peer told us it joined ``topic`` (rust-libp2p: ``gossipsub::Event::Subscribed``)."""

    peer_id: str
    topic: str


@dataclass(frozen=True, slots=True)
class TopicUnsubscribed:
    """A peer left ``topic``, or went away while in it (``gossipsub::Event::Unsubscribed``)."""

    peer_id: str
    topic: str


SubscriptionEvent = TopicSubscribed | TopicUnsubscribed


class GossipObserver(Protocol):
    """Receives pubsub drop events (for metrics)."""

    def message_dropped(self, topic: str, reason: str) -> None: ...


PayloadValidator = Callable[[bytes], str | None]
"""Checks a payload before it is accepted and forwarded: None if valid, else a drop reason."""

SenderCheck = Callable[[str], str | None]
"""Checks a message's signer (its PeerId, verified) before its payload: None to go on, else a
drop reason (e.g. a sender this peer ignores: not delivered, not forwarded)."""

SignedCheck = Callable[[str, bytes], str | None]
"""Checks a payload the validator accepted together with its signer (PeerId, verified): None if
valid, else a drop reason (e.g. a room's moderation decision signed by anyone but its owner)."""


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


DropReport = Callable[[str, str], None]
"""Told of a message dropped in the pubsub layer: (topic, reason)."""


class _ReportingSignatureCheck:
    """The signature check of one pubsub: ours (:mod:`~p2pchat.node.p2p.signatures`: go-libp2p's
    rules, each sender's key resolved once), and a failure is reported (for the drop counters)
    before the library silently drops the message. The library calls it after its seen-cache
    check, so each bad message counts once."""

    def __init__(self, report: DropReport) -> None:
        self._report = report
        # The message this node has just signed and is publishing: verifying our own fresh
        # signature proves nothing and was a sixth of a sending peer's CPU.
        self.signed_here: rpc_pb2.Message | None = None

    def __call__(self, message: rpc_pb2.Message) -> bool:
        if message is self.signed_here:
            self.signed_here = None
            return True
        valid = has_valid_signature(message)
        if not valid:
            for topic in message.topicIDs[:1]:
                self._report(str(topic), "bad_signature")
        return valid


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

    def __init__(self, *args: Any, report: DropReport, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._report = report
        self._signature_check = _ReportingSignatureCheck(report)
        self._registering: list[set[str]] = []  # one per peer being registered (trap 31)
        self.subscription_events: Callable[[SubscriptionEvent], None] = lambda event: None
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
        # The library's module-level signature_validator asks current_check (see
        # signatures.signature_check_of_caller) for the check of the pubsub pushing the message.
        # Pubsub.publish signs ``msg`` and hands it straight here; the signature check runs
        # before push_msg's first await, so the mark cannot leak to another message.
        check = self._signature_check
        if msg_forwarder == self.my_id and msg.from_id == self._my_id_bytes:
            check.signed_here = msg
        token = current_check.set(check)
        try:
            await super().push_msg(msg_forwarder, msg)
        finally:
            current_check.reset(token)
            check.signed_here = None

    async def _handle_new_peer(self, peer_id: ID) -> None:
        # Trap 31 (not in the notes): the library builds a new peer's hello (our
        # subscriptions) and writes it before it lists the peer among those a subscription is
        # announced to: a topic joined or left between the two never reached that peer. An
        # archiver that joins a room as soon as a connecting peer announces it hit that window
        # nearly every time. What changed meanwhile is sent once the peer is listed.
        touched: set[str] = set()  # topics joined or left while this peer registers
        self._registering.append(touched)
        try:
            await super()._handle_new_peer(peer_id)
        finally:
            self._registering.remove(touched)
        queue = self.peer_queues.get(peer_id)
        if queue is None or not touched:
            return
        now = set(self.topic_ids)
        update = rpc_pb2.RPC(
            subscriptions=[
                rpc_pb2.RPC.SubOpts(subscribe=topic in now, topicid=topic)
                for topic in sorted(touched)
            ]
        )
        queue.push(update, priority=True)

    async def subscribe(self, topic_id: str) -> Any:
        for touched in self._registering:
            touched.add(topic_id)
        return await super().subscribe(topic_id)

    async def unsubscribe(self, topic_id: str) -> None:
        for touched in self._registering:
            touched.add(topic_id)
        await super().unsubscribe(topic_id)

    def handle_subscription(self, origin_id: ID, sub_message: rpc_pb2.RPC.SubOpts) -> None:
        topic = sub_message.topicid
        before = origin_id in self.peer_topics.get(topic, ())
        super().handle_subscription(origin_id, sub_message)
        after = origin_id in self.peer_topics.get(topic, ())
        if after and not before:
            self.subscription_events(TopicSubscribed(str(origin_id), topic))
        elif before and not after:
            self.subscription_events(TopicUnsubscribed(str(origin_id), topic))

    def _handle_dead_peer(self, peer_id: ID) -> None:
        topics = [topic for topic, peers in self.peer_topics.items() if peer_id in peers]
        super()._handle_dead_peer(peer_id)
        for topic in topics:
            if peer_id not in self.peer_topics.get(topic, ()):
                self.subscription_events(TopicUnsubscribed(str(peer_id), topic))

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
                self._report(str(topic), "queue_full")

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
        successor = queue.hand_over() if isinstance(queue, CoalescingRpcQueue) else None
        if successor is None:
            if queue is not None:
                queue.close()
            successor = CoalescingRpcQueue()
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
                        self._report(str(topic), "internal_error")


IDONTWANT_MIN_BYTES = 1024  # go-libp2p's GossipSubIDontWantMessageThreshold


# Peer exchange (PX, GossipSub v1.1): a PRUNE may name peers to connect to instead. The library
# dials up to 16 per PRUNE, signed or not, four attempts each, from anybody: a peer could aim us
# at any host and port. go-libp2p's rules, tightened (:meth:`_ChatGossipSub.handle_prune`):
PX_PER_PRUNE = 2  # records dialled from one PRUNE at most
PX_PER_SENDER = 2  # ... from one sender per PX_WINDOW (a flood of PRUNEs gets no more)
PX_PER_WINDOW = 8  # ... from all senders together per PX_WINDOW (many senders, one target)
PX_WINDOW = 60.0  # seconds
PX_DIAL_TIMEOUT = 10.0  # one attempt to one address per record; no retries
PX_LOG_EVERY = 60.0  # a refusal reason is logged at most once per this many seconds
_PRIVATE_NETS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # carrier-grade NAT
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
)


class PxObserver(Protocol):
    """Told of every peer-exchange record refused, with the first gate it failed (``reason``:
    one of the few fixed words listed at :meth:`_ChatGossipSub._exchange_peers`)."""

    def px_refused(self, reason: str) -> None: ...


class _NoPxObserver:
    def px_refused(self, reason: str) -> None:
        return None


def _network_of(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The non-public network ``ip`` is on ("loopback", or a private block), None for a
    public (global) address, "reserved" for one that is never dialled (unspecified,
    multicast, documentation, ...)."""
    if ip.is_loopback:
        return "loopback"
    for net in _PRIVATE_NETS:
        if ip in net:
            return str(net)
    return None if ip.is_global else "reserved"


def _px_addr_ip(addr: multiaddr.Multiaddr) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP of a direct ``/ip4|ip6/<ip>/tcp/<port>[/ws]`` address; None for any other form
    (DNS names cannot be judged without resolving them, circuits are not dialled from PX)."""
    protocols = [proto.name for proto in addr.protocols()]
    if len(protocols) < 2 or protocols[0] not in ("ip4", "ip6") or protocols[1] != "tcp":
        return None
    if any(name not in ("ip4", "ip6", "tcp", "ws", "p2p") for name in protocols):
        return None
    try:
        return ipaddress.ip_address(addr.value_for_protocol(protocols[0]))
    except ValueError:
        return None


class _PxState:
    """Peer exchange's budgets (dials admitted in the last :data:`PX_WINDOW` seconds, per
    sender and in all) and its log rate limit. Bounded: a sender is kept only while it has a
    dial in the window, at most :data:`PX_PER_WINDOW` of them."""

    def __init__(self) -> None:
        self._all: deque[float] = deque()
        self._by_sender: dict[ID, deque[float]] = {}
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def admit(self, sender: ID, now: float) -> str | None:
        """Spend a dial of ``sender``'s budget and the global one: None, or the reason why not
        (``sender_rate``, ``rate``)."""
        horizon = now - PX_WINDOW
        while self._all and self._all[0] <= horizon:
            self._all.popleft()
        for key in [key for key, times in self._by_sender.items() if times[-1] <= horizon]:
            del self._by_sender[key]
        mine = self._by_sender.get(sender, deque())
        while mine and mine[0] <= horizon:
            mine.popleft()
        if len(mine) >= PX_PER_SENDER:
            return "sender_rate"
        if len(self._all) >= PX_PER_WINDOW:
            return "rate"
        mine.append(now)
        self._by_sender[sender] = mine
        self._all.append(now)
        return None

    def refused(self, reason: str, now: float) -> int | None:
        """Note a refusal: the number refused for ``reason`` since it was last logged, when it
        is to be logged now (at most once per :data:`PX_LOG_EVERY`), else None."""
        last = self._logged_at.get(reason)
        if last is not None and now - last < PX_LOG_EVERY:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            return None
        self._logged_at[reason] = now
        return self._unlogged.pop(reason, 0)


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._px_budget = _PxState()

    async def publish(self, msg_forwarder: ID, pubsub_msg: rpc_pb2.Message) -> None:
        # GossipSub.publish reaches its IDONTWANT step without an await in between, so the flag
        # cannot be changed by another task before it is read.
        self._idontwant_worthy = pubsub_msg.ByteSize() >= IDONTWANT_MIN_BYTES
        await super().publish(msg_forwarder, pubsub_msg)
        self.recent_message_deliveries.clear()  # read by adaptive gossip only, which is off

    def _get_peers_to_send(
        self,
        topic_ids: Iterable[str],
        msg_forwarder: ID,
        origin: ID,
        msg_id: bytes | None = None,
    ) -> Iterable[ID]:
        topics = list(topic_ids)
        peers = set(super()._get_peers_to_send(topics, msg_forwarder, origin, msg_id))
        me = self.pubsub.my_id if self.pubsub is not None else None
        if origin != me or msg_forwarder != me:
            return peers
        # Flood publishing (go-libp2p's default, GossipSub v1.1): our own messages go to every
        # peer in the topic, not only the mesh. A peer that has just joined a room is not in
        # the mesh until the next GRAFT; a message queued for it and sent as it joins (or our
        # name, announced to it) would otherwise reach it only through catch-up.
        for topic in topics:
            peers.update(
                peer
                for peer in self.pubsub.peer_topics.get(topic, ())
                if peer in self.peer_protocol and peer != me
            )
        return peers

    async def _emit_idontwant_for_message(self, msg_id: bytes, topic_ids: Iterable[str]) -> None:
        if self._idontwant_worthy:
            await super()._emit_idontwant_for_message(msg_id, topic_ids)

    # -- peer exchange ----------------------------------------------------------------------

    px_observer: PxObserver = _NoPxObserver()

    async def handle_prune(self, prune_msg: rpc_pb2.ControlPrune, sender_peer_id: ID) -> None:
        """The library's PRUNE handling (mesh, backoff), with peer exchange done by
        :meth:`_exchange_peers` instead of the library's ``_do_px``."""
        if not prune_msg.peers:
            await super().handle_prune(prune_msg, sender_peer_id)
            return
        px_peers = list(prune_msg.peers)
        without_px = rpc_pb2.ControlPrune()
        without_px.CopyFrom(prune_msg)
        del without_px.peers[:]
        await super().handle_prune(without_px, sender_peer_id)
        await self._exchange_peers(px_peers, prune_msg.topicID, sender_peer_id)

    async def _do_px(self, px_peers: list[rpc_pb2.PeerInfo]) -> None:
        """Never dials: the library's PX (any record, 16 per PRUNE, from anyone). Ours is
        :meth:`_exchange_peers`, which knows the sender and the topic."""
        for _ in px_peers:
            self._px_refuse("no_sender")

    async def _exchange_peers(
        self, records: list[rpc_pb2.PeerInfo], topic: str, sender: ID
    ) -> None:
        """Connect to a few of the peers a PRUNE from ``sender`` names, as go-libp2p's
        GossipSub does, with its gates and tighter bounds. Each record refused is counted
        (:class:`PxObserver`) with the first gate it failed:

        - ``not_joined``: we have no mesh for ``topic`` (go-libp2p ignores the PRUNE too);
        - ``mesh_full``: the mesh already has ``degree_low`` peers: no need of more;
        - ``per_prune``: past the first :data:`PX_PER_PRUNE` records of this PRUNE;
        - ``unsigned``: no signed peer record (the library dialled whatever the peerstore held);
        - ``bad_record``: the envelope does not verify, or its key or record is not the peer's;
        - ``connected``: ourselves, or a peer we are connected to already;
        - ``address``: no direct TCP address we may dial (:meth:`_px_address`);
        - ``sender_rate`` / ``rate``: :data:`PX_PER_SENDER` records from this sender, or
          :data:`PX_PER_WINDOW` from everyone, dialled in the last :data:`PX_WINDOW` seconds.

        (``no_sender``: a record that reached the library's ``_do_px``, which :meth:`handle_prune`
        no longer calls: a library change that called it elsewhere would dial nothing.)

        An admitted record costs one dial attempt to one address (no retries); a failed dial is
        logged at debug, the record spent all the same. The dials (at most
        :data:`PX_PER_PRUNE`, together) are awaited before the sender's next RPC is handled, as
        the library did: a sender stalls only itself, at most :data:`PX_DIAL_TIMEOUT`.
        """
        if self.pubsub is None:
            return
        if topic not in self.mesh:
            for _ in records:
                self._px_refuse("not_joined")
            return
        network = self.pubsub.host.get_network()
        dials: list[tuple[ID, multiaddr.Multiaddr]] = []
        for index, record in enumerate(records):
            # The mesh may have filled while an earlier PRUNE's dials ran.
            if len(self.mesh.get(topic, ())) + len(dials) >= self.degree_low:
                self._px_refuse("mesh_full")
                continue
            if index >= PX_PER_PRUNE:
                self._px_refuse("per_prune")
                continue
            if not record.HasField("signedPeerRecord") or not record.signedPeerRecord:
                self._px_refuse("unsigned")
                continue
            try:
                envelope, peer_record = consume_envelope(
                    record.signedPeerRecord, "libp2p-peer-record"
                )
                peer = ID(record.peerID)
                # The library checks the record against the claimed id, not that the key
                # that signed it is that peer's: anybody could sign a record for anybody.
                signed_by = ID.from_pubkey(envelope.public_key)
            except Exception:  # the envelope, record and key decoders raise many types
                self._px_refuse("bad_record")
                continue
            if peer_record.peer_id != peer or signed_by != peer:
                self._px_refuse("bad_record")
                continue
            if peer == self.pubsub.my_id or network.get_connections(peer):
                self._px_refuse("connected")
                continue
            addr = self._px_address(peer_record.addrs, sender)
            if addr is None:
                self._px_refuse("address")
                continue
            reason = self._px_budget.admit(sender, time.monotonic())
            if reason is not None:
                self._px_refuse(reason)
                continue
            dials.append((peer, addr))
        if dials:
            async with trio.open_nursery() as nursery:
                for peer, addr in dials:
                    nursery.start_soon(self._px_dial, peer, addr)

    def _px_address(
        self, addrs: list[multiaddr.Multiaddr], sender: ID
    ) -> multiaddr.Multiaddr | None:
        """The first of a record's addresses we may dial: a direct TCP address on a public IP,
        or on a loopback or private network that the sender itself reaches us from.

        A peer on our own machine (loopback) or LAN (the same private block) can name peers
        there that we could have found ourselves (mDNS, the tests' 127.0.0.1); a peer elsewhere
        cannot know what is on our machine or LAN, so such a record only aims us at services
        behind our NAT or firewall (the SSRF of peer exchange).
        """
        sender_networks = self._px_sender_networks(sender)
        for addr in addrs:
            ip = _px_addr_ip(addr)
            if ip is None:
                continue
            network = _network_of(ip)
            if network is None or (network != "reserved" and network in sender_networks):
                return addr
        return None

    def _px_sender_networks(self, sender: ID) -> set[str | None]:
        """The networks ``sender``'s direct connections to us come from (relayed ones show
        only the relay's address, so they count for nothing)."""
        assert self.pubsub is not None
        networks: set[str | None] = set()
        for conn in self.pubsub.host.get_network().get_connections(sender):
            try:
                if transport_label(conn.muxed_conn) == "p2p-circuit":
                    continue
                remote = conn.muxed_conn.get_remote_address()
                if remote is not None:
                    networks.add(_network_of(ipaddress.ip_address(remote[0])))
            except Exception:  # a connection closing meanwhile; its address is moot
                continue
        return networks

    async def _px_dial(self, peer: ID, addr: multiaddr.Multiaddr) -> None:
        assert self.pubsub is not None
        network = self.pubsub.host.get_network()
        try:
            with trio.fail_after(PX_DIAL_TIMEOUT):
                # One attempt: the swarm's dial_addr retries 3 times, so a listener that is not
                # a libp2p peer got four connections per address.
                await network._dial_addr_single_attempt(addr, peer)
        except trio.TooSlowError:
            log.debug("peer exchange dial timed out", peer=str(peer))
        except Exception as error:  # every layer of a dial raises its own types
            log.debug("peer exchange dial failed", peer=str(peer), error=str(error))

    def _px_refuse(self, reason: str) -> None:
        self.px_observer.px_refused(reason)
        suppressed = self._px_budget.refused(reason, time.monotonic())
        if suppressed is not None:
            log.info("peer exchange record refused", reason=reason, since_last_logged=suppressed)


@dataclass(eq=False)
class _Joiner:
    """One role in one topic: its validator, where its drops are counted, and its queue of
    delivered messages (at most :data:`QUEUE_SIZE` waiting; past it, dropped as ``queue_full``)."""

    topic: str
    validator: PayloadValidator
    observer: GossipObserver
    send: trio.MemorySendChannel[list[GossipMessage]]
    receive: trio.MemoryReceiveChannel[list[GossipMessage]]
    waiting: int = 0
    sender_check: SenderCheck | None = None
    signed_check: SignedCheck | None = None

    def deliver(self, batch: list[GossipMessage]) -> None:
        if self.waiting + len(batch) > QUEUE_SIZE:
            for _ in batch:
                self.observer.message_dropped(self.topic, "queue_full")
            return
        try:
            self.send.send_nowait(batch)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the role left meanwhile
        self.waiting += len(batch)

    async def batches(self) -> AsyncIterator[list[GossipMessage]]:
        async with self.receive:
            async for batch in self.receive:
                self.waiting -= len(batch)
                yield batch


@dataclass(eq=False)
class _Topic:
    """A topic the node is subscribed to, and the roles in it."""

    joiners: list[_Joiner] = field(default_factory=list)
    fan_out: trio.CancelScope = field(default_factory=trio.CancelScope)


class NodeGossip:
    """The node's one GossipSub, owned and run by the node (:meth:`run`); roles use it through
    the :class:`Gossip` each gets from :meth:`handle`.

    A topic is subscribed to once, however many roles join it; each message that every joined
    role's validator accepts is delivered to each of them, in arrival order.
    """

    def __init__(self, host: P2PHost, px_observer: PxObserver | None = None) -> None:
        """``px_observer`` is told of every peer-exchange record refused."""
        self._host = host
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
        if px_observer is not None:
            self._router.px_observer = px_observer
        self._pubsub = _ChatPubsub(
            host.libp2p_host,
            self._router,
            strict_signing=True,
            max_inbound_rpc_size=MAX_RPC_BYTES,
            report=self._report_drop,
        )
        cache = self._pubsub.validation_cache
        self._pubsub.validation_cache = _ValidationResults(cache.ttl, cache.max_size)
        self._pubsub.subscription_events = self._subscription_event
        self._topics: dict[str, _Topic] = {}
        self._joining = trio.Lock()
        self._subscription_watchers: list[Callable[[SubscriptionEvent], None]] = []
        self._nursery: trio.Nursery | None = None

    def handle(self, observer: GossipObserver) -> Gossip:
        """A role's access to the pubsub; its drops are told to ``observer``."""
        return Gossip(self, observer)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the pubsub services until cancelled."""
        async with (
            background_trio_service(self._pubsub),
            background_trio_service(self._router),
        ):
            await self._pubsub.wait_until_ready()
            self._pubsub.add_connected_peers(self._host.connected_peers())
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._pubsub.process_received)
                nursery.start_soon(self._move_streams)
                self._host.watch_connections(self)
                task_status.started()

    def watch_subscriptions(self, watcher: Callable[[SubscriptionEvent], None]) -> None:
        """Tell ``watcher`` of every peer that joins or leaves a topic from now on. Called
        inline by the pubsub: it must not block."""
        self._subscription_watchers.append(watcher)

    def _subscription_event(self, event: SubscriptionEvent) -> None:
        for watcher in self._subscription_watchers:
            try:
                watcher(event)
            except Exception:  # a watcher's bug must not end the peer's pubsub stream
                log.exception("subscription watcher failed", event=event)

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

    def _report_drop(self, topic: str, reason: str) -> None:
        joined = self._topics.get(topic)
        for joiner in joined.joiners if joined is not None else ():
            joiner.observer.message_dropped(topic, reason)

    async def _join(self, joiner: _Joiner) -> None:
        # Joins and leaves wait for each other: a leave's unsubscribe must not interleave with
        # a join of the same topic (it would remove the joiner's validator and announce that
        # we left a topic we are in).
        async with self._joining:
            await self._join_now(joiner)

    async def _join_now(self, joiner: _Joiner) -> None:
        topic = joiner.topic
        joined = self._topics.get(topic)
        if joined is not None:
            joined.joiners.append(joiner)
            return
        if self._nursery is None:
            raise RuntimeError("the node's pubsub is not running")
        joined = self._topics[topic] = _Topic([joiner])

        def validate(forwarder: ID, message: rpc_pb2.Message) -> bool:
            data = bytes(message.data)
            accepted = True
            sender: str | None = None
            for each in joined.joiners:
                reason = None
                if each.sender_check is not None:
                    if sender is None:
                        sender = _peer_id_text(bytes(message.from_id))  # cached
                    reason = each.sender_check(sender)
                if reason is None:
                    reason = each.validator(data)
                if reason is None and each.signed_check is not None:
                    if sender is None:
                        sender = _peer_id_text(bytes(message.from_id))
                    reason = each.signed_check(sender, data)
                if reason is not None:
                    each.observer.message_dropped(topic, reason)
                    accepted = False
            return accepted

        self._pubsub.set_topic_validator(topic, validate, False)
        try:
            subscription = await self._pubsub.subscribe(topic)
        except BaseException:
            # Failed or cancelled: leave nothing behind that a later join would take for a
            # live topic.
            del self._topics[topic]
            with trio.CancelScope(shield=True):
                await self._pubsub.unsubscribe(topic)
            self._pubsub.remove_topic_validator(topic)
            raise
        self._nursery.start_soon(self._fan_out, topic, joined, subscription)

    async def _leave(self, joiner: _Joiner) -> None:
        joiner.send.close()
        async with self._joining:
            joined = self._topics.get(joiner.topic)
            if joined is None or joiner not in joined.joiners:
                return
            joined.joiners.remove(joiner)
            if not joined.joiners:
                del self._topics[joiner.topic]
                joined.fan_out.cancel()
                self._pubsub.remove_topic_validator(joiner.topic)
                await self._pubsub.unsubscribe(joiner.topic)

    async def _fan_out(self, topic: str, joined: _Topic, subscription: object) -> None:
        try:
            with joined.fan_out:
                async for batch in _iterate(subscription, topic):
                    for joiner in joined.joiners:
                        joiner.deliver(batch)
        finally:
            # The subscription ended under us (or we left): the roles' iterations end too,
            # and a later join subscribes afresh.
            if self._topics.get(topic) is joined:
                del self._topics[topic]
            for joiner in joined.joiners:
                joiner.send.close()

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


class Gossip:
    """A role's access to the node's pubsub (:meth:`NodeGossip.handle`): its rooms, each
    joined with its validator, and its own drop counters."""

    def __init__(self, node: NodeGossip, observer: GossipObserver) -> None:
        self._node = node
        self._observer = observer
        self._joined: dict[str, _Joiner] = {}

    async def join(
        self,
        topic: str,
        validator: PayloadValidator,
        sender_check: SenderCheck | None = None,
        signed_check: SignedCheck | None = None,
    ) -> AsyncIterator[list[GossipMessage]]:
        """Subscribe to ``topic``; yield every verified message that passes ``sender_check``
        (if given), ``validator`` and then ``signed_check`` (if given), and those of other
        roles in it, in arrival order, in batches: each batch holds
        what had arrived when it was taken (at least one message, at most :data:`MAX_BATCH`),
        so a burst can be stored in one write.

        A message the validator rejects is counted with its reason, not delivered and not
        forwarded to other peers. Leaving (:meth:`leave`) ends the iteration.

        Raises:
            ValueError: this role is in ``topic`` already.
        """
        if topic in self._joined:
            raise ValueError(f"already joined {topic!r}")
        send, receive = trio.open_memory_channel[list[GossipMessage]](float("inf"))
        joiner = _Joiner(
            topic,
            validator,
            self._observer,
            send,
            receive,
            sender_check=sender_check,
            signed_check=signed_check,
        )
        self._joined[topic] = joiner
        try:
            await self._node._join(joiner)
        except BaseException:
            del self._joined[topic]
            raise
        return joiner.batches()

    async def leave(self, topic: str) -> None:
        """Leave ``topic`` (the node unsubscribes once no role is in it)."""
        joiner = self._joined.pop(topic, None)
        if joiner is not None:
            await self._node._leave(joiner)

    async def publish(self, topic: str, data: bytes) -> None:
        """Sign and publish ``data`` on ``topic`` (to the mesh, or fanout if not joined)."""
        await self._node.publish(topic, data)

    def known_topics(self) -> list[str]:
        """Topics at least one connected peer is subscribed to."""
        return self._node.known_topics()

    def watch_subscriptions(self, watcher: Callable[[SubscriptionEvent], None]) -> None:
        """Tell ``watcher`` of every peer that joins or leaves a topic from now on (it must not
        block)."""
        self._node.watch_subscriptions(watcher)

    def has_subscribers(self, topic: str) -> bool:
        """Whether another peer is known to be subscribed to ``topic``."""
        return self._node.has_subscribers(topic)

    def subscribers(self, topic: str) -> list[str]:
        """Peers known to be subscribed to ``topic``."""
        return self._node.subscribers(topic)


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

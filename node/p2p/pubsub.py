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
- peer scoring runs for every message with all weights zero (scores stay 0), recomputed for
  every question -> our scorer with chat-room parameters, cached (:mod:`~p2pchat.node.p2p.scoring`);
  graylisted peers are ignored whole, negative ones pruned and never grafted (#18);
- any peer may publish as fast as it likes, subscribe to any number of topics, and flood
  GRAFT/PRUNE/IHAVE/IWANT -> a budget per sender per room (:mod:`~p2pchat.node.p2p.sender_budget`)
  in the validator, and bounds per peer per heartbeat (:class:`PubsubLimits`);
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
  the peer's own stream is its library's business: where it lives is tracked
  (:mod:`~p2pchat.node.p2p.pubsub_streams`), and our stream can be renewed to make a
  js-gossipsub peer reopen its own (:meth:`NodeGossip.renew_stream`, issue #20); a sending loop
  whose queue moved to a new stream does not declare the peer dead when its old stream fails;
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
- (trap 45, not in the notes) the library grafts a peer when its subscription arrives, but not
  one whose subscription arrived before our own stream to it was open: it waited for a
  heartbeat, and a go peer (which publishes to its mesh only) sent its words meanwhile to
  nobody -> grafted once our stream is open (:meth:`_ChatPubsub._graft_early_subscriber`);
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

import contextlib
import functools
import ipaddress
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from weakref import WeakKeyDictionary

import multiaddr
import structlog
import trio
from libp2p.abc import INetConn, INetStream
from libp2p.peer.envelope import consume_envelope
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub, ValidationResult
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils import encode_varint_prefixed
from p2pchat.node.p2p.circuit_room import HOLD as CIRCUIT_HOLD
from p2pchat.node.p2p.circuit_room import fits, room_left, wait_for_room
from p2pchat.node.p2p.circuit_usage import CircuitLedger, connections_to, new_stream_on
from p2pchat.node.p2p.host import ConnectionInfo, P2PHost, transport_label
from p2pchat.node.p2p.pubsub_streams import InboundStreams, OutboundStreamCounts
from p2pchat.node.p2p.rpc_queue import COALESCE_BYTES, QUEUE_SIZE, CoalescingRpcQueue
from p2pchat.node.p2p.scoring import ChatScorer, ScoreSettings
from p2pchat.node.p2p.sender_budget import BudgetSettings, RoomBudget
from p2pchat.node.p2p.signatures import current_check, has_valid_signature
from p2pchat.node.refusals import RefusalCount, RefusalLog

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
        # Set just before the library caches the failure of a message dropped over its
        # sender's budget: not cached, so a later copy is judged again (the budget refills).
        self.skip_next_failure = False

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
        if self.skip_next_failure and not result.is_valid:
            self.skip_next_failure = False
            return
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


class PubsubObserver(Protocol):
    """Told of every defence against a hostile peer (for metrics): see
    :class:`~p2pchat.node.p2p.scoring.ScoreObserver` and the limits of :class:`PubsubLimits`."""

    def control_dropped_by(self, limit: str, count: int = 1) -> None: ...

    def penalised(self, reason: str) -> None: ...

    def graylisted_changed(self, delta: int) -> None: ...

    def mesh_pruned_for_score(self) -> None: ...


class _NoPubsubObserver:
    def control_dropped_by(self, limit: str, count: int = 1) -> None:
        return None

    def penalised(self, reason: str) -> None:
        return None

    def graylisted_changed(self, delta: int) -> None:
        return None

    def mesh_pruned_for_score(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class PubsubLimits:
    """What one peer may make this node's pubsub do (the ``pubsub`` config section).

    ``budget``: messages per sender per room (:mod:`~p2pchat.node.p2p.sender_budget`), None for
    none; ``scoring``: GossipSub v1.1 peer scoring (:mod:`~p2pchat.node.p2p.scoring`), None for
    off. Per peer and per heartbeat (1 s), as go-libp2p counts them: ``max_graft_prune``
    GRAFT and PRUNE entries, ``max_ihave_messages`` RPCs carrying IHAVE (go: MaxIHaveMessages),
    ``max_ihave_length`` message ids announced in IHAVEs (go: MaxIHaveLength), and
    ``max_iwant_length`` ids asked for in IWANTs; ``max_subscriptions_per_peer`` topics one peer
    is known in (and subscription changes per heartbeat); ``max_topics`` topics known in all.
    Past a limit the entries are ignored, counted, and the peer penalised (P7).
    """

    budget: BudgetSettings | None = field(default_factory=BudgetSettings)
    scoring: ScoreSettings | None = field(default_factory=ScoreSettings)
    max_subscriptions_per_peer: int = 100
    max_topics: int = 5000
    max_graft_prune: int = 100
    max_ihave_messages: int = 10
    max_ihave_length: int = 5000
    max_iwant_length: int = 5000


class _ControlCounts:
    """Per peer and per heartbeat: what each has sent of each kind (cleared every heartbeat,
    so it holds at most the peers heard in one second)."""

    def __init__(self) -> None:
        self._counts: defaultdict[ID, dict[str, int]] = defaultdict(dict)

    def spend(self, peer: ID, kind: str, count: int, limit: int) -> int:
        """Count ``count`` more of ``kind`` from ``peer``: how many of them are within
        ``limit`` this heartbeat."""
        mine = self._counts[peer]
        used = mine.get(kind, 0)
        mine[kind] = used + count
        return max(0, min(count, limit - used))

    def reset(self) -> None:
        self._counts.clear()


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

LOG_EVERY = 60.0  # a limit's refusals are logged at most once per this many seconds
_limited = RefusalCount(LOG_EVERY)


def _log_limited(limit: str, event: str, **fields: Any) -> None:
    """Log ``event`` for ``limit`` at info, at most once per :data:`LOG_EVERY` seconds per limit
    (a fixed word), with the number suppressed since the last line."""
    suppressed = _limited.note(limit)
    if suppressed is not None:
        log.info(event, limit=limit, since_last_logged=suppressed, **fields)


class _ManagerView:
    """The pubsub service's task manager as :class:`_ChatPubsub` shows it to the library: the
    same in every way, except that starting ``push_msg`` for a received message queues it."""

    def __init__(self, manager: Any, push: Callable[..., Any], enqueue: Callable[..., None]):
        self.wrapped = manager
        self._push = push
        self._enqueue = enqueue
        # While set, the tasks the library starts for a subscription are not started (a
        # subscription to a topic we are not in needs none of them).
        self.quiet = False

    def run_task(self, async_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if async_fn == self._push:
            self._enqueue(*args)
        elif not self.quiet:
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

    def __init__(
        self,
        *args: Any,
        report: DropReport,
        limits: PubsubLimits,
        defence: PubsubObserver,
        control_counts: _ControlCounts,
        circuits: CircuitLedger | None = None,
        circuit_hold: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            *args, max_subscriptions_per_peer=limits.max_subscriptions_per_peer, **kwargs
        )
        # Relayed connections' usage, and how long a write that would pass a circuit's data
        # limit waits for the next circuit (0: never; :mod:`~p2pchat.node.p2p.circuit_room`).
        self._circuits = circuits
        self._circuit_hold = circuit_hold
        self._report = report
        self._limits = limits
        self._defence = defence
        self._control_counts = control_counts
        self._signature_check = _ReportingSignatureCheck(report)
        self._registering: list[set[str]] = []  # one per peer being registered (trap 31)
        self.subscription_events: Callable[[SubscriptionEvent], None] = lambda event: None
        self._received_in, self._received_out = trio.open_memory_channel[
            tuple[ID, rpc_pb2.Message]
        ](QUEUE_SIZE)
        self._view: _ManagerView | None = None
        self._my_id_bytes = self.my_id.to_bytes()
        self._write_locks: WeakKeyDictionary[INetStream, trio.Lock] = WeakKeyDictionary()
        self.inbound_streams = InboundStreams()  # where each peer's own sending lives (#20)
        self.outbound_counts = OutboundStreamCounts()  # ours per connection, within a budget

    async def stream_handler(self, stream: INetStream) -> None:
        # The library's handler, its error handling included; the stream is listed while read.
        peer_id = stream.muxed_conn.peer_id
        self.inbound_streams.add(peer_id, stream)
        try:
            await super().stream_handler(stream)
        finally:
            self.inbound_streams.remove(peer_id, stream)

    async def handle_sending_messages(
        self, peer_id: ID, stream: INetStream, queue: RpcQueue
    ) -> None:
        # The library's loop, except that a loop whose queue was handed over to a new stream
        # (move_to, renew) failing on its last write is not the peer's death: the old stream
        # may be closed under it.
        try:
            while (rpc := await self._next_rpc(peer_id, stream, queue)) is not None:
                if not await self.write_msg(stream, rpc):
                    return
        except Exception:  # the library's catch: any failure of the write ends the loop
            if self.peer_queues.get(peer_id) is queue:
                self._handle_dead_peer(peer_id)

    async def _next_rpc(
        self, peer_id: ID, stream: INetStream, queue: RpcQueue
    ) -> rpc_pb2.RPC | None:
        """The next RPC to write on ``stream``; on a relayed connection, only what fits what is
        left of its circuit (:mod:`~p2pchat.node.p2p.circuit_room`): merged up to the room
        left, and one that does not fit is kept at the queue's front while the renewal moves
        the queue onto the next circuit (None: moved, or closed; this writer is done). If the
        renewal did not move it in time (the circuit closed under it, or the wait ran out) but
        another connection to the peer is open, the queue moves there itself."""
        circuits = self._circuits
        if circuits is None or not self._circuit_hold or not isinstance(queue, CoalescingRpcQueue):
            rpc: rpc_pb2.RPC | None = await queue.pop()
            return rpc
        left = room_left(circuits, stream)
        rpc = await queue.pop(COALESCE_BYTES if left is None else max(1, min(left, COALESCE_BYTES)))
        if rpc is None:
            return None
        size = rpc.ByteSize() + 5  # and its length prefix
        if fits(circuits, stream, size):
            return rpc
        queue.put_front(rpc)
        if await wait_for_room(circuits, stream, size, lambda: queue.closed, self._circuit_hold):
            return None  # its successor, on the next circuit, writes it
        if not fits(circuits, stream, size) or getattr(stream.muxed_conn, "is_closed", False):
            others = [
                conn
                for conn in connections_to(self.host.get_network(), str(peer_id))
                if conn.muxed_conn is not stream.muxed_conn
            ]
            if others:
                with contextlib.suppress(Exception):  # gone meanwhile: written here after all
                    if await self.move_to(peer_id, conn=others[-1]):
                        return None
        return await queue.pop(size)

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
        scorer = self.router.scorer
        if isinstance(scorer, ChatScorer):
            scorer.receiving_from = msg_forwarder  # see ChatScorer.receiving_from
        token = current_check.set(check)
        try:
            await super().push_msg(msg_forwarder, msg)
        finally:
            current_check.reset(token)
            check.signed_here = None
            if isinstance(scorer, ChatScorer):
                scorer.receiving_from = None

    async def _handle_new_peer(self, peer_id: ID) -> None:
        # Trap 31 (not in the notes): the library builds a new peer's hello (our
        # subscriptions) and writes it before it lists the peer among those a subscription is
        # announced to: a topic joined or left between the two never reached that peer. An
        # archiver that joins a room as soon as a connecting peer announces it hit that window
        # nearly every time. What changed meanwhile is sent once the peer is listed.
        touched: set[str] = set()  # topics joined or left while this peer registers
        self._registering.append(touched)
        before = self.peers.get(peer_id)
        try:
            await super()._handle_new_peer(peer_id)
        finally:
            self._registering.remove(touched)
        opened = self.peers.get(peer_id)
        if opened is not None and opened is not before:
            self.outbound_counts.opened(opened)
            self._graft_early_subscriber(peer_id)
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

    def _graft_early_subscriber(self, peer_id: ID) -> None:
        # Trap 45 (not in the notes): the library grafts a peer the moment its subscription
        # to one of our topics arrives, if the mesh has room, but only a peer it has
        # registered (our stream to it open): a subscription that arrived while our stream was
        # being opened (QUIC under load) waited for a heartbeat, and the peer's may come
        # first. go-libp2p-pubsub publishes only to its mesh (no flood publishing by default),
        # so what a go peer said before either heartbeat reached nobody. Now registered, it is
        # grafted as the library would have; the GRAFT follows the hello on the same stream.
        for topic in self.topic_ids:  # ours, a few; the topics peers are known in may be many
            if peer_id in self.peer_topics.get(topic, ()):
                self.manager.run_task(self.router.on_peer_subscribed, peer_id, topic)

    async def subscribe(self, topic_id: str) -> Any:
        for touched in self._registering:
            touched.add(topic_id)
        return await super().subscribe(topic_id)

    async def unsubscribe(self, topic_id: str) -> None:
        for touched in self._registering:
            touched.add(topic_id)
        await super().unsubscribe(topic_id)

    def graylisted(self, peer: ID) -> bool:
        """Whether ``peer``'s score is under the graylist threshold (all it sends is ignored)."""
        scorer = self.router.scorer
        return isinstance(scorer, ChatScorer) and peer in scorer.graylisted

    def _refuse_subscription(self, origin_id: ID, limit: str) -> None:
        self._defence.control_dropped_by(limit)
        scorer = self.router.scorer
        if isinstance(scorer, ChatScorer):
            scorer.add_behaviour(origin_id, 1.0, "control_flood")
        _log_limited(limit, "pubsub subscription ignored", peer=str(origin_id))

    def handle_subscription(self, origin_id: ID, sub_message: rpc_pb2.RPC.SubOpts) -> None:
        # Bounds (#18: 40 PeerIds subscribing to thousands of junk topics took a peer to 90%
        # CPU): the topics one peer is known in, subscription changes per peer per heartbeat,
        # and the topics known in all; and a topic we are not in starts none of the library's
        # tasks (replays, GRAFT, flushes: each start of a task scans all live tasks).
        topic = sub_message.topicid
        if self.graylisted(origin_id):
            self._defence.control_dropped_by("graylisted")
            return
        limits = self._limits
        if not self._control_counts.spend(
            origin_id, "subscriptions", 1, limits.max_subscriptions_per_peer
        ):
            self._refuse_subscription(origin_id, "subscriptions_per_peer")
            return
        before = origin_id in self.peer_topics.get(topic, ())
        if sub_message.subscribe and not before:
            if topic not in self.peer_topics and len(self.peer_topics) >= limits.max_topics:
                self._refuse_subscription(origin_id, "topics_total")
                return
            if self._peer_subscription_count.get(origin_id, 0) >= self.max_subscriptions_per_peer:
                self._refuse_subscription(origin_id, "subscriptions_per_peer")
                return
        view = self.manager
        view.quiet = topic not in self.topic_ids
        try:
            super().handle_subscription(origin_id, sub_message)
        finally:
            view.quiet = False
        after = origin_id in self.peer_topics.get(topic, ())
        if after and not before:
            self.subscription_events(TopicSubscribed(str(origin_id), topic))
            router = self.router
            if isinstance(router, _ChatGossipSub) and router.graft_newcomer(origin_id, topic):
                self.manager.run_task(router.emit_graft, topic, origin_id)
        elif before and not after:
            self.subscription_events(TopicUnsubscribed(str(origin_id), topic))

    def _handle_dead_peer(self, peer_id: ID) -> None:
        topics = [topic for topic, peers in self.peer_topics.items() if peer_id in peers]
        subscriptions = self._peer_subscription_count.get(peer_id)
        super()._handle_dead_peer(peer_id)
        if topics and self._peer_is_connected(peer_id):
            # Our stream died but the peer is still connected (a relay reset the circuit it
            # was on while the next one is up, #21): the library reopens a stream on what is
            # left, but it forgot the peer's subscriptions, which the peer sends only on a new
            # stream of its own: it would never be sent anything again. It left no topic.
            for topic in topics:
                self.peer_topics.setdefault(topic, set()).add(peer_id)
            if subscriptions is not None:
                self._peer_subscription_count[peer_id] = subscriptions
            return
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
        if self.graylisted(forwarder):  # go-libp2p's AcceptFrom: not even queued
            self._defence.control_dropped_by("graylisted")
            return
        try:
            self._received_in.send_nowait((forwarder, message))
        except trio.WouldBlock:
            for topic in message.topicIDs[:1]:
                self._report(str(topic), "queue_full")

    def flood_dropped(self, forwarder: ID, sender: bytes) -> None:
        """A message from ``forwarder`` was dropped over its sender's budget, in the validator:
        the library must neither cache that verdict nor count it as an invalid message (the
        budget refills; an honest relay may be a message ahead of us). Only a forwarder that
        is the sender itself is penalised (P7): a relay is not, as go-libp2p's
        ValidationIgnore (a relay with a wider budget, or none, an older version, would
        otherwise be graylisted for relaying someone else's flood, and the room split)."""
        cache = self.validation_cache
        if isinstance(cache, _ValidationResults):
            cache.skip_next_failure = True
        scorer = self.router.scorer
        if isinstance(scorer, ChatScorer):
            scorer.ignore_next_invalid = True
            if forwarder.to_bytes() == sender:
                scorer.add_behaviour(forwarder, 1.0, "flood")

    def policy_dropped(self) -> None:
        """A message was dropped by this node's own policy about its sender (``/ignore``, a
        room's mute or removal), not found invalid: the forwarder is not penalised (an honest
        relay may not know the mute yet, nor ignore whom we ignore: go-libp2p's
        ValidationIgnore)."""
        scorer = self.router.scorer
        if isinstance(scorer, ChatScorer):
            scorer.ignore_next_invalid = True

    def add_connected_peers(self, peers: Iterable[str]) -> None:
        """Register peers connected before this pubsub existed (trap 26), in the background
        and with the library's retries, exactly as it registers a peer that connects now (a
        peer it has registered meanwhile is skipped)."""
        for peer in peers:
            self.manager.run_task(self._handle_new_peer_with_retry, ID.from_base58(peer))

    async def move_to(
        self, peer_id: ID, *, renew: bool = False, conn: INetConn | None = None
    ) -> bool:
        """Move our outbound stream to ``peer_id`` off a relayed connection, onto the best one
        the swarm now has (a direct one), keeping the messages queued for it (trap 23).

        The new stream starts with the hello (our subscriptions), as any pubsub stream does; the
        peer reads both streams until the old one ends with its connection. Whether it moved.

        ``renew``: replace the stream even if it is already direct, and close the old one once
        its current write is done: a new stream of ours is what makes js-gossipsub open its own
        again when it has none (issue #20, bug 1; :mod:`~p2pchat.node.p2p.pubsub_streams`).

        ``conn``: onto this connection (renew implied), even a relayed one: the next circuit to
        the peer, opened before the relay resets the current one (issue #21).

        A renewal (``renew``, no ``conn``) is not made once we opened
        :data:`~p2pchat.node.p2p.pubsub_streams.STREAMS_PER_CONNECTION` pubsub streams on the
        current stream's connection: rust-libp2p would disable GossipSub there.
        """
        old = self.peers.get(peer_id)
        if old is None or (
            not renew and conn is None and transport_label(old.muxed_conn) != "p2p-circuit"
        ):
            return False
        if renew and conn is None and not self.outbound_counts.room_beside(old):
            return False
        if conn is not None:
            renew = True
            stream = await new_stream_on(conn, self.protocols)
        else:
            stream = await self.host.new_stream(peer_id, self.protocols)
        if (conn is None and transport_label(stream.muxed_conn) == "p2p-circuit") or self.peers.get(
            peer_id
        ) is not old:
            await stream.close()  # nothing better to move to, or the peer re-registered meanwhile
            return False
        self.outbound_counts.opened(stream)
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
        if renew:
            self.manager.run_task(self._close_after_write, old)
        return True

    async def _close_after_write(self, stream: INetStream) -> None:
        """Close our replaced outbound ``stream`` once no RPC is being written to it."""
        lock = self._write_locks.get(stream)
        if lock is None:
            lock = self._write_locks[stream] = trio.Lock()
        async with lock:
            try:
                await stream.close()
            except Exception:  # already reset or gone with its connection: nothing to close
                return

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
IWANT_RETRANSMISSIONS = 3  # go-libp2p's GossipSubGossipRetransmission
MAX_IWANT_TRACKED = 30_000  # (peer, message) pairs counted for it, least recent forgotten


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


_GOSSIPSUB_PROTOCOLS = (PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12)  # those we speak


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

    def __init__(
        self,
        *args: Any,
        limits: PubsubLimits,
        defence: PubsubObserver,
        control_counts: _ControlCounts,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._px_budget = _PxState()
        self._px_refusals = RefusalLog(log, "peer exchange record refused", PX_LOG_EVERY)
        self._limits = limits
        self._defence = defence
        self._control_counts = control_counts
        self._iwant_served: OrderedDict[tuple[ID, bytes], int] = OrderedDict()
        if limits.scoring is None:
            # As in go-libp2p unless configured (WithPeerScore): py-libp2p scores every peer
            # for every message forwarded with all weights at zero, at 7-10% of a relaying
            # peer's CPU (trap 19).
            self.scorer = None
        else:
            scorer = ChatScorer(limits.scoring, observer=defence)
            scorer.track_topics(self.mesh.keys())  # only the rooms we are in are scored
            self.scorer = scorer

    # -- a newcomer grafted at once --------------------------------------------------------------

    def graft_newcomer(self, peer: ID, topic: str) -> bool:
        """``peer`` just subscribed to ``topic``: whether it goes into our mesh now (the
        caller sends the GRAFT), not at the next heartbeat. Yes when we are in the topic, our
        mesh has fewer than ``degree_low`` peers, and the peer speaks GossipSub, is not in
        backoff and is not scored below zero, as rust-libp2p does.

        Why: go-libp2p-pubsub 0.19 publishes only to its mesh (flood publishing is off by
        default), so a go peer that had heard our subscription but not grafted us yet (up to
        a heartbeat, 1 s) sent what it published then to nobody, and gossip never brought it
        to us either once we were grafted. Our GRAFT puts us in its mesh when it arrives."""
        mesh = self.mesh.get(topic)
        if mesh is None or peer in mesh or len(mesh) >= self.degree_low:
            return False
        if self.peer_protocol.get(peer) not in _GOSSIPSUB_PROTOCOLS:
            return False
        if self._check_back_off(peer, topic) or self._score(peer) < 0:
            return False
        mesh.add(peer)
        self._notify_mesh_peer_added(peer, topic)
        scorer = self.scorer
        if isinstance(scorer, ChatScorer):
            scorer.on_join_mesh(peer, topic)
        return True

    # -- peer scoring and control-message bounds (#18) ----------------------------------------

    def _score(self, peer: ID) -> float:
        scorer = self.scorer
        return scorer.peer_score(peer) if isinstance(scorer, ChatScorer) else 0.0

    def _over(self, peer: ID, limit: str, count: int) -> None:
        self._defence.control_dropped_by(limit, count)
        scorer = self.scorer
        if isinstance(scorer, ChatScorer):
            scorer.add_behaviour(peer, 1.0, "control_flood")
        _log_limited(limit, "pubsub control entries ignored", peer=str(peer), count=count)

    async def handle_rpc(self, rpc: rpc_pb2.RPC, sender_peer_id: ID) -> None:
        """The library's, behind go-libp2p's gates: nothing from a graylisted peer; per peer
        and heartbeat at most ``max_graft_prune`` GRAFT/PRUNE entries and
        ``max_ihave_messages`` RPCs with IHAVEs (the rest of an RPC over a limit is dropped,
        counted, and the peer penalised once per RPC)."""
        scorer = self.scorer
        if isinstance(scorer, ChatScorer) and sender_peer_id in scorer.graylisted:
            self._defence.control_dropped_by("graylisted")
            return
        control = rpc.control
        limits = self._limits
        counts = self._control_counts
        entries = len(control.graft) + len(control.prune)
        if entries:
            allowed = counts.spend(sender_peer_id, "graft_prune", entries, limits.max_graft_prune)
            if allowed < entries:
                self._over(sender_peer_id, "graft_prune", entries - allowed)
                grafts = min(allowed, len(control.graft))
                del control.graft[grafts:]
                del control.prune[allowed - grafts :]
        if control.ihave and not counts.spend(
            sender_peer_id, "ihave_messages", 1, limits.max_ihave_messages
        ):
            self._over(sender_peer_id, "ihave_messages", len(control.ihave))
            del control.ihave[:]
        await super().handle_rpc(rpc, sender_peer_id)

    def _check_ihave_rate_limit(self, peer_id: ID, topic: str) -> bool:
        # The library allows 10 IHAVEs per topic per second, and 10 IWANTs per peer per second,
        # penalising the rest: an honest peer sharing more than ten rooms with us answers our
        # gossip with more. Replaced by go-libp2p's per-heartbeat bounds (handle_rpc, below).
        return True

    def _check_iwant_rate_limit(self, peer_id: ID) -> bool:
        return True

    async def handle_ihave(self, ihave_msg: rpc_pb2.ControlIHave, sender_peer_id: ID) -> None:
        """The library's, for rooms we are in only (go-libp2p ignores the rest), and at most
        ``max_ihave_length`` message ids per peer per heartbeat; nothing from a peer under
        the gossip threshold (go-libp2p)."""
        if ihave_msg.topicID not in self.mesh:
            self._defence.control_dropped_by("unknown_topic")
            return
        scorer = self.scorer
        if isinstance(scorer, ChatScorer) and not scorer.allow_gossip(sender_peer_id, []):
            self._defence.control_dropped_by("low_score")
            return
        ids = len(ihave_msg.messageIDs)
        allowed = self._control_counts.spend(
            sender_peer_id, "ihave_ids", ids, self._limits.max_ihave_length
        )
        if allowed < ids:
            self._over(sender_peer_id, "ihave_ids", ids - allowed)
            if not allowed:
                return
            del ihave_msg.messageIDs[allowed:]
        await super().handle_ihave(ihave_msg, sender_peer_id)

    async def handle_iwant(self, iwant_msg: rpc_pb2.ControlIWant, sender_peer_id: ID) -> None:
        """The library's, for at most ``max_iwant_length`` message ids per peer per heartbeat,
        and each message sent to one peer at most :data:`IWANT_RETRANSMISSIONS` times
        (go-libp2p's GossipRetransmission: asking again and again for what it already has
        would make us resend it as often, a bandwidth amplification)."""
        ids = len(iwant_msg.messageIDs)
        allowed = self._control_counts.spend(
            sender_peer_id, "iwant_ids", ids, self._limits.max_iwant_length
        )
        if allowed < ids:
            self._over(sender_peer_id, "iwant_ids", ids - allowed)
            if not allowed:
                return
            del iwant_msg.messageIDs[allowed:]
        served = self._iwant_served
        wanted = []
        for wire_id in iwant_msg.messageIDs:
            key = (sender_peer_id, bytes(wire_id))
            times = served.pop(key, 0)
            served[key] = times + 1
            if times < IWANT_RETRANSMISSIONS:
                wanted.append(wire_id)
        while len(served) > MAX_IWANT_TRACKED:
            served.popitem(last=False)
        if len(wanted) < len(iwant_msg.messageIDs):
            self._defence.control_dropped_by(
                "iwant_retransmissions", len(iwant_msg.messageIDs) - len(wanted)
            )
            del iwant_msg.messageIDs[:]
            iwant_msg.messageIDs.extend(wanted)
        await super().handle_iwant(iwant_msg, sender_peer_id)

    async def handle_graft(self, graft_msg: rpc_pb2.ControlGraft, sender_peer_id: ID) -> None:
        """The library's, except: a GRAFT for a room we are not in is ignored (the library
        answered each with a PRUNE: a GRAFT flood got one reply per entry), and one from a
        peer with a negative score is refused with a PRUNE and a backoff (go-libp2p)."""
        topic = graft_msg.topicID
        if topic not in self.mesh:
            self._defence.control_dropped_by("unknown_topic")
            return
        if self._score(sender_peer_id) < 0 and sender_peer_id not in self.mesh[topic]:
            self._defence.mesh_pruned_for_score()
            self._add_back_off(sender_peer_id, topic, False)
            await self.emit_prune(topic, sender_peer_id, False, False)
            return
        await super().handle_graft(graft_msg, sender_peer_id)

    def mesh_heartbeat(self) -> tuple[Any, Any]:
        """Once per heartbeat: the per-heartbeat counts start again; mesh peers with a negative
        score are pruned (with a backoff, no PX), as go-libp2p does; then the library's mesh
        maintenance (which grafts no peer with a negative score:
        :meth:`_get_in_topic_gossipsub_peers_from_minus`)."""
        self._control_counts.reset()
        pruned: dict[ID, list[str]] = defaultdict(list)
        scorer = self.scorer
        if isinstance(scorer, ChatScorer):
            for topic, peers in self.mesh.items():
                for peer in [peer for peer in peers if scorer.peer_score(peer) < 0]:
                    peers.discard(peer)
                    scorer.on_leave_mesh(peer, topic)
                    self._add_back_off(peer, topic, False)
                    pruned[peer].append(topic)
                    self._defence.mesh_pruned_for_score()
        to_graft, to_prune = super().mesh_heartbeat()
        for peer, topics in pruned.items():
            to_prune[peer].extend(topics)
        return to_graft, to_prune

    def _get_in_topic_gossipsub_peers_from_minus(
        self,
        topic: str,
        num_to_select: int,
        minus: Iterable[ID],
        backoff_check: bool = False,
    ) -> list[ID]:
        scorer = self.scorer
        if not isinstance(scorer, ChatScorer):
            return list(
                super()._get_in_topic_gossipsub_peers_from_minus(
                    topic, num_to_select, minus, backoff_check
                )
            )
        # Candidates for the mesh, fanout and gossip: none with a negative score (go-libp2p).
        negative = {
            peer for peer in self.pubsub.peer_topics.get(topic, ()) if scorer.peer_score(peer) < 0
        }
        return list(
            super()._get_in_topic_gossipsub_peers_from_minus(
                topic, num_to_select, set(minus) | negative, backoff_check
            )
        )

    async def _maintain_mesh_quality(self, topic: str) -> None:
        # The library's "mesh quality maintenance" (replace the worst-scoring mesh peer by any
        # better one, every heartbeat) is not GossipSub: it churned meshes. Off.
        return None

    def _perform_opportunistic_grafting(self, topic: str, peers_to_graft: Any) -> int:
        # The library's runs every heartbeat (go-libp2p: every 60, and only when the median
        # score is low); chat rooms are small meshes, where it only churns. Off.
        return 0

    def _track_peer_ip(self, peer_id: ID) -> None:
        """The peer's IP for the IP-colocation factor, from its direct connection (the
        library's lookup reads an attribute Yamux connections do not have)."""
        scorer = self.scorer
        if self.pubsub is None or not isinstance(scorer, ChatScorer):
            return
        for conn in self.pubsub.host.get_network().get_connections(peer_id):
            try:
                if transport_label(conn.muxed_conn) == "p2p-circuit":
                    continue
                remote = conn.muxed_conn.get_remote_address()
            except Exception:  # a connection closing meanwhile
                continue
            if remote is not None:
                scorer.add_peer_ip(peer_id, str(remote[0]))
                return

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
        :meth:`_exchange_peers` instead of the library's ``_do_px``. A PRUNE for a room we are
        not in is ignored (the library kept a backoff and a timestamp per topic named)."""
        if prune_msg.topicID not in self.mesh:
            self._defence.control_dropped_by("unknown_topic")
            for _ in prune_msg.peers:
                self._px_refuse("not_joined")
            return
        if not prune_msg.peers:
            await super().handle_prune(prune_msg, sender_peer_id)
            return
        px_peers = list(prune_msg.peers)
        if isinstance(self.scorer, ChatScorer) and not self.scorer.allow_px_from(
            sender_peer_id, []
        ):
            for _ in px_peers:  # go-libp2p's AcceptPXThreshold
                self._px_refuse("low_score")
            px_peers = []
        without_px = rpc_pb2.ControlPrune()
        without_px.CopyFrom(prune_msg)
        del without_px.peers[:]
        await super().handle_prune(without_px, sender_peer_id)
        if px_peers:
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
        - ``low_score``: the sender's score is under the accept-PX threshold (checked by
          :meth:`handle_prune`);
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
        self._px_refusals.refused(reason)


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

    def __init__(
        self,
        host: P2PHost,
        px_observer: PxObserver | None = None,
        limits: PubsubLimits | None = None,
        observer: PubsubObserver | None = None,
        *,
        hold_for_next_circuit: bool = False,
    ) -> None:
        """``px_observer`` is told of every peer-exchange record refused, ``observer`` of every
        other defence (:class:`PubsubObserver`); ``limits``: :class:`PubsubLimits` (its
        defaults when None). ``hold_for_next_circuit``: a write that would pass a relayed
        circuit's data limit waits (up to :data:`~p2pchat.node.p2p.circuit_room.HOLD` s) for
        the next circuit, which the circuit renewal opens (:mod:`~p2pchat.node.p2p.
        circuit_room`)."""
        self._host = host
        self._limits = limits = limits if limits is not None else PubsubLimits()
        defence: PubsubObserver = observer if observer is not None else _NoPubsubObserver()
        counts = _ControlCounts()
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
            limits=limits,
            defence=defence,
            control_counts=counts,
        )
        if px_observer is not None:
            self._router.px_observer = px_observer
        self._pubsub = _ChatPubsub(
            host.libp2p_host,
            self._router,
            strict_signing=True,
            max_inbound_rpc_size=MAX_RPC_BYTES,
            report=self._report_drop,
            limits=limits,
            defence=defence,
            control_counts=counts,
            circuits=host.circuits,
            circuit_hold=CIRCUIT_HOLD if hold_for_next_circuit else 0.0,
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

    def remote_stream_transports(self, peer: str) -> list[str]:
        """The transports of the connections ``peer``'s own live pubsub streams to us are on
        (``tcp``, ``p2p-circuit``, ...; one per stream), empty if it has none: whether and
        where we can hear it (:mod:`~p2pchat.node.p2p.pubsub_streams`)."""
        try:
            return self._pubsub.inbound_streams.transports(ID.from_base58(peer))
        except ValueError:  # not a PeerId
            return []

    async def stream_ended(self, peer: str) -> None:
        """Return when one of ``peer``'s pubsub streams to us ends next."""
        await self._pubsub.inbound_streams.next_end(ID.from_base58(peer)).wait()

    def has_stream_to(self, peer: str) -> bool:
        """Whether we have a pubsub stream to ``peer`` (it speaks a pubsub protocol)."""
        try:
            return ID.from_base58(peer) in self._pubsub.peers
        except ValueError:  # not a PeerId
            return False

    def heard_on(self, peer: str, conn: object) -> bool:
        """Whether one of ``peer``'s live pubsub streams to us is on the connection ``conn``."""
        try:
            return self._pubsub.inbound_streams.on_connection(ID.from_base58(peer), conn)
        except ValueError:  # not a PeerId
            return False

    async def renew_stream_on(self, peer: str, conn: object) -> bool:
        """Replace our pubsub stream to ``peer`` with a new one on the connection ``conn`` (the
        next circuit), queued messages kept, the old one closed after its current write.
        Whether it was replaced; never raises."""
        try:
            moved = await self._pubsub.move_to(ID.from_base58(peer), conn=conn)
        except Exception as error:  # the connection went away meanwhile, or not a PeerId
            log.info("pubsub stream move to the next circuit failed", peer=peer, error=str(error))
            return False
        return bool(moved)

    async def renew_stream(self, peer: str) -> bool:
        """Replace our pubsub stream to ``peer`` with a new one on its best connection (a
        direct one if any), queued messages kept, the old one closed: a peer whose library
        opens its own stream only when one of ours arrives (js-gossipsub) opens it again.
        Not past the budget of streams per connection (:meth:`_ChatPubsub.move_to`).
        Whether it was replaced; never raises."""
        try:
            renewed = await self._pubsub.move_to(ID.from_base58(peer), renew=True)
        except Exception as error:  # the connection went away meanwhile, or not a PeerId
            log.info("pubsub stream renewal failed", peer=peer, error=str(error))
            return False
        return bool(renewed)

    def nudge(self, peer: str) -> bool:
        """Send ``peer`` an empty RPC on our pubsub stream (no new stream): any frame arriving
        on its connection makes rust-libp2p-gossipsub look at its send queue and open its own
        stream there if it has something to send (:mod:`~p2pchat.node.relay_handover`).
        Whether it was queued; never raises."""
        try:
            queue = self._pubsub.peer_queues.get(ID.from_base58(peer))
        except ValueError:  # not a PeerId
            return False
        return queue is not None and bool(queue.push(rpc_pb2.RPC()))

    def streams_opened_to(self, peer: str) -> int:
        """How many pubsub streams we opened on the connection our stream to ``peer`` is on."""
        try:
            stream = self._pubsub.peers.get(ID.from_base58(peer))
        except ValueError:  # not a PeerId
            return 0
        return 0 if stream is None else self._pubsub.outbound_counts.on(stream)

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
        settings = self._limits.budget
        budget = RoomBudget(settings) if settings is not None else None
        pubsub = self._pubsub
        my_id = pubsub.my_id.to_bytes()

        def validate(forwarder: ID, message: rpc_pb2.Message) -> bool:
            from_id = bytes(message.from_id)
            sender: str | None = None
            if budget is not None and from_id != my_id:  # our own are paced by our outbox
                # The sender's budget first, before anything is decoded (#18).
                sender = _peer_id_text(from_id)
                over = budget.admit(sender, time.monotonic(), forwarder)
                if over is not None:
                    pubsub.flood_dropped(forwarder, from_id)
                    for each in joined.joiners:
                        each.observer.message_dropped(topic, over)
                    _log_limited(over, "room message over its sender's budget dropped")
                    return False
            data = bytes(message.data)
            accepted = True
            invalid = False  # found invalid, not merely refused by a sender check
            for each in joined.joiners:
                reason = None
                if each.sender_check is not None:
                    if sender is None:
                        sender = _peer_id_text(from_id)
                    reason = each.sender_check(sender)
                if reason is None:
                    reason = each.validator(data)
                    if reason is None and each.signed_check is not None:
                        if sender is None:
                            sender = _peer_id_text(from_id)
                        reason = each.signed_check(sender, data)
                    invalid = invalid or reason is not None
                if reason is not None:
                    each.observer.message_dropped(topic, reason)
                    accepted = False
            if not accepted and not invalid:
                pubsub.policy_dropped()
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

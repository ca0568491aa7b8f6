"""Direct messages between two peers: ``/msg``, the two stream protocols, delivery and retries.

``/p2pchat/dm-keys/1.0.0`` hands out this peer's signed key bundle; ``/p2pchat/dm/1.0.0``
carries one Olm message per stream and gets the recipient's ack on the same stream (the stream
runs end to end, directly or through a relay that sees Noise ciphertext only): "delivered"
means the recipient decrypted it. Every message is kept in the store from the moment it is
sent until acknowledged, so one still being sent when the node stops is sent again after the
restart (the recipient shows it once: it remembers the ids, and those of its kept
conversations across its own restarts: ``shown_before``). A message that cannot be
delivered now (the peer is not reachable, or refused it for a limit) is "waiting": kept
(bounded; in the store, so a restart keeps it: :mod:`~p2pchat.roles.peer.dm_waiting`) and sent
again when a connection to that peer opens, or every :data:`RETRY_SECONDS`. A peer that is not
connected is first looked up through the DHT's peer routing (when the node runs the DHT) and
dialled at a few of the addresses found (:data:`MAX_FOUND_ADDRS`).

Each recipient has its own ordered queue: messages to one peer go one at a time, in the order
they were sent (a message behind a waiting one waits too), while messages to different peers go
at once (at most :data:`MAX_RECIPIENTS_IN_FLIGHT` peers are being sent to, at most
:data:`MAX_SENDS_IN_FLIGHT` messages are being sent), so an unreachable peer delays no other
peer's messages. ``/msg`` waits :data:`ANSWER_SECONDS` for the acknowledgement; past that it is
answered "waiting" and the send goes on: its outcome is told later (``dm_delivered``). A
recipient that lost
its session answers NO_SESSION: the sender starts a new session from a fresh bundle, says so,
and sends again, once.

Receive-side bounds (each counted in ``p2pchat_dm_dropped_total{reason}``): the frame size
(``chat.dm_max_message_bytes``, reason ``oversized``), the text size (``chat.max_message_bytes``),
the streams being received at once (``chat.dm_max_inbound``, and from one peer
``chat.dm_max_inbound_per_peer``: ``busy``), the wait for the frame
(:data:`READ_SECONDS`, ``timeout``), the sessions and the new-session rate
(:mod:`~p2pchat.roles.peer.dm_crypto`, ``session_rate``), and the ids remembered to acknowledge
a resent message without showing it twice (:data:`REMEMBERED_IDS`). Bad ciphertext is dropped
(``undecryptable``) and never shown.

Private rooms' keys (:mod:`~p2pchat.roles.peer.private_rooms`) travel the same way, queued and
retried in order with the texts (:meth:`DirectMessages.send_room_key`); received, they go to
``on_room_key`` and are never shown.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import structlog
import trio
from p2pchat.node.config import ChatSection, MailboxSection
from p2pchat.node.errors import P2PChatError
from p2pchat.node.p2p.host import ConnectionInfo, DialError, P2PHost, Stream
from p2pchat.node.p2p.peer_keys import peer_id_bytes, signed_by
from p2pchat.node.p2p.streams import (
    StreamEnded,
    StreamError,
    StreamIdle,
    close_quietly,
    read_frame_within,
    reset_quietly,
    write_quietly,
)
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.store import KeyValue
from p2pchat.node.wire.dm import (
    KEYS_PROTOCOL_ID,
    MAX_ACK_BYTES,
    MAX_BUNDLE_BYTES,
    PROTOCOL_ID,
    Ack,
    AckStatus,
    DmWireError,
    KeyBundle,
    Plaintext,
    RoomKey,
    decode_ack,
    decode_message,
    decode_plaintext,
    decode_signed_bundle,
    encode_ack,
    encode_message,
    encode_plaintext,
    encode_signed_bundle,
)
from p2pchat.node.wire.framing import FrameDecoder, FrameError, FrameTooLarge, frame
from p2pchat.roles.peer.dm_crypto import NAMESPACE as NAMESPACE
from p2pchat.roles.peer.dm_crypto import DmDrop, OlmSessions, SessionLimits
from p2pchat.roles.peer.dm_mailbox import Mail, MailKeys, MailObserver
from p2pchat.roles.peer.dm_waiting import WaitingStore
from p2pchat.roles.peer.events import ChatEvent, DirectEvent, NoticeEvent

READ_SECONDS = 10.0  # for the one frame of an inbound DM stream
SEND_SECONDS = 30.0  # a whole exchange: open, (bundle), message, ack
RETRY_SECONDS = 30.0
REMEMBERED_IDS = 4096  # ids of messages received, to ack a resent one without showing it again
MAX_WAITING = 1000  # own messages waiting, all peers together; the oldest is given up first
ANSWER_SECONDS = 10.0  # /msg's answer waits this long for the ack; the send goes on after it
MAX_RECIPIENTS_IN_FLIGHT = 16  # peers being sent to at once (one exchange each, in order)
MAX_SENDS_IN_FLIGHT = 64  # messages being sent at once, all peers; more wait for the retry
FIND_PEER_SECONDS = 20.0  # a DHT peer-routing lookup for a recipient not connected
MAX_FOUND_ADDRS = 4  # addresses of a looked-up peer dialled, one after the other
LOOKUP_RETRY_SECONDS = 60.0  # a waiting recipient not connected is looked up again after this
MAX_LOOKUPS_PER_PASS = 8  # recipients not connected looked up by one retry pass

# A DHT peer-routing lookup: the addresses (ending in /p2p/<id>) the network knows for a PeerId.
FindPeer = Callable[[str], Awaitable[list[str]]]


class DmObserver(MailObserver, Protocol):
    """What direct messages report (the role's metrics implement it). Called inline."""

    def dm_sent_outcome(self, outcome: str) -> None: ...

    def dm_message_received(self) -> None: ...

    def dm_peer_lookup(self, outcome: str) -> None: ...

    def dm_refused(self, reason: str) -> None: ...

    def dm_session_count(self, count: int) -> None: ...

    def dm_fallback_rotated(self) -> None: ...


class _Unreachable(Exception):
    """The peer could not be reached, or did not answer as it should."""


@dataclass(frozen=True)
class _Waiting:
    peer: str
    plain: Plaintext
    key: bytes  # in the store (:class:`~p2pchat.roles.peer.dm_waiting.WaitingStore`)


class DirectMessages:
    """This peer's direct messages: serves both protocols, sends, retries."""

    def __init__(
        self,
        host: P2PHost,
        keys: KeyValue,
        settings: ChatSection,
        observer: DmObserver,
        emit: Callable[[ChatEvent], None],
        name_of: Callable[[str], str],
        log: structlog.stdlib.BoundLogger,
        find_peer: FindPeer | None = None,
        shown_before: Callable[[str, bytes], bool] = lambda peer, message_id: False,
        mailbox: MailboxSection | None = None,
    ) -> None:
        """``find_peer``: the DHT's peer routing, to reach a recipient not connected (None when
        the node runs no DHT: then only the addresses the node knows are dialled).
        ``shown_before``: whether a message (peer, id) was received before the ids remembered
        here (the kept conversations: a resend after a restart is acknowledged, not shown).
        ``mailbox``: sealed offline delivery (:mod:`~p2pchat.roles.peer.dm_mailbox`; None or
        not enabled: none)."""
        self._shown_before = shown_before
        self._host = host
        self._find_peer = find_peer
        self._settings = settings
        self._observer = observer
        self._emit = emit
        self._name_of = name_of
        self._refusals = RefusalLog(log, "direct message refused")
        self._log = log
        mail_keys = MailKeys(keys)
        self.olm = OlmSessions(
            keys,
            host.peer_id,
            peer_id_bytes(host.peer_id),
            host.sign,
            signed_by,
            SessionLimits(
                max_sessions_per_peer=settings.dm_max_sessions_per_peer,
                max_peers=settings.dm_max_peers,
                new_sessions_per_peer_per_second=settings.dm_new_sessions_rate / 5,
                new_sessions_per_peer_burst=max(1, settings.dm_new_sessions_burst // 10),
                new_sessions_per_second=settings.dm_new_sessions_rate,
                new_sessions_burst=settings.dm_new_sessions_burst,
            ),
            mailbox_keys=(mail_keys.sealing_key, mail_keys.mailbox_key),
            fallback_rotation=settings.dm_fallback_rotation,
        )
        self._rotate_fallback()  # before the first fetch of mail: it needs the previous key
        self._mail: Mail | None = None
        if mailbox is not None and mailbox.enabled:
            self._mail = Mail(
                host,
                keys,
                mail_keys,
                self.olm,
                mailbox,
                settings.max_message_bytes,
                settings.dm_max_message_bytes,
                observer,
                log,
                self._show_fetched,
                self._refused,
            )
        self._inbound = 0
        self._inbound_of: dict[str, int] = {}
        self._seen: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        # Own messages not delivered yet, oldest first, in memory and in the store (a restart
        # keeps them): at most MAX_WAITING.
        self._waiting: OrderedDict[bytes, _Waiting] = OrderedDict()
        self._waiting_store = WaitingStore(keys, settings.max_message_bytes)
        for key, peer, plain in self._waiting_store.load():
            self._waiting[plain.id] = _Waiting(peer, plain, key)
        self._trim_waiting()
        # One lock per recipient being sent to (trio's locks are fair: FIFO, so in order); an
        # entry lives while a send to that peer runs or waits, so at most the tasks in flight.
        self._turns: dict[str, trio.Lock] = {}
        self._recipients = trio.CapacityLimiter(MAX_RECIPIENTS_IN_FLIGHT)
        self._sends_in_flight = 0
        self._in_flight: set[bytes] = set()  # ids sent by their own task (at most the above)
        self._nursery: trio.Nursery | None = None
        self._retry = trio.Event()
        # When each waiting recipient not connected was last looked up by a retry pass (only
        # recipients with messages waiting: at most MAX_WAITING).
        self._looked_up: dict[str, float] = {}
        observer.dm_session_count(self.olm.session_count())
        # Private rooms' keys received (roles/peer/private_rooms.py sets it): never shown.
        self.on_room_key: Callable[[str, RoomKey], Awaitable[None]] | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve both protocols, then send waiting messages again as peers come back; the
        sends that outlive their ``/msg`` answer run here too."""
        self._host.set_stream_handler(KEYS_PROTOCOL_ID, self._serve_keys)
        self._host.set_stream_handler(PROTOCOL_ID, self._serve_message)
        self._host.watch_connections(self)
        if not self.olm.restored:
            self._log.info("direct messages: new keys (peers start new sessions with us)")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._mail is not None:
                nursery.start_soon(self._mail.run)
            nursery.start_soon(self._fallback_rotations)
            task_status.started()
            while True:
                with trio.move_on_after(RETRY_SECONDS):
                    await self._retry.wait()
                self._retry = trio.Event()
                await self._send_waiting()

    async def _fallback_rotations(self) -> None:
        """Rotate the published fallback key whenever it is due (see :mod:`.dm_crypto`)."""
        while (due := self.olm.fallback_due_in()) is not None:
            await trio.sleep(max(1.0, due))
            self._rotate_fallback()

    def _rotate_fallback(self) -> None:
        if self.olm.rotate_fallback_if_due():
            self._observer.dm_fallback_rotated()
            self._log.info("direct messages: new fallback key published, the one before forgotten")

    def connection_opened(self, info: ConnectionInfo) -> None:
        if any(w.peer == info.peer_id for w in self._waiting.values()):
            self._retry.set()

    def connection_closed(self, info: ConnectionInfo) -> None:
        return None

    # --- sending ---------------------------------------------------------------------------------

    async def send(self, peer: str, text: str) -> ChatEvent:
        """Send ``text`` to ``peer``; the answer is the notice ``dm_delivered`` (and the message
        shown as sent) or ``dm_waiting``."""
        plain = Plaintext(os.urandom(16), text, int(time.time() * 1000))
        # Kept in the waiting store before the first attempt, removed once acknowledged: a
        # message still being sent when the node stops is sent again after its restart.
        self._keep(peer, plain)
        nursery = self._nursery
        if nursery is None or self._sends_in_flight >= MAX_SENDS_IN_FLIGHT:
            return self._wait(peer, plain, "too many messages being sent now")
        outcome: list[ChatEvent] = []
        done = trio.Event()
        answered = False

        async def sending() -> None:
            try:
                outcome.append(await self._send(peer, plain))
            finally:
                self._sends_in_flight -= 1
                self._in_flight.discard(plain.id)
                done.set()
            late = outcome[0]
            if answered and isinstance(late, NoticeEvent) and late.kind == "dm_delivered":
                self._emit(late)  # the user was told "waiting": now it is delivered
            elif answered and isinstance(late, NoticeEvent) and late.data.get("deposited"):
                self._emit(late)  # told "waiting" already: now deposited with archivers

        self._sends_in_flight += 1  # counted from now: the task starts later
        self._in_flight.add(plain.id)  # its own task sends it: the retry passes leave it
        nursery.start_soon(sending)
        with trio.move_on_after(ANSWER_SECONDS):
            await done.wait()
        if outcome:
            return outcome[0]
        answered = True
        return NoticeEvent(
            "dm_waiting",
            f"waiting: no answer from {self._name_of(peer)} yet; still sending (told when "
            "delivered)",
            {"peer": peer, "id": plain.id.hex(), "reason": "no answer yet", "deposited": 0},
        )

    def send_room_key(self, peer: str, key: RoomKey) -> None:
        """Send a private room's ``key`` to ``peer`` in the background, in order with the texts
        to it, waiting (and sent again) like them; its outcome is not shown."""
        plain = Plaintext(os.urandom(16), "", int(time.time() * 1000), key)
        nursery = self._nursery
        if nursery is None or self._sends_in_flight >= MAX_SENDS_IN_FLIGHT:
            self._wait(peer, plain, "too many messages being sent now")
            return

        async def sending() -> None:
            try:
                await self._send(peer, plain)
            finally:
                self._sends_in_flight -= 1

        self._sends_in_flight += 1
        nursery.start_soon(sending)

    @asynccontextmanager
    async def _turn(self, peer: str) -> AsyncIterator[None]:
        """Hold ``peer``'s queue (in the order asked) and one of the recipients' places."""
        lock = self._turns.setdefault(peer, trio.Lock())
        try:
            async with lock, self._recipients:
                yield
        finally:
            idle = not lock.locked() and not lock.statistics().tasks_waiting
            if idle and self._turns.get(peer) is lock:
                del self._turns[peer]

    def _waiting_before(self, peer: str, message_id: bytes) -> bool:
        """Whether an earlier message to ``peer`` is waiting (this one must not overtake it)."""
        for waiting in self._waiting.values():
            if waiting.peer == peer:
                return waiting.plain.id != message_id
        return False

    async def _send(self, peer: str, plain: Plaintext) -> ChatEvent:
        async with self._turn(peer):
            if self._waiting_before(peer, plain.id):
                if self._host.is_connected(peer):
                    self._retry.set()
                deposited = await self._deposit_behind(peer, plain)
                return self._wait(peer, plain, "earlier messages to it are waiting", deposited)
            try:
                ack = await self._deliver(peer, plain)
            except _Unreachable as error:
                return self._wait(peer, plain, str(error), await self._deposit(peer, plain))
        message_id = plain.id.hex()
        if ack.status is not AckStatus.DELIVERED or ack.id != plain.id:
            return self._wait(peer, plain, f"the recipient refused it for now ({ack.status.name})")
        delivered = self._waiting.pop(plain.id, None)
        if delivered is not None:
            self._waiting_store.remove(delivered.key)
        if self._mail is not None:
            self._mail.wrote_to(peer)
        self._observer.dm_sent_outcome("delivered")
        if plain.room_key is not None:  # a private room's key: nothing to show
            return NoticeEvent("dm_delivered", "", {"peer": peer, "id": message_id})
        self._emit(
            DirectEvent(
                peer, self._name_of(peer), message_id, plain.text, plain.sent_at_ms, own=True
            )
        )
        return NoticeEvent(
            "dm_delivered",
            f"delivered to {self._name_of(peer)} ({peer[-6:]})",
            {"peer": peer, "id": message_id},
        )

    def _keep(self, peer: str, plain: Plaintext) -> None:
        """Keep ``plain`` waiting (memory and store) until acknowledged; one kept already
        keeps its place."""
        if plain.id not in self._waiting:
            key = self._waiting_store.add(peer, plain)
            self._waiting[plain.id] = _Waiting(peer, plain, key)
            self._trim_waiting()

    async def _deposit_behind(self, peer: str, plain: Plaintext) -> int:
        """Deposit a message behind a waiting one when the peer is not connected, or when the
        one in front was deposited (a connection to a peer that just went away is still listed
        for a while)."""
        if self._mail is None:
            return 0
        first = next(w for w in self._waiting.values() if w.peer == peer)
        if self._host.is_connected(peer) and not self._mail.deposited(first.plain.id):
            return 0
        return await self._mail.deposit(peer, plain)

    async def _deposit(self, peer: str, plain: Plaintext) -> int:
        """Deposit ``plain`` with archivers (sealed delivery); with how many it is."""
        return 0 if self._mail is None else await self._mail.deposit(peer, plain)

    def _wait(self, peer: str, plain: Plaintext, reason: str, deposited: int = 0) -> ChatEvent:
        self._observer.dm_sent_outcome("waiting")
        self._keep(peer, plain)
        archivers = "archiver" if deposited == 1 else "archivers"
        where = f" (deposited with {deposited} {archivers})" if deposited else ""
        return NoticeEvent(
            "dm_waiting",
            f"waiting{where}: not delivered to {self._name_of(peer)} yet ({reason}); sent "
            "again when it is back",
            {"peer": peer, "id": plain.id.hex(), "reason": reason, "deposited": deposited},
        )

    def _trim_waiting(self) -> None:
        """The oldest waiting messages are given up past :data:`MAX_WAITING`."""
        while len(self._waiting) > MAX_WAITING:
            _, given_up = self._waiting.popitem(last=False)
            self._waiting_store.remove(given_up.key)

    async def _send_waiting(self) -> None:
        """Send waiting messages again to the peers connected now, and to a few not connected
        (:data:`MAX_LOOKUPS_PER_PASS`, each at most every :data:`LOOKUP_RETRY_SECONDS`: the send
        looks them up in the DHT): each peer's in order, the peers at once (:meth:`_turn`
        bounds them); a peer that fails keeps the rest of its messages for the next pass (one
        dial's wait per pass, not one per message)."""
        peers = dict.fromkeys(w.peer for w in self._waiting.values())
        self._looked_up = {p: at for p, at in self._looked_up.items() if p in peers}
        now = trio.current_time()
        lookups = 0
        async with trio.open_nursery() as nursery:
            for peer in peers:
                if self._host.is_connected(peer):
                    nursery.start_soon(self._send_waiting_to, peer)
                elif self._lookup_due(peer, now) and lookups < MAX_LOOKUPS_PER_PASS:
                    # Not connected: the send looks it up in the DHT (it may be back at
                    # another address, connected to others only).
                    self._looked_up[peer] = now
                    lookups += 1
                    nursery.start_soon(self._send_waiting_to, peer)
                else:  # not tried now: what it has waiting goes to archivers meanwhile
                    nursery.start_soon(self._deposit_waiting, peer)

    def _lookup_due(self, peer: str, now: float) -> bool:
        last = self._looked_up.get(peer)
        return self._find_peer is not None and (last is None or now - last >= LOOKUP_RETRY_SECONDS)

    async def _send_waiting_to(self, peer: str) -> None:
        for waiting in [w for w in self._waiting.values() if w.peer == peer]:
            if waiting.plain.id in self._in_flight:
                return  # its own send runs; those after it are behind it in the queue
            if waiting.plain.id not in self._waiting:
                continue
            answer = await self._send(peer, waiting.plain)
            if not (isinstance(answer, NoticeEvent) and answer.kind == "dm_delivered"):
                await self._deposit_waiting(peer)
                return
            if waiting.plain.room_key is None:
                self._emit(answer)

    async def _deposit_waiting(self, peer: str) -> None:
        """Deposit, in order, every message waiting for ``peer`` (not connected) that is not
        deposited yet: those that waited without a deposit (too many sends in flight, or no
        archiver then)."""
        if self._mail is None or self._host.is_connected(peer):
            return
        async with self._turn(peer):
            for waiting in [w for w in self._waiting.values() if w.peer == peer]:
                if waiting.plain.id in self._waiting:
                    await self._mail.deposit(peer, waiting.plain)

    async def _deliver(self, peer: str, plain: Plaintext) -> Ack:
        """One message's exchange; the caller holds ``peer``'s turn (a session changes with
        each message, so one peer's exchanges never overlap)."""
        raw = encode_plaintext(plain)
        if not self._host.is_connected(peer):
            await self._reach(peer)
        for attempt in (1, 2):
            bundle = None if self.olm.has_session(peer) else await self._fetch_bundle(peer)
            message = self.olm.encrypt(peer, raw, bundle)
            self._observer.dm_session_count(self.olm.session_count())
            ack = await self._exchange(peer, encode_message(message))
            if ack.status is AckStatus.NO_SESSION and attempt == 1:
                self.olm.forget(peer)
                self._emit(
                    NoticeEvent(
                        "dm_session",
                        f"{self._name_of(peer)} ({peer[-6:]}) lost our session: starting a new one",
                        {"peer": peer, "reason": "lost"},
                    )
                )
                continue
            return ack
        raise AssertionError("unreachable")  # pragma: no cover

    async def _reach(self, peer: str) -> None:
        """Connect to ``peer`` at addresses the DHT's peer routing finds for it, if any (a few
        of them, within :data:`FIND_PEER_SECONDS`); otherwise the stream's own dial tries the
        addresses the node knows. Every dial takes an outbound slot (the host's dial limits)."""
        if self._find_peer is None:
            return
        outcome = "failed"
        with trio.move_on_after(FIND_PEER_SECONDS):
            try:
                addrs = await self._find_peer(peer)
            except P2PChatError as error:
                self._log.info("direct messages: peer lookup failed", peer=peer, error=str(error))
                addrs = []
            else:
                outcome = "not_found"
            for addr in addrs[:MAX_FOUND_ADDRS]:
                try:
                    await self._host.connect(addr)
                except DialError:
                    continue
                outcome = "found"
                break
        self._observer.dm_peer_lookup(outcome)

    async def _fetch_bundle(self, peer: str) -> KeyBundle:
        with trio.move_on_after(SEND_SECONDS):
            try:
                stream = await self._host.new_stream(peer, [KEYS_PROTOCOL_ID])
            except StreamError as error:
                raise _Unreachable(f"not reachable: {error}") from None
            try:
                data = await read_frame_within(stream, FrameDecoder(MAX_BUNDLE_BYTES), SEND_SECONDS)
            except (StreamError, FrameError) as error:
                await reset_quietly(stream)
                raise _Unreachable(f"no key bundle: {error}") from None
            await close_quietly(stream)
            try:
                signed = decode_signed_bundle(data)
                bundle = self.olm.verified_bundle(peer, peer_id_bytes(peer), signed)
                if self._mail is not None:
                    self._mail.remember(peer, signed)
                return bundle
            except (DmDrop, DmWireError) as error:
                self._refused(error.reason, peer)
                raise _Unreachable(f"its key bundle is not valid ({error.reason})") from None
        raise _Unreachable("timed out")

    async def _exchange(self, peer: str, message: bytes) -> Ack:
        with trio.move_on_after(SEND_SECONDS):
            try:
                stream = await self._host.new_stream(peer, [PROTOCOL_ID])
            except StreamError as error:
                raise _Unreachable(f"not reachable: {error}") from None
            try:
                await stream.write(frame(message))
                data = await read_frame_within(stream, FrameDecoder(MAX_ACK_BYTES), SEND_SECONDS)
                ack = decode_ack(data)
            except (StreamError, FrameError, DmWireError) as error:
                await reset_quietly(stream)
                raise _Unreachable(f"no acknowledgement: {error}") from None
            await close_quietly(stream)
            return ack
        raise _Unreachable("timed out")

    # --- receiving -------------------------------------------------------------------------------

    def _refused(self, reason: str, peer: str) -> None:
        self._observer.dm_refused(reason)
        self._refusals.refused(reason, peer=peer)

    async def _serve_keys(self, stream: Stream) -> None:
        await write_quietly(stream, frame(encode_signed_bundle(self.olm.bundle)))
        await close_quietly(stream)

    async def _serve_message(self, stream: Stream) -> None:
        peer = stream.remote_peer
        held = self._inbound_of.get(peer, 0)
        if (
            self._inbound >= self._settings.dm_max_inbound
            or held >= self._settings.dm_max_inbound_per_peer
        ):
            self._refused("busy", peer)
            await reset_quietly(stream)
            return
        self._inbound += 1
        self._inbound_of[peer] = held + 1  # at most dm_max_inbound keys: only peers in flight
        try:
            await self._receive(stream, peer)
        finally:
            self._inbound -= 1
            left = self._inbound_of.pop(peer) - 1
            if left:
                self._inbound_of[peer] = left

    async def _receive(self, stream: Stream, peer: str) -> None:
        limit = self._settings.dm_max_message_bytes
        try:
            data = await read_frame_within(stream, FrameDecoder(limit), READ_SECONDS)
        except FrameTooLarge:
            self._refused("oversized", peer)
            await reset_quietly(stream)
            return
        except FrameError:
            self._refused("malformed", peer)
            await reset_quietly(stream)
            return
        except StreamIdle:
            self._refused("timeout", peer)
            return
        except StreamEnded:
            return
        try:
            message = decode_message(data, limit)
            raw = self.olm.decrypt(peer, peer_id_bytes(peer), message)
            plain = decode_plaintext(raw, self._settings.max_message_bytes)
        except DmWireError as error:
            self._refused(error.reason, peer)
            await self._answer(stream, Ack(AckStatus.REFUSED))
            return
        except DmDrop as drop:
            self._refused(drop.reason, peer)
            status = AckStatus.NO_SESSION if drop.no_session else AckStatus.REFUSED
            await self._answer(stream, Ack(status))
            return
        finally:
            self._observer.dm_session_count(self.olm.session_count())
        if self._mail is not None:
            if message.sender_bundle is not None:
                self._mail.remember(peer, message.sender_bundle)
            self._mail.heard_from(peer)
        if plain.room_key is not None:
            if self._first_time(peer, plain.id) and self.on_room_key is not None:
                await self.on_room_key(peer, plain.room_key)
        else:
            self._show(peer, plain)
        await self._answer(stream, Ack(AckStatus.DELIVERED, plain.id))

    def _show_fetched(self, peer: str, plains: list[Plaintext]) -> None:
        """Messages of ``peer`` fetched from mailboxes, in order (a private room's key among
        them is handed to ``on_room_key``, never shown)."""
        self._observer.dm_session_count(self.olm.session_count())
        if self._mail is not None:
            self._mail.heard_from(peer)
        for plain in plains:
            if plain.room_key is None:
                self._show(peer, plain)
            elif self._first_time(peer, plain.id) and self.on_room_key and self._nursery:
                self._nursery.start_soon(self.on_room_key, peer, plain.room_key)

    def _show(self, peer: str, plain: Plaintext) -> None:
        """Show a message received, unless it was shown already."""
        if self._first_time(peer, plain.id):
            self._observer.dm_message_received()
            self._emit(
                DirectEvent(
                    peer,
                    self._name_of(peer),
                    plain.id.hex(),
                    plain.text,
                    plain.sent_at_ms,
                    own=False,
                )
            )

    def _first_time(self, peer: str, message_id: bytes) -> bool:
        key = (peer, message_id)
        if key in self._seen or self._shown_before(peer, message_id):
            return False
        self._seen[key] = None
        while len(self._seen) > REMEMBERED_IDS:
            self._seen.popitem(last=False)
        return True

    async def _answer(self, stream: Stream, ack: Ack) -> None:
        await write_quietly(stream, frame(encode_ack(ack)))
        await close_quietly(stream)

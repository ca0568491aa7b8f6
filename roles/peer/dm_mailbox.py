"""Sealed offline delivery of direct messages through archivers' mailboxes (issue #19).

Sending: a direct message that cannot be delivered now (the peer is not connected, and
neither the dial nor the DHT lookup reached it) is, besides waiting in the sender's store as
before, encrypted in the Olm session as usual, put in a :class:`~p2pchat.node.wire.mailbox.Letter`
with the sender's PeerId, sealed to the recipient's X25519 sealing key (a libsodium sealed
box, PyNaCl: anonymous sender, only the recipient opens it) and deposited, the same sealed
bytes, with ``mailbox.deposit_archivers`` archivers (connected peers that speak
``/p2pchat/mailbox/1.0.0``, and the configured ``mailbox.archivers``), in the recipient's
mailbox: the address derived from the Ed25519 mailbox key the recipient publishes in its
signed bundle. Each message is deposited once (:data:`REMEMBERED_DEPOSITS`). The recipient's
keys are those of its last signed bundle seen (fetched, or come with its first message), kept
in the store (:data:`MAX_CONTACTS`), so a message can be sealed for a peer that is away, and a
first session opened from that bundle.

Receiving: on start, and each time a connection to an archiver is identified, this peer
fetches its mailbox from the archivers (a fetch is signed by its mailbox key for that archiver
and the current time), opens each letter, checks it as a direct message received on a stream
(Olm, and for a first message the sender's bundle signed by the sender's PeerId), shows the
new ones in the order they were sent per sender, and then deletes what it read from the
archivers it fetched from. The same letter from several archivers is opened once
(:data:`REMEMBERED_LETTERS`); a message already shown (its id: the sender resends a waiting
message directly too) is not shown again. Bad letters are dropped, counted in
``p2pchat_dm_dropped_total`` (``unsealable``, ``malformed``, and the Olm reasons) and deleted.

Per-contact mailboxes: once this peer has heard from a peer (a direct message received from it,
so that peer knows this one's bundle), letters to it go to the mailbox of their pair, not to its
published one: the pair's Ed25519 key is made from the X25519 key both can compute from their
sealing keys (libsodium's ``crypto_box_beforenm``, PyNaCl ``Box.shared_key``), hashed with a
domain of its own (BLAKE2b, personalised) into the key's seed. The recipient fetches its
published mailbox and the pair mailboxes of the ``mailbox.max_pair_mailboxes`` peers it wrote
to last (it wrote to them: they have heard from it). An archiver holding letters for one
recipient from several senders cannot tell, from the addresses, they are for the same peer;
it can still link the mailboxes its recipient fetches together by their requests' IP address
and time (each comes from its own throwaway PeerId, below; over one connection when
``mailbox.unlinkable`` is off).

Unlinkable requests (``mailbox.unlinkable``, the default): each deposit and each fetch request
(a fetch's deletes included) goes over a connection of its own from a fresh throwaway identity
(:class:`~p2pchat.node.p2p.throwaway.Throwaway`: a new Ed25519 key per request, so never one
identity for two mailboxes nor this peer's own), dialled to the archiver's known addresses
(configured, or its peerstore's) and closed after; at most ``mailbox.route_parallel`` at once,
each within :data:`REQUEST_SECONDS`. Configured archivers are then never connected to as peers.
A throwaway dial that fails is not made again from this peer's own identity: the request fails
(``p2pchat_dm_mail_routes_total{outcome="failed"}``) and is retried when failed requests are
(a waiting message's next deposit, the next fetch). The archiver still sees the IP address.

"Delivered": an archiver's acceptance is not delivery. The sender's message stays waiting and
is resent directly when the recipient is connected again; the recipient acknowledges it then
(a message it already showed from its mailbox is acknowledged without being shown again), and
only then does the sender see "delivered". If the two never meet again, it never does.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import nacl.exceptions
import nacl.hash
import nacl.public
import nacl.signing
import nacl.utils
import structlog
import trio
from p2pchat.node.config import MailboxSection
from p2pchat.node.ids import addr_peer
from p2pchat.node.p2p.host import DialError, IdentifyReceived, P2PHost
from p2pchat.node.p2p.peer_keys import peer_id_bytes, peer_id_text
from p2pchat.node.p2p.streams import (
    StreamError,
    close_quietly,
    read_frame_within,
    reset_quietly,
)
from p2pchat.node.p2p.throwaway import Throwaway, known_addrs
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.store import KeyValue
from p2pchat.node.wire.dm import (
    DmWireError,
    KeyBundle,
    Plaintext,
    SignedBundle,
    decode_message,
    decode_plaintext,
    decode_signed_bundle,
    encode_message,
    encode_plaintext,
    encode_signed_bundle,
)
from p2pchat.node.wire.framing import FrameDecoder, FrameError, frame
from p2pchat.node.wire.mailbox import (
    MAX_RESPONSE_BYTES,
    PROTOCOL_ID,
    Deposit,
    Entry,
    Fetch,
    Letter,
    MailboxWireError,
    Response,
    Status,
    address_of,
    decode_letter,
    decode_response,
    encode_letter,
    encode_request,
    fetch_signed_bytes,
)
from p2pchat.roles.peer.dm_crypto import DmDrop, OlmSessions

_SEALING = b"m/seal"
_AUTH = b"m/auth"
_CONTACTS = b"m/k/"
_HEARD = b"m/h/"  # peers heard from: letters to them go to the pair's mailbox
_WROTE = b"m/w/"  # peers written to (Unix ms, last): the pair mailboxes fetched
_PAIR_DOMAIN = b"p2pchat-mbox-v1"  # BLAKE2b personalisation of a pair mailbox key's seed
MAX_CONTACTS = 4096  # peers whose last signed bundle is kept (to seal for them while away)
REMEMBERED_DEPOSITS = 4096  # own messages deposited already (not deposited again)
REMEMBERED_LETTERS = 4096  # letters opened already (the same one from another archiver)
REQUEST_SECONDS = 20.0  # one mailbox request: open, write, answer
MAX_FETCH_ROUNDS = 8  # answers read from one archiver per fetch (the rest: the next fetch)
FETCH_QUEUE = 16  # archivers waiting to be fetched from


class MailObserver(Protocol):
    """What sealed delivery reports (the role's metrics implement it)."""

    def mail_deposited(self, outcome: str) -> None:
        """One deposit with one archiver: ``ok``, ``refused``, ``failed``."""

    def mail_fetched(self, letters: int) -> None:
        """``letters`` new letters were fetched and opened (before the Olm checks)."""

    def mail_routed(self, outcome: str) -> None:
        """One throwaway connection for a mailbox request: ``ok``, ``failed`` (no dial)."""


class MailKeys:
    """This peer's own mailbox keys, kept in the store: an X25519 key letters are sealed to,
    an Ed25519 key its mailbox address is derived from (it signs the fetches)."""

    def __init__(self, keys: KeyValue) -> None:
        self._sealing = nacl.public.PrivateKey(self._secret(keys, _SEALING))
        self._auth = nacl.signing.SigningKey(self._secret(keys, _AUTH))

    @staticmethod
    def _secret(keys: KeyValue, key: bytes) -> bytes:
        secret = keys.get(key)
        if secret is None or len(secret) != 32:
            secret = bytes(nacl.utils.random(32))
            keys.put(key, secret)
        return secret

    @property
    def sealing_key(self) -> bytes:
        return bytes(self._sealing.public_key)

    @property
    def mailbox_key(self) -> bytes:
        return bytes(self._auth.verify_key)

    def open(self, sealed: bytes) -> bytes:
        """Raises nacl.exceptions.CryptoError when it is not sealed to this key."""
        return bytes(nacl.public.SealedBox(self._sealing).decrypt(sealed))

    def pair(self, their_sealing_key: bytes) -> nacl.signing.SigningKey:
        """The Ed25519 key of the mailbox this peer and the holder of ``their_sealing_key``
        share (both compute it: the X25519 secret of their two sealing keys).

        Raises:
            nacl.exceptions.CryptoError, TypeError, ValueError: not an X25519 public key.
        """
        shared = nacl.public.Box(self._sealing, nacl.public.PublicKey(their_sealing_key))
        seed = nacl.hash.blake2b(
            shared.shared_key(),
            digest_size=32,
            person=_PAIR_DOMAIN,
            encoder=nacl.encoding.RawEncoder,
        )
        return nacl.signing.SigningKey(seed)

    def fetch(
        self,
        archiver: str,
        delete: tuple[bytes, ...],
        key: nacl.signing.SigningKey | None = None,
    ) -> Fetch:
        """A fetch of the mailbox of ``key`` (None: this peer's published one)."""
        auth = self._auth if key is None else key
        at_ms = int(time.time() * 1000)
        signed = fetch_signed_bytes(peer_id_bytes(archiver), at_ms, delete)
        return Fetch(bytes(auth.verify_key), at_ms, auth.sign(signed).signature, delete)


class Mail:
    """Deposits and fetches this peer's sealed letters (see the module's note)."""

    def __init__(
        self,
        host: P2PHost,
        keys: KeyValue,
        own: MailKeys,
        olm: OlmSessions,
        settings: MailboxSection,
        max_text_bytes: int,
        max_message_bytes: int,
        observer: MailObserver,
        log: structlog.stdlib.BoundLogger,
        show: Callable[[str, list[Plaintext]], None],
        refused: Callable[[str, str], None],
    ) -> None:
        """``show(sender, messages)`` shows a sender's new messages, in order; ``refused(reason,
        peer)`` counts and logs a dropped letter."""
        self._host = host
        self._keys = keys
        self._own = own
        self._olm = olm
        self._settings = settings
        self._max_text = max_text_bytes
        self._max_message = max_message_bytes
        self._observer = observer
        self._log = log
        self._show = show
        self._refused = refused
        self._deposit_refusals = RefusalLog(log, "mailbox deposit refused by an archiver")
        self._contacts = {key[len(_CONTACTS) :] for key, _ in keys.items(_CONTACTS)}
        self._heard = {key[len(_HEARD) :] for key, _ in keys.items(_HEARD)}
        self._wrote: dict[bytes, int] = {
            key[len(_WROTE) :]: int.from_bytes(value[:8], "big")
            for key, value in keys.items(_WROTE)
        }
        self._last_wrote = max(self._wrote.values(), default=0)
        self._turn = 0  # where the next fetch's turn over the older peers written to starts
        self._deposited: OrderedDict[bytes, int] = OrderedDict()
        self._opened: OrderedDict[bytes, None] = OrderedDict()
        self._to_fetch, self._fetch_queue = trio.open_memory_channel[str](FETCH_QUEUE)
        self._queued: set[str] = set()
        # Unlinkable: requests from throwaway identities; configured archivers by PeerId.
        self._route = Throwaway(settings.route_parallel) if settings.unlinkable else None
        self._configured: dict[str, list[str]] = {}
        for addr in settings.archivers:
            self._configured.setdefault(addr_peer(addr), []).append(addr)

    # --- contacts' keys --------------------------------------------------------------------------

    def remember(self, peer: str, signed: SignedBundle) -> None:
        """Keep ``peer``'s last signed bundle (verified already), to seal for it while away."""
        key = peer.encode()
        if key not in self._contacts and len(self._contacts) >= MAX_CONTACTS:
            self._keys.delete(_CONTACTS + self._contacts.pop())
        self._contacts.add(key)
        self._keys.put(_CONTACTS + key, encode_signed_bundle(signed))

    def heard_from(self, peer: str) -> None:
        """A direct message from ``peer`` was received: it knows this peer's bundle, so it
        fetches the pair's mailbox; letters to it go there from now on."""
        key = peer.encode()
        if key in self._heard:
            return
        if len(self._heard) >= MAX_CONTACTS:
            self._keys.delete(_HEARD + self._heard.pop())
        self._heard.add(key)
        self._keys.put(_HEARD + key, b"")

    def wrote_to(self, peer: str) -> None:
        """A direct message to ``peer`` was delivered or deposited: it will use the pair's
        mailbox, which this peer then fetches (if among the last it wrote to)."""
        key = peer.encode()
        if key not in self._wrote and len(self._wrote) >= MAX_CONTACTS:
            oldest = min(self._wrote, key=self._wrote.__getitem__)
            del self._wrote[oldest]
            self._keys.delete(_WROTE + oldest)
        # Strictly increasing: the order written in, even within one millisecond.
        now = max(int(time.time() * 1000), self._last_wrote + 1)
        self._last_wrote = now
        self._wrote[key] = now
        self._keys.put(_WROTE + key, now.to_bytes(8, "big"))

    def _address_for(self, peer: str, bundle: KeyBundle) -> bytes:
        """Where a letter to ``peer`` goes: the pair's mailbox once heard from it, else its
        published one."""
        if peer.encode() in self._heard:
            try:
                return address_of(bytes(self._own.pair(bundle.sealing_key).verify_key))
            except (nacl.exceptions.CryptoError, TypeError, ValueError):
                pass
        return address_of(bundle.mailbox_key)

    def fetched_mailboxes(self) -> list[nacl.signing.SigningKey | None]:
        """The mailboxes one fetch reads, at most ``1 + mailbox.max_pair_mailboxes``: the
        published one (None); the pair mailboxes of the peers written to last (half of the
        pair mailboxes, rounded up); and, taking turns from one fetch to the next, those of
        the other peers written to (so each is read within ``len / turns`` fetches: 4,096
        peers with the default 8 take 1,023 fetches, 3.6 days at one fetch each 5 min, within
        the archivers' 14-day TTL). Peers whose bundle is not kept have none."""
        limit = self._settings.max_pair_mailboxes
        newest = sorted(self._wrote, key=self._wrote.__getitem__, reverse=True)
        recent, rest = newest[: (limit + 1) // 2], newest[(limit + 1) // 2 :]
        turn = limit - len(recent)
        if rest and turn:
            start = self._turn % len(rest)
            self._turn = start + turn
            recent += (rest[start:] + rest[:start])[:turn]
        mailboxes: list[nacl.signing.SigningKey | None] = [None]
        for key in recent:
            bundle = self.bundle_of(key.decode(errors="replace"))
            if bundle is None or not bundle.sealing_key:
                continue
            try:
                mailboxes.append(self._own.pair(bundle.sealing_key))
            except (nacl.exceptions.CryptoError, TypeError, ValueError):
                continue
        return mailboxes

    def bundle_of(self, peer: str) -> KeyBundle | None:
        """``peer``'s keys from its last signed bundle, checked again; None if none is kept."""
        data = self._keys.get(_CONTACTS + peer.encode())
        if data is None:
            return None
        try:
            return self._olm.verified_bundle(peer, peer_id_bytes(peer), decode_signed_bundle(data))
        except (DmDrop, DmWireError, ValueError):
            return None

    # --- sending ---------------------------------------------------------------------------------

    def archivers(self) -> list[str]:
        """Connected peers that serve mailboxes."""
        return [
            peer
            for peer in self._host.connected_peers()
            if PROTOCOL_ID in self._host.peer_protocols(peer)
        ]

    def deposited(self, message_id: bytes) -> bool:
        """Whether the message ``message_id`` was deposited with an archiver."""
        return message_id in self._deposited

    async def deposit(self, peer: str, plain: Plaintext) -> int:
        """Deposit ``plain`` for ``peer`` (the caller holds ``peer``'s turn: the Olm session
        advances); returns with how many archivers it is deposited (0: none took it, or the
        peer's mailbox keys are not known)."""
        if plain.id in self._deposited:
            return self._deposited[plain.id]
        bundle = self.bundle_of(peer)
        if bundle is None or not bundle.sealing_key or not bundle.mailbox_key:
            return 0
        archivers = self.archivers()[: self._settings.deposit_archivers]
        if self._route is not None:  # configured ones are reached from throwaway identities
            archivers += [a for a in self._configured if a not in archivers]
            archivers = archivers[: self._settings.deposit_archivers]
        elif len(archivers) < self._settings.deposit_archivers:
            archivers += await self._dial_configured(
                self._settings.deposit_archivers - len(archivers), archivers
            )
        if not archivers:
            return 0
        try:
            message = self._olm.encrypt(
                peer, encode_plaintext(plain), None if self._olm.has_session(peer) else bundle
            )
        except LookupError:
            return 0
        letter = encode_letter(Letter(peer_id_bytes(self._host.peer_id), encode_message(message)))
        sealed = bytes(
            nacl.public.SealedBox(nacl.public.PublicKey(bundle.sealing_key)).encrypt(letter)
        )
        request = encode_request(Deposit(self._address_for(peer, bundle), sealed))
        taken = 0

        async def one(archiver: str) -> None:
            nonlocal taken
            response = await self._request(archiver, request)
            outcome = (
                "failed"
                if response is None
                else "ok"
                if response.status is Status.OK
                else "refused"
            )
            self._observer.mail_deposited(outcome)
            if outcome == "ok":
                taken += 1
            elif response is not None:
                self._deposit_refusals.refused(response.status.name.lower(), archiver=archiver)

        async with trio.open_nursery() as nursery:
            for archiver in archivers:
                nursery.start_soon(one, archiver)
        if taken:
            self.wrote_to(peer)
            self._deposited[plain.id] = taken
            while len(self._deposited) > REMEMBERED_DEPOSITS:
                self._deposited.popitem(last=False)
        return taken

    async def _dial_configured(self, wanted: int, have: list[str]) -> list[str]:
        """Connect to configured archivers not connected yet, at most ``wanted`` of them."""
        found: list[str] = []
        for addr in self._settings.archivers:
            if len(found) >= wanted:
                break
            try:
                peer = await self._host.connect(addr)
            except DialError:
                continue
            if peer not in have and peer not in found:
                found.append(peer)
        return found

    async def _request(self, archiver: str, request: bytes) -> Response | None:
        """One request to ``archiver`` (over a throwaway connection when unlinkable); its
        answer, or None if it failed."""
        with trio.move_on_after(REQUEST_SECONDS):
            if self._route is None:
                return await self._exchange(self._host, archiver, request)
            addrs = self._configured.get(archiver) or known_addrs(self._host, archiver)
            try:
                async with self._route.connection(archiver, addrs) as host:
                    self._observer.mail_routed("ok")
                    return await self._exchange(host, archiver, request)
            except DialError:
                # Never again from this peer's own identity: counted, retried later.
                self._observer.mail_routed("failed")
                return None
        return None

    @staticmethod
    async def _exchange(host: P2PHost, archiver: str, request: bytes) -> Response | None:
        """Write ``request`` on a new stream of ``host`` to ``archiver``, read its answer."""
        try:
            stream = await host.new_stream(archiver, [PROTOCOL_ID])
        except StreamError:
            return None
        try:
            await stream.write(frame(request))
            data = await read_frame_within(
                stream, FrameDecoder(MAX_RESPONSE_BYTES), REQUEST_SECONDS
            )
            response = decode_response(data)
        except (StreamError, FrameError, MailboxWireError):
            await reset_quietly(stream)
            return None
        await close_quietly(stream)
        return response

    # --- receiving -------------------------------------------------------------------------------

    def identified(self, event: IdentifyReceived) -> None:
        """A peer's protocols are known: fetch from it if it serves mailboxes."""
        if PROTOCOL_ID in event.protocols:
            self._queue(event.peer_id)

    def _queue(self, archiver: str) -> None:
        if archiver in self._queued:
            return
        try:
            self._to_fetch.send_nowait(archiver)
        except trio.WouldBlock:
            return  # a full queue: the fetch of those queued reads the same mailbox
        self._queued.add(archiver)

    async def run(self) -> None:
        """Fetch from the archivers connected now and the configured ones, then from each
        archiver as its connection is identified, and from those connected every
        ``mailbox.fetch_interval`` seconds (a sender that could not reach this peer while it was
        online left mail meanwhile); until cancelled."""
        self._host.watch_identify(self.identified)
        async with trio.open_nursery() as nursery:
            if self._route is not None:
                await nursery.start(self._route.run)
            nursery.start_soon(self._fetch_queued)
            for addr in self._settings.archivers:
                if self._route is not None:
                    self._queue(addr_peer(addr))  # never connected as this peer
                    continue
                try:
                    self._queue(await self._host.connect(addr))
                except DialError:
                    continue
            while True:
                for archiver in self.archivers():
                    self._queue(archiver)
                await trio.sleep(self._settings.fetch_interval)

    async def _fetch_queued(self) -> None:
        async for archiver in self._fetch_queue:
            batch = [archiver]
            while True:  # every archiver queued now: fetched at once, their letters merged
                try:
                    batch.append(self._fetch_queue.receive_nowait())
                except trio.WouldBlock:
                    break
            self._queued.difference_update(batch)
            await self.fetch(batch)

    async def fetch(self, archivers: list[str]) -> None:
        """Fetch this peer's letters from ``archivers`` (at once), mailbox after mailbox
        (:meth:`fetched_mailboxes`), show the new messages, and delete what was read: each
        request deletes what the last one read from that archiver and lists what is left,
        until an archiver lists nothing (at most :data:`MAX_FETCH_ROUNDS` requests each per
        mailbox; what is left waits for the next fetch)."""
        for key in self.fetched_mailboxes():
            await self._fetch_mailbox(archivers, key)

    async def _fetch_mailbox(
        self, archivers: list[str], key: nacl.signing.SigningKey | None
    ) -> None:
        deleting: dict[str, tuple[bytes, ...]] = dict.fromkeys(archivers, ())
        for _ in range(MAX_FETCH_ROUNDS):
            read = await self._read(deleting, key)
            self._open_all([e for entries in read.values() for e in entries])
            deleting = {a: tuple(e.id for e in entries) for a, entries in read.items() if entries}
            if not deleting:
                return
        await self._read(deleting, key)  # the last deletes; what it lists is read next time

    async def _read(
        self, deleting: dict[str, tuple[bytes, ...]], key: nacl.signing.SigningKey | None
    ) -> dict[str, list[Entry]]:
        """One request to each archiver of ``deleting`` for the mailbox of ``key``, deleting
        the ids given for it: the entries each lists."""
        read: dict[str, list[Entry]] = {}

        async def one(archiver: str, ids: tuple[bytes, ...]) -> None:
            request = encode_request(self._own.fetch(archiver, ids, key))
            response = await self._request(archiver, request)
            if response is not None and response.status is Status.OK:
                read[archiver] = list(response.entries)

        async with trio.open_nursery() as nursery:
            for archiver, ids in deleting.items():
                nursery.start_soon(one, archiver, ids)
        return read

    def _open_all(self, entries: list[Entry]) -> None:
        """Open, check and show the letters of one fetch (several archivers' answers)."""
        by_sender: dict[str, list[Plaintext]] = {}
        fresh = 0
        for entry in sorted(entries, key=lambda e: e.id):  # stored-at first: oldest first
            digest = hashlib.sha256(entry.sealed).digest()
            if digest in self._opened:
                continue
            self._opened[digest] = None
            while len(self._opened) > REMEMBERED_LETTERS:
                self._opened.popitem(last=False)
            fresh += 1
            opened = self._open(entry.sealed)
            if opened is not None:
                sender, plain = opened
                by_sender.setdefault(sender, []).append(plain)
        if fresh:
            self._observer.mail_fetched(fresh)
        for sender, plains in by_sender.items():
            self._show(sender, sorted(plains, key=lambda p: p.sent_at_ms))

    def _open(self, sealed: bytes) -> tuple[str, Plaintext] | None:
        """The sender and message of one letter; None (counted) if it is not a good one."""
        try:
            letter = decode_letter(self._own.open(sealed))
        except nacl.exceptions.CryptoError:
            self._refused("unsealable", "unknown")
            return None
        except MailboxWireError:
            self._refused("malformed", "unknown")
            return None
        try:
            sender = peer_id_text(letter.sender)
        except ValueError:
            self._refused("malformed", "unknown")
            return None
        try:
            message = decode_message(letter.message, self._max_message)
            raw = self._olm.decrypt(sender, letter.sender, message)
            plain = decode_plaintext(raw, self._max_text)
        except (DmWireError, DmDrop) as error:
            self._refused(error.reason, sender)
            return None
        if message.sender_bundle is not None:
            self.remember(sender, message.sender_bundle)
        return sender, plain

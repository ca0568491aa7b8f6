"""The archiver's mailbox server: ``/p2pchat/mailbox/1.0.0`` (issue #19, sealed offline delivery).

One request per stream (``mailbox.proto``): a deposit (anyone may leave a sealed letter in a
mailbox) or a fetch (the mailbox's holder, proving it holds the key the address is derived
from, deletes the letters it has read and lists the rest). The letters are kept by
:class:`~p2pchat.roles.archiver.mailbox_store.MailboxStore`, which bounds them.

What this archiver learns: the IP address of the connection that deposits and its PeerId (a
throwaway one, unless the sender turned ``mailbox.unlinkable`` off: then its own), the sizes
and times of letters, and, at a fetch, the IP address and PeerId of the connection that
fetches (throwaway, or the recipient's own) and the key its mailbox address is derived from.
It never sees whom a letter is from (sealed), nor its text;
nothing in a deposit names the recipient. README "Sealed offline delivery" has the whole
threat model.

Bounds, each refusal counted in ``p2pchat_mailbox_refused_total{reason}`` and logged
rate-limited: requests served at once (``mailbox.max_streams``: ``busy``), the wait for the
request (:data:`READ_SECONDS`: ``timeout``), its size (``too_large``) and form (``malformed``),
deposits and fetches per PeerId and per address group (token buckets: ``rate``; a peer
that makes each request from a fresh throwaway identity, as chat peers do by default, meets
only the group's), a fetch's authorization (``unauthorized``), and the store's (``full``,
``mailbox_full``, ``quota``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import structlog
import trio
from p2pchat.node.config import MailboxSection
from p2pchat.node.netprefix import address_group
from p2pchat.node.p2p.host import P2PHost, Stream
from p2pchat.node.p2p.peer_keys import peer_id_bytes
from p2pchat.node.p2p.streams import (
    StreamEnded,
    StreamIdle,
    close_quietly,
    read_frame_within,
    reset_quietly,
    write_quietly,
)
from p2pchat.node.ratelimit import PeerRateLimit, TokenBuckets
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.wire.framing import FrameDecoder, FrameError, FrameTooLarge, frame
from p2pchat.node.wire.mailbox import (
    PROTOCOL_ID,
    Deposit,
    Fetch,
    MailboxWireError,
    Response,
    Status,
    check_fetch,
    decode_request,
    encode_response,
    max_request_bytes,
)
from p2pchat.roles.archiver.mailbox_store import MailboxStore

READ_SECONDS = 10.0  # for a request's one frame
RELAYED_GROUP = "relayed"  # every relayed depositor together: the relay's address is not theirs
GROUP_RATE_FACTOR = 10  # an address group may deposit or fetch this many times one PeerId's rate
MAX_RATE_KEYS = 10_000

_STATUS = {
    "too_large": Status.TOO_LARGE,
    "malformed": Status.MALFORMED,
    "full": Status.FULL,
    "mailbox_full": Status.FULL,
    "quota": Status.QUOTA,
    "rate": Status.RATE,
    "unauthorized": Status.UNAUTHORIZED,
}


class MailboxObserver(Protocol):
    """What the mailbox server reports (the archiver's metrics implement it)."""

    def mailbox_refused(self, reason: str) -> None: ...

    def mailbox_deposited(self) -> None: ...

    def mailbox_fetched(self, entries: int, deleted: int) -> None: ...

    def mailbox_expired(self, count: int) -> None: ...

    def mailbox_held(self, entries: int, size: int, mailboxes: int) -> None: ...


class MailboxServer:
    """Serves the mailboxes of ``store``; :meth:`run` installs the handler and sweeps."""

    def __init__(
        self,
        host: P2PHost,
        store: MailboxStore,
        settings: MailboxSection,
        observer: MailboxObserver,
        log: structlog.stdlib.BoundLogger,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._host = host
        self._me = peer_id_bytes(host.peer_id)
        self._store = store
        self._settings = settings
        self._observer = observer
        self._log = log
        self._wall_ms = wall_ms
        self._refusals = RefusalLog(log, "mailbox request refused")
        self._deposits = PeerRateLimit(
            settings.deposit_rate, settings.deposit_burst, max_peers=MAX_RATE_KEYS
        )
        self._group_deposits = TokenBuckets(
            settings.deposit_rate * GROUP_RATE_FACTOR,
            settings.deposit_burst * GROUP_RATE_FACTOR,
            MAX_RATE_KEYS,
        )
        self._fetches = PeerRateLimit(
            settings.fetch_rate, settings.fetch_burst, max_peers=MAX_RATE_KEYS
        )
        # PeerIds are free (every unlinkable request comes from a new one): the group binds.
        self._group_fetches = TokenBuckets(
            settings.fetch_rate * GROUP_RATE_FACTOR,
            settings.fetch_burst * GROUP_RATE_FACTOR,
            MAX_RATE_KEYS,
        )
        self._serving = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the store's counts, serve, and delete expired letters every
        ``sweep_interval`` seconds, until cancelled."""
        self._store.load()
        self._report()
        self._host.set_stream_handler(PROTOCOL_ID, self._serve)
        self._log.info("mailboxes served", letters=self._store.entries, bytes=self._store.size)
        task_status.started()
        while True:
            expired = self._store.sweep(self._wall_ms())
            if expired:
                self._observer.mailbox_expired(expired)
                self._report()
            await trio.sleep(self._settings.sweep_interval)

    def _report(self) -> None:
        store = self._store
        self._observer.mailbox_held(store.entries, store.size, store.mailboxes)

    def _refused(self, reason: str, stream: Stream) -> None:
        self._observer.mailbox_refused(reason)
        # The depositor's PeerId only: never an address (it would tie a mailbox to a peer).
        self._refusals.refused(reason, peer=stream.remote_peer)

    async def _serve(self, stream: Stream) -> None:
        if self._serving >= self._settings.max_streams:
            self._refused("busy", stream)
            await reset_quietly(stream)
            return
        self._serving += 1
        try:
            await self._handle(stream)
        finally:
            self._serving -= 1

    async def _handle(self, stream: Stream) -> None:
        settings = self._settings
        decoder = FrameDecoder(max_request_bytes(settings.max_entry_bytes))
        try:
            data = await read_frame_within(stream, decoder, READ_SECONDS)
        except FrameTooLarge:
            self._refused("too_large", stream)
            await reset_quietly(stream)
            return
        except FrameError:
            self._refused("malformed", stream)
            await reset_quietly(stream)
            return
        except StreamIdle:
            self._refused("timeout", stream)
            return
        except StreamEnded:
            return
        try:
            request = decode_request(data, settings.max_entry_bytes)
            if isinstance(request, Deposit):
                response = self._deposit(stream, request)
            else:
                response = self._fetch(stream, request)
        except MailboxWireError as error:
            self._refused(error.reason, stream)
            response = Response(_STATUS[error.reason])
        await write_quietly(stream, frame(encode_response(response)))
        await close_quietly(stream)

    def _group(self, stream: Stream) -> str:
        ip = stream.remote_ip
        if ip is None:
            return RELAYED_GROUP
        try:
            return address_group(ip)
        except ValueError:
            return RELAYED_GROUP

    def _deposit(self, stream: Stream, deposit: Deposit) -> Response:
        now = trio.current_time()
        peer, group = stream.remote_peer, self._group(stream)
        if not self._deposits.allow(peer, now) or not self._group_deposits.allow(group, now):
            raise MailboxWireError("rate", "too many deposits")
        refused = self._store.deposit(deposit.address, deposit.sealed, peer, group, self._wall_ms())
        if refused is not None:
            raise MailboxWireError(refused, "letter not kept")
        self._observer.mailbox_deposited()
        self._report()
        return Response(Status.OK)

    def _fetch(self, stream: Stream, fetch: Fetch) -> Response:
        # The rate first: a forged fetch costs a token before it costs a signature check.
        now = trio.current_time()
        if not self._fetches.allow(stream.remote_peer, now) or not self._group_fetches.allow(
            self._group(stream), now
        ):
            raise MailboxWireError("rate", "too many fetches")
        check_fetch(fetch, self._me, self._wall_ms())
        address = fetch.address
        deleted = self._store.delete(address, fetch.delete)
        entries, more = self._store.fetch(address, self._settings.max_fetch_bytes, self._wall_ms())
        self._observer.mailbox_fetched(len(entries), deleted)
        if deleted:
            self._report()
        return Response(Status.OK, tuple(entries), more)

"""universal-connectivity's peer discovery (issue #20): this peer's record (its key and
addresses, ``uc_peer.proto``) is published on UC's discovery topic, and the peers announced
there are dialled: a record is taken only from the peer it is about, one TCP or WebSocket
address each, a few per minute, two at once, a peer not again within a minute."""

from __future__ import annotations

import collections
import time

import trio
from p2pchat.node.config import UcSection
from p2pchat.node.p2p.host import DialError, P2PHost
from p2pchat.node.p2p.multiaddr_bytes import dial_target, from_bytes, to_bytes
from p2pchat.node.p2p.peer_keys import public_key_bytes
from p2pchat.node.p2p.pubsub import GossipMessage
from p2pchat.node.ratelimit import TokenBucket
from p2pchat.node.wire import uc as wire
from p2pchat.roles.peer.uc_common import UcGossip, UcObserver, UcRefusals

DIALS_AT_ONCE = 2
REMEMBERED_DIALS = 256  # peers dialled recently (not dialled again for a minute)
REDIAL_SECONDS = 60.0


class UcDiscovery:
    """Announces this peer and dials the peers announced; :attr:`nursery` (set by the owner
    before records arrive) runs the dials."""

    def __init__(
        self,
        host: P2PHost,
        gossip: UcGossip,
        settings: UcSection,
        observer: UcObserver,
        refused: UcRefusals,
    ) -> None:
        self._host = host
        self._gossip = gossip
        self._settings = settings
        self._observer = observer
        self._refused = refused
        self._me = host.peer_id
        dpm = settings.discovery_dials_per_minute
        self._dials = TokenBucket(dpm / 60.0, dpm, time.monotonic()) if dpm else None
        self._dialling = trio.Semaphore(DIALS_AT_ONCE)
        self._dialled: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.nursery: trio.Nursery | None = None

    def check_record(self, data: bytes) -> str | None:
        """The topic's validator: None for a record of acceptable shape, else the reason."""
        try:
            wire.decode_peer(data)
        except wire.UcWireError as error:
            self._refused(error.reason, what="peer record")
            return error.reason
        return None

    def check_record_key(self, sender: str, data: bytes) -> str | None:
        """The topic's signed check: a record is about its signer only (anything else could
        aim us at any host)."""
        if wire.decode_peer(data).public_key != public_key_bytes(sender):
            self._refused("wrong_key", what="peer record", sender=sender)
            return "invalid"
        return None

    def record(self) -> bytes | None:
        key = public_key_bytes(self._me)
        if key is None:
            return None
        addrs = [b for b in (to_bytes(_without_p2p(a)) for a in self._host.advertised_addrs()) if b]
        return wire.encode_peer(wire.PeerRecord(key, tuple(addrs[: wire.MAX_RECORD_ADDRS])))

    async def announce_forever(self) -> None:
        while True:
            record = self.record()
            if record is not None and self._gossip.has_subscribers(wire.DISCOVERY_TOPIC):
                await self._gossip.publish(wire.DISCOVERY_TOPIC, record)
                self._observer.uc_done("peer_announced")
            await trio.sleep(self._settings.discovery_interval)

    def announced(self, message: GossipMessage) -> None:
        peer = message.sender
        now = time.monotonic()
        if self._host.is_connected(peer):
            return
        last = self._dialled.get(peer)
        if last is not None and now - last < REDIAL_SECONDS:
            return
        record = wire.decode_peer(message.data)  # validated
        private = self._settings.dial_private_addresses
        target = next(
            (
                t
                for t in (dial_target(a, peer, private=private) for a in _texts(record.addrs))
                if t is not None
            ),
            None,
        )
        if target is None:
            self._refused("no_dialable_address", what="peer record", sender=peer)
            return
        try:  # first: a record refused as busy must not spend the minute's dials
            self._dialling.acquire_nowait()
        except trio.WouldBlock:
            self._refused("dial_busy", what="peer record", sender=peer)
            return
        if self._dials is None or not self._dials.take(now):
            self._dialling.release()
            self._refused("dial_rate", what="peer record", sender=peer)
            return
        self._dialled.pop(peer, None)
        self._dialled[peer] = now
        while len(self._dialled) > REMEMBERED_DIALS:
            self._dialled.popitem(last=False)
        assert self.nursery is not None  # handlers run in it
        self.nursery.start_soon(self._dial, target)

    async def _dial(self, target: str) -> None:
        try:
            await self._host.connect(target)
            self._observer.uc_done("peer_dialled")
        except DialError:
            self._observer.uc_done("peer_dial_failed")
        finally:
            self._dialling.release()


def _texts(addrs: tuple[bytes, ...]) -> list[str]:
    return [t for t in (from_bytes(a) for a in addrs) if t is not None]


def _without_p2p(addr: str) -> str:
    head, sep, tail = addr.rpartition("/p2p/")
    return head if sep and "/" not in tail else addr

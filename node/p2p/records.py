"""Signed peer records in pubsub RPCs, built and verified once rather than per RPC (installed
by :mod:`~p2pchat.node.p2p.patches` in the library's pubsub, GossipSub and FloodSub modules,
each of which holds its own copy of the two functions).

py-libp2p attaches this node's signed peer record to every pubsub RPC it sends and verifies the
one in every RPC it receives: per message, per peer, an address lookup plus an Ed25519
verification. Profiles of a relaying peer put that at about a quarter of its CPU. The record
only changes when our addresses do, so it is rebuilt at most every
:data:`RECORD_REFRESH_SECONDS`, and a record byte-identical to one this host already verified
for the same peer is not verified again.

Trap 21 (not in the notes): a receiver drops a whole RPC, subscriptions included, when its
record is older than one it already has for the sender (identify may have brought a newer one).
A peer whose addresses changed (a relay reservation) and whose first RPC still carried the
previous record was then never known to be subscribed. So the cached record is dropped as soon
as the library issues a new local record (identify does, on address changes), and a validly
signed but stale record no longer costs the message it came with. Nor does one the bounded
peerstore refuses (``peerstore.max_record_bytes``, or no room; counted in
``p2pchat_peerstore_refused_total``): an honest peer announcing 40 addresses to a peer whose
bound was 512 bytes had every RPC dropped, subscriptions and messages, and no drop counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from weakref import WeakKeyDictionary

from libp2p.abc import IHost
from libp2p.peer.envelope import consume_envelope
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

RECORD_REFRESH_SECONDS = 10.0
MAX_REMEMBERED_RECORDS = 10_000  # per host

RecordSender = Callable[[IHost], tuple[bytes, bool]]
RecordConsumer = Callable[[rpc_pb2.RPC, IHost, ID], bool]


def cached_record_sender(build: RecordSender) -> RecordSender:
    """``build`` (the library's ``env_to_send_in_RPC``), called again for a host only when its
    local record changed or :data:`RECORD_REFRESH_SECONDS` passed."""
    cache: WeakKeyDictionary[IHost, tuple[float, bytes, object]] = WeakKeyDictionary()

    def env_to_send_in_rpc(host: IHost) -> tuple[bytes, bool]:
        now = time.monotonic()
        cached = cache.get(host)
        local = host.get_peerstore().get_local_record()
        if cached is not None and cached[2] is local and now - cached[0] < RECORD_REFRESH_SECONDS:
            return cached[1], False
        envelope, created = build(host)
        cache[host] = (now, envelope, host.get_peerstore().get_local_record())
        return envelope, created

    return env_to_send_in_rpc


def is_signed_by_sender(message: rpc_pb2.RPC, peer_id: ID) -> bool:
    """Whether the RPC's record is a peer record of ``peer_id`` validly signed by its key
    (whether or not the peerstore took it: a stale one, or one past the peerstore's bounds)."""
    try:
        envelope, record = consume_envelope(message.senderRecord, "libp2p-peer-record")
        signer = ID.from_pubkey(envelope.public_key)
    except Exception:  # the library raises several types for a bad signature or encoding
        return False
    return bool(record.peer_id == peer_id and signer == peer_id)


def remembering_record_consumer(consume: RecordConsumer) -> RecordConsumer:
    """``consume`` (the library's ``maybe_consume_signed_record``), skipped for a record this
    host already accepted from the same peer, and accepting a record validly signed by the
    sender that the peerstore refuses (stale, or past its bounds)."""
    verified: WeakKeyDictionary[IHost, dict[ID, bytes]] = WeakKeyDictionary()

    def maybe_consume_signed_record(message: rpc_pb2.RPC, host: IHost, peer_id: ID) -> bool:
        if not message.HasField("senderRecord"):
            return consume(message, host, peer_id)
        known = verified.get(host)
        if known is not None and known.get(peer_id) == message.senderRecord:
            return True
        # Refused, but signed by the sender: stale, or past the peerstore's bounds (its
        # refusal is counted there). The messages carry their own signatures: keep them (and
        # remember the record, so it is not verified again with every RPC).
        if not consume(message, host, peer_id) and not is_signed_by_sender(message, peer_id):
            return False
        if known is None:
            known = verified[host] = {}
        elif len(known) >= MAX_REMEMBERED_RECORDS:
            known.clear()  # bounded memory; the cost is one more verification per peer
        known[peer_id] = bytes(message.senderRecord)
        return True

    return maybe_consume_signed_record

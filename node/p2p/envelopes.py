"""Signed GossipSub envelopes outside of pubsub: checking ones that come back from a store, and
signing ones for tools and tests.

An envelope is a libp2p pubsub ``Message`` protobuf as sent on the wire: payload, topic, sender
PeerId, seqno, and the sender's signature over them (StrictSign). A history server hands these
back verbatim, so a client can check each one exactly as GossipSub would have, and a server
cannot forge, alter or re-room a message without the check failing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from libp2p.pubsub.pb import rpc_pb2
from p2pchat.node.p2p.identity import Identity
from p2pchat.node.p2p.pubsub import to_gossip_message
from p2pchat.node.p2p.signatures import has_valid_signature, signed_bytes

MAX_ENVELOPE_BYTES = 2 * 1024 * 1024


class EnvelopeError(ValueError):
    """An envelope that does not verify; ``reason`` labels the drop counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifiedEnvelope:
    """What a verified envelope proves: ``sender`` signed ``data`` for ``topic``."""

    topic: str
    sender: str
    data: bytes


def envelope_data(envelope: bytes) -> bytes:
    """The payload inside a signed envelope (no verification: for envelopes we stored)."""
    message = rpc_pb2.Message()
    message.ParseFromString(envelope)
    return bytes(message.data)


def verify_envelope(envelope: bytes) -> VerifiedEnvelope:
    """Check ``envelope`` as StrictSign GossipSub does: one topic, a signature by the key of
    the PeerId it names.

    Raises:
        EnvelopeError: ``malformed`` (not a pubsub message, over :data:`MAX_ENVELOPE_BYTES`,
            not exactly one topic) or ``bad_signature``.
    """
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError("malformed", f"envelope of {len(envelope)} bytes")
    message = rpc_pb2.Message()
    try:
        message.ParseFromString(envelope)
    except DecodeError:
        raise EnvelopeError("malformed", "not a pubsub message") from None
    if len(message.topicIDs) != 1:
        raise EnvelopeError("malformed", f"{len(message.topicIDs)} topics, not one")
    if not has_valid_signature(message):
        raise EnvelopeError("bad_signature", "signature does not verify")
    gossip = to_gossip_message(message, message.topicIDs[0])
    return VerifiedEnvelope(topic=gossip.topic, sender=gossip.sender, data=gossip.data)


def sign_envelope(identity: Identity, topic: str, data: bytes) -> bytes:
    """A StrictSign envelope of ``data`` on ``topic`` by ``identity``, as publishing makes one
    (for tools and tests that fill a store without running GossipSub)."""
    message = rpc_pb2.Message(
        data=data,
        topicIDs=[topic],
        from_id=identity.peer_id.to_bytes(),
        seqno=os.urandom(8),
    )
    private_key = identity.key_pair.private_key
    message.signature = private_key.sign(signed_bytes(message))
    message.key = identity.key_pair.public_key.serialize()
    return message.SerializeToString()

"""Signing with the node's libp2p identity key, and checking what a PeerId's key signed.

What a peer publishes about itself outside libp2p's own records (its direct-message keys:
:mod:`p2pchat.node.wire.dm`) is bound to its PeerId by a signature of the key the PeerId is
derived from. Callers put a domain prefix of their own in front of what is signed, so a
signature made for one purpose never passes for another (a pubsub message, a peer record).

Only PeerIds that inline their key (Ed25519, secp256k1: the identity multihash) can be checked
without more data; an RSA PeerId (a hash of its key) is refused, as py-libp2p cannot derive its
key from the PeerId alone.
"""

from __future__ import annotations

from libp2p.peer.id import ID
from p2pchat.node.p2p.identity import Identity

MAX_SIGNATURE_BYTES = 512


def sign(identity: Identity, data: bytes) -> bytes:
    """``identity``'s signature over ``data``."""
    return bytes(identity.key_pair.private_key.sign(data))


def peer_id_bytes(peer_id: str) -> bytes:
    """The binary form of a base58 PeerId.

    Raises:
        ValueError: not a PeerId.
    """
    return bytes(ID.from_base58(peer_id).to_bytes())


def peer_id_text(data: bytes) -> str:
    """The base58 form of a binary PeerId (a multihash: SHA-256, or identity with the key
    inlined).

    Raises:
        ValueError: not a PeerId's shape.
    """
    sha256 = len(data) == 34 and data[:2] == b"\x12\x20"
    inlined = len(data) >= 3 and data[0] == 0 and data[1] == len(data) - 2 and data[1] < 0x80
    if not (sha256 or inlined):
        raise ValueError("not a PeerId")
    return str(ID(data).to_base58())


def signed_by(peer_id: str, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` over ``data`` was made by the key of ``peer_id`` (never raises;
    False for a PeerId whose key it does not inline)."""
    if len(signature) > MAX_SIGNATURE_BYTES:
        return False
    try:
        key = ID.from_base58(peer_id).extract_public_key()
        return key is not None and bool(key.verify(data, signature))
    except Exception:  # an unparsable PeerId, key, or a signature of the wrong shape
        return False


def public_key_bytes(peer_id: str) -> bytes | None:
    """The public identity key ``peer_id`` inlines, in libp2p's serialized form (the key-type
    protobuf: the same bytes on every peer); None for a PeerId that does not inline its key
    (RSA) or is not a PeerId (never raises)."""
    try:
        key = ID.from_base58(peer_id).extract_public_key()
    except Exception:  # an unparsable PeerId or key
        return None
    return None if key is None else bytes(key.serialize())

"""StrictSign checks of pubsub messages, with each sender's signing key resolved once.

A signed pubsub message names its sender (``from``, a PeerId) and may carry the sender's public
key (``key``); the signature covers ``libp2p-pubsub:`` followed by the message without its
``signature`` and ``key`` fields. The key that must have signed is:

- ``key``, when present, and only if it is the key the PeerId derives from (go-libp2p's rule;
  py-libp2p ignores ``key`` when the PeerId inlines one, so it accepts a message whose ``key``
  names somebody else);
- otherwise the key inlined in the PeerId (identity multihash: Ed25519 and secp256k1); a PeerId
  that only hashes its key (RSA) cannot sign without ``key``.

py-libp2p's check decodes the PeerId, unpacks and re-derives the key for every message, for
the same few senders over and over (a tenth of the check: 66 -> 60 us per Ed25519 message
here). Here the key for a (``from``, ``key``) pair is resolved once and remembered (bounded,
least recently used); the signature of every message is still verified.

The library's pubsub calls one module-level ``signature_validator(msg)`` with nothing but the
message. :func:`signature_check_of_caller` (installed there by
:mod:`~p2pchat.node.p2p.patches`) hands that call to the check of the pubsub that is pushing
the message (:data:`current_check`, set by that pubsub around its ``push_msg``): the state of a
check (who counts drops, which message the node has just signed) belongs to its pubsub, not to
the module, so several pubsubs can run in one process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextvars import ContextVar

from libp2p.crypto.keys import PublicKey
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import PUBSUB_SIGNING_PREFIX

SIGNING_PREFIX: bytes = PUBSUB_SIGNING_PREFIX.encode()
REMEMBERED_SIGNERS = 4096  # (sender, key) pairs; past it the least recently used is resolved anew
# Larger than any PeerId or public key libp2p uses (an RSA-8192 key is ~1.1 KB): the cache keeps
# what it is given, so without a bound 4,096 garbage keys of a megabyte would be held in memory.
MAX_PEER_ID_BYTES = 128
MAX_KEY_BYTES = 2048


@functools.lru_cache(maxsize=REMEMBERED_SIGNERS)
def signing_key(from_id: bytes, key: bytes) -> PublicKey | None:
    """The public key whose signature proves a message comes from PeerId ``from_id``, given the
    message's ``key`` field (empty if absent); None if there is none (see the module's rules),
    or if either does not parse."""
    try:
        sender = ID(from_id)
        public_key = deserialize_public_key(key) if key else sender.extract_public_key()
        if public_key is None or ID.from_pubkey(public_key) != sender:
            return None
        return public_key
    except Exception:  # a PeerId or key that does not parse proves nothing
        return None


def signed_bytes(message: rpc_pb2.Message) -> bytes:
    """What the sender of ``message`` signed: the prefix and the message without its
    signature and key."""
    unsigned = rpc_pb2.Message(
        data=message.data,
        topicIDs=message.topicIDs,
        from_id=message.from_id,
        seqno=message.seqno,
    )
    return SIGNING_PREFIX + unsigned.SerializeToString()


def has_valid_signature(message: rpc_pb2.Message) -> bool:
    """Whether ``message`` is signed by the key of the PeerId it names (never raises)."""
    if not message.signature:
        return False
    if len(message.from_id) > MAX_PEER_ID_BYTES or len(message.key) > MAX_KEY_BYTES:
        return False
    public_key = signing_key(bytes(message.from_id), bytes(message.key))
    if public_key is None:
        return False
    try:
        return bool(public_key.verify(signed_bytes(message), bytes(message.signature)))
    except Exception:  # a signature of the wrong length or shape for its key type
        return False


SignatureCheck = Callable[[rpc_pb2.Message], bool]

current_check: ContextVar[SignatureCheck | None] = ContextVar(
    "p2pchat_signature_check", default=None
)
"""The check of the pubsub whose ``push_msg`` runs in this task (None outside one)."""


def signature_check_of_caller(library_check: SignatureCheck) -> SignatureCheck:
    """A stand-in for the library's ``signature_validator``: the check of the pubsub pushing
    the message (:data:`current_check`), or the library's own outside one of ours."""

    def signature_validator(message: rpc_pb2.Message) -> bool:
        check = current_check.get()
        return library_check(message) if check is None else check(message)

    return signature_validator

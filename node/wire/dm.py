"""The direct-message protocols' codec (schema: ``dm.proto`` beside this file), sans-IO.

Everything a remote peer sends is checked here before anything else looks at it: frame sizes
(the framing decoder is given :data:`MAX_BUNDLE_BYTES` or the configured DM size), key lengths,
the Olm message type, the plaintext's id and text. What this module cannot check is the
signature of a bundle (that needs the PeerId's key: :mod:`p2pchat.node.p2p.peer_keys`) and the
ciphertext itself (Olm: :mod:`p2pchat.roles.peer.dm_crypto`). Errors carry a ``reason``, the
label of the drop counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from google.protobuf.message import DecodeError
from p2pchat.node.wire import dm_pb2 as pb

KEYS_PROTOCOL_ID = "/p2pchat/dm-keys/1.0.0"
PROTOCOL_ID = "/p2pchat/dm/1.0.0"

BUNDLE_SIGNING_PREFIX = b"p2pchat-dm-keys:"
"""Domain separation: what the identity key signs for a bundle can never be a pubsub message
(``libp2p-pubsub:``) or a peer record."""

KEY_BYTES = 32  # Curve25519 public keys
MESSAGE_ID_BYTES = 16
MAX_BUNDLE_BYTES = 1024  # a bundle is ~160 bytes with an Ed25519 signature; RSA-4096 fits too
MAX_ACK_BYTES = 64
OLM_PRE_KEY = 0
OLM_NORMAL = 1


class DmWireError(ValueError):
    """Bytes that are not an acceptable DM protocol message; ``reason`` labels the drop."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class AckStatus(IntEnum):
    """The recipient's answer (see ``dm.proto``)."""

    DELIVERED = 0
    NO_SESSION = 1
    REFUSED = 2


@dataclass(frozen=True, slots=True)
class KeyBundle:
    """The Olm keys of one peer: ``peer_id`` (binary PeerId), its Curve25519 identity and
    fallback keys (32 bytes each), when it was made; and its mailbox keys (32 bytes each, or
    empty for a peer without mailboxes: :mod:`p2pchat.node.wire.mailbox`)."""

    peer_id: bytes
    identity_key: bytes
    fallback_key: bytes
    created_at_ms: int
    sealing_key: bytes = b""
    mailbox_key: bytes = b""


@dataclass(frozen=True, slots=True)
class SignedBundle:
    """A bundle as sent: its bytes (what was signed, after the prefix) and the signature."""

    bundle: bytes
    signature: bytes

    def signed_bytes(self) -> bytes:
        """What the PeerId's key signed."""
        return BUNDLE_SIGNING_PREFIX + self.bundle


@dataclass(frozen=True, slots=True)
class DirectMessage:
    """One Olm message; ``sender_bundle`` comes with (and only with) a pre-key message."""

    olm_type: int
    ciphertext: bytes
    sender_bundle: SignedBundle | None = None


@dataclass(frozen=True, slots=True)
class RoomKey:
    """A private room's membership and/or a member's Megolm key (``PrivateRoomKey``); the
    values are checked by the private rooms, which know the room (only sizes here)."""

    topic: str
    name: str = ""
    creator: str = ""
    members: tuple[str, ...] = ()
    session_id: str = ""
    session_key: str = ""
    want_key: bool = False


@dataclass(frozen=True, slots=True)
class Plaintext:
    """What a DM's ciphertext holds: a text, or (``room_key`` set, text empty) a private
    room's key, never shown as a DM."""

    id: bytes
    text: str
    sent_at_ms: int
    room_key: RoomKey | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    status: AckStatus
    id: bytes = b""


def _parse(
    message: pb.SignedKeyBundle | pb.DirectMessage | pb.DmAck | pb.KeyBundle | pb.DmPlaintext,
    data: bytes,
    what: str,
) -> None:
    try:
        message.ParseFromString(data)
    except DecodeError:
        raise DmWireError("malformed", f"not a {what}") from None


# --- bundles ------------------------------------------------------------------------------------


def encode_bundle(bundle: KeyBundle) -> bytes:
    """The bytes of ``bundle``, to be signed (:class:`SignedBundle`)."""
    return pb.KeyBundle(
        peer_id=bundle.peer_id,
        identity_key=bundle.identity_key,
        fallback_key=bundle.fallback_key,
        created_at_ms=bundle.created_at_ms,
        sealing_key=bundle.sealing_key,
        mailbox_key=bundle.mailbox_key,
    ).SerializeToString()


def encode_signed_bundle(signed: SignedBundle) -> bytes:
    return pb.SignedKeyBundle(bundle=signed.bundle, signature=signed.signature).SerializeToString()


def decode_signed_bundle(data: bytes) -> SignedBundle:
    """Raises DmWireError (``bad_bundle``) for an oversized or malformed bundle."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise DmWireError("bad_bundle", f"bundle of {len(data)} bytes")
    message = pb.SignedKeyBundle()
    try:
        _parse(message, data, "signed key bundle")
    except DmWireError as error:
        raise DmWireError("bad_bundle", str(error)) from None
    if not message.bundle or not message.signature:
        raise DmWireError("bad_bundle", "bundle or signature missing")
    return SignedBundle(bytes(message.bundle), bytes(message.signature))


def decode_bundle(signed: SignedBundle, peer_id: bytes) -> KeyBundle:
    """The keys of a bundle whose signature was checked, if it is ``peer_id``'s and its keys
    have the right length.

    Raises:
        DmWireError: ``bad_bundle``.
    """
    message = pb.KeyBundle()
    try:
        _parse(message, signed.bundle, "key bundle")
    except DmWireError as error:
        raise DmWireError("bad_bundle", str(error)) from None
    if message.peer_id != peer_id:
        raise DmWireError("bad_bundle", "bundle of another peer")
    if len(message.identity_key) != KEY_BYTES or len(message.fallback_key) != KEY_BYTES:
        raise DmWireError("bad_bundle", "keys are not 32 bytes")
    if len(message.sealing_key) not in (0, KEY_BYTES) or len(message.mailbox_key) not in (
        0,
        KEY_BYTES,
    ):
        raise DmWireError("bad_bundle", "mailbox keys are not 32 bytes")
    return KeyBundle(
        bytes(message.peer_id),
        bytes(message.identity_key),
        bytes(message.fallback_key),
        message.created_at_ms,
        bytes(message.sealing_key),
        bytes(message.mailbox_key),
    )


# --- messages -----------------------------------------------------------------------------------


def encode_message(message: DirectMessage) -> bytes:
    out = pb.DirectMessage(olm_type=message.olm_type, ciphertext=message.ciphertext)
    if message.sender_bundle is not None:
        out.sender_bundle.bundle = message.sender_bundle.bundle
        out.sender_bundle.signature = message.sender_bundle.signature
    return out.SerializeToString()


def decode_message(data: bytes, limit: int) -> DirectMessage:
    """A DM frame of at most ``limit`` bytes.

    Raises:
        DmWireError: ``oversized``, ``malformed`` (not a DirectMessage, an unknown Olm type,
            no ciphertext, a pre-key message without the sender's bundle), ``bad_bundle``.
    """
    if len(data) > limit:
        raise DmWireError("oversized", f"message of {len(data)} bytes; the limit is {limit}")
    message = pb.DirectMessage()
    _parse(message, data, "direct message")
    if message.olm_type not in (OLM_PRE_KEY, OLM_NORMAL) or not message.ciphertext:
        raise DmWireError("malformed", "unknown Olm message type, or no ciphertext")
    bundle = None
    if message.HasField("sender_bundle"):
        bundle = decode_signed_bundle(message.sender_bundle.SerializeToString())
    if message.olm_type == OLM_PRE_KEY and bundle is None:
        raise DmWireError("malformed", "a pre-key message without the sender's bundle")
    return DirectMessage(message.olm_type, bytes(message.ciphertext), bundle)


def encode_plaintext(plain: Plaintext) -> bytes:
    message = pb.DmPlaintext(id=plain.id, text=plain.text, sent_at_ms=plain.sent_at_ms)
    key = plain.room_key
    if key is not None:
        message.room_key.CopyFrom(
            pb.PrivateRoomKey(
                topic=key.topic,
                name=key.name,
                creator=key.creator,
                members=list(key.members),
                session_id=key.session_id,
                session_key=key.session_key,
                want_key=key.want_key,
            )
        )
    return message.SerializeToString()


def decode_plaintext(data: bytes, max_text_bytes: int) -> Plaintext:
    """Raises DmWireError: ``malformed`` (not a DmPlaintext, no 16-byte id, empty text),
    ``oversized`` (text over ``max_text_bytes`` UTF-8 bytes)."""
    message = pb.DmPlaintext()
    _parse(message, data, "DM plaintext")
    keyed = message.HasField("room_key")
    if len(message.id) != MESSAGE_ID_BYTES or not (message.text or keyed):
        raise DmWireError("malformed", "no 16-byte id, or no text")
    if len(message.text.encode()) > max_text_bytes:
        raise DmWireError("oversized", f"text over {max_text_bytes} bytes")
    if not keyed:
        return Plaintext(bytes(message.id), message.text, message.sent_at_ms)
    key = message.room_key
    return Plaintext(
        bytes(message.id),
        "",
        message.sent_at_ms,
        RoomKey(
            topic=key.topic,
            name=key.name,
            creator=key.creator,
            members=tuple(key.members),
            session_id=key.session_id,
            session_key=key.session_key,
            want_key=key.want_key,
        ),
    )


def encode_ack(ack: Ack) -> bytes:
    return pb.DmAck(status=int(ack.status), id=ack.id).SerializeToString()  # type: ignore[arg-type]


def decode_ack(data: bytes) -> Ack:
    """Raises DmWireError (``malformed``) for anything but a known status (and, when
    delivered, a 16-byte id)."""
    if len(data) > MAX_ACK_BYTES:
        raise DmWireError("malformed", "ack too long")
    message = pb.DmAck()
    _parse(message, data, "DM ack")
    try:
        status = AckStatus(message.status)
    except ValueError:
        raise DmWireError("malformed", f"unknown ack status {message.status}") from None
    if status is AckStatus.DELIVERED and len(message.id) != MESSAGE_ID_BYTES:
        raise DmWireError("malformed", "a delivery ack without the message id")
    return Ack(status, bytes(message.id))

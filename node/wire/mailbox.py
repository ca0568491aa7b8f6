"""The mailbox protocol's codec (schema: ``mailbox.proto`` beside this file), sans-IO.

Archivers keep sealed letters for peers that are away (issue #19, sealed offline delivery).
Everything a remote peer sends is checked here before anything else looks at it: the frame
size (the caller's framing decoder is given :func:`max_request_bytes`), the address and key
lengths, the number of ids to delete, and a fetch's authorization (:func:`check_fetch`: an
Ed25519 signature, by PyNaCl/libsodium, over this archiver's PeerId and a recent time, by the
key the mailbox address is derived from). Errors carry a ``reason``, the label of the refusal
counter. The letters themselves are sealed boxes the archiver cannot open: opening them is the
recipient's (:mod:`p2pchat.roles.peer.dm_mailbox`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import IntEnum

import nacl.exceptions
import nacl.signing
from google.protobuf.message import DecodeError
from p2pchat.node.wire import mailbox_pb2 as pb

PROTOCOL_ID = "/p2pchat/mailbox/1.0.0"

ADDRESS_PREFIX = b"p2pchat-mailbox-v1:"
FETCH_PREFIX = b"p2pchat-mailbox-fetch:"
"""Domain separation: what a mailbox key signs can never be anything else."""

ADDRESS_BYTES = 32
KEY_BYTES = 32
SIGNATURE_BYTES = 64
ENTRY_ID_BYTES = 16  # the archiver's ids: 8 bytes of time, 8 of sequence
MAX_DELETE_IDS = 256  # ids one fetch may ask to delete
MAX_CLOCK_SKEW_MS = 300_000  # a fetch made further from the archiver's clock is refused
MAX_RESPONSE_BYTES = (3 << 20) + 65_536  # mailbox.max_fetch_bytes (2 MiB at most) + a letter
REQUEST_OVERHEAD = 256  # a request's framing beyond its letter (or its ids)


class MailboxWireError(ValueError):
    """Bytes that are not an acceptable mailbox message; ``reason`` labels the refusal."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Status(IntEnum):
    """The archiver's answer (see ``mailbox.proto``)."""

    OK = 0
    MALFORMED = 1
    TOO_LARGE = 2
    FULL = 3
    QUOTA = 4
    RATE = 5
    UNAUTHORIZED = 6


@dataclass(frozen=True, slots=True)
class Deposit:
    address: bytes
    sealed: bytes


@dataclass(frozen=True, slots=True)
class Fetch:
    auth_key: bytes
    at_ms: int
    signature: bytes
    delete: tuple[bytes, ...] = ()

    @property
    def address(self) -> bytes:
        return address_of(self.auth_key)


@dataclass(frozen=True, slots=True)
class Entry:
    id: bytes
    sealed: bytes


@dataclass(frozen=True, slots=True)
class Response:
    status: Status
    entries: tuple[Entry, ...] = field(default=())
    more: bool = False


@dataclass(frozen=True, slots=True)
class Letter:
    """What a sealed box holds: the sender's binary PeerId and its DirectMessage's bytes."""

    sender: bytes
    message: bytes


def address_of(auth_key: bytes) -> bytes:
    """The mailbox address of the holder of Ed25519 public key ``auth_key``."""
    return hashlib.sha256(ADDRESS_PREFIX + auth_key).digest()


def fetch_signed_bytes(archiver: bytes, at_ms: int, delete: tuple[bytes, ...]) -> bytes:
    """What a fetch's signature covers: the archiver's binary PeerId, the time, the ids."""
    return FETCH_PREFIX + archiver + at_ms.to_bytes(8, "big") + b"".join(delete)


def max_request_bytes(max_entry_bytes: int) -> int:
    """The largest request frame worth reading when letters are at most ``max_entry_bytes``."""
    return max(max_entry_bytes, MAX_DELETE_IDS * (ENTRY_ID_BYTES + 2)) + REQUEST_OVERHEAD


def _parse(message: pb.MailboxRequest | pb.MailboxResponse | pb.Letter, data: bytes) -> None:
    try:
        message.ParseFromString(data)
    except DecodeError:
        raise MailboxWireError("malformed", "not a mailbox message") from None


# --- requests ----------------------------------------------------------------------------------


def encode_request(request: Deposit | Fetch) -> bytes:
    if isinstance(request, Deposit):
        out = pb.MailboxRequest(deposit=pb.Deposit(address=request.address, sealed=request.sealed))
    else:
        out = pb.MailboxRequest(
            fetch=pb.Fetch(
                auth_key=request.auth_key,
                at_ms=request.at_ms,
                signature=request.signature,
                delete=list(request.delete),
            )
        )
    return out.SerializeToString()


def decode_request(data: bytes, max_entry_bytes: int) -> Deposit | Fetch:
    """A request frame.

    Raises:
        MailboxWireError: ``too_large`` (a letter over ``max_entry_bytes``), ``malformed`` (not
            a request, an address, key or signature of the wrong length, no letter, too many
            or bad ids to delete).
    """
    message = pb.MailboxRequest()
    _parse(message, data)
    kind = message.WhichOneof("kind")
    if kind == "deposit":
        deposit = message.deposit
        if len(deposit.address) != ADDRESS_BYTES or not deposit.sealed:
            raise MailboxWireError("malformed", "no 32-byte address, or no letter")
        if len(deposit.sealed) > max_entry_bytes:
            raise MailboxWireError("too_large", f"letter of {len(deposit.sealed)} bytes")
        return Deposit(bytes(deposit.address), bytes(deposit.sealed))
    if kind == "fetch":
        fetch = message.fetch
        if len(fetch.auth_key) != KEY_BYTES or len(fetch.signature) != SIGNATURE_BYTES:
            raise MailboxWireError("malformed", "no 32-byte key, or no 64-byte signature")
        if len(fetch.delete) > MAX_DELETE_IDS or any(
            len(i) != ENTRY_ID_BYTES for i in fetch.delete
        ):
            raise MailboxWireError("malformed", "too many ids to delete, or a bad id")
        return Fetch(
            bytes(fetch.auth_key),
            fetch.at_ms,
            bytes(fetch.signature),
            tuple(bytes(i) for i in fetch.delete),
        )
    raise MailboxWireError("malformed", "neither a deposit nor a fetch")


def check_fetch(fetch: Fetch, archiver: bytes, now_ms: int) -> None:
    """Whether ``fetch`` is the mailbox holder's, made for ``archiver`` (binary PeerId)
    within :data:`MAX_CLOCK_SKEW_MS` of ``now_ms``.

    Raises:
        MailboxWireError: ``unauthorized``.
    """
    if abs(fetch.at_ms - now_ms) > MAX_CLOCK_SKEW_MS:
        raise MailboxWireError("unauthorized", "fetch made too far from now")
    try:
        nacl.signing.VerifyKey(fetch.auth_key).verify(
            fetch_signed_bytes(archiver, fetch.at_ms, fetch.delete), fetch.signature
        )
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        raise MailboxWireError("unauthorized", "fetch signature does not verify") from None


# --- responses ---------------------------------------------------------------------------------


def encode_response(response: Response) -> bytes:
    return pb.MailboxResponse(
        status=int(response.status),  # type: ignore[arg-type]
        entries=[pb.Entry(id=e.id, sealed=e.sealed) for e in response.entries],
        more=response.more,
    ).SerializeToString()


def decode_response(data: bytes) -> Response:
    """Raises MailboxWireError (``malformed``) for anything but a known status and entries
    with ids of the right length and a letter each."""
    message = pb.MailboxResponse()
    _parse(message, data)
    try:
        status = Status(message.status)
    except ValueError:
        raise MailboxWireError("malformed", f"unknown status {message.status}") from None
    entries = tuple(Entry(bytes(e.id), bytes(e.sealed)) for e in message.entries)
    if any(len(e.id) != ENTRY_ID_BYTES or not e.sealed for e in entries):
        raise MailboxWireError("malformed", "an entry without its id or letter")
    return Response(status, entries, message.more)


# --- letters -----------------------------------------------------------------------------------


def encode_letter(letter: Letter) -> bytes:
    return pb.Letter(sender=letter.sender, message=letter.message).SerializeToString()


def decode_letter(data: bytes) -> Letter:
    """Raises MailboxWireError (``malformed``) without a sender or a message."""
    message = pb.Letter()
    _parse(message, data)
    if not message.sender or not message.message:
        raise MailboxWireError("malformed", "a letter without its sender or message")
    return Letter(bytes(message.sender), bytes(message.message))

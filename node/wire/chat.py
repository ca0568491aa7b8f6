"""The chat payload codec (schema: ``chat.proto`` beside this file), sans-IO.

:func:`encode` turns a payload record into bytes; :func:`decode` turns untrusted bytes from the
network into a payload record or raises :class:`WireError` whose ``reason`` is the label under
which the drop is counted. Decoding never allocates more than ``max_payload_bytes`` worth of
input: larger inputs are refused before parsing.
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from google.protobuf.message import DecodeError
from p2pchat.node.wire import chat_pb2
from p2pchat.node.wire.room_names import MAX_ROOM_CHARS, is_peer_id, room_owner, validate_room

__all__ = ["MAX_ROOM_CHARS", "validate_room"]  # re-exported: the room rule lives in room_names

WIRE_VERSION = 1
MESSAGE_ID_BYTES = 16
MAX_NAME_CHARS = 32
ANONYMOUS_NAME = "anon"
"""The name a p2pchat peer without one sends, and what a received text with an empty (or blank)
``sender_name`` is decoded as: proto3's default for a string is empty, so a minimal client that
never sets a name must still be heard (it was dropped as ``invalid`` before)."""
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024
MAX_REASON_BYTES = 200  # of a moderation decision's reason
MAX_MUTE_MS = 366 * 86_400_000  # a mute lasts at most a year (a removal has no end)
PRIVATE_OVERHEAD_BYTES = 1024  # a private text's ciphertext beyond its ChatText's text limit
MAX_SESSION_ID_CHARS = 64
_SESSION_ID = re.compile(r"[A-Za-z0-9+/]{1,64}")

DropReason = Literal[
    "malformed",
    "unsupported_version",
    "oversized",
    "invalid",
    "wrong_room",
    "future_timestamp",
    "not_owner",
]
MAX_CLOCK_AHEAD_MS = 5 * 60 * 1000  # how far a sender's clock may run ahead of ours


class WireError(ValueError):
    """Bytes that are not an acceptable chat payload; ``reason`` says why, for drop counters."""

    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(detail)
        self.reason: DropReason = reason


@dataclass(frozen=True, slots=True)
class ChatText:
    """A message typed by a user (see ``ChatText`` in chat.proto)."""

    id: bytes
    room: str
    sender_name: str
    text: str
    sent_at_ms: int
    action: bool = False  # "/me waves"


@dataclass(frozen=True, slots=True)
class NameAnnouncement:
    """A user's display name (see ``NameAnnouncement`` in chat.proto)."""

    id: bytes
    name: str
    sent_at_ms: int


ModerationAction = Literal["mute", "remove", "restore"]
_ACTIONS: dict[int, ModerationAction] = {
    chat_pb2.Moderation.MUTE: "mute",
    chat_pb2.Moderation.REMOVE: "remove",
    chat_pb2.Moderation.RESTORE: "restore",
}
_ACTION_CODES = {name: code for code, name in _ACTIONS.items()}


@dataclass(frozen=True, slots=True)
class Moderation:
    """An owned room's owner's decision about one peer (see ``Moderation`` in chat.proto).
    The owner is the envelope's signer; receivers check it is the room's (:func:`room_owner`).
    """

    id: bytes
    room: str
    target: str  # PeerId
    action: ModerationAction
    sent_at_ms: int
    until_ms: int = 0  # mute: until when (the owner's clock); 0 otherwise
    reason: str = ""

    @property
    def order(self) -> tuple[int, bytes]:
        """Of two decisions about the same target, the one with the greater order is in force."""
        return (self.sent_at_ms, self.id)


@dataclass(frozen=True, slots=True)
class PrivateText:
    """A private room's message: a :class:`ChatText`, Megolm-encrypted (see ``PrivateText`` in
    chat.proto). This codec checks the envelope only; members decrypt it
    (``roles/peer/private_rooms.py``)."""

    id: bytes
    room: str
    sent_at_ms: int
    session_id: str
    ciphertext: bytes


ChatPayload = ChatText | NameAnnouncement | Moderation | PrivateText
HISTORY_PAYLOADS = (ChatText, Moderation, PrivateText)
"""What a room's history keeps (both name their room); a tuple: ``isinstance`` with a ``|``
union builds the union on every call (~3x the cost, per message received)."""


def new_message_id() -> bytes:
    """A fresh random message id."""
    return os.urandom(MESSAGE_ID_BYTES)


def _has_control_chars(text: str, allowed: str = "") -> bool:
    return any(unicodedata.category(ch).startswith("C") and ch not in allowed for ch in text)


# Bidirectional overrides and isolates: they make a terminal show text in another order than it
# was written (the "Trojan Source" class), so a message could display a forged line.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# Category Cc is exactly U+0000-U+001F and U+007F-U+009F, Cs exactly U+D800-U+DFFF (both fixed
# by Unicode's stability policy), so one regex scan replaces a category lookup per character.
_UNSAFE_IN_TEXT = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff" + "".join(sorted(_BIDI_CONTROLS)) + "]"
)


def _unsafe_in_text(text: str) -> bool:
    """Control characters (category Cc, except newline and tab), surrogates (Cs) and bidi
    controls.

    Texts are checked less strictly than names: format characters such as the zero-width joiner
    of emoji sequences (👨‍👩‍👧) and unassigned code points (emoji newer than this Python's
    tables) are ordinary text, and refusing them would make acceptance depend on a receiver's
    Python version.
    """
    return _UNSAFE_IN_TEXT.search(text) is not None


def unsafe_in_text(text: str) -> bool:
    """Whether ``text`` holds what no chat text may (:func:`_unsafe_in_text`): for the codecs
    of other chat formats (universal-connectivity's plain text), the same rule."""
    return _unsafe_in_text(text)


# Both validators are pure and see the same few names and rooms in every message received.
@functools.lru_cache(maxsize=1024)
def validate_name(name: str) -> str:
    """Return the cleaned display name, or raise ValueError with a one-line reason.

    A name is 1-32 characters after stripping surrounding whitespace, on one line, with no
    control characters (Unicode category C*). Control characters are refused everywhere a remote
    string reaches the console: an escape sequence (ESC, CSI) in a name or message could rewrite
    the user's terminal, and a line break would let a name forge a line of its own.
    """
    cleaned = name.strip()
    if not 1 <= len(cleaned) <= MAX_NAME_CHARS:
        raise ValueError(f"a name has 1 to {MAX_NAME_CHARS} characters")
    if _has_control_chars(cleaned):
        raise ValueError("a name cannot contain control characters")
    if any(unicodedata.category(ch) in ("Zl", "Zp") for ch in cleaned):  # U+2028, U+2029
        raise ValueError("a name is a single line")
    return cleaned


def encode(payload: ChatPayload) -> bytes:
    """Serialize a payload (callers check sizes and names before sending)."""
    envelope = chat_pb2.ChatEnvelope(version=WIRE_VERSION)
    if isinstance(payload, ChatText):
        envelope.text.CopyFrom(
            chat_pb2.ChatText(
                id=payload.id,
                room=payload.room,
                sender_name=payload.sender_name,
                text=payload.text,
                sent_at_ms=payload.sent_at_ms,
                action=payload.action,
            )
        )
    elif isinstance(payload, Moderation):
        envelope.moderation.CopyFrom(
            chat_pb2.Moderation(
                id=payload.id,
                room=payload.room,
                target=payload.target,
                action=_ACTION_CODES[payload.action],  # type: ignore[arg-type]
                until_ms=payload.until_ms,
                sent_at_ms=payload.sent_at_ms,
                reason=payload.reason,
            )
        )
    elif isinstance(payload, PrivateText):
        envelope.private.CopyFrom(
            chat_pb2.PrivateText(
                id=payload.id,
                room=payload.room,
                sent_at_ms=payload.sent_at_ms,
                session_id=payload.session_id,
                ciphertext=payload.ciphertext,
            )
        )
    else:
        envelope.name.CopyFrom(
            chat_pb2.NameAnnouncement(
                id=payload.id, name=payload.name, sent_at_ms=payload.sent_at_ms
            )
        )
    return envelope.SerializeToString()


def decode(
    data: bytes, *, max_text_bytes: int, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> ChatPayload:
    """Parse and check an untrusted payload.

    The size is checked before parsing, so the parser never sees more than ``max_payload_bytes``.
    A text may contain newlines and tabs but no other control characters: the console prints
    texts verbatim, and an escape sequence from a remote peer would be run by the terminal.

    Raises:
        WireError: ``oversized`` (payload or text too large), ``malformed`` (not the schema,
            or no body), ``unsupported_version``, ``invalid`` (bad id, room, name, time or
            control characters).
    """
    if len(data) > max_payload_bytes:
        raise WireError("oversized", f"payload of {len(data)} bytes over {max_payload_bytes}")
    envelope = chat_pb2.ChatEnvelope()
    try:
        envelope.ParseFromString(data)
    except (DecodeError, ValueError) as error:  # ValueError: invalid UTF-8 in a string field
        raise WireError("malformed", f"not a chat payload: {error}") from None
    if envelope.version != WIRE_VERSION:
        raise WireError("unsupported_version", f"payload version {envelope.version}")
    body = envelope.WhichOneof("body")
    if body == "text":
        return _check_text(envelope.text, max_text_bytes)
    if body == "name":
        return _check_name(envelope.name)
    if body == "moderation":
        return _check_moderation(envelope.moderation)
    if body == "private":
        return _check_private(envelope.private, max_text_bytes)
    raise WireError("malformed", "payload has no body")


def _check_common(message_id: bytes, sent_at_ms: int) -> None:
    if len(message_id) != MESSAGE_ID_BYTES:
        raise WireError("invalid", f"message id of {len(message_id)} bytes")
    if sent_at_ms == 0:
        raise WireError("invalid", "no send time")


def _check_text(message: chat_pb2.ChatText, max_text_bytes: int) -> ChatText:
    _check_common(message.id, message.sent_at_ms)
    size = len(message.text.encode())
    if size > max_text_bytes:
        raise WireError("oversized", f"text of {size} bytes over {max_text_bytes}")
    try:
        room = validate_room(message.room)
        # No name (empty, proto3's default, or blank) reads as the name a p2pchat peer without
        # one sends, so everything downstream treats it as any anonymous peer's message.
        sender_name = (
            validate_name(message.sender_name) if message.sender_name.strip() else ANONYMOUS_NAME
        )
    except ValueError as error:
        raise WireError("invalid", str(error)) from None
    if _unsafe_in_text(message.text):
        raise WireError("invalid", "text contains control characters")
    return ChatText(
        id=bytes(message.id),
        room=room,
        sender_name=sender_name,
        text=message.text,
        sent_at_ms=message.sent_at_ms,
        action=message.action,
    )


def _check_private(message: chat_pb2.PrivateText, max_text_bytes: int) -> PrivateText:
    """The envelope of a private text; its ciphertext is the members' to check."""
    _check_common(message.id, message.sent_at_ms)
    try:
        room = validate_room(message.room)
    except ValueError as error:
        raise WireError("invalid", str(error)) from None
    if _SESSION_ID.fullmatch(message.session_id) is None:
        raise WireError("invalid", "a private text's session id is 1-64 base64 characters")
    size = len(message.ciphertext)
    if size > max_text_bytes + PRIVATE_OVERHEAD_BYTES:
        raise WireError("oversized", f"ciphertext of {size} bytes")
    if not size:
        raise WireError("invalid", "a private text without ciphertext")
    return PrivateText(
        id=bytes(message.id),
        room=room,
        sent_at_ms=message.sent_at_ms,
        session_id=message.session_id,
        ciphertext=bytes(message.ciphertext),
    )


def check_inner_text(data: bytes, max_text_bytes: int) -> ChatText:
    """The ChatText a private text's ciphertext held (decrypted), checked as a ChatText on
    the wire is.

    Raises:
        WireError: as :func:`decode` for a text.
    """
    message = chat_pb2.ChatText()
    try:
        message.ParseFromString(data)
    except (DecodeError, ValueError) as error:
        raise WireError("malformed", f"not a chat text: {error}") from None
    return _check_text(message, max_text_bytes)


def encode_inner_text(text: ChatText) -> bytes:
    """The bytes a private text encrypts: ``text`` as a ChatText message."""
    return chat_pb2.ChatText(
        id=text.id,
        room=text.room,
        sender_name=text.sender_name,
        text=text.text,
        sent_at_ms=text.sent_at_ms,
        action=text.action,
    ).SerializeToString()


def _check_name(message: chat_pb2.NameAnnouncement) -> NameAnnouncement:
    _check_common(message.id, message.sent_at_ms)
    try:
        name = validate_name(message.name)
    except ValueError as error:
        raise WireError("invalid", str(error)) from None
    return NameAnnouncement(id=bytes(message.id), name=name, sent_at_ms=message.sent_at_ms)


def _check_moderation(message: chat_pb2.Moderation) -> Moderation:
    """The checks every receiver makes of a decision, whoever signed it (the signer is checked
    against the room's owner by :func:`moderation_refused`, which knows the signer)."""
    _check_common(message.id, message.sent_at_ms)
    try:
        room = validate_room(message.room)
    except ValueError as error:
        raise WireError("invalid", str(error)) from None
    owner = room_owner(room)
    if owner is None:
        raise WireError("invalid", "a moderation decision in a room nobody owns")
    if not is_peer_id(message.target) or message.target == owner:
        raise WireError("invalid", "a moderation decision must name a PeerId other than the owner")
    action = _ACTIONS.get(message.action)
    if action is None:
        raise WireError("invalid", f"unknown moderation action {message.action}")
    until = message.until_ms
    if action == "mute":
        if not message.sent_at_ms < until <= message.sent_at_ms + MAX_MUTE_MS:
            raise WireError("invalid", "a mute ends after it starts, within a year")
    elif until:
        raise WireError("invalid", f"a {action} has no end time")
    if len(message.reason.encode()) > MAX_REASON_BYTES:
        raise WireError("oversized", f"a reason over {MAX_REASON_BYTES} bytes")
    if _unsafe_in_text(message.reason) or "\n" in message.reason:
        raise WireError("invalid", "reason contains control characters")
    return Moderation(
        id=bytes(message.id),
        room=room,
        target=message.target,
        action=action,
        sent_at_ms=message.sent_at_ms,
        until_ms=until,
        reason=message.reason,
    )


def moderation_refused(payload: ChatPayload, signer: str) -> DropReason | None:
    """``not_owner`` when ``payload`` is a moderation decision that ``signer`` may not make
    (only the owner named by the room may), else None."""
    if isinstance(payload, Moderation) and room_owner(payload.room) != signer:
        return "not_owner"
    return None


def decode_for_room(data: bytes, room: str, *, max_text_bytes: int, now_ms: int) -> ChatPayload:
    """Decode a payload received on ``room``'s topic, as every receiver must check it: a text
    must name that room (so a signed message cannot be replayed into another room), and no
    payload may be dated more than :data:`MAX_CLOCK_AHEAD_MS` ahead of ``now_ms`` (history is
    ordered by the sender's clock: a message from the future would stay "newest" and outlive
    age-based retention).

    Raises:
        WireError: as :func:`decode`, or with reason ``wrong_room`` / ``future_timestamp``.
    """
    payload = decode(data, max_text_bytes=max_text_bytes)
    if isinstance(payload, HISTORY_PAYLOADS) and payload.room != room:
        raise WireError("wrong_room", f"a message for room {payload.room!r}")
    if payload.sent_at_ms > now_ms + MAX_CLOCK_AHEAD_MS:
        raise WireError("future_timestamp", "sent in the future")
    return payload

"""Room names, plain and owned: pure functions over strings (no protobuf, no py-libp2p).

A plain room is 1-64 letters, digits, ``-``, ``_``, ``.`` (``lobby``): nobody owns it, nobody
moderates it. An owned room is a plain name, ``~`` and the owner's PeerId
(``ops~12D3KooW...``): the owner is part of the room's identity, so every peer can tell who may
moderate it from the name alone, without trusting anybody, and nobody can take over a room by
claiming it (a room with another owner is another room, another topic).
"""

from __future__ import annotations

import functools

MAX_ROOM_CHARS = 64  # of a plain room name, and of the plain part of an owned one
OWNER_SEPARATOR = "~"
MAX_PEER_ID_CHARS = 64  # base58 of a 48-byte multihash at most; Ed25519 PeerIds are 52
MAX_OWNED_ROOM_CHARS = MAX_ROOM_CHARS + 1 + MAX_PEER_ID_CHARS

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_VALUE = {ch: value for value, ch in enumerate(_BASE58)}
_IDENTITY, _SHA2_256 = 0x00, 0x12  # the multihash codes a libp2p PeerId uses
_MAX_INLINE_KEY = 42  # libp2p inlines (identity multihash) public keys of at most 42 bytes


def _base58_decode(text: str) -> bytes | None:
    number = 0
    for ch in text:
        value = _BASE58_VALUE.get(ch)
        if value is None:
            return None
        number = number * 58 + value
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    zeros = len(text) - len(text.lstrip("1"))
    return b"\x00" * zeros + body


@functools.lru_cache(maxsize=1024)
def is_peer_id(text: str) -> bool:
    """Whether ``text`` is a libp2p PeerId in its base58 form: an identity multihash of an
    inlined key (``12D3KooW...``) or a SHA-256 one (``Qm...``), checked byte by byte."""
    if not 1 <= len(text) <= MAX_PEER_ID_CHARS:
        return False
    raw = _base58_decode(text)
    if raw is None or len(raw) < 2:
        return False
    code, size = raw[0], raw[1]
    if len(raw) != 2 + size:
        return False
    if code == _SHA2_256:
        return size == 32
    return code == _IDENTITY and 1 <= size <= _MAX_INLINE_KEY


def _plain(name: str) -> bool:
    return 1 <= len(name) <= MAX_ROOM_CHARS and all(ch.isalnum() or ch in "-_." for ch in name)


@functools.lru_cache(maxsize=1024)
def validate_room(room: str) -> str:
    """Return ``room`` if it is a valid room name (plain or owned), else raise ValueError with a
    one-line reason."""
    plain, separator, owner = room.partition(OWNER_SEPARATOR)
    if not _plain(plain):
        raise ValueError(
            f"room {room!r} must be 1-64 characters of letters, digits, - _ . "
            f"(an owned room: <name>~<owner PeerId>)"
        )
    if separator and not is_peer_id(owner):
        raise ValueError(f"room {room!r}: what follows ~ must be the owner's PeerId")
    return room


def room_owner(room: str) -> str | None:
    """The owner's PeerId of a valid owned room name; None for a plain room."""
    _, separator, owner = room.partition(OWNER_SEPARATOR)
    return owner if separator else None


def owned_room(name: str, owner: str) -> str:
    """The owned room ``name`` of ``owner`` (ValueError if either is not valid)."""
    return validate_room(f"{name}{OWNER_SEPARATOR}{owner}")

"""Megolm sessions of the private rooms, sans-IO: keys, their store, their bounds.

Cryptography: Megolm (Matrix's group ratchet) from vodozemac, the library the direct messages'
Olm comes from (:mod:`~p2pchat.roles.peer.dm_crypto`); nothing here does cryptography itself.
Each member of a private room has its own outbound session (as Matrix does) and gives its
session key, at its current index, to the other members over their pairwise Olm sessions; a
member decrypts another's messages from the index it was given on, none before. Every Megolm
message is signed by its session's Ed25519 key and MACed, so a tampered one does not decrypt.

Binding sessions to senders: an inbound session is kept with the PeerId of the member that
shared it (over the authenticated Olm session); a message is only decrypted with a session of
the member that signed its envelope, so one member cannot pass another's ciphertext off as its
own. Replays: a (session, index) decrypts to one message id only (:data:`MAX_SEEN_INDEXES`
remembered per room); another message with the same index is refused.

State: outbound and inbound sessions are pickled (vodozemac's encrypted pickles, the pickle key
of :mod:`~p2pchat.roles.peer.dm_crypto`, the one place at-rest encryption will change) into the
store namespace :data:`NAMESPACE` after every change, so a restart keeps the room keys and the
history stays readable.

Bounds: at most ``max_sessions_per_room`` inbound sessions per room (a sender's oldest goes
first, then the room's oldest); how many rooms there are is the private rooms' bound.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

import vodozemac
from p2pchat.node.store import KeyValue

NAMESPACE = "megolm"
MAX_SEEN_INDEXES = 4096  # (session, index) -> message id remembered per room, for replays
MAX_OWNER_BYTES = 128  # a PeerId's text is about 52 characters
_OUT = b"o/"  # o/<room> -> this peer's outbound session
_IN = b"i/"  # i/<room>/<session id> -> owner length, owner, inbound session
_LEN = struct.Struct(">H")


class GroupDrop(Exception):
    """A private text or key refused; ``reason`` labels the drop counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class _Inbound:
    owner: str  # the member that shared it
    session: vodozemac.InboundGroupSession


class GroupKeys:
    """Every private room's Megolm sessions: this peer's outbound one, the members' inbound."""

    def __init__(self, keys: KeyValue, me: str, max_sessions_per_room: int) -> None:
        self._keys = keys
        self._me = me
        self._max = max(2, max_sessions_per_room)
        self._out: dict[str, vodozemac.GroupSession] = {}
        # room -> session id -> inbound session, oldest first
        self._in: dict[str, OrderedDict[str, _Inbound]] = {}
        self._seen: dict[str, OrderedDict[tuple[str, int], bytes]] = {}
        self._load()

    # --- this peer's outbound session ------------------------------------------------------------

    def outbound(self, room: str) -> vodozemac.GroupSession:
        """This peer's outbound session of ``room`` (a new one if it has none)."""
        session = self._out.get(room)
        return session if session is not None else self.rotate(room)

    def rotate(self, room: str) -> vodozemac.GroupSession:
        """A new outbound session for ``room`` (after a removal: the removed member was given
        the old one's key, never this one's). Its key is kept inbound too, so this peer reads
        its own messages and history."""
        session = vodozemac.GroupSession()
        self._out[room] = session
        self._save_out(room)
        self.add_inbound(room, self._me, session.session_key.to_base64())
        return session

    def share(self, room: str) -> tuple[str, str]:
        """(session id, session key at the current index) of this peer's outbound session."""
        session = self.outbound(room)
        return session.session_id, session.session_key.to_base64()

    def encrypt(self, room: str, plaintext: bytes) -> tuple[str, bytes]:
        """``plaintext`` encrypted with this peer's outbound session: (session id, message)."""
        session = self.outbound(room)
        message = session.encrypt(plaintext)
        self._save_out(room)
        return session.session_id, message.to_bytes()

    # --- the members' sessions -------------------------------------------------------------------

    def add_inbound(self, room: str, owner: str, session_key: str) -> str:
        """Keep ``owner``'s session of ``room`` from its ``session_key`` (base64); returns its
        id. A session already held keeps the earliest index known (a key given again at a later
        index does not forget earlier messages).

        Raises:
            GroupDrop: ``bad_key`` (not a session key, or its signature does not verify).
        """
        if len(owner.encode()) > MAX_OWNER_BYTES:
            raise GroupDrop("bad_key", "owner too long")
        try:
            session = vodozemac.InboundGroupSession(vodozemac.SessionKey(session_key))
        except ValueError:
            raise GroupDrop("bad_key", "not a Megolm session key") from None
        held = self._in.setdefault(room, OrderedDict())
        known = held.get(session.session_id)
        if known is not None:
            if known.owner != owner:
                raise GroupDrop("bad_key", "a session another member shared")
            if known.session.first_known_index <= session.first_known_index:
                return session.session_id
        held[session.session_id] = _Inbound(owner, session)
        self._save_in(room, session.session_id)
        self._trim(room, owner)
        return session.session_id

    def decrypt(
        self, room: str, sender: str, session_id: str, ciphertext: bytes, message_id: bytes
    ) -> bytes:
        """The plaintext of ``sender``'s message ``message_id`` (its history id) in ``room``.

        Raises:
            GroupDrop: ``unknown_session`` (no session of that id shared by ``sender``),
                ``undecryptable`` (not a Megolm message, tampered, or before the index this
                peer was given), ``replayed`` (another message had the same index).
        """
        room_sessions = self._in.get(room)
        held = room_sessions.get(session_id) if room_sessions is not None else None
        if held is None or held.owner != sender:
            raise GroupDrop("unknown_session", "no session of that sender with that id")
        try:
            decrypted = held.session.decrypt(vodozemac.MegolmMessage.from_bytes(ciphertext))
        except ValueError:
            raise GroupDrop("undecryptable", "does not decrypt") from None
        seen = self._seen.setdefault(room, OrderedDict())
        key = (session_id, decrypted.message_index)
        first = seen.setdefault(key, message_id)
        if first != message_id:
            raise GroupDrop("replayed", "a message index used by another message")
        seen.move_to_end(key)
        while len(seen) > MAX_SEEN_INDEXES:
            seen.popitem(last=False)
        return bytes(decrypted.plaintext)

    def session_count(self) -> int:
        return sum(len(held) for held in self._in.values())

    def forget(self, room: str) -> None:
        """Drop every session of ``room`` (this peer left it or was removed)."""
        self._out.pop(room, None)
        self._keys.delete(_OUT + room.encode())
        for session_id in self._in.pop(room, {}):
            self._keys.delete(self._in_key(room, session_id))
        self._seen.pop(room, None)

    # --- bookkeeping -----------------------------------------------------------------------------

    def _trim(self, room: str, owner: str) -> None:
        held = self._in[room]
        while len(held) > self._max:
            # The newest session stays; of the rest, the owner's oldest goes, else the oldest.
            candidates = [sid for sid, s in held.items() if s.owner == owner][:-1] or list(held)
            self._keys.delete(self._in_key(room, candidates[0]))
            del held[candidates[0]]

    def _in_key(self, room: str, session_id: str) -> bytes:
        return _IN + room.encode() + b"/" + session_id.encode()

    def _save_out(self, room: str) -> None:
        self._keys.put(_OUT + room.encode(), self._out[room].pickle(self._keys.pickle_key).encode())

    def _save_in(self, room: str, session_id: str) -> None:
        held = self._in[room][session_id]
        owner = held.owner.encode()
        self._keys.put(
            self._in_key(room, session_id),
            _LEN.pack(len(owner)) + owner + held.session.pickle(self._keys.pickle_key).encode(),
        )

    def _load(self) -> None:
        """Read the sessions back; an unreadable one is deleted (its messages no longer
        decrypt here)."""
        for key, value in list(self._keys.items(_OUT)):
            try:
                room = key[len(_OUT) :].decode()
                self._out[room] = vodozemac.GroupSession.from_pickle(
                    value.decode(), self._keys.pickle_key
                )
            except (ValueError, UnicodeDecodeError):
                self._keys.delete(key)
        for key, value in list(self._keys.items(_IN)):
            try:
                # A room has no "/"; a session id (base64) may have some.
                room, session_id = key[len(_IN) :].decode().split("/", 1)
                (length,) = _LEN.unpack_from(value)
                owner = value[_LEN.size : _LEN.size + length].decode()
                pickled = value[_LEN.size + length :].decode()
                session = vodozemac.InboundGroupSession.from_pickle(pickled, self._keys.pickle_key)
            except (ValueError, UnicodeDecodeError, struct.error):
                self._keys.delete(key)
                continue
            self._in.setdefault(room, OrderedDict())[session_id] = _Inbound(owner, session)


def repickle(keys: KeyValue, old: bytes, new: bytes) -> int:
    """Re-pickle the Megolm sessions kept in ``keys`` (the ``megolm`` namespace) from pickle
    key ``old`` to ``new`` (``p2pchat passphrase set|remove``); how many were. A pickle that
    does not open with ``old`` (already under ``new``: an interrupted run resumed) is left as
    it is."""
    done = 0
    for key, value in list(keys.items()):
        try:
            if key.startswith(_OUT):
                outbound = vodozemac.GroupSession.from_pickle(value.decode(), old)
                keys.put(key, outbound.pickle(new).encode())
            elif key.startswith(_IN):
                (length,) = _LEN.unpack_from(value)
                head = value[: _LEN.size + length]
                pickled = value[_LEN.size + length :].decode()
                inbound = vodozemac.InboundGroupSession.from_pickle(pickled, old)
                keys.put(key, head + inbound.pickle(new).encode())
            else:
                continue
        except (ValueError, UnicodeDecodeError, struct.error):
            continue
        done += 1
    return done

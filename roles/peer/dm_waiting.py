"""This peer's own direct messages waiting to be delivered, kept in the node's store so a
restart does not lose them: each is added before its first attempt and removed when its
recipient acknowledges it (one in flight at a stop is sent again after the restart).

Key layout in the ``dm`` namespace (:data:`~p2pchat.roles.peer.dm_crypto.NAMESPACE`, whose Olm
keys are ``account`` and ``s/...``): ``w/<serial: 8 bytes big-endian><message id: 16 bytes>``
-> ``<recipient PeerId, UTF-8>\\x00<DmPlaintext>``. The serial grows with each message, so the
keys list the messages in the order they were sent, across restarts. Only this peer writes
here (never a remote peer); the caller bounds how many there are
(:data:`~p2pchat.roles.peer.dm.MAX_WAITING`).

The text is kept as typed, under the data dir's privacy (0700, as the room history is):
encryption at rest is a later part of issue #19. A delivered message's key is deleted; the
database may keep the deleted bytes on disk until it compacts them.
"""

from __future__ import annotations

from p2pchat.node.store import KeyValue
from p2pchat.node.wire.dm import DmWireError, Plaintext, decode_plaintext, encode_plaintext

PREFIX = b"w/"
_SERIAL_BYTES = 8


class WaitingStore:
    """The waiting messages on disk; :meth:`load` once at start, then :meth:`add` and
    :meth:`remove` as they come and go."""

    def __init__(self, keys: KeyValue, max_text_bytes: int) -> None:
        self._keys = keys
        self._max_text_bytes = max_text_bytes
        self._serial = 0

    def load(self) -> list[tuple[bytes, str, Plaintext]]:
        """(key, recipient, message) of every waiting message, oldest first. A record that does
        not decode (written by another version, or damaged), or whose text is over the limit
        now (``chat.max_message_bytes`` lowered), is deleted and left out."""
        found: list[tuple[bytes, str, Plaintext]] = []
        for key, value in list(self._keys.items(PREFIX)):
            serial = key[len(PREFIX) : len(PREFIX) + _SERIAL_BYTES]
            self._serial = max(self._serial, int.from_bytes(serial, "big"))
            peer, _, data = value.partition(b"\x00")
            try:
                plain = decode_plaintext(data, self._max_text_bytes)
                found.append((key, peer.decode(), plain))
            except (DmWireError, UnicodeDecodeError):
                self._keys.delete(key)
        return found

    def add(self, peer: str, plain: Plaintext) -> bytes:
        """Keep ``plain`` for ``peer``, after every message kept so far; returns its key."""
        self._serial += 1
        key = PREFIX + self._serial.to_bytes(_SERIAL_BYTES, "big") + plain.id
        self._keys.put(key, peer.encode() + b"\x00" + encode_plaintext(plain))
        return key

    def remove(self, key: bytes) -> None:
        """Forget one message (delivered, or given up)."""
        self._keys.delete(key)

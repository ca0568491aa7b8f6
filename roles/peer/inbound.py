"""The inbound pipeline: a room's verified messages, decoded, deduplicated, stored, shown.

Pubsub has verified each message's signature before :meth:`Inbound.validator`'s check runs;
the check decodes the payload for its room and keeps the decoded form (the newest
:data:`MAX_VALIDATED`), so that :meth:`Inbound.accept` does not decode it again. Accepting a
batch: every sender is noted as heard in the room (at the time it signed, not when the copy
reached us); name announcements update the names; a room owner's moderation decisions (checked
as signed by the owner where pubsub validates them, :meth:`Inbound.signed_check`) are stored in
the history (so that this peer serves them to peers that were away), and handed to
``moderated`` as they are validated;
texts are stored in one write and those new to the history (by sender and id) are shown, once.
Duplicates are counted, not shown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from p2pchat.node.bounded import BoundedDict
from p2pchat.node.history import History, StoredMessage, now_ms
from p2pchat.node.p2p.pubsub import GossipMessage
from p2pchat.node.wire.chat import (
    ChatText,
    Moderation,
    NameAnnouncement,
    PrivateText,
    WireError,
    decode,
    decode_for_room,
    moderation_refused,
)
from p2pchat.roles.peer.events import ChatEvent
from p2pchat.roles.peer.names import Names
from p2pchat.roles.peer.presentation import message_event, name_event
from p2pchat.roles.peer.rooms import Rooms

MAX_VALIDATED = 8192  # decoded payloads kept between validation and acceptance

Payload = ChatText | NameAnnouncement | Moderation | PrivateText


class PrivateGate(Protocol):
    """The private rooms, as the inbound pipeline sees them
    (:class:`~p2pchat.roles.peer.private_rooms.PrivateRooms`)."""

    def is_private(self, topic: str) -> bool: ...

    def reveal(self, payload: ChatText | PrivateText, sender: str, room: str) -> ChatText | None:
        """The decrypted text, or None (dropped and counted)."""


class InboundObserver(Protocol):
    """What the inbound pipeline reports (the role's metrics implement it). Called inline."""

    def message_dropped(self, topic: str, reason: str) -> None:
        """A message of room ``topic`` could not be decoded (``reason``: the
        :class:`~p2pchat.node.wire.chat.WireError` reason); the validator drops these first,
        so this is a defensive count."""

    def duplicates_dropped(self, count: int) -> None:
        """``count`` texts of one batch were already in the history: not shown again."""

    def message_received(self) -> None:
        """A text from another peer was new: stored and shown."""


class Inbound:
    """Receives the messages of the joined ``rooms``.

    Args:
        me: this peer's PeerId (its own messages come back through its subscription).
        stored: told each room that just stored new messages (retention trims it).
        emit: where message events and name events go (live, to the front end); a message of
            a room that is not the current one counts as unread there.
        new_sender: told when a room hears a sender it had not heard (who is a member may
            change: a peer that speaks in a room is one).
        heard_live: told each room and the senders of its texts just stored (catch-up stops
            charging them as strangers).
        seen: told the send time of each new text of another sender shown live (our next
            message is dated after it).
    """

    def __init__(
        self,
        me: str,
        history: History,
        names: Names,
        rooms: Rooms,
        observer: InboundObserver,
        max_text_bytes: int,
        stored: Callable[[str], object],
        emit: Callable[[ChatEvent], None],
        new_sender: Callable[[], object] = lambda: None,
        moderated: Callable[[Moderation], object] = lambda decision: None,
        refused: Callable[[str, str, str], object] = lambda reason, room, sender: None,
        heard_live: Callable[[str, set[str]], object] = lambda room, senders: None,
        seen: Callable[[int], object] = lambda sent_at_ms: None,
    ) -> None:
        self._me = me
        self._history = history
        self._names = names
        self._rooms = rooms
        self._observer = observer
        self._max_text_bytes = max_text_bytes
        self._stored = stored
        self._emit = emit
        self._new_sender = new_sender
        self._moderated = moderated
        self._refused = refused
        self._heard_live = heard_live
        self._seen = seen
        self._validated: BoundedDict[bytes, Payload] = BoundedDict(MAX_VALIDATED)
        # The private rooms (set by the service): their texts are decrypted before showing.
        self.private: PrivateGate | None = None

    def validator(self, room: str) -> Callable[[bytes], str | None]:
        """The payload check of ``room``'s topic: None if valid, else the drop reason."""
        limit = self._max_text_bytes

        def validate(data: bytes) -> str | None:
            # Counting is the pubsub layer's job (it reports every reason returned here).
            try:
                payload = decode_for_room(data, room, max_text_bytes=limit, now_ms=now_ms())
            except WireError as error:
                return error.reason
            self._validated[data] = payload
            return None

        return validate

    def signed_check(self, sender: str, data: bytes) -> str | None:
        """The check of a payload the validator accepted, with its signer: a moderation
        decision must be signed by the room's owner (``not_owner``). The owner's decision is
        handed to ``moderated`` here, in the order pubsub validates messages, so that the
        sender's next message is judged by it."""
        payload = self._validated.get(data)
        if payload is None:  # the validator stored it just now; defensive
            try:
                payload = decode(data, max_text_bytes=self._max_text_bytes)
            except WireError as error:
                return error.reason
        refused = moderation_refused(payload, sender)
        if refused is None and isinstance(payload, Moderation):
            self._moderated(payload)
        elif refused is not None and isinstance(payload, Moderation):
            self._refused(refused, payload.room, sender)  # logged, rate-limited
        return refused

    def accept(self, room: str, messages: list[GossipMessage]) -> None:
        """Take one batch of ``room``'s verified messages (see the module's note)."""
        texts: list[tuple[StoredMessage, ChatText]] = []
        decisions: list[StoredMessage] = []
        joined, received_at = self._rooms.get(room), now_ms()
        for message in messages:
            # The validator decoded it moments ago (decoding twice was ~5% of a peer's CPU).
            payload = self._validated.pop(message.data, None)
            if payload is None:
                try:
                    payload = decode(message.data, max_text_bytes=self._max_text_bytes)
                except WireError as error:  # the validator already dropped these; defensive
                    self._observer.message_dropped(room, error.reason)
                    continue
            # When it was signed, not when it reached us: an old message replayed by somebody
            # else does not make its sender look present.
            if (
                joined is not None
                and message.sender != self._me
                and joined.hear(message.sender, min(received_at, payload.sent_at_ms))
            ):
                self._new_sender()
            if isinstance(payload, NameAnnouncement):
                change = self._names.announced(message.sender, payload.name)
                if change is not None:
                    self._emit(name_event(change))
                continue
            stored = StoredMessage.of_text(payload, message.sender, message.envelope, received_at)
            private = self.private
            if isinstance(payload, PrivateText) or (
                private is not None and private.is_private(room) and isinstance(payload, ChatText)
            ):
                # A private text is stored (as ciphertext) and shown only if it decrypts; a
                # plain text in a private room, never.
                revealed = private.reveal(payload, message.sender, room) if private else None
                if revealed is not None:
                    texts.append((stored, revealed))
                continue
            if isinstance(payload, Moderation):
                decisions.append(stored)  # applied as it was validated
                continue
            texts.append((stored, payload))
        if decisions:
            self._history.add_many(decisions)
        if not texts:
            return
        new = {id(stored) for stored in self._history.add_many(stored for stored, _ in texts)}
        if new:
            self._stored(room)
            # They passed the validator and the sender budget: catch-up's strangers no more.
            self._heard_live(room, {stored.sender for stored, _ in texts if id(stored) in new})
        duplicates = len(texts) - len(new)
        if duplicates:
            self._observer.duplicates_dropped(duplicates)
        my_name = self._names.own
        for stored, payload in texts:
            if id(stored) not in new:
                continue
            if stored.sender != self._me:
                self._observer.message_received()
                self._names.used(stored.sender, payload.sender_name)
                self._seen(stored.sent_at_ms)
            self._rooms.arrived(room)
            self._emit(message_event(payload, stored, self._me, history=False, my_name=my_name))

"""DM conversations in the console, shown like rooms: ``/dm <name|PeerId>`` opens one, tagged
``@<name>``; it is listed by ``/rooms``, made current by ``/dm`` or ``/switch @<name>``, closed
by ``/leave @<name>``; while it is current, ``/history`` lists it and typed text goes to the
peer as a DM. The messages are kept by
:class:`~p2pchat.roles.peer.dm_conversations.ConversationStore`; this module answers the
commands with events.
"""

from __future__ import annotations

from collections.abc import Callable

from p2pchat.node.ids import short_id
from p2pchat.node.p2p.peer_keys import peer_id_bytes
from p2pchat.node.terminal_text import safe_name
from p2pchat.node.wire.chat import ANONYMOUS_NAME
from p2pchat.node.wire.dm import Plaintext
from p2pchat.roles.peer.dm_conversations import (
    MAX_OPEN,
    TAG,
    ConversationStore,
    OpenConversations,
)
from p2pchat.roles.peer.events import (
    ChatEvent,
    DirectEvent,
    ErrorEvent,
    HistoryEndEvent,
    NoticeEvent,
    OutputEvent,
)

Reply = Callable[[ChatEvent], None]
Resolve = Callable[[str, str], "str | ErrorEvent"]


class DmRooms:
    """The open conversations and their history, for the chat service (``store`` None: DMs
    are not kept, ``chat.dm_history`` off; conversations still open and switch)."""

    def __init__(
        self,
        store: ConversationStore | None,
        me: str,
        name_of: Callable[[str], str],
        resolve: Resolve,
        mark: Callable[[DirectEvent], DirectEvent],
        bound_to: Callable[[str], str | None] = lambda name: None,
    ) -> None:
        """``bound_to``: the PeerId a name is bound to (who-is-who), so that a conversation
        with another peer using the name is not tagged with it."""
        self._store = store
        self._me = me
        self._name_of = name_of
        self._resolve = resolve
        self._mark = mark
        self._bound_to = bound_to
        self._open = OpenConversations()

    @property
    def current(self) -> str | None:
        """The PeerId of the conversation current in the console, None when a room is."""
        return self._open.current

    def leave_current(self) -> None:
        """A room was made current."""
        self._open.current = None

    def tag(self, peer: str) -> str:
        """``@<name>`` (the name it is known by here), or ``@<PeerId>`` for a peer known by
        no name, or by a name bound to another peer (an impostor's conversation never shows
        as the name's)."""
        name = self._name_of(peer)
        if name == ANONYMOUS_NAME or self._bound_to(name) not in (None, peer):
            return f"{TAG}{peer}"
        return f"{TAG}{name}"

    def record(self, event: DirectEvent) -> None:
        """A DM was delivered or received: keep it, count it unread if not looked at."""
        if self._store is not None and not event.history:
            plain = Plaintext(bytes.fromhex(event.id), event.text, event.sent_at_ms)
            self._store.add(event.peer, plain, event.own)
        if not event.own:
            self._open.arrived(event.peer)

    def unread(self) -> dict[str, int]:
        """Unread DMs per open conversation, by tag."""
        return {self.tag(peer): n for peer, n in list(self._open.unread.items())}

    def _peer_of(self, who: str, command: str, reply: Reply) -> str | None:
        """The peer ``who`` (``@name``, a name or a PeerId) names; None and an error replied."""
        # Resolved as /msg resolves (the name's binding, several users refused): an open
        # conversation's tag is no shortcut, an impostor's conversation may carry the name too.
        name = who[len(TAG) :] if who.startswith(TAG) else who
        found = self._resolve(name, command)
        if isinstance(found, ErrorEvent):
            reply(found)
            return None
        try:
            peer_id_bytes(found)
        except ValueError:
            reply(ErrorEvent("bad_argument", f"{safe_name(found)} is not a PeerId", command))
            return None
        if found == self._me:
            reply(ErrorEvent("bad_argument", "a conversation with yourself is not opened", command))
            return None
        return found

    def open(self, who: str, command: str, reply: Reply) -> None:
        """``/dm <who>``, ``/switch @<who>``: open (if needed) and make it current; the DMs
        that arrived unread in it are listed."""
        peer = self._peer_of(who, command, reply)
        if peer is None:
            return
        if not self._open.open(peer):
            reply(
                ErrorEvent(
                    "too_many_rooms",
                    f"{MAX_OPEN} conversations are open, the most at once; /leave one first",
                    command,
                )
            )
            return
        unread = self._open.take_unread(peer)
        tag = self.tag(peer)
        reply(
            NoticeEvent(
                "dm_opened",
                f"current: {tag} ({short_id(peer)}), a direct conversation: what you type goes "
                "to them only, end-to-end encrypted" + (f" ({unread} new)" if unread else ""),
                {"peer": peer, "room": tag, "unread": unread},
            )
        )
        if unread:
            self.history(min(unread, 50), reply, command)

    def close(self, who: str, reply: Reply) -> bool:
        """``/leave @<tag>`` (or ``/leave`` in it): close the conversation with that tag, as
        ``/rooms`` lists it (its history is kept); False when no open conversation has it
        (nothing replied)."""
        for peer in list(self._open.unread):
            if self.tag(peer).casefold() == who.casefold():
                self._open.close(peer)
                reply(
                    NoticeEvent(
                        "dm_closed",
                        f"closed {self.tag(peer)} ({short_id(peer)}); its messages are kept",
                        {"peer": peer, "room": self.tag(peer)},
                    )
                )
                return True
        return False

    def history(self, limit: int, reply: Reply, command: str = "history") -> None:
        """The newest ``limit`` DMs of the current conversation, then the end marker."""
        peer = self._open.current
        if peer is None:
            return
        tag = self.tag(peer)
        if self._store is None:
            reply(HistoryEndEvent(command, tag, 0))
            return
        kept = self._store.last(peer, limit)
        name = self._name_of(peer)
        for message in kept:
            plain = message.plain
            event = DirectEvent(
                peer, name, plain.id.hex(), plain.text, plain.sent_at_ms, message.own, history=True
            )
            reply(self._mark(event))
        reply(HistoryEndEvent(command, tag, len(kept), max(0, self._store.count(peer) - len(kept))))

    def rooms_output(self, rooms: OutputEvent) -> OutputEvent:
        """``/rooms``' answer with the open conversations added (text and ``conversations``)."""
        parts = []
        listed = []
        for peer, unread in list(self._open.unread.items()):
            tag = self.tag(peer)
            note = (
                " (current)"
                if peer == self._open.current
                else f" ({unread} unread)"
                if unread
                else ""
            )
            parts.append(f"{safe_name(tag)}{note}")
            listed.append(
                {"room": tag, "peer": peer, "unread": unread, "current": peer == self._open.current}
            )
        if not parts:
            return rooms
        text = f"{rooms.text}; conversations: {', '.join(parts)}"
        return OutputEvent(rooms.command, text, {**rooms.data, "conversations": listed})

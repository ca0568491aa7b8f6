"""The chat service: rooms over GossipSub, signed messages, local history, queued sends.

Data flow of one message (see the architecture note): a typed line is validated and encoded,
published signed on the room's topic (:mod:`~p2pchat.roles.peer.outbox`); every receiver (the
sender included, through its own subscription) verifies it, decodes it, deduplicates it by id
against the history, stores it with its signed envelope, and emits a :class:`MessageEvent` to
the front end (:mod:`~p2pchat.roles.peer.inbound`).

A message typed while nobody else is in the room is kept in the store as pending and published
as soon as a peer joins the room; the user is told it is queued.

:class:`ChatService` is the facade the role and the front ends use; it composes the parts:
rooms (:mod:`~p2pchat.roles.peer.rooms`), membership (:mod:`~p2pchat.roles.peer.membership`),
names (:mod:`~p2pchat.roles.peer.names`), the inbound pipeline, the outbox and pending queue,
retention (:mod:`~p2pchat.roles.peer.retention`) and presentation
(:mod:`~p2pchat.roles.peer.presentation`).

Two streams of events reach the user: live events (messages, peers coming and going, notices),
emitted to the front end as they happen; and the answer to one command, collected for that
call alone (:meth:`ChatService.execute`), so a message arriving while a command awaits (a
``/join`` subscribing) is shown as a message, never inside the command's answer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal, Protocol

import trio
from p2pchat.node.config import ChatSection, MailboxSection, UcSection
from p2pchat.node.history import History, StoredMessage, now_ms
from p2pchat.node.ids import short_id
from p2pchat.node.moderation import NAMESPACE as MODS_NAMESPACE
from p2pchat.node.moderation import RoomModeration, refusal_log
from p2pchat.node.p2p.pubsub import GossipMessage, SubscriptionEvent
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.role import NodeContext
from p2pchat.node.terminal_text import safe_name
from p2pchat.node.wire.chat import (
    ChatText,
    NameAnnouncement,
    encode,
    new_message_id,
    validate_room,
)
from p2pchat.node.wire.room_names import owned_room, room_owner
from p2pchat.roles.peer.commands import DEFAULT_HISTORY, HELP, Command, Invalid, Send, parse_line
from p2pchat.roles.peer.contacts import NAMESPACE as CONTACTS_NAMESPACE
from p2pchat.roles.peer.contacts import Contacts, ContactsObserver
from p2pchat.roles.peer.dm import NAMESPACE as DM_NAMESPACE
from p2pchat.roles.peer.dm import DirectMessages, DmObserver
from p2pchat.roles.peer.dm_conversations import NAMESPACE as DMLOG_NAMESPACE
from p2pchat.roles.peer.dm_conversations import TAG, ConversationsObserver, ConversationStore
from p2pchat.roles.peer.dm_rooms import DmRooms
from p2pchat.roles.peer.events import (
    CaughtUpEvent,
    ChatEvent,
    ConnectionEvent,
    DirectEvent,
    ErrorEvent,
    HistoryEndEvent,
    MessageEvent,
    NoticeEvent,
    OutputEvent,
    PeerEvent,
)
from p2pchat.roles.peer.group_crypto import NAMESPACE as MEGOLM_NAMESPACE
from p2pchat.roles.peer.group_crypto import GroupKeys
from p2pchat.roles.peer.ignored import NAMESPACE as IGNORE_NAMESPACE
from p2pchat.roles.peer.ignored import Ignored
from p2pchat.roles.peer.inbound import Inbound, InboundObserver
from p2pchat.roles.peer.lookup import export_lines, search
from p2pchat.roles.peer.membership import ChangeSignal, Membership, MembershipChanges
from p2pchat.roles.peer.moderating import Moderator
from p2pchat.roles.peer.names import NAMESPACE as NAMES_NAMESPACE
from p2pchat.roles.peer.names import Names
from p2pchat.roles.peer.outbox import NAMESPACE as PENDING_NAMESPACE
from p2pchat.roles.peer.outbox import Outbox, OutboxObserver, PendingQueue
from p2pchat.roles.peer.presentation import (
    NodeFacts,
    Whois,
    discovered_notice,
    history_events,
    info_output,
    infrastructure,
    peers_output,
    rooms_output,
    stored_text,
    whois_output,
)
from p2pchat.roles.peer.private_rooms import NAMESPACE as PRIVATE_NAMESPACE
from p2pchat.roles.peer.private_rooms import PrivateObserver, PrivateRooms
from p2pchat.roles.peer.retention import Retention
from p2pchat.roles.peer.rooms import MAX_ROOMS, RememberedRooms, Room, Rooms
from p2pchat.roles.peer.rooms import NAMESPACE as ROOMS_NAMESPACE
from p2pchat.roles.peer.trust import Trust
from p2pchat.roles.peer.uc import ROOM_PREFIX as UC_ROOM_PREFIX
from p2pchat.roles.peer.uc import UcObserver, UcPeer

HEARD_RECENTLY_MS = 10 * 60_000  # /peers lists mesh members heard in the last ten minutes

Reply = Callable[[ChatEvent], None]
"""Collects the answer of one command."""


class RoomPubsub(Protocol):
    """What the chat service needs of the node's pubsub (:class:`~p2pchat.node.p2p.pubsub.Gossip`
    provides it)."""

    async def join(
        self,
        topic: str,
        validator: Callable[[bytes], str | None],
        sender_check: Callable[[str], str | None] | None = None,
        signed_check: Callable[[str, bytes], str | None] | None = None,
    ) -> AsyncIterator[list[GossipMessage]]: ...

    async def leave(self, topic: str) -> None: ...

    async def publish(self, topic: str, data: bytes) -> None: ...

    def has_subscribers(self, topic: str) -> bool: ...

    def subscribers(self, topic: str) -> Iterable[str]: ...

    def watch_subscriptions(self, watcher: Callable[[SubscriptionEvent], None]) -> None: ...


class ChatObserver(
    InboundObserver,
    OutboxObserver,
    DmObserver,
    ContactsObserver,
    ConversationsObserver,
    PrivateObserver,
    UcObserver,
    Protocol,
):
    """What the chat service and its parts report (the role's metrics implement it)."""

    def rooms_joined(self, count: int) -> None:
        """This peer is in ``count`` rooms now."""

    def room_members(self, count: int, infrastructure: int) -> None:
        """``count`` other chat peers and ``infrastructure`` nodes (archivers and such, which
        subscribe but are no members) are in the current room now (after each membership
        pass)."""


class ChatService:
    """Rooms, messages, names and history of one chat peer; front ends call :meth:`execute`
    (a typed line) or :meth:`send` (a verbatim message) with each input, render the answer,
    and render the live events ``emit`` is given."""

    def __init__(
        self,
        ctx: NodeContext,
        settings: ChatSection,
        node_roles: Sequence[str],
        gossip: RoomPubsub,
        history: History,
        observer: ChatObserver,
        emit: Callable[[ChatEvent], None],
        on_join: Callable[[str], None] = lambda room: None,
        *,
        on_heard_live: Callable[[str, set[str]], object] = lambda room, senders: None,
        data_dir: Path | None = None,
        log_file: Callable[[], Path | None] = lambda: None,
        missed_inline: int | None = None,
        emit_waiting: Callable[[ChatEvent], Awaitable[None]] | None = None,
        mailbox: MailboxSection | None = None,
        uc: UcSection | None = None,
    ) -> None:
        """``settings``: the ``chat`` config section; ``node_roles``: the roles of this node
        (``/info`` shows them); ``emit`` receives live events; ``on_join`` is told each room
        this peer joins (catch-up fetches what it missed); ``on_heard_live`` is told each room
        and the senders whose live messages it just stored (catch-up's strangers no more);
        ``data_dir``: where /export writes by default; ``log_file``: where the node logs
        (``/info``); ``missed_inline``: how many
        of the messages a catch-up fetched are shown (the newest; None: all, for scripts);
        ``emit_waiting``: as ``emit``, but waits while the front end is behind instead of
        dropping (default: ``emit``)."""
        self._ctx = ctx
        # How each connected peer was told as connected (relayed or not): its "closed" event
        # says the same, as the connection is gone by then. Removed at the close: bounded by
        # the connected peers.
        self._told_relayed: dict[str, bool] = {}
        self._node_roles = list(node_roles)
        self._on_join = on_join
        self._gossip = gossip
        self._history = history
        self._observer = observer
        self._emit = emit
        self._data_dir = data_dir
        self._log_file = log_file
        self._missed_inline = missed_inline

        async def emit_now(event: ChatEvent) -> None:
            emit(event)

        self._emit_waiting = emit_waiting or emit_now
        self._me = ctx.host.peer_id
        self._rooms = Rooms(settings.room)
        self._remembered = RememberedRooms(ctx.keys(ROOMS_NAMESPACE))
        self._ignored = Ignored(ctx.keys(IGNORE_NAMESPACE))
        self._names = Names(
            self._me,
            ctx.keys(NAMES_NAMESPACE),
            settings.name,
            settings.max_known_names,
            claims=lambda peer, name: self._trust.claimed(peer, name),
        )
        refusals = refusal_log(ctx.log)
        self._trust = Trust(
            self._me,
            Contacts(
                self._me,
                ctx.keys(CONTACTS_NAMESPACE),
                settings.max_name_bindings,
                observer,
                RefusalLog(ctx.log, "name binding dropped"),
            ),
            self._names,
            emit,
        )
        self._moderator = Moderator(
            self._me,
            RoomModeration(
                ctx.keys(MODS_NAMESPACE), settings.max_decisions_per_room, settings.max_decisions
            ),
            gossip.publish,
            self.name_of,
            emit,
            observer,
            refusals,
        )
        self._retention = Retention(
            history,
            settings.history_max_messages,
            settings.history_max_age_days,
            sender_share=settings.history_sender_share,
        )
        self._inbound = Inbound(
            self._me,
            history,
            self._names,
            self._rooms,
            observer,
            settings.max_message_bytes,
            self._retention.trim_if_over,
            self._marked,
            new_sender=lambda: self._changes.note(),
            moderated=self._moderator.decided,
            refused=lambda reason, room, sender: refusals.refused(reason, room=room, sender=sender),
            heard_live=on_heard_live,
            seen=lambda sent_at_ms: self._outbox.saw(sent_at_ms),
        )
        self._outbox = Outbox(
            gossip, PendingQueue(ctx.keys(PENDING_NAMESPACE)), observer, settings.max_message_bytes
        )
        self._membership = Membership(
            self._me,
            self._rooms,
            gossip.subscribers,
            ctx.host.connected_peers,
            ctx.discovered_peers,
            self._chat_peer,
        )
        conversations = (
            ConversationStore(
                ctx.keys(DMLOG_NAMESPACE),
                observer,
                settings.history_max_messages,
                int(settings.history_max_age_days * 86_400_000),
                settings.max_message_bytes,
                refusals=RefusalLog(ctx.log, "dm conversation dropped"),
            )
            if settings.dm_history
            else None
        )
        self._dm_rooms = DmRooms(
            conversations,
            self._me,
            self.name_of,
            self._trust.resolve,
            self._trust.mark,
            self._trust.bound_to,
        )
        self._dm = DirectMessages(
            ctx.host,
            ctx.keys(DM_NAMESPACE),
            settings,
            observer,
            self._direct_event,
            self.name_of,
            ctx.log,
            find_peer=ctx.find_peer,
            shown_before=conversations.has if conversations is not None else lambda p, i: False,
            mailbox=mailbox,
        )
        self._private = PrivateRooms(
            self._me,
            ctx.keys(PRIVATE_NAMESPACE),
            GroupKeys(ctx.keys(MEGOLM_NAMESPACE), self._me, settings.private_max_sessions_per_room),
            settings,
            self._dm.send_room_key,
            self,
            observer,
            emit,
            RefusalLog(ctx.log, "private room input refused"),
        )
        self._inbound.private = self._private
        self._dm.on_room_key = self._private.received
        # universal-connectivity's room, when configured (issue #20): roles/peer/uc.py.
        self._uc = (
            UcPeer(
                ctx.host,
                gossip,
                uc,
                data_dir or Path("."),
                emit,
                observer,
                RefusalLog(ctx.log, "universal-connectivity input refused"),
                is_ignored=self.is_ignored,
            )
            if uc is not None and uc.enabled
            else None
        )
        if self._uc is not None and settings.room in self._uc.topics:
            ctx.log.warning(
                "universal-connectivity not joined: chat.room is one of its topics",
                room=settings.room,
            )
            self._uc = None
        self._max_message_bytes = settings.max_message_bytes
        self._changes = ChangeSignal()
        gossip.watch_subscriptions(self._changes.note)
        ctx.host.watch_connections(self._changes)
        ctx.host.watch_identify(self._changes.note)  # a peer's roles are known from now on
        ctx.watch_discoveries(self._changes.note)
        self._nursery: trio.Nursery | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join the configured room and the rooms joined before the last stop, then keep
        rooms, members and retention going."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._dm.run)
            if self._uc is not None:
                await nursery.start(self._uc.run)
            await self._join(self._rooms.current)
            for room in self._remembered.names():
                if self._uc is not None and room in self._uc.topics:
                    continue  # universal-connectivity's (remembered before uc.enabled)
                if room not in self._rooms and len(self._rooms) < MAX_ROOMS:
                    await self._join(room)
            nursery.start_soon(self._watch_members)
            nursery.start_soon(self._retention.run)
            task_status.started()

    @property
    def peer_id(self) -> str:
        return self._me

    def sender_check(self, sender: str) -> str | None:
        """Why messages of ``sender`` are refused here (live and in catch-up), else None."""
        return self._ignored.check(sender)

    def room_check(self, room: str) -> Callable[[str], str | None]:
        """The sender check of ``room``'s topic: :meth:`sender_check`, then the room's
        moderation (a muted or removed sender), if someone owns the room."""
        moderated = self._moderator.check(room)
        if moderated is None:
            return self.sender_check
        own = self.sender_check

        def check(sender: str) -> str | None:
            return own(sender) or moderated(sender)

        return check

    def trim_history(self, room: str) -> int:
        """Trim ``room``'s history back to its cap if it is over (after a catch-up stored
        messages: what it brings must not wait for the next live message to be trimmed)."""
        return self._retention.trim_if_over(room)

    def moderate_fetched(self, room: str, messages: list[StoredMessage]) -> list[StoredMessage]:
        """Catch-up's moderation of ``room`` (see :meth:`Moderator.fetched`)."""
        return self._moderator.fetched(room, messages)

    def room_names(self) -> list[str]:
        """The rooms this peer is in (safe to call from the console's thread)."""
        return self._rooms.names()

    @property
    def current_room(self) -> str:
        """The current room's name, or the current DM conversation's tag (``@alice``)."""
        peer = self._dm_rooms.current
        return self._rooms.current if peer is None else self._dm_rooms.tag(peer)

    def unread_counts(self) -> dict[str, int]:
        """Unread messages per joined room and open DM conversation (safe to call from the
        console's thread)."""
        return {**self._rooms.unread(), **self._dm_rooms.unread()}

    @property
    def display_name(self) -> str:
        return self._names.display_name

    def name_of(self, peer: str) -> str:
        """The last name ``peer`` announced or used, or ``anon``."""
        return self._names.name_of(peer)

    def welcome(self) -> NoticeEvent:
        """The greeting a front end shows first."""
        others = [room for room in self._rooms.names() if room != self._rooms.current]
        also = f" (also in {', '.join(others)})" if others else ""
        return NoticeEvent(
            "welcome",
            f"you are {safe_name(self.display_name)} ({short_id(self._me)}) in "
            f"{self._rooms.current}{also}; /help lists the commands",
            {
                "peer_id": self._me,
                "name": self.display_name,
                "room": self._rooms.current,
                "rooms": self._rooms.names(),
            },
        )

    async def caught_up(self, room: str, new: Sequence[StoredMessage], sources: list[str]) -> None:
        """Show the messages of ``room`` that arrived while this peer was away (``new``, just
        stored): how many, then the newest ``missed_inline`` of them (all: None) in order, each
        handed over as the front end takes it (``emit_waiting``), so a long catch-up shown to a
        script loses none and holds no second copy of the messages."""
        if self._private.is_private(room):
            # What this peer decrypts (a newcomer fetches the ciphertext from before it was
            # invited too: dropped, counted here, once).
            new = [m for m in new if self._private.reveal_stored(m, count=True) is not None]
        if not new:
            return
        ordered = sorted(new, key=lambda m: (m.sent_at_ms, m.message_id))
        inline = self._missed_inline
        shown = ordered if inline is None else ordered[max(0, len(ordered) - inline) :]
        # Catch-up verified each: every one decodes as a text (history_events skips none).
        await self._emit_waiting(CaughtUpEvent(room, len(new), sources, len(shown)))
        for stored in shown:
            for event in history_events([stored], self._me, self._names.own, self._reveal):
                await self._emit_waiting(self._trust.mark(event))

    def _reveal(self, stored: StoredMessage) -> ChatText | None:
        """The text of a stored message: decrypted in a private room, else as stored."""
        if self._private.is_private(stored.room):
            return self._private.reveal_stored(stored)
        return stored_text(stored)

    def warning(self, summary: str) -> None:
        """Show a warning of the node (a log line, summarised) as one notice."""
        self._emit(NoticeEvent("warning", f"warning: {summary}", {"summary": summary}))

    # --- input -----------------------------------------------------------------------------------

    async def execute(self, line: str) -> tuple[bool, list[ChatEvent]]:
        """Act on one input line. Returns False when the user asked to quit, and the answer:
        the events this line produced (errors, notices, command output), collected for this
        call only. Live events meanwhile still go to ``emit``."""
        answer: list[ChatEvent] = []
        keep_going = await self._act(line, answer.append)
        return keep_going, answer

    async def send(self, text: str, room: str | None = None) -> list[ChatEvent]:
        """Send ``text`` verbatim (it may start with ``/`` and span lines) to ``room`` (default:
        the current one, which must be joined, or the current DM conversation's peer); returns
        the answer, as :meth:`execute` does."""
        if room is None and self._dm_rooms.current is not None:
            return await self.send_direct(self._dm_rooms.current, text)
        if self._uc is not None and room == UC_ROOM_PREFIX + self._uc.room:
            if not text.strip():
                return [ErrorEvent("bad_argument", "an empty message is not sent")]
            return [await self._uc.say(text)]
        target = room or self._rooms.current
        if target not in self._rooms:
            return [ErrorEvent("not_in_room", f"you are not in {target}; /join {target} first")]
        if not text.strip():
            return [ErrorEvent("bad_argument", "an empty message is not sent")]
        refused = self._moderator.refused_to_me(target)
        if refused is not None:
            return [refused]
        if self._private.is_private(target):
            answer = await self._private.send(target, self.display_name, text, False)
            return [answer] if answer is not None else []
        answer = await self._outbox.send(target, self.display_name, text)
        return [answer] if answer is not None else []

    async def _act(self, line: str, reply: Reply) -> bool:
        parsed = parse_line(line)
        if parsed is None:
            return True
        if isinstance(parsed, Invalid):
            reply(ErrorEvent(parsed.code, parsed.hint, parsed.command))
        elif isinstance(parsed, Send) and self._dm_rooms.current is not None:
            await self._direct_to(self._dm_rooms.current, parsed.text, reply)
        elif isinstance(parsed, Send):
            refused = self._moderator.refused_to_me(self._rooms.current)
            if refused is not None:
                reply(refused)
                return True
            if self._private.is_private(self._rooms.current):
                answer = await self._private.send(
                    self._rooms.current, self.display_name, parsed.text, parsed.action
                )
            else:
                answer = await self._outbox.send(
                    self._rooms.current, self.display_name, parsed.text, action=parsed.action
                )
            if answer is not None:
                reply(answer)
        elif isinstance(parsed, Command):
            if parsed.name == "quit":
                return False
            await self._run_command(parsed, reply)
        return True

    async def _run_command(self, command: Command, reply: Reply) -> None:
        name, argument = command.name, command.argument
        current = self._rooms.current
        if name == "help":
            reply(OutputEvent("help", HELP))
        elif name == "peers":
            reply(self._peers_output())
        elif name == "whois":
            self._whois(argument, reply)
        elif name == "ignore":
            self._ignore(argument, reply)
        elif name == "unignore":
            self._unignore(argument, reply)
        elif name == "name":
            await self._set_name(argument, reply)
        elif name == "history" and self._dm_rooms.current is not None:
            self._dm_rooms.history(int(argument) if argument else DEFAULT_HISTORY, reply)
        elif name == "history":
            self._show_history(current, int(argument) if argument else DEFAULT_HISTORY, reply)
        elif name == "search":
            await self._search(argument, reply)
        elif name == "export":
            await self._export(argument, reply)
        elif name == "info":
            reply(self._info_output())
        elif name == "join":
            await self._join_command(argument, reply)
        elif name == "create":
            await self._create(argument, reply)
        elif name == "mods":
            reply(self._moderator.mods(argument or current))
        elif name in ("create-private", "invite", "members") or (
            name == "remove" and self._private.is_private(current)
        ):
            await self._private_command(name, argument, reply)
        elif name in ("mute", "unmute", "remove", "unremove"):
            await self._moderator.decide(name, current, argument, self._peer_named, reply)
        elif name == "leave" and (
            argument.startswith(TAG) or (self._dm_rooms.current and not argument)
        ):
            if not self._dm_rooms.close(argument or self.current_room, reply):
                reply(ErrorEvent("not_in_room", f"no open conversation {argument}", "leave"))
        elif name == "leave":
            await self._leave(argument or current, reply)
        elif name == "rooms":
            rooms = rooms_output(self._rooms.names(), self.current_room, self._rooms.unread())
            reply(self._dm_rooms.rooms_output(rooms))
        elif name == "switch" and argument.startswith(TAG):
            self._dm_rooms.open(argument, "switch", reply)
        elif name == "dm":
            self._dm_rooms.open(argument, "dm", reply)
        elif name == "switch":
            self._switch(argument, reply)
        elif name == "msg":
            await self._direct(argument, reply)
        elif name == "verify":
            self._trust.verify(argument, reply)
        elif name in ("uc", "send-file", "get"):
            reply(await self._uc_command(name, argument))

    async def _uc_command(self, name: str, argument: str) -> ChatEvent:
        if self._uc is None:
            return ErrorEvent(
                "not_in_room",
                "universal-connectivity is off here: set uc.enabled (README, universal-"
                "connectivity)",
                name,
            )
        if name == "uc":
            return await self._uc.say(argument)
        if name == "send-file":
            return await self._uc.send_file(argument)
        return await self._uc.get(argument)

    async def _private_command(self, name: str, argument: str, reply: Reply) -> None:
        """/create-private, /invite, /remove (in a private room), /members."""
        current = self._rooms.current
        if name == "create-private":
            if len(self._rooms) >= MAX_ROOMS:
                reply(ErrorEvent("too_many_rooms", f"you are in {MAX_ROOMS} rooms", name))
                return
            topic = await self._private.create(argument, reply)
            if topic is not None:
                self._rooms.switch(topic)
        elif name == "members":
            self._private.members(argument or current, reply)
        else:
            peer = self._peer_named(argument.split(maxsplit=1)[0], name, reply)
            if peer is None:
                return
            if name == "invite":
                self._private.invite(current, peer, reply)
            else:
                self._private.remove(current, peer, reply)

    async def join_private(self, topic: str) -> bool:
        """Join private room ``topic`` (remembered), not making it current (an invitation);
        False when this peer is in :data:`MAX_ROOMS` rooms already."""
        if topic in self._rooms:
            return True
        if len(self._rooms) >= MAX_ROOMS:
            return False
        await self._join(topic)
        self._remembered.joined(topic)
        return True

    async def leave_private(self, topic: str) -> None:
        """Leave private room ``topic`` (this peer was removed from it)."""
        await self._leave(topic, lambda event: None)

    async def publish(self, topic: str, data: bytes) -> None:
        await self._gossip.publish(topic, data)
        self._observer.message_published()

    def is_ignored(self, peer: str) -> bool:
        return peer in self._ignored

    async def send_direct(self, to: str, text: str) -> list[ChatEvent]:
        """Send ``text`` verbatim (it may start with ``/`` and span lines) as a direct message
        to ``to`` (a name or a PeerId); returns the answer, as :meth:`execute` does."""
        answer: list[ChatEvent] = []
        if not text.strip():
            return [ErrorEvent("bad_argument", "an empty message is not sent")]
        await self._direct_to(to, text, answer.append)
        return answer

    async def _direct(self, argument: str, reply: Reply) -> None:
        """/msg <name|id> <text>: a direct message, end-to-end encrypted."""
        who, text = argument.split(maxsplit=1)
        await self._direct_to(who, text, reply)

    async def _direct_to(self, who: str, text: str, reply: Reply) -> None:
        peer = self._peer_named(who, "msg", reply)
        if peer is None:
            return
        if peer == self._me:
            reply(ErrorEvent("bad_argument", "a direct message to yourself is not sent", "msg"))
            return
        if len(text.encode()) > self._max_message_bytes:
            reply(
                ErrorEvent(
                    "message_too_long",
                    f"a message is at most {self._max_message_bytes} bytes (UTF-8)",
                    "msg",
                )
            )
            return
        reply(await self._dm.send(peer, text))

    # --- history ---------------------------------------------------------------------------------

    def _list(self, messages: Sequence[StoredMessage], reply: Reply) -> int:
        """Reply with stored ``messages`` as history message events, those of ignored peers
        left out; returns how many were listed (what the end marker counts)."""
        shown = [m for m in messages if m.sender not in self._ignored]
        events = history_events(shown, self._me, self._names.own, self._reveal)
        for event in events:
            reply(self._trust.mark(event))
        return len(events)

    def _show_history(self, room: str, limit: int, reply: Reply) -> None:
        """The newest ``limit`` messages of ``room``, then the end marker with how many more
        the store holds."""
        messages = self._history.last(room, limit)
        listed = self._list(messages, reply)
        more = max(0, self._history.count(room) - len(messages))
        reply(HistoryEndEvent("history", room, listed, more))

    async def _search(self, query: str, reply: Reply) -> None:
        rooms = self._rooms.names()
        result = await trio.to_thread.run_sync(search, self._history, rooms, query)
        listed = self._list(result.hits, reply)
        reply(HistoryEndEvent("search", None, listed, result.more, result.truncated))

    async def _export(self, argument: str, reply: Reply) -> None:
        """/export [room] [file]: one argument is a room if this peer knows a room by that name
        (joined, or in the history), else a file."""
        words = argument.split(maxsplit=1)
        known = {*self._rooms.names(), *self._history.rooms()}
        room, file = self._rooms.current, None
        if len(words) == 2:
            room, file = words
        elif len(words) == 1:
            if words[0] in known:
                room = words[0]
            else:
                file = words[0]
        if room not in known:
            reply(ErrorEvent("not_in_room", f"no history of {room} here", "export"))
            return
        if file is None and self._data_dir is None:
            reply(
                ErrorEvent(
                    "missing_argument", "/export needs a file: /export [room] <file>", "export"
                )
            )
            return
        try:
            if file is not None:
                path = Path(file).expanduser()  # noqa: ASYNC240 (reads $HOME only)
            else:
                assert self._data_dir is not None
                stamp = time.strftime("%Y%m%d-%H%M%S")
                path = self._data_dir / "exports" / f"{room}-{stamp}.jsonl"
            count = await trio.to_thread.run_sync(export_lines, self._history, room, path)
        except (OSError, ValueError, RuntimeError) as error:
            # OSError: not writable; ValueError: a NUL in the name; RuntimeError: ~nobody/.
            reply(
                ErrorEvent(
                    "export_failed", f"export to {file or 'the data dir'} failed: {error}", "export"
                )
            )
            return
        reply(
            NoticeEvent(
                "exported",
                f"exported {count} message(s) of {room} to {path}",
                {"room": room, "file": str(path), "count": count},
            )
        )

    # --- names -----------------------------------------------------------------------------------

    async def _set_name(self, name: str, reply: Reply) -> None:
        """Validate, persist and announce a new display name."""
        try:
            cleaned = self._names.set_own(name)
        except ValueError as error:
            reply(ErrorEvent("invalid_name", str(error), "name"))
            return
        reply(
            NoticeEvent(
                "name_set",
                f"you are now {safe_name(cleaned)} ({short_id(self._me)})",
                {"name": cleaned},
            )
        )
        for room in self._rooms.names():
            await self._announce_name(room)

    async def _announce_name(self, room: str) -> None:
        name = self._names.own
        if name is None or not self._gossip.has_subscribers(room):
            return
        if self._private.is_private(room):  # names are said inside its encrypted texts
            return
        announcement = NameAnnouncement(id=new_message_id(), name=name, sent_at_ms=now_ms())
        await self._gossip.publish(room, encode(announcement))

    # --- ignoring --------------------------------------------------------------------------------

    def _peer_named(self, who: str, command: str, reply: Reply) -> str | None:
        """The one peer ``who`` names (:meth:`Trust.resolve`); None (and an error replied)
        when it names none or several."""
        peer = self._trust.resolve(who, command)
        if isinstance(peer, ErrorEvent):
            reply(peer)
            return None
        return peer

    def _marked(self, event: ChatEvent) -> None:
        """What the inbound pipeline emits, messages of verified contacts marked."""
        self._emit(self._trust.mark(event) if isinstance(event, MessageEvent) else event)

    def _direct_event(self, event: ChatEvent) -> None:
        """What direct messages emit: a received one's peer is checked against the name it
        is shown with (who-is-who), and marked if verified."""
        if isinstance(event, DirectEvent):
            if not event.own:
                self._trust.claimed(event.peer, event.name)
            event = self._trust.mark(event)
            self._dm_rooms.record(event)
        self._emit(event)

    def _ignore(self, who: str, reply: Reply) -> None:
        """/ignore <name|id>: drop that peer's messages from now on; /ignore: the list."""
        if not who:
            peers = self._ignored.peers()
            lines = [f"  {safe_name(self.name_of(p))} {p}" for p in peers]
            text = "\n".join([f"ignored peers: {len(peers)}", *lines])
            reply(OutputEvent("ignore", text, {"peers": peers}))
            return
        peer = self._peer_named(who, "ignore", reply)
        if peer is None:
            return
        if peer == self._me:
            reply(ErrorEvent("bad_argument", "you cannot ignore yourself", "ignore"))
            return
        if not self._ignored.add(peer):
            reply(
                ErrorEvent(
                    "too_many_ignored",
                    "you ignore as many peers as can be; /unignore one",
                    "ignore",
                )
            )
            return
        reply(
            NoticeEvent(
                "ignored",
                f"ignoring {safe_name(self.name_of(peer))} ({short_id(peer)}): their messages are "
                "not shown, stored or passed on by this peer",
                {"peer": peer},
            )
        )

    def _unignore(self, who: str, reply: Reply) -> None:
        peer = who if who in self._ignored else self._peer_named(who, "unignore", reply)
        if peer is None:
            return
        if not self._ignored.remove(peer):
            reply(ErrorEvent("not_ignored", f"you do not ignore {safe_name(who)}", "unignore"))
            return
        reply(
            NoticeEvent(
                "unignored",
                f"no longer ignoring {safe_name(self.name_of(peer))} ({short_id(peer)})",
                {"peer": peer},
            )
        )

    def _whois(self, name: str, reply: Reply) -> None:
        peers = self._names.peers_named(name)
        bound = self._trust.bound_to(name)
        if bound is not None and bound not in peers:
            peers.insert(0, bound)  # known by it first, even if it uses another name now
        if self._names.display_name.casefold() == name.casefold():
            peers.insert(0, self._me)
        if not peers:
            reply(
                ErrorEvent(
                    "unknown_name", f"nobody known here uses the name {safe_name(name)}", "whois"
                )
            )
            return
        connections = {c.peer_id: c for c in self._ctx.host.connections()}
        found = []
        for peer in peers:
            info = connections.get(peer)
            heard = [room.heard[peer] for room in self._rooms if peer in room.heard]
            found.append(
                Whois(
                    peer=peer,
                    name=self.name_of(peer),
                    connection=None if info is None else "relayed" if info.relayed else "direct",
                    roles=sorted(self._ctx.peer_roles(peer) or ()),
                    rooms=[room.name for room in self._rooms if peer in room.members],
                    heard_at_ms=max(heard) if heard else None,
                    me=peer == self._me,
                    first_seen=peer == bound,
                    verified=self._trust.is_verified(peer),
                )
            )
        reply(whois_output(name, found))

    # --- rooms -----------------------------------------------------------------------------------

    async def _join_command(self, room: str, reply: Reply) -> None:
        """Join ``room`` (if needed), make it current and remember it for the next start."""
        try:
            room = validate_room(room)
        except ValueError as error:
            reply(ErrorEvent("invalid_room", str(error), "join"))
            return
        if room in self._rooms:  # already in it: as /switch, showing what arrived there
            self._switch(room, reply)
            return
        if self._uc is not None and room in self._uc.topics:
            text = f"{room} is universal-connectivity's topic here: /uc <text> talks there"
            reply(ErrorEvent("invalid_room", text, "join"))
            return
        if len(self._rooms) >= MAX_ROOMS:
            reply(
                ErrorEvent(
                    "too_many_rooms",
                    f"you are in {MAX_ROOMS} rooms, the most at once; /leave one first",
                    "join",
                )
            )
            return
        await self._join(room)
        self._remembered.joined(room)
        self._rooms.switch(room)
        self._dm_rooms.leave_current()
        reply(NoticeEvent("room_joined", f"joined {room}", {"room": room}))

    async def _create(self, name: str, reply: Reply) -> None:
        """/create <name>: join the room this peer owns, ``<name>~<its PeerId>``."""
        try:
            room = owned_room(name, self._me)
        except ValueError as error:
            reply(ErrorEvent("invalid_room", str(error), "create"))
            return
        await self._join_command(room, reply)

    async def _join(self, name: str) -> None:
        assert self._nursery is not None
        # Only an owned room has decisions to check against their signer (in a plain room the
        # codec refuses them): plain rooms pay nothing for moderation.
        owned = room_owner(name) is not None
        messages = await self._gossip.join(
            name,
            self._inbound.validator(name),
            self.room_check(name),
            signed_check=self._inbound.signed_check if owned else None,
        )
        room = Room(name)
        self._rooms.add(room)

        async def receive() -> None:
            with room.scope:
                async with trio.open_nursery() as room_tasks:
                    if self._ctx.rendezvous is not None:
                        room_tasks.start_soon(self._ctx.rendezvous.run_room, name)
                    async for batch in messages:
                        self._inbound.accept(name, batch)
                    room_tasks.cancel_scope.cancel()

        self._nursery.start_soon(receive)
        self._observer.rooms_joined(len(self._rooms))
        self._changes.note()  # its members, already subscribed, raise no event
        self._on_join(name)

    async def _leave(self, room: str, reply: Reply) -> None:
        """Leave ``room`` and forget it; the last room cannot be left (use /quit)."""
        try:
            left = self._rooms.remove(room)
        except KeyError:
            reply(ErrorEvent("not_in_room", f"you are not in {room}", "leave"))
            return
        except ValueError:
            reply(
                ErrorEvent(
                    "only_room", f"{room} is your only room; use /quit to leave the chat", "leave"
                )
            )
            return
        self._remembered.left(room)
        await self._private.forget(room)
        left.scope.cancel()
        await self._gossip.leave(room)
        self._changes.note()
        self._observer.rooms_joined(len(self._rooms))
        reply(
            NoticeEvent(
                "room_left",
                f"left {room}; current room: {self._rooms.current}",
                {"room": room, "current": self._rooms.current},
            )
        )

    def _switch(self, room: str, reply: Reply) -> None:
        """Make a joined room current and show what arrived there since it last was."""
        try:
            self._rooms.switch(room)
        except KeyError:
            reply(ErrorEvent("not_in_room", f"you are not in {room}; /join {room} first", "switch"))
            return
        self._dm_rooms.leave_current()
        unread = self._rooms.take_unread(room)
        reply(
            NoticeEvent(
                "room_switched",
                f"current room: {room}" + (f" ({unread} new)" if unread else ""),
                {"room": room, "unread": unread},
            )
        )
        if unread:
            shown = min(unread, DEFAULT_HISTORY)
            messages = self._history.last(room, shown)
            listed = self._list(messages, reply)
            reply(HistoryEndEvent("switch", room, listed, unread - len(messages)))

    # --- membership ------------------------------------------------------------------------------

    def _chat_peer(self, peer: str) -> bool | None:
        """True for a chat peer, False for infrastructure (no room member: its roles are shown
        by /peers), None while its identify has not arrived (a node that names no p2pchat
        roles, such as a js-libp2p peer, is a chat peer once identified). Roles are a claim:
        a peer heard speaking in a room is a member whatever it claims."""
        if any(peer in room.heard for room in self._rooms):
            return True  # it speaks in a room: a member, whatever it claims to be
        roles = self._ctx.peer_roles(peer)
        if roles is not None:
            return not infrastructure(roles)
        return True if self._ctx.host.peer_protocols(peer) else None

    async def _watch_members(self) -> None:
        """Look at who is around and act on the changes, at start and whenever an event may
        have changed it (events during one pass bring one more pass)."""
        while True:
            await self.members_changed(self._membership.refresh())
            await self._changes.wait()

    async def members_changed(self, changes: MembershipChanges) -> None:
        """Tell the user who was discovered, connected, disconnected, joined and left; greet
        the rooms someone joined with our name and deliver their queued messages."""
        for peer, via in changes.discovered:
            self._emit(discovered_notice(peer, via))
        relayed = {c.peer_id: c.relayed for c in self._ctx.host.connections()}
        for peer in changes.connected:
            self._told_relayed[peer] = relayed.get(peer, False)
            self._emit(self._connection_event(peer, "opened", self._told_relayed[peer]))
        for peer in changes.disconnected:
            was_relayed = self._told_relayed.pop(peer, False)
            self._emit(self._connection_event(peer, "closed", was_relayed))
        for room in self._rooms.names():
            joined = changes.joined.get(room, [])
            for peer in joined:
                self._emit(PeerEvent("joined", room, peer, self.name_of(peer)))
            for peer in changes.left.get(room, []):
                self._emit(PeerEvent("left", room, peer, self.name_of(peer)))
            if joined:
                await self._announce_name(room)
                await self._moderator.reannounce(room)
            # Whoever receives the room's messages now (an archiver too) gets the queued ones
            # first, before anything typed from now on.
            if self._gossip.has_subscribers(room):
                delivered = await self._outbox.flush(room)
                if delivered:
                    self._emit(
                        NoticeEvent(
                            "delivered",
                            f"delivered {delivered} queued message(s) to {room}",
                            {"room": room, "count": delivered},
                        )
                    )
        current = self._rooms.current_room()
        if current is None:
            self._observer.room_members(0, 0)
        else:
            self._observer.room_members(len(current.members), current.infrastructure)

    def _connection_event(
        self, peer: str, change: Literal["opened", "closed"], relayed: bool
    ) -> ConnectionEvent:
        roles = sorted(self._ctx.peer_roles(peer) or ())
        return ConnectionEvent(change, peer, self.name_of(peer), relayed, roles)

    # --- outputs ---------------------------------------------------------------------------------

    def _peers_output(self) -> OutputEvent:
        room = self._rooms.current_room()
        return peers_output(
            self._ctx.host.connections(),
            self._rooms.current,
            room.members if room is not None else (),
            room.heard_since(now_ms() - HEARD_RECENTLY_MS) if room is not None else (),
            self.name_of,
            lambda peer: self._ctx.peer_roles(peer) or (),
            self._trust.is_verified,
        )

    def _info_output(self) -> OutputEvent:
        host = self._ctx.host
        log_file = self._log_file()
        return info_output(
            NodeFacts(
                peer_id=self._me,
                name=self.display_name,
                listen=host.listen_addrs(),
                advertised=host.advertised_addrs(),
                roles=list(self._node_roles),
                rooms=sorted(self._rooms.names()),
                current_room=self._rooms.current,
                reachability=self._ctx.reachability(),
                relays=self._ctx.relays(),
                store_bytes=self._ctx.store_size(),
                metrics=self._ctx.metrics_address(),
                log_file=str(log_file) if log_file is not None else None,
            )
        )

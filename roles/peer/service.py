"""The chat service: rooms over GossipSub, signed messages, local history, queued sends.

Data flow of one message (see the architecture note): a typed line is validated and encoded,
published signed on the room's topic; every receiver (the sender included, through its own
subscription) verifies it, decodes it, deduplicates it by id against the history, stores it
with its signed envelope, and emits a :class:`MessageEvent` to the front end.

A message typed while nobody else is in the room is kept in the store as pending and published
as soon as a peer joins the room; the user is told it is queued.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio
from p2pchat.node.history import History, StoredMessage, now_ms
from p2pchat.node.p2p.envelopes import envelope_data
from p2pchat.node.p2p.pubsub import Gossip, GossipMessage
from p2pchat.node.role import NodeContext
from p2pchat.node.wire.chat import (
    ChatText,
    NameAnnouncement,
    WireError,
    decode,
    decode_for_room,
    encode,
    new_message_id,
    validate_name,
    validate_room,
)
from p2pchat.roles.peer.commands import (
    DEFAULT_HISTORY,
    HELP,
    Command,
    Invalid,
    Send,
    clock,
    parse_line,
    short_id,
)
from p2pchat.roles.peer.events import (
    CaughtUpEvent,
    ChatEvent,
    ErrorEvent,
    MessageEvent,
    NoticeEvent,
    OutputEvent,
    PeerEvent,
)
from p2pchat.roles.peer.metrics import ChatMetrics

NAME_KEY = b"peer/name"
PENDING_PREFIX = b"pend/"
MEMBER_POLL_INTERVAL = 0.5
RETENTION_INTERVAL = 3600.0
MAX_HEARD = 256  # senders remembered per room for /peers
HEARD_RECENTLY_MS = 10 * 60_000  # /peers lists mesh members heard in the last ten minutes
ANONYMOUS = "anon"
MAX_VALIDATED = 8192  # decoded payloads kept between validation and acceptance


@dataclass
class _Room:
    name: str
    scope: trio.CancelScope
    members: set[str] = field(default_factory=set)  # subscribed peers we are connected to
    # Senders heard in the room (PeerId -> when, ms), the newest MAX_HEARD: the members that
    # only the mesh connects us to, whom pubsub does not list.
    heard: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def hear(self, sender: str, at_ms: int) -> None:
        """``sender`` signed a message for this room at ``at_ms`` (the latest time is kept)."""
        self.heard[sender] = max(at_ms, self.heard.get(sender, 0))
        self.heard.move_to_end(sender)
        while len(self.heard) > MAX_HEARD:
            self.heard.popitem(last=False)


class ChatService:
    """Rooms, messages, names and history of one chat peer; front ends call :meth:`handle_line`."""

    def __init__(
        self,
        ctx: NodeContext,
        gossip: Gossip,
        history: History,
        metrics: ChatMetrics,
        emit: Callable[[ChatEvent], None],
        on_join: Callable[[str], None] = lambda room: None,
    ) -> None:
        """``on_join`` is told each room this peer joins (catch-up fetches what it missed)."""
        self._ctx = ctx
        self._on_join = on_join
        self._last_sent_ms = 0
        self._gossip = gossip
        self._history = history
        self._metrics = metrics
        self._emit = emit
        self._me = ctx.host.peer_id
        self._settings = ctx.config.chat
        self._rooms: dict[str, _Room] = {}
        self._current = ctx.config.chat.room
        self._names: dict[str, str] = {}
        self._validated: dict[bytes, ChatText | NameAnnouncement] = {}  # payload -> decoded
        stored_name = ctx.store.db.get(NAME_KEY)
        self._name: str | None = (
            stored_name.decode() if stored_name is not None else ctx.config.chat.name
        )
        self._nursery: trio.Nursery | None = None
        self._connected: set[str] = set()
        self._discovered: set[str] = set()

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join the configured room, then keep rooms, members and retention going."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._join(self._current)
            nursery.start_soon(self._watch_members)
            nursery.start_soon(self._apply_retention_periodically)
            task_status.started()

    @property
    def peer_id(self) -> str:
        return self._me

    def room_names(self) -> list[str]:
        """The rooms this peer is in (safe to call from the console's thread)."""
        return list(self._rooms)

    @property
    def current_room(self) -> str:
        return self._current

    @property
    def display_name(self) -> str:
        return self._name or ANONYMOUS

    # --- input -----------------------------------------------------------------------------------

    def caught_up(self, room: str, count: int, sources: list[str]) -> None:
        """Tell the user how many messages of ``room`` arrived while they were away."""
        if count:
            self._emit(CaughtUpEvent(room, count, sources))

    @contextmanager
    def capturing(self) -> Iterator[list[ChatEvent]]:
        """Collect the events emitted inside the block instead of sending them to the front end.

        The console uses it to print a command's answer itself, before drawing the next prompt.
        """
        captured: list[ChatEvent] = []
        emit = self._emit
        self._emit = captured.append
        try:
            yield captured
        finally:
            self._emit = emit

    async def handle_line(self, line: str) -> bool:
        """Act on one input line; False when the user asked to quit."""
        parsed = parse_line(line)
        if parsed is None:
            return True
        if isinstance(parsed, Invalid):
            self._emit(ErrorEvent(parsed.hint))
        elif isinstance(parsed, Send):
            await self.send(parsed.text)
        elif isinstance(parsed, Command):
            if parsed.name == "quit":
                return False
            await self._run_command(parsed)
        return True

    async def _run_command(self, command: Command) -> None:
        name, argument = command.name, command.argument
        if name == "help":
            self._emit(OutputEvent("help", HELP))
        elif name == "peers":
            self._emit(self._peers_output())
        elif name == "name":
            await self.set_name(argument)
        elif name == "history":
            self._show_history(int(argument) if argument else DEFAULT_HISTORY)
        elif name == "info":
            self._emit(self._info_output())
        elif name == "join":
            await self.join(argument)
        elif name == "leave":
            await self.leave(argument or self._current)
        elif name == "rooms":
            rooms = sorted(self._rooms)
            listing = ", ".join(f"{r} (current)" if r == self._current else r for r in rooms)
            self._emit(
                OutputEvent(
                    "rooms", f"rooms: {listing}", {"rooms": rooms, "current": self._current}
                )
            )
        elif name == "switch":
            self.switch(argument)

    # --- messages --------------------------------------------------------------------------------

    async def send(self, text: str) -> None:
        """Send ``text`` to the current room (queued while nobody else is in it)."""
        size = len(text.encode())
        limit = self._settings.max_message_bytes
        if size > limit:
            self._emit(ErrorEvent(f"message not sent: {size} bytes, the limit is {limit}"))
            return
        message = ChatText(
            id=new_message_id(),
            room=self._current,
            sender_name=self.display_name,
            text=text,
            sent_at_ms=self._next_send_time(),
        )
        try:
            data = encode(message)
            decode(data, max_text_bytes=limit)  # what peers will accept, checked before sending
        except (WireError, ValueError) as error:
            self._emit(ErrorEvent(f"message not sent: {error}"))
            return
        if not self._gossip.has_subscribers(self._current):
            self._ctx.store.db[_pending_key(message)] = data
            self._emit(
                NoticeEvent(
                    f"nobody else is in {self._current} yet: message queued, it will be "
                    "delivered when a peer joins"
                )
            )
            return
        await self._publish(self._current, data)

    def _next_send_time(self) -> int:
        """Now, but always later than this peer's previous message: history is ordered by
        (send time, random id), so two lines typed or pasted within one millisecond would
        otherwise show in random order everywhere."""
        self._last_sent_ms = max(now_ms(), self._last_sent_ms + 1)
        return self._last_sent_ms

    async def _publish(self, room: str, data: bytes) -> None:
        await self._gossip.publish(room, data)
        self._metrics.published.inc()

    async def _flush_pending(self, room: str) -> None:
        prefix = _pending_prefix(room)
        # Keys sort, so the room's queue is one contiguous run starting at its prefix.
        queued = list(
            itertools.takewhile(
                lambda item: item[0].startswith(prefix),
                self._ctx.store.db.items(from_key=prefix),
            )
        )
        for key, data in queued:
            await self._publish(room, data)
            del self._ctx.store.db[key]
        if queued:
            self._emit(NoticeEvent(f"delivered {len(queued)} queued message(s) to {room}"))

    def _accept(self, room: str, messages: list[GossipMessage]) -> None:
        """Verified messages from the room's subscription: decode, dedup, store, show.

        The chat texts of one batch are stored in one write; duplicates (by id) are counted
        and not shown again.
        """
        texts: list[tuple[StoredMessage, ChatText]] = []
        joined, received_at = self._rooms.get(room), now_ms()
        for message in messages:
            # The validator decoded it moments ago (decoding twice was ~5% of a peer's CPU).
            payload = self._validated.pop(message.data, None)
            if payload is None:
                try:
                    payload = decode(message.data, max_text_bytes=self._settings.max_message_bytes)
                except WireError as error:  # the validator already dropped these; defensive
                    self._metrics.dropped.labels(reason=error.reason).inc()
                    continue
            if joined is not None and message.sender != self._me:
                # When it was signed, not when it reached us: an old message replayed by
                # somebody else does not make its sender look present.
                joined.hear(message.sender, min(received_at, payload.sent_at_ms))
            if isinstance(payload, NameAnnouncement):
                self._learn_name(message.sender, payload.name, message.sender == self._me)
                continue
            stored = StoredMessage.of_text(payload, message.sender, message.envelope, received_at)
            texts.append((stored, payload))
        if not texts:
            return
        new = {id(stored) for stored in self._history.add_many(stored for stored, _ in texts)}
        if new:
            self._keep_count_within_cap(room)
        duplicates = len(texts) - len(new)
        if duplicates:
            self._metrics.dropped.labels(reason="duplicate").inc(duplicates)
        for stored, payload in texts:
            if id(stored) not in new:
                continue
            if stored.sender != self._me:
                self._metrics.received.inc()
                self._names.setdefault(stored.sender, payload.sender_name)
            self._emit(self._message_event(payload, stored, history=False))

    def _message_event(
        self, payload: ChatText, stored: StoredMessage, *, history: bool
    ) -> MessageEvent:
        return MessageEvent(
            room=payload.room,
            id=stored.message_id.hex(),
            sender=stored.sender,
            sender_name=payload.sender_name,
            text=payload.text,
            sent_at_ms=payload.sent_at_ms,
            own=stored.sender == self._me,
            history=history,
        )

    def _validator(self, room: str) -> Callable[[bytes], str | None]:
        limit = self._settings.max_message_bytes

        def validate(data: bytes) -> str | None:
            # Counting is the pubsub layer's job (it reports every reason returned here).
            try:
                payload = decode_for_room(data, room, max_text_bytes=limit, now_ms=now_ms())
            except WireError as error:
                return error.reason
            if len(self._validated) >= MAX_VALIDATED:
                self._validated.clear()  # bounded: the cost is decoding those again
            self._validated[data] = payload
            return None

        return validate

    # --- names -----------------------------------------------------------------------------------

    async def set_name(self, name: str) -> None:
        """Validate, persist and announce a new display name."""
        try:
            cleaned = validate_name(name)
        except ValueError as error:
            self._emit(ErrorEvent(str(error)))
            return
        self._name = cleaned
        self._ctx.store.db[NAME_KEY] = cleaned.encode()
        self._emit(NoticeEvent(f"you are now {cleaned} ({short_id(self._me)})"))
        for room in list(self._rooms):
            await self._announce_name(room)

    async def _announce_name(self, room: str) -> None:
        if self._name is None or not self._gossip.has_subscribers(room):
            return
        announcement = NameAnnouncement(id=new_message_id(), name=self._name, sent_at_ms=now_ms())
        await self._gossip.publish(room, encode(announcement))

    def _learn_name(self, peer: str, name: str, own: bool) -> None:
        previous = self._names.get(peer)
        self._names[peer] = name
        if not own and previous != name:
            was = f"{previous} " if previous else ""
            self._emit(NoticeEvent(f"{was}({short_id(peer)}) is now known as {name}"))

    def name_of(self, peer: str) -> str:
        """The last name ``peer`` announced or used, or ``anon``."""
        if peer == self._me:
            return self.display_name
        return self._names.get(peer, ANONYMOUS)

    # --- rooms -----------------------------------------------------------------------------------

    async def join(self, room: str) -> None:
        """Join ``room`` (if needed) and make it current."""
        try:
            room = validate_room(room)
        except ValueError as error:
            self._emit(ErrorEvent(str(error)))
            return
        if room not in self._rooms:
            await self._join(room)
        self._current = room
        self._emit(NoticeEvent(f"joined {room}"))

    async def _join(self, room: str) -> None:
        assert self._nursery is not None
        messages = await self._gossip.join(room, self._validator(room))
        scope = trio.CancelScope()
        self._rooms[room] = _Room(room, scope)

        async def receive() -> None:
            with scope:
                async with trio.open_nursery() as room_tasks:
                    if self._ctx.rendezvous is not None:
                        room_tasks.start_soon(self._ctx.rendezvous.run_room, room)
                    async for batch in messages:
                        self._accept(room, batch)
                    room_tasks.cancel_scope.cancel()

        self._nursery.start_soon(receive)
        self._metrics.rooms.set(len(self._rooms))
        self._on_join(room)

    async def leave(self, room: str) -> None:
        """Leave ``room``; the last room cannot be left (use /quit)."""
        if room not in self._rooms:
            self._emit(ErrorEvent(f"you are not in {room}"))
            return
        if len(self._rooms) == 1:
            self._emit(ErrorEvent(f"{room} is your only room; use /quit to leave the chat"))
            return
        self._rooms.pop(room).scope.cancel()
        await self._gossip.leave(room)
        if self._current == room:
            self._current = sorted(self._rooms)[0]
        self._metrics.rooms.set(len(self._rooms))
        self._emit(NoticeEvent(f"left {room}; current room: {self._current}"))

    def switch(self, room: str) -> None:
        """Make a joined room current."""
        if room not in self._rooms:
            self._emit(ErrorEvent(f"you are not in {room}; /join {room} first"))
            return
        self._current = room
        self._emit(NoticeEvent(f"current room: {room}"))

    def _notice_peer_changes(self) -> None:
        """Notices for peers discovered (on the LAN, or in the DHT as members of our rooms) and
        for connections opened and closed."""
        discovered = self._ctx.discovered_peers()
        for peer in sorted(discovered.keys() - self._discovered):
            where = "on the local network" if discovered[peer] == "mdns" else "in the DHT"
            self._emit(NoticeEvent(f"discovered {short_id(peer)} {where}"))
        self._discovered = set(discovered)
        connected = set(self._ctx.host.connected_peers())
        for peer in sorted(connected - self._connected):
            self._emit(NoticeEvent(f"connected to {self.name_of(peer)} ({short_id(peer)})"))
        for peer in sorted(self._connected - connected):
            self._emit(NoticeEvent(f"disconnected from {self.name_of(peer)} ({short_id(peer)})"))
        self._connected = connected

    async def _watch_members(self) -> None:
        """Announce peers joining and leaving rooms; greet newcomers with our name and queue."""
        while True:
            self._notice_peer_changes()
            for room in list(self._rooms.values()):
                members = set(self._gossip.subscribers(room.name)) - {self._me}
                joined, left = members - room.members, room.members - members
                room.members = members
                for peer in sorted(joined):
                    self._emit(PeerEvent("joined", room.name, peer, self.name_of(peer)))
                for peer in sorted(left):
                    self._emit(PeerEvent("left", room.name, peer, self.name_of(peer)))
                if joined:
                    await self._announce_name(room.name)
                    await self._flush_pending(room.name)
            self._metrics.room_peers.set(
                len(self._rooms[self._current].members) if self._current in self._rooms else 0
            )
            await trio.sleep(MEMBER_POLL_INTERVAL)

    def _keep_count_within_cap(self, room: str) -> None:
        """Trim ``room`` to ``history_max_messages`` as messages arrive, not only at the hourly
        pass: a busy room would overrun the cap for up to an hour. Trimmed once it is 1% over,
        so that a full room costs one delete batch per 1% of new messages, not one each."""
        cap = self._settings.history_max_messages
        if self._history.count(room) > cap + max(1, cap // 100):
            self._history.apply_retention(room, max_count=cap, max_age_ms=None, now_ms=now_ms())

    async def _apply_retention_periodically(self) -> None:
        max_age_ms = int(self._settings.history_max_age_days * 86_400_000)
        while True:
            for room in self._history.rooms():
                self._history.apply_retention(
                    room,
                    max_count=self._settings.history_max_messages,
                    max_age_ms=max_age_ms,
                    now_ms=now_ms(),
                )
            await trio.sleep(RETENTION_INTERVAL)

    # --- outputs ---------------------------------------------------------------------------------

    def _show_history(self, limit: int) -> None:
        messages = self._history.last(self._current, limit)
        if not messages:
            self._emit(NoticeEvent(f"no messages in {self._current} yet"))
        for stored in messages:
            try:
                payload = decode(envelope_data(stored.envelope), max_text_bytes=1 << 20)
            except (WireError, ValueError):
                continue
            if isinstance(payload, ChatText):
                self._emit(self._message_event(payload, stored, history=True))

    def _peers_output(self) -> OutputEvent:
        connections = {c.peer_id: c for c in self._ctx.host.connections()}
        members = sorted(self._rooms[self._current].members) if self._current in self._rooms else []
        peers = []
        lines = [f"connected peers: {len(connections)}"]
        for peer, info in sorted(connections.items()):
            kind = "relayed" if info.transport == "p2p-circuit" else "direct"
            in_room = peer in members
            peers.append(
                {"peer": peer, "name": self.name_of(peer), "connection": kind, "in_room": in_room}
            )
            mark = " *" if in_room else ""
            lines.append(f"  {self.name_of(peer)} ({short_id(peer)}) {kind}{mark}")
        lines.append(f"in {self._current}: {len(members)} other peer(s) (marked *)")
        # Members reached only through other peers: pubsub lists just its neighbours, so these
        # are the senders heard in the room lately.
        room = self._rooms.get(self._current)
        recent = now_ms() - HEARD_RECENTLY_MS
        via_mesh: list[dict[str, object]] = []
        mesh_lines = []
        for peer, at_ms in reversed(room.heard.items()) if room is not None else ():
            if at_ms >= recent and peer not in connections:
                name = self.name_of(peer)
                via_mesh.append({"peer": peer, "name": name, "heard_at_ms": at_ms})
                mesh_lines.append(f"  {name} ({short_id(peer)}) at {clock(at_ms)}")
        if mesh_lines:
            lines.append(f"heard in {self._current} through the mesh (last ten minutes):")
            lines += mesh_lines
        return OutputEvent(
            "peers",
            "\n".join(lines),
            {
                "peers": peers,
                "room": self._current,
                "room_members": members,
                "via_mesh": via_mesh,
            },
        )

    def _info_output(self) -> OutputEvent:
        host = self._ctx.host
        listen, advertised = host.listen_addrs(), host.advertised_addrs()
        roles, rooms = list(self._ctx.config.roles), sorted(self._rooms)
        store_bytes = self._ctx.store.size_bytes()
        reachability = self._ctx.reachability()
        relays = self._ctx.relays()
        text = "\n".join(
            [
                f"peer id:      {self._me}",
                f"name:         {self.display_name}",
                f"listening:    {', '.join(listen)}",
                f"advertised:   {', '.join(advertised)}",
                f"roles:        {', '.join(roles)}",
                f"rooms:        {', '.join(rooms)} (current: {self._current})",
                f"reachability: {reachability} (AutoNAT)",
                f"relays:       {', '.join(relays) or 'none'}",
                f"store:        {store_bytes} bytes",
            ]
        )
        data = {
            "peer_id": self._me,
            "name": self.display_name,
            "listen": listen,
            "advertised": advertised,
            "roles": roles,
            "rooms": rooms,
            "current_room": self._current,
            "reachability": reachability,
            "relays": relays,
            "store_bytes": store_bytes,
        }
        return OutputEvent("info", text, data)


def _pending_prefix(room: str) -> bytes:
    return PENDING_PREFIX + room.encode() + b"\x00"


def _pending_key(message: ChatText) -> bytes:
    """Pending messages sort by send time, so a queue is flushed in the order it was typed."""
    return _pending_prefix(message.room) + message.sent_at_ms.to_bytes(8, "big") + message.id

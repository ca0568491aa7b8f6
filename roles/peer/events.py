"""What the chat service tells its front ends: frozen event records with a JSON form.

Front ends (console, ``--json``, headless) only render these; they never reach into the service.
The JSON form of every event is a contract for scripts: ``schema/events-v1.schema.json`` (shipped
in the package with ``schema/input-v1.schema.json``, versioned by :data:`SCHEMA_VERSION`;
docs/json-contract.md) describes each one, and the test suite checks everything a front end
emits against it. Fields are only ever added within a schema version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

SCHEMA_VERSION = 1
"""Version of the JSON contract (events and input); the ``ready`` event carries it."""


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """A chat message, live or from history (``history``: shown by /history, /search, a room
    switch or a catch-up, not arriving live)."""

    room: str
    id: str  # hex message id
    sender: str  # PeerId
    sender_name: str
    text: str
    sent_at_ms: int
    own: bool
    history: bool = False
    action: bool = False  # /me: "* Alice waves"
    mention: bool = False  # the text names this peer's display name
    verified: bool = False  # the sender is a contact this user verified (/verify ... confirm)


@dataclass(frozen=True, slots=True)
class DirectEvent:
    """A direct message (end-to-end encrypted, /msg): received from ``peer`` (``own`` False),
    or sent to it by this peer (``own`` True: shown once the recipient acknowledged it)."""

    peer: str  # the other peer's PeerId (verified: the stream's authenticated remote peer)
    name: str  # the name it is known by here (not verified)
    id: str  # hex message id, chosen by the sender
    text: str
    sent_at_ms: int
    own: bool
    history: bool = False  # listed from the conversation's history (/history), not arriving now
    verified: bool = False  # the peer is a contact this user verified (/verify ... confirm)


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """A peer joined or left a room (appeared in or vanished from its subscribers)."""

    change: Literal["joined", "left"]
    room: str
    peer: str
    name: str


@dataclass(frozen=True, slots=True)
class NameEvent:
    """A peer announced a display name (``previous``: the name it had, if any)."""

    peer: str
    name: str
    previous: str | None


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """A connection to a peer opened (first one) or closed (last one)."""

    change: Literal["opened", "closed"]
    peer: str
    name: str
    relayed: bool
    roles: list[str]  # its p2pchat roles when known (an archiver, a relay...), else empty


NoticeKind = Literal[
    "welcome",  # the greeting: who you are, where
    "name_set",  # your display name changed
    "room_joined",
    "room_left",
    "room_switched",
    "discovered",  # a peer found by mDNS or the DHT
    "queued",  # a message kept until someone is in the room
    "delivered",  # queued messages published
    "exported",
    "ignored",  # this peer now ignores a peer (data: peer)
    "unignored",
    "moderation",  # an owned room's owner decided about a peer (data: room, owner, target, ...)
    "warning",  # a log warning of the node, in one line (details in the log file)
    "dm_delivered",  # a direct message acknowledged by its recipient (data: peer, id)
    "dm_waiting",  # not delivered yet, kept to send again (data: peer, id, reason, deposited)
    "dm_session",  # a direct-message session was started anew (data: peer, reason)
    "name_conflict",  # a known name used by another PeerId (data: name, peer, bound, verified)
    "dm_opened",  # a DM conversation made current: /dm, /switch @name (data: peer, room, unread)
    "dm_closed",  # a DM conversation closed: /leave @name (data: peer, room)
    "private_created",  # /create-private made a room (data: room, name)
    # a peer added this peer to a private room (data: room, name, creator, members)
    "private_invited",
    "private_member",  # a private room's member invited or removed (data: room, peer, change)
    "private_removed",  # this peer was removed from a private room (data: room, name, creator)
    "uc_file",  # a file shared in universal-connectivity's room: /get <id> (data: id, peer, room)
]


@dataclass(frozen=True, slots=True)
class NoticeEvent:
    """Something the user should know; ``kind`` says what, ``data`` holds its facts."""

    kind: NoticeKind
    text: str
    data: dict[str, Any] = field(default_factory=dict)


ErrorCode = Literal[
    "unknown_command",
    "missing_argument",
    "bad_argument",
    "invalid_room",
    "invalid_name",
    "not_in_room",
    "only_room",
    "too_many_rooms",
    "message_too_long",
    "not_sent",
    "line_too_long",
    "bad_input",  # JSON input that is not an object of the contract
    "export_failed",
    "unknown_name",
    "ambiguous_name",  # several peers use the name: give the PeerId
    "not_ignored",
    "too_many_ignored",
    "not_owner",  # a moderation command in a room this peer does not own
    "not_moderated",  # /unmute, /unremove of a peer that is not muted, removed
    "moderation_full",  # the room holds as many decisions in force as it may
    "muted",  # a message to a room whose owner muted or removed this peer: not sent
    "not_private",  # /members, /invite, /remove of private rooms in a room that is not one
]


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """A command or message that could not be carried out: a stable ``code``, a text for
    people, and the command that caused it (None: a message, or input that named none)."""

    code: ErrorCode
    text: str
    command: str | None = None


@dataclass(frozen=True, slots=True)
class OutputEvent:
    """The answer to a command: text for people and the same facts as data for scripts."""

    command: str
    text: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CaughtUpEvent:
    """Messages of a room that arrived while this peer was away, now fetched and stored.
    ``shown`` of them (the newest) follow as message events marked as history."""

    room: str
    count: int  # new messages stored
    sources: list[str]  # PeerIds of the history sources that answered
    shown: int

    @property
    def text(self) -> str:
        more = self.count - self.shown
        tail = f"; {more} more: /history" if more > 0 else ""
        return f"{self.count} message(s) in {self.room} while you were away{tail}"


@dataclass(frozen=True, slots=True)
class HistoryEndEvent:
    """The end of a listing of messages (/history, /search, a room switch's unread): how many
    were listed and how many more exist beyond what was asked; ``truncated``: a search's walk
    was cut short (its scan bound), so older matches may exist uncounted."""

    command: str
    room: str | None
    count: int
    more: int = 0
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class DoneEvent:
    """The end of the answer to one JSON input object (``--json`` only): every event of that
    answer came before it. ``ok`` is False when the answer held an error (or the input was not
    an object of the contract). Like every event of the answer, its JSON form carries the
    input's ``id`` as ``reply_to`` when the input had one."""

    ok: bool


ChatEvent = (
    MessageEvent
    | DirectEvent
    | PeerEvent
    | NameEvent
    | ConnectionEvent
    | NoticeEvent
    | ErrorEvent
    | OutputEvent
    | CaughtUpEvent
    | HistoryEndEvent
    | DoneEvent
)

EVENT_TYPES: dict[type, str] = {
    MessageEvent: "message",
    DirectEvent: "direct",
    PeerEvent: "peer",
    NameEvent: "name",
    ConnectionEvent: "connection",
    NoticeEvent: "notice",
    ErrorEvent: "error",
    OutputEvent: "output",
    CaughtUpEvent: "caught_up",
    HistoryEndEvent: "history_end",
    DoneEvent: "done",
}
"""The ``type`` of each event in its JSON form."""


# Events whose fields are all scalars are read field by field: ``asdict`` recurses into and
# copies every value, and a chat message's JSON line is written for every message received.
_FLAT_FIELDS: dict[type, tuple[str, ...]] = {
    kind: tuple(f.name for f in fields(kind))
    for kind in (MessageEvent, DirectEvent, PeerEvent, NameEvent, ErrorEvent, HistoryEndEvent)
}


def to_json_object(event: ChatEvent) -> dict[str, Any]:
    """The event as one JSON object: ``{"type": ..., **fields}``."""
    names = _FLAT_FIELDS.get(type(event))
    if names is not None:
        return {"type": EVENT_TYPES[type(event)], **{name: getattr(event, name) for name in names}}
    return {"type": EVENT_TYPES[type(event)], **asdict(event)}

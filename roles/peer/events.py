"""What the chat service tells its front ends: frozen event records with a JSON form.

Front ends (console, ``--json``, headless) only render these; they never reach into the service.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """A chat message, live or from history."""

    room: str
    id: str  # hex message id
    sender: str  # PeerId
    sender_name: str
    text: str
    sent_at_ms: int
    own: bool
    history: bool = False


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """A peer joined or left a room (appeared in or vanished from its subscribers)."""

    change: str  # joined | left
    room: str
    peer: str
    name: str


@dataclass(frozen=True, slots=True)
class NoticeEvent:
    """Something the user should know (queued message, name change, discovered peer...)."""

    text: str


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """A command or message that could not be carried out, and why."""

    text: str


@dataclass(frozen=True, slots=True)
class OutputEvent:
    """The answer to a command: text for people and the same facts as data for scripts."""

    command: str
    text: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CaughtUpEvent:
    """Messages of a room that arrived while this peer was away, now fetched and stored."""

    room: str
    count: int  # new messages stored
    sources: list[str]  # PeerIds of the history sources that answered

    @property
    def text(self) -> str:
        return f"{self.count} messages while you were away in {self.room} (/history shows them)"


ChatEvent = MessageEvent | PeerEvent | NoticeEvent | ErrorEvent | OutputEvent | CaughtUpEvent

_TYPES: dict[type, str] = {
    MessageEvent: "message",
    PeerEvent: "peer",
    NoticeEvent: "notice",
    ErrorEvent: "error",
    OutputEvent: "output",
    CaughtUpEvent: "caught_up",
}


# Events whose fields are all scalars are read field by field: ``asdict`` recurses into and
# copies every value, and a chat message's JSON line is written for every message received.
_FLAT_FIELDS: dict[type, tuple[str, ...]] = {
    kind: tuple(f.name for f in fields(kind))
    for kind in (MessageEvent, PeerEvent, NoticeEvent, ErrorEvent)
}


def to_json_object(event: ChatEvent) -> dict[str, Any]:
    """The event as one JSON object: ``{"type": ..., **fields}``."""
    names = _FLAT_FIELDS.get(type(event))
    if names is not None:
        return {"type": _TYPES[type(event)], **{name: getattr(event, name) for name in names}}
    return {"type": _TYPES[type(event)], **asdict(event)}

"""Presentation: the events and command answers the chat service shows, built from its state.

Pure functions over plain values: no I/O, no service. Every answer carries the same facts
twice, as text for people and as data for scripts (``--json``). Names in the text go through
:func:`~p2pchat.node.terminal_text.safe_name` (escaped, marked when they pass for another);
the data keeps them as claimed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from p2pchat.node.history import StoredMessage, chat_text_of
from p2pchat.node.ids import short_id
from p2pchat.node.p2p.host import ConnectionInfo
from p2pchat.node.terminal_text import safe_name
from p2pchat.node.wire.chat import ChatText
from p2pchat.roles.peer.events import MessageEvent, NameEvent, NoticeEvent, OutputEvent
from p2pchat.roles.peer.names import ANONYMOUS, NameChange
from p2pchat.roles.peer.rendering import timestamp

NameOf = Callable[[str], str]
RolesOf = Callable[[str], Iterable[str]]

_WORD = re.compile(r"[\w.-]+")


def mentions(text: str, name: str | None) -> bool:
    """Whether ``text`` names ``name`` as a word (``@name`` too), ignoring case; never for no
    name or the anonymous one."""
    if not name or name == ANONYMOUS:
        return False
    wanted = name.casefold()
    if " " in wanted:  # a name with spaces is matched as a phrase
        return wanted in text.casefold()
    return any(word.casefold().strip(".-") == wanted for word in _WORD.findall(text))


def message_event(
    payload: ChatText, stored: StoredMessage, me: str, *, history: bool, my_name: str | None = None
) -> MessageEvent:
    """The event of a chat text (``history``: shown from the store, not arriving live)."""
    own = stored.sender == me
    return MessageEvent(
        room=payload.room,
        id=stored.message_id.hex(),
        sender=stored.sender,
        sender_name=payload.sender_name,
        text=payload.text,
        sent_at_ms=payload.sent_at_ms,
        own=own,
        history=history,
        action=payload.action,
        mention=not own and mentions(payload.text, my_name),
    )


def stored_text(stored: StoredMessage) -> ChatText | None:
    """The chat text in a history entry, or None if it does not decode as one."""
    return chat_text_of(stored.envelope)


def history_events(
    messages: Iterable[StoredMessage],
    me: str,
    my_name: str | None = None,
    reveal: Callable[[StoredMessage], ChatText | None] = stored_text,
) -> list[MessageEvent]:
    """Stored texts as message events marked as history, in the order given (entries that do
    not decode as texts, or that ``reveal`` does not read, are skipped: a private room's are
    decrypted by it)."""
    events: list[MessageEvent] = []
    for stored in messages:
        payload = reveal(stored)
        if payload is not None:
            events.append(message_event(payload, stored, me, history=True, my_name=my_name))
    return events


def name_event(change: NameChange) -> NameEvent:
    return NameEvent(change.peer, change.name, change.previous)


def discovered_notice(peer: str, via: str) -> NoticeEvent:
    where = "on the local network" if via == "mdns" else "in the DHT"
    return NoticeEvent(
        "discovered", f"discovered {short_id(peer)} {where}", {"peer": peer, "via": via}
    )


def rooms_output(rooms: Iterable[str], current: str, unread: Mapping[str, int]) -> OutputEvent:
    """The answer to /rooms: every joined room, the current one marked, with unread counts."""
    names = sorted(rooms)
    parts = []
    for room in names:
        count = unread.get(room, 0)
        parts.append(
            f"{room} (current)"
            if room == current
            else f"{room} ({count} unread)"
            if count
            else room
        )
    return OutputEvent(
        "rooms",
        f"rooms: {', '.join(parts)}",
        {"rooms": names, "current": current, "unread": {r: unread.get(r, 0) for r in names}},
    )


def infrastructure(roles: Iterable[str]) -> list[str]:
    """The roles of a node that is infrastructure (bootstrap, relay, archiver) and no chat peer;
    empty for a chat peer or a node whose roles are unknown."""
    known = sorted(roles)
    return [] if not known or "peer" in known else known


def peers_output(
    connections: Iterable[ConnectionInfo],
    room: str,
    members: Iterable[str],
    heard: Iterable[tuple[str, int]],
    name_of: NameOf,
    roles_of: RolesOf,
    verified: Callable[[str], bool] = lambda peer: False,
) -> OutputEvent:
    """The answer to /peers: connected peers (direct or relayed; infrastructure by its role, chat
    peers by name, * for members of ``room``), then the senders ``heard`` lately in ``room``
    (latest first) that we are not connected to (pubsub lists just its neighbours; these are
    reached through the mesh). ``verified``: whether a peer is a verified contact (marked ✓)."""
    by_peer = {c.peer_id: c for c in connections}
    member_list = sorted(members)
    peers = []
    lines = [f"connected peers: {len(by_peer)}"]
    for peer, info in sorted(by_peer.items()):
        kind = "relayed" if info.relayed else "direct"
        roles = sorted(roles_of(peer))
        infra = infrastructure(roles)
        in_room = peer in member_list
        name = name_of(peer)
        checked = verified(peer)
        peers.append(
            {
                "peer": peer,
                "name": name,
                "connection": kind,
                "in_room": in_room,
                "roles": roles,
                "verified": checked,
            }
        )
        mark = " *" if in_room else ""
        who = ", ".join(infra) if infra else safe_name(name) + (" ✓" if checked else "")
        lines.append(f"  {who} ({short_id(peer)}) {kind}{mark}")
    lines.append(f"in {room}: {len(member_list)} other peer(s) (marked *)")
    via_mesh: list[dict[str, object]] = []
    mesh_lines = []
    for peer, at_ms in heard:
        if peer not in by_peer:
            name = name_of(peer)
            via_mesh.append({"peer": peer, "name": name, "heard_at_ms": at_ms})
            mesh_lines.append(f"  {safe_name(name)} ({short_id(peer)}) at {timestamp(at_ms)}")
    if mesh_lines:
        lines.append(f"heard in {room} through the mesh (last ten minutes):")
        lines += mesh_lines
    return OutputEvent(
        "peers",
        "\n".join(lines),
        {"peers": peers, "room": room, "room_members": member_list, "via_mesh": via_mesh},
    )


@dataclass(frozen=True)
class Whois:
    """One peer that uses a name, as /whois shows it."""

    peer: str
    name: str
    connection: str | None  # direct | relayed | None (not connected)
    roles: list[str]
    rooms: list[str]  # joined rooms it is a member of
    heard_at_ms: int | None  # when it last signed a message we saw in a joined room
    me: bool
    first_seen: bool = False  # the name is bound to it (the first PeerId seen using it)
    verified: bool = False  # a contact this user verified


def whois_output(name: str, found: list[Whois]) -> OutputEvent:
    """The answer to /whois: every peer known to use ``name`` (several can: names are claims)."""
    lines = [
        f"{safe_name(name)}: {len(found)} peer(s) use this name"
        + (" (names are claims)" if len(found) > 1 else "")
    ]
    for who in found:
        facts = ["you"] if who.me else []
        if who.first_seen:
            facts.append("first seen with this name")
        if who.verified:
            facts.append("verified")
        facts.append(who.connection or "not connected")
        if who.roles:
            facts.append("roles " + ", ".join(who.roles))
        if who.rooms:
            facts.append("in " + ", ".join(who.rooms))
        if who.heard_at_ms is not None:
            facts.append(f"last heard {timestamp(who.heard_at_ms)}")
        lines.append(f"  {who.peer}: {'; '.join(facts)}")
    return OutputEvent(
        "whois",
        "\n".join(lines),
        {
            "name": name,
            "peers": [
                {
                    "peer": w.peer,
                    "name": w.name,
                    "connection": w.connection,
                    "roles": w.roles,
                    "rooms": w.rooms,
                    "heard_at_ms": w.heard_at_ms,
                    "me": w.me,
                    "first_seen": w.first_seen,
                    "verified": w.verified,
                }
                for w in found
            ],
        },
    )


@dataclass(frozen=True)
class NodeFacts:
    """What /info shows."""

    peer_id: str
    name: str
    listen: list[str]
    advertised: list[str]
    roles: list[str]
    rooms: list[str]
    current_room: str
    reachability: str
    relays: list[str]
    store_bytes: int
    metrics: str | None  # the operator endpoint, http://host:port
    log_file: str | None  # None: logs go to stderr


def info_output(facts: NodeFacts) -> OutputEvent:
    """The answer to /info."""
    text = "\n".join(
        [
            f"peer id:      {facts.peer_id}",
            f"name:         {safe_name(facts.name)}",
            f"listening:    {', '.join(facts.listen)}",
            f"advertised:   {', '.join(facts.advertised)}",
            f"roles:        {', '.join(facts.roles)}",
            f"rooms:        {', '.join(facts.rooms)} (current: {facts.current_room})",
            f"reachability: {facts.reachability} (AutoNAT)",
            f"relays:       {', '.join(facts.relays) or 'none'}",
            f"store:        {facts.store_bytes} bytes",
            f"metrics:      {facts.metrics or 'off'}",
            f"log file:     {facts.log_file or 'none (logs go to stderr)'}",
        ]
    )
    data: Mapping[str, object] = {
        "peer_id": facts.peer_id,
        "name": facts.name,
        "listen": facts.listen,
        "advertised": facts.advertised,
        "roles": facts.roles,
        "rooms": facts.rooms,
        "current_room": facts.current_room,
        "reachability": facts.reachability,
        "relays": facts.relays,
        "store_bytes": facts.store_bytes,
        "metrics": facts.metrics,
        "log_file": facts.log_file,
    }
    return OutputEvent("info", text, dict(data))

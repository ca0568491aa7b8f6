"""Presentation: the events and command answers the chat service shows, built from its state.

Pure functions over plain values: no I/O, no service. Every answer carries the same facts
twice, as text for people and as data for scripts (``--json``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from p2pchat.node.history import StoredMessage
from p2pchat.node.p2p.envelopes import envelope_data
from p2pchat.node.p2p.host import ConnectionInfo
from p2pchat.node.wire.chat import ChatText, WireError, decode
from p2pchat.roles.peer.commands import clock, short_id
from p2pchat.roles.peer.events import MessageEvent, NoticeEvent, OutputEvent
from p2pchat.roles.peer.names import NameChange

NameOf = Callable[[str], str]


def message_event(
    payload: ChatText, stored: StoredMessage, me: str, *, history: bool
) -> MessageEvent:
    """The event of a chat text (``history``: shown by /history, not arriving live)."""
    return MessageEvent(
        room=payload.room,
        id=stored.message_id.hex(),
        sender=stored.sender,
        sender_name=payload.sender_name,
        text=payload.text,
        sent_at_ms=payload.sent_at_ms,
        own=stored.sender == me,
        history=history,
    )


def history_events(
    room: str, messages: Iterable[StoredMessage], me: str
) -> list[MessageEvent | NoticeEvent]:
    """The answer to /history: the stored texts of ``room``, oldest first (entries that do not
    decode as texts are skipped), or a notice that there are none."""
    events: list[MessageEvent | NoticeEvent] = []
    found = False
    for stored in messages:
        found = True
        try:
            payload = decode(envelope_data(stored.envelope), max_text_bytes=1 << 20)
        except (WireError, ValueError):
            continue
        if isinstance(payload, ChatText):
            events.append(message_event(payload, stored, me, history=True))
    if not found:
        events.append(NoticeEvent(f"no messages in {room} yet"))
    return events


def name_change_notice(change: NameChange) -> NoticeEvent:
    was = f"{change.previous} " if change.previous else ""
    return NoticeEvent(f"{was}({short_id(change.peer)}) is now known as {change.name}")


def discovered_notice(peer: str, via: str) -> NoticeEvent:
    where = "on the local network" if via == "mdns" else "in the DHT"
    return NoticeEvent(f"discovered {short_id(peer)} {where}")


def connection_notice(peer: str, name: str, *, opened: bool) -> NoticeEvent:
    verb = "connected to" if opened else "disconnected from"
    return NoticeEvent(f"{verb} {name} ({short_id(peer)})")


def rooms_output(rooms: Iterable[str], current: str) -> OutputEvent:
    """The answer to /rooms."""
    names = sorted(rooms)
    listing = ", ".join(f"{r} (current)" if r == current else r for r in names)
    return OutputEvent("rooms", f"rooms: {listing}", {"rooms": names, "current": current})


def peers_output(
    connections: Iterable[ConnectionInfo],
    room: str,
    members: Iterable[str],
    heard: Iterable[tuple[str, int]],
    name_of: NameOf,
) -> OutputEvent:
    """The answer to /peers: connected peers (direct or relayed, * for members of ``room``),
    then the senders ``heard`` lately in ``room`` (latest first) that we are not connected to
    (pubsub lists just its neighbours; these are reached through the mesh)."""
    by_peer = {c.peer_id: c for c in connections}
    member_list = sorted(members)
    peers = []
    lines = [f"connected peers: {len(by_peer)}"]
    for peer, info in sorted(by_peer.items()):
        kind = "relayed" if info.transport == "p2p-circuit" else "direct"
        in_room = peer in member_list
        peers.append({"peer": peer, "name": name_of(peer), "connection": kind, "in_room": in_room})
        mark = " *" if in_room else ""
        lines.append(f"  {name_of(peer)} ({short_id(peer)}) {kind}{mark}")
    lines.append(f"in {room}: {len(member_list)} other peer(s) (marked *)")
    via_mesh: list[dict[str, object]] = []
    mesh_lines = []
    for peer, at_ms in heard:
        if peer not in by_peer:
            name = name_of(peer)
            via_mesh.append({"peer": peer, "name": name, "heard_at_ms": at_ms})
            mesh_lines.append(f"  {name} ({short_id(peer)}) at {clock(at_ms)}")
    if mesh_lines:
        lines.append(f"heard in {room} through the mesh (last ten minutes):")
        lines += mesh_lines
    return OutputEvent(
        "peers",
        "\n".join(lines),
        {"peers": peers, "room": room, "room_members": member_list, "via_mesh": via_mesh},
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


def info_output(facts: NodeFacts) -> OutputEvent:
    """The answer to /info."""
    text = "\n".join(
        [
            f"peer id:      {facts.peer_id}",
            f"name:         {facts.name}",
            f"listening:    {', '.join(facts.listen)}",
            f"advertised:   {', '.join(facts.advertised)}",
            f"roles:        {', '.join(facts.roles)}",
            f"rooms:        {', '.join(facts.rooms)} (current: {facts.current_room})",
            f"reachability: {facts.reachability} (AutoNAT)",
            f"relays:       {', '.join(facts.relays) or 'none'}",
            f"store:        {facts.store_bytes} bytes",
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
    }
    return OutputEvent("info", text, dict(data))

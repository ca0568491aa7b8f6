"""Private rooms: invite-only rooms whose messages only their members can read.

A private room is a GossipSub topic nobody can guess (``private-`` and 128 random bits in hex)
whose messages are :class:`~p2pchat.node.wire.chat.PrivateText`: a ChatText encrypted with the
sender's Megolm session (:mod:`~p2pchat.roles.peer.group_crypto`). Relays, archivers and
anyone else who learns the topic carry and store ciphertext; catch-up fetches it, and members
decrypt what they hold keys for.

Membership: the creator (``/create-private``) defines it; any member may add to it. ``/invite``
(any member's) tells the existing members the new list, then gives the newcomer the room
(topic, name, members) and the inviter's session key at its current index, over the pairwise
Olm session of the direct messages (a ``PrivateRoomKey`` in a ``DmPlaintext``, sent and retried
like a DM, never shown). Every member
has its own outbound session: a member that learns of a newcomer gives it its key (and asks
for the newcomer's), and a newcomer gives every member its key (and asks for theirs), so each
pair ends up with the other's key whichever message arrives first; a key that outruns the list
or invitation naming its sender is held until that comes (:mod:`~p2pchat.roles.peer.held_keys`),
not dropped, so the newcomer's first words are readable. A list from a member other
than the creator only adds (the peers in it the receiver does not count as members yet); only
the creator's list removes, so a creator's list sent before it learned of a member's newcomer
removes that newcomer (the window of one DM's delivery; the inviter can invite it again).
``/remove`` (the creator's) tells the
remaining members the new list with the creator's new session (rotated), and the removed peer
that it was removed; each remaining member rotates its own session and gives the new key to
the remaining members only. The removed member never gets a key made after its removal, so it
reads nothing sent with them (a message a member sent before it learned of the removal is
readable by the removed peer: the window of one DM's delivery).

A newcomer is given keys at their current index: it reads from its invitation on, not before.

Bounds (config ``chat.private_*``): rooms held (``private_max_rooms``), rooms one other peer
made this peer join (``private_rooms_per_creator``), members (``private_max_members``),
sessions per room (``private_max_sessions_per_room``); an invite from an ignored peer is
refused. Each drop is counted (``p2pchat_private_dropped_total{reason}``) and logged
rate-limited.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from p2pchat.node.config import ChatSection
from p2pchat.node.history import StoredMessage, history_id, now_ms
from p2pchat.node.ids import short_id
from p2pchat.node.p2p.envelopes import envelope_data
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.store import KeyValue
from p2pchat.node.terminal_text import safe_name
from p2pchat.node.wire.chat import (
    ChatText,
    PrivateText,
    WireError,
    check_inner_text,
    decode,
    encode,
    encode_inner_text,
    new_message_id,
    validate_name,
)
from p2pchat.node.wire.dm import RoomKey
from p2pchat.node.wire.room_names import is_peer_id
from p2pchat.roles.peer.events import ChatEvent, ErrorEvent, NoticeEvent, OutputEvent
from p2pchat.roles.peer.group_crypto import GroupDrop, GroupKeys
from p2pchat.roles.peer.held_keys import HeldKeys

NAMESPACE = "private"  # of the node's store: one key per private room (topic -> JSON)
TOPIC_PREFIX = "private-"
_TOPIC = re.compile(r"private-[0-9a-f]{32}")

Reply = Callable[[ChatEvent], None]


class PrivateObserver(Protocol):
    """What the private rooms report (the role's metrics implement it). Called inline."""

    def private_dropped_reason(self, reason: str) -> None: ...


class RoomHooks(Protocol):
    """What the private rooms need of the chat service."""

    async def join_private(self, topic: str) -> bool:
        """Join ``topic`` (and remember it), not making it current; False when this peer is in
        as many rooms as it may be."""

    async def leave_private(self, topic: str) -> None:
        """Leave ``topic`` and forget it."""

    async def publish(self, topic: str, data: bytes) -> None: ...

    def is_ignored(self, peer: str) -> bool: ...

    def name_of(self, peer: str) -> str: ...


def is_private_topic(topic: str) -> bool:
    return _TOPIC.fullmatch(topic) is not None


@dataclass
class PrivateRoom:
    topic: str
    name: str
    creator: str
    members: list[str] = field(default_factory=list)
    inviter: str = ""  # who invited this peer ("" : the creator), for private_rooms_per_creator

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "name": self.name,
                "creator": self.creator,
                "members": self.members,
                "inviter": self.inviter or self.creator,
            }
        ).encode()


class PrivateRooms:
    """This peer's private rooms (one object per chat service)."""

    def __init__(
        self,
        me: str,
        keys: KeyValue,
        group: GroupKeys,
        settings: ChatSection,
        send_key: Callable[[str, RoomKey], None],
        hooks: RoomHooks,
        observer: PrivateObserver,
        emit: Callable[[ChatEvent], None],
        refusals: RefusalLog,
    ) -> None:
        self._me = me
        self._keys = keys
        self._group = group
        self._settings = settings
        self._send_key = send_key
        self._hooks = hooks
        self._observer = observer
        self._emit = emit
        self._refusals = refusals
        self._last_sent_ms = 0
        self._rooms: dict[str, PrivateRoom] = {}
        # A newcomer's key may outrun the list (or the invitation) naming it: held, not lost.
        self._held = HeldKeys(lambda topic, peer: self._dropped("not_member", topic, peer))
        for key, value in list(keys.items()):
            try:
                record = json.loads(value)
                room = PrivateRoom(
                    key.decode(),
                    str(record["name"]),
                    str(record["creator"]),
                    record["members"],
                    str(record.get("inviter") or record["creator"]),
                )
            except (ValueError, KeyError, TypeError):
                keys.delete(key)
                continue
            if is_private_topic(room.topic) and all(isinstance(m, str) for m in room.members):
                self._rooms[room.topic] = room

    # --- questions -------------------------------------------------------------------------------

    def is_private(self, topic: str) -> bool:
        return topic in self._rooms

    def topics(self) -> list[str]:
        return list(self._rooms)

    def label(self, topic: str) -> str:
        room = self._rooms.get(topic)
        return f"{safe_name(room.name)} ({topic})" if room is not None else topic

    # --- commands --------------------------------------------------------------------------------

    async def create(self, name: str, reply: Reply) -> str | None:
        """/create-private <name>: a new room with this peer alone in it; returns its topic."""
        try:
            name = validate_name(name)
        except ValueError as error:
            reply(ErrorEvent("invalid_room", f"a private room's name: {error}", "create-private"))
            return None
        if len(self._rooms) >= self._settings.private_max_rooms:
            reply(
                ErrorEvent(
                    "too_many_rooms",
                    f"you are in {len(self._rooms)} private rooms, the most "
                    "(chat.private_max_rooms); /leave one first",
                    "create-private",
                )
            )
            return None
        topic = TOPIC_PREFIX + os.urandom(16).hex()
        if not await self._hooks.join_private(topic):
            reply(
                ErrorEvent(
                    "too_many_rooms", "you are in as many rooms as you may be", "create-private"
                )
            )
            return None
        self._put(PrivateRoom(topic, name, self._me, [self._me]))
        self._group.rotate(topic)
        reply(
            NoticeEvent(
                "private_created",
                f"created private room {safe_name(name)} ({topic}); /invite <name|id> adds members",
                {"room": topic, "name": name},
            )
        )
        return topic

    def invite(self, topic: str, peer: str, reply: Reply) -> None:
        """/invite in ``topic`` (any member's): ``peer`` becomes a member."""
        room = self._member_room(topic, "invite", reply)
        if room is None:
            return
        if peer == self._me or peer in room.members:
            reply(ErrorEvent("bad_argument", "already a member of this room", "invite"))
            return
        if len(room.members) >= self._settings.private_max_members:
            reply(
                ErrorEvent(
                    "too_many_rooms",
                    f"a private room has at most {self._settings.private_max_members} members "
                    "(chat.private_max_members)",
                    "invite",
                )
            )
            return
        before = [m for m in room.members if m != self._me]
        room.members.append(peer)
        self._put(room)
        for member in before:  # first: they then take the newcomer's key when it comes
            self._send_key(member, self._membership(room))
        self._send_key(peer, self._membership(room, with_key=True, want_key=True))
        reply(self._member_notice(room, peer, "invited"))

    def remove(self, topic: str, peer: str, reply: Reply) -> None:
        """/remove in ``topic`` (the creator's): ``peer`` is no member any more; this peer's
        session rotates and the others are told to rotate theirs."""
        room = self._creator_room(topic, "remove", reply)
        if room is None:
            return
        if peer == self._me or peer not in room.members:
            reply(ErrorEvent("bad_argument", "not a member of this room (or yourself)", "remove"))
            return
        room.members.remove(peer)
        self._put(room)
        self._group.rotate(topic)
        self._send_key(peer, self._membership(room))  # without it: removed
        for member in room.members:
            if member != self._me:
                self._send_key(member, self._membership(room, with_key=True))
        reply(self._member_notice(room, peer, "removed"))

    def members(self, topic: str, reply: Reply) -> None:
        """/members: the members of private room ``topic``."""
        room = self._rooms.get(topic)
        if room is None:
            reply(ErrorEvent("not_private", f"{topic} is not a private room", "members"))
            return
        names = ", ".join(
            f"{safe_name(self._hooks.name_of(m))} ({short_id(m)})"
            + (" (creator)" if m == room.creator else "")
            for m in room.members
        )
        reply(
            OutputEvent(
                "members",
                f"members of {self.label(topic)}: {names}",
                {
                    "room": topic,
                    "name": room.name,
                    "creator": room.creator,
                    "members": room.members,
                },
            )
        )

    async def forget(self, topic: str) -> None:
        """This peer left ``topic``: its keys and record go (an invite brings it back)."""
        self._held.forget(topic)
        if self._rooms.pop(topic, None) is not None:
            self._keys.delete(topic.encode())
            self._group.forget(topic)

    # --- sending ---------------------------------------------------------------------------------

    async def send(self, topic: str, sender_name: str, text: str, action: bool) -> ChatEvent | None:
        """Encrypt and publish ``text`` in private room ``topic``; an error, or None (it shows
        when it comes back through the subscription, decrypted)."""
        command = "me" if action else None
        limit = self._settings.max_message_bytes
        if len(text.encode()) > limit:
            return ErrorEvent("message_too_long", f"message not sent: over {limit} bytes", command)
        self._last_sent_ms = max(now_ms(), self._last_sent_ms + 1)
        inner = ChatText(new_message_id(), topic, sender_name, text, self._last_sent_ms, action)
        data = encode_inner_text(inner)
        try:
            check_inner_text(data, limit)
        except WireError as error:
            return ErrorEvent("not_sent", f"message not sent: {error}", command)
        session_id, ciphertext = self._group.encrypt(topic, data)
        payload = PrivateText(inner.id, topic, inner.sent_at_ms, session_id, ciphertext)
        await self._hooks.publish(topic, encode(payload))
        return None

    # --- receiving messages ----------------------------------------------------------------------

    def reveal(
        self, payload: ChatText | PrivateText, sender: str, room: str, *, count: bool = True
    ) -> ChatText | None:
        """The text of a message of ``room`` (a private room, or a private text anywhere),
        decrypted and checked; None when dropped (counted by reason, unless not ``count``:
        a stored message shown again was counted when it arrived)."""
        opened = self._open(payload, sender, room)
        if isinstance(opened, str):
            if count:
                self._dropped(opened, room, sender)
            return None
        return opened

    def _open(self, payload: ChatText | PrivateText, sender: str, room: str) -> ChatText | str:
        """The decrypted text, or the reason it is dropped."""
        if isinstance(payload, ChatText):
            return "plaintext"
        if room not in self._rooms or payload.room != room:
            return "not_member"
        try:
            raw = self._group.decrypt(
                room,
                sender,
                payload.session_id,
                payload.ciphertext,
                history_id(sender, payload.id),
            )
            inner = check_inner_text(raw, self._settings.max_message_bytes)
        except GroupDrop as drop:
            return drop.reason
        except WireError:
            return "malformed"
        if (inner.id, inner.room, inner.sent_at_ms) != (
            payload.id,
            payload.room,
            payload.sent_at_ms,
        ):
            return "mismatch"
        return inner

    def reveal_stored(self, stored: StoredMessage, *, count: bool = False) -> ChatText | None:
        """The text of a stored message of a private room (None: not one this peer reads);
        ``count``: a drop is counted (a message just fetched by catch-up)."""
        try:
            payload = decode(envelope_data(stored.envelope), max_text_bytes=1 << 20)
        except (WireError, ValueError):
            return None
        if not isinstance(payload, ChatText | PrivateText):
            return None
        return self.reveal(payload, stored.sender, stored.room, count=count)

    def _dropped(self, reason: str, room: str, sender: str) -> None:
        self._observer.private_dropped_reason(reason)
        self._refusals.refused(reason, room=room, sender=sender)

    # --- receiving keys --------------------------------------------------------------------------

    async def received(self, peer: str, key: RoomKey) -> None:
        """A private room's key or membership from ``peer`` (over the authenticated Olm
        session). Never raises: what is refused is counted."""
        topic = key.topic
        if not is_private_topic(topic):
            self._dropped("invalid", topic[:80], peer)
            return
        room = self._rooms.get(topic)
        if key.creator == peer and (room is None or room.creator == peer):
            room = await self._membership_from_creator(peer, key, room)
            if room is None:
                return
        elif room is None and key.members and peer in key.members:
            room = await self._invited(peer, key)  # by a member other than the creator
            if room is None:
                return
        elif room is None or peer not in room.members:
            if key.session_key and not key.members:  # a key share: the list may come second
                self._held.hold(peer, key)  # taken when the list or invitation naming peer comes
            else:
                self._dropped("not_member", topic, peer)
            return
        elif key.members and not self._added_by_member(peer, key, room):
            return
        if key.session_key and not self._took_key(topic, peer, key):
            return
        if key.want_key:
            self._send_key(peer, self._key_of(room))

    def _took_key(self, topic: str, peer: str, key: RoomKey) -> bool:
        """``peer``'s session key for ``topic`` taken; False (counted) if refused."""
        try:
            self._group.add_inbound(topic, peer, key.session_key)
        except GroupDrop as drop:
            self._dropped(drop.reason, topic, peer)
            return False
        return True

    def _welcome(self, room: PrivateRoom, peer: str) -> None:
        """``peer`` just became a member as this peer sees it: it gets this peer's key, and is
        asked for its own unless that came first and was held."""
        held = self._held.claim(room.topic, peer)
        took = held is not None and self._took_key(room.topic, peer, held)
        self._send_key(peer, self._key_of(room, want_key=not took))

    def _checked_list(self, sender: str, key: RoomKey) -> tuple[str, list[str]] | None:
        """The name and member list of a membership ``key`` from ``sender``, if well formed
        (a name, at most ``private_max_members`` PeerIds, the creator and the sender among
        them); None, counted, if not."""
        members = list(dict.fromkeys(key.members))
        try:
            name = validate_name(key.name)
        except ValueError:
            self._dropped("invalid", key.topic, sender)
            return None
        if (
            len(members) > self._settings.private_max_members
            or key.creator not in members
            or sender not in members
            or not all(is_peer_id(m) for m in members)
        ):
            self._dropped("invalid", key.topic, sender)
            return None
        return name, members

    async def _invited(self, inviter: str, key: RoomKey) -> PrivateRoom | None:
        """This peer invited to the room of ``key`` by ``inviter`` (its creator or another
        member): it joins, within the bounds, and gives every member its key, asking theirs
        (the inviter's came with the invitation)."""
        topic = key.topic
        checked = self._checked_list(inviter, key)
        if checked is None:
            return None
        name, members = checked
        if self._me not in members:
            self._dropped("not_member", topic, inviter)
            return None
        if self._hooks.is_ignored(inviter):
            self._dropped("ignored", topic, inviter)
            return None
        by_inviter = sum(1 for r in self._rooms.values() if (r.inviter or r.creator) == inviter)
        if (
            len(self._rooms) >= self._settings.private_max_rooms
            or by_inviter >= self._settings.private_rooms_per_creator
        ):
            self._dropped("too_many_rooms", topic, inviter)
            return None
        if not await self._hooks.join_private(topic):
            self._dropped("too_many_rooms", topic, inviter)
            return None
        room = PrivateRoom(topic, name, key.creator, members, inviter)
        self._put(room)
        self._group.rotate(topic)
        for member in members:  # the newcomer's key, and theirs in return
            if member not in (self._me, inviter):
                self._welcome(room, member)
        self._emit(
            NoticeEvent(
                "private_invited",
                f"{safe_name(self._hooks.name_of(inviter))} ({short_id(inviter)}) added you "
                f"to private room {self.label(topic)}; /switch {topic} to chat there",
                {"room": topic, "name": name, "creator": key.creator, "members": members},
            )
        )
        return room

    def _added_by_member(self, member: str, key: RoomKey, room: PrivateRoom) -> bool:
        """A member other than the creator invited peers: those of its list not members here
        become members (its list never removes one). Whether the list was good."""
        if self._checked_list(member, key) is None or key.creator != room.creator:
            if key.creator != room.creator:
                self._dropped("invalid", room.topic, member)
            return False
        added = [m for m in dict.fromkeys(key.members) if m not in room.members and m != self._me]
        if len(room.members) + len(added) > self._settings.private_max_members:
            self._dropped("invalid", room.topic, member)
            return False
        if added:
            room.members.extend(added)
            self._put(room)
        for peer in added:
            self._welcome(room, peer)
            self._emit(self._member_notice(room, peer, "invited"))
        return True

    async def _membership_from_creator(
        self, creator: str, key: RoomKey, room: PrivateRoom | None
    ) -> PrivateRoom | None:
        if room is None:
            return await self._invited(creator, key)
        topic = key.topic
        checked = self._checked_list(creator, key)
        if checked is None:
            return None
        _, members = checked
        if self._me not in members:
            await self._removed(room)
            return None
        added = [m for m in members if m not in room.members and m != self._me]
        removed = [m for m in room.members if m not in members]
        room.members = members
        self._put(room)
        if removed:
            self._group.rotate(topic)
            for member in members:
                if member != self._me:
                    self._send_key(member, self._key_of(room))
            for peer in removed:
                self._emit(self._member_notice(room, peer, "removed"))
        for peer in added:
            if peer not in removed:
                self._welcome(room, peer)
                self._emit(self._member_notice(room, peer, "invited"))
        return room

    async def _removed(self, room: PrivateRoom) -> None:
        await self.forget(room.topic)
        await self._hooks.leave_private(room.topic)
        self._emit(
            NoticeEvent(
                "private_removed",
                f"you were removed from private room {safe_name(room.name)} ({room.topic}) by "
                f"{safe_name(self._hooks.name_of(room.creator))}",
                {"room": room.topic, "name": room.name, "creator": room.creator},
            )
        )

    # --- helpers ---------------------------------------------------------------------------------

    def _member_room(self, topic: str, command: str, reply: Reply) -> PrivateRoom | None:
        room = self._rooms.get(topic)
        if room is None:
            reply(ErrorEvent("not_private", f"{topic} is not a private room", command))
            return None
        return room

    def _creator_room(self, topic: str, command: str, reply: Reply) -> PrivateRoom | None:
        room = self._rooms.get(topic)
        if room is None:
            reply(ErrorEvent("not_private", f"{topic} is not a private room", command))
            return None
        if room.creator != self._me:
            reply(ErrorEvent("not_owner", "only the room's creator does that", command))
            return None
        return room

    def _membership(
        self, room: PrivateRoom, *, with_key: bool = False, want_key: bool = False
    ) -> RoomKey:
        session_id, session_key = self._group.share(room.topic) if with_key else ("", "")
        return RoomKey(
            room.topic,
            room.name,
            room.creator,
            tuple(room.members),
            session_id,
            session_key,
            want_key,
        )

    def _key_of(self, room: PrivateRoom, *, want_key: bool = False) -> RoomKey:
        session_id, session_key = self._group.share(room.topic)
        return RoomKey(room.topic, "", "", (), session_id, session_key, want_key)

    def _member_notice(self, room: PrivateRoom, peer: str, change: str) -> NoticeEvent:
        return NoticeEvent(
            "private_member",
            f"{safe_name(self._hooks.name_of(peer))} ({short_id(peer)}) {change} "
            f"{'to' if change == 'invited' else 'from'} private room {self.label(room.topic)}",
            {"room": room.topic, "peer": peer, "change": change},
        )

    def _put(self, room: PrivateRoom) -> None:
        self._rooms[room.topic] = room
        self._keys.put(room.topic.encode(), room.to_json())

"""Room moderation on a chat peer: the owner's commands, and applying the owner's decisions.

The state and its rules are :class:`~p2pchat.node.moderation.RoomModeration` (shared with the
archiver); this module is the chat peer's side of it:

- :meth:`Moderator.check` is the moderation part of a room's sender check (composed with the
  peer's own, :meth:`~p2pchat.roles.peer.service.ChatService.sender_check`): a muted or removed
  sender's messages are dropped where pubsub validates them (not shown, stored or forwarded);
- :meth:`Moderator.decided` takes a decision received live (already checked as the owner's),
  :meth:`Moderator.fetched` those among what catch-up fetched;
- the owner's commands (``/mute``, ``/unmute``, ``/remove``, ``/unremove``) decide, apply at
  once and publish (their own copy, back through this peer's subscription, is stored in the
  history as every decision received is); ``/mods`` shows a room's owner and what is in force;
- when someone joins a room this peer owns, the decisions in force are published again (the
  same payloads: receivers that know them change nothing), at most once per
  :data:`REANNOUNCE_EVERY_MS` per room, so a peer that joins after the history holding them was
  trimmed still learns them while the owner is online.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from p2pchat.node.history import StoredMessage, now_ms
from p2pchat.node.ids import short_id
from p2pchat.node.moderation import Applied, RoomModeration
from p2pchat.node.p2p.envelopes import envelope_data
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.terminal_text import safe_name
from p2pchat.node.wire.chat import (
    MAX_MUTE_MS,
    MAX_REASON_BYTES,
    Moderation,
    ModerationAction,
    WireError,
    decode,
    encode,
    new_message_id,
)
from p2pchat.node.wire.room_names import room_owner, validate_room
from p2pchat.roles.peer.commands import parse_duration
from p2pchat.roles.peer.events import ChatEvent, ErrorEvent, NoticeEvent, OutputEvent

REANNOUNCE_EVERY_MS = 60_000

Reply = Callable[[ChatEvent], None]


class ModerationObserver(Protocol):
    """Where a decision with no place left is counted (the role's metrics)."""

    def message_dropped(self, topic: str, reason: str) -> None: ...


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))


def describe(decision: Moderation, name: str) -> str:
    """``muted Bob (12D3Ko…x7Qa) until 2026-12-04 22:10 (spam)``."""
    who = f"{safe_name(name)} ({short_id(decision.target)})"
    verb = {"mute": "muted", "remove": "removed", "restore": "restored"}[decision.action]
    until = f" until {_when(decision.until_ms)}" if decision.action == "mute" else ""
    why = f" ({decision.reason})" if decision.reason else ""
    return f"{verb} {who}{until}{why}"


def decision_data(decision: Moderation, name: str) -> dict[str, object]:
    return {
        "room": decision.room,
        "owner": room_owner(decision.room),
        "target": decision.target,
        "name": name,
        "action": decision.action,
        "until_ms": decision.until_ms or None,
        "reason": decision.reason,
        "sent_at_ms": decision.sent_at_ms,
    }


class Moderator:
    """The chat peer's moderation (see the module's note)."""

    def __init__(
        self,
        me: str,
        state: RoomModeration,
        publish: Callable[[str, bytes], Awaitable[None]],
        name_of: Callable[[str], str],
        emit: Callable[[ChatEvent], None],
        observer: ModerationObserver,
        refusals: RefusalLog,
    ) -> None:
        self._me = me
        self._state = state
        self._publish = publish
        self._name_of = name_of
        self._emit = emit
        self._observer = observer
        self._refusals = refusals
        self._announced: dict[str, int] = {}  # room -> when its decisions were last re-sent

    # --- applying --------------------------------------------------------------------------------

    def check(self, room: str) -> Callable[[str], str | None] | None:
        """The moderation part of ``room``'s sender check; None for a room nobody owns."""
        if room_owner(room) is None:
            return None
        state, refusals = self._state, self._refusals

        def check(sender: str) -> str | None:
            verdict = state.check(room, sender, now_ms())
            if verdict is not None:
                refusals.refused(verdict, room=room, sender=sender)
            return verdict

        return check

    def refused_to_me(self, room: str) -> ErrorEvent | None:
        """The error for a message this peer would send to ``room`` while its owner has muted
        or removed it (every p2pchat peer, this one included, would drop it), else None."""
        verdict = self._state.check(room, self._me, now_ms())
        if verdict is None:
            return None
        decision = next(d for d, _ in self._state.in_force(room, now_ms()) if d.target == self._me)
        until = f" until {_when(decision.until_ms)}" if verdict == "muted" else ""
        return ErrorEvent(
            "muted",
            f"the owner of {room} has {verdict} you{until}: your messages there are dropped",
        )

    def decided(self, decision: Moderation) -> Applied:
        """Apply a decision checked as its room owner's; tell the user when it is new."""
        applied = self._state.apply(decision, now_ms())
        if applied == "applied":
            name = self._name_of(decision.target)
            self._emit(
                NoticeEvent(
                    "moderation",
                    f"{decision.room}: the owner {describe(decision, name)}",
                    decision_data(decision, name),
                )
            )
        elif applied == "full":
            self._observer.message_dropped(decision.room, "moderation_full")
        return applied

    def fetched(self, room: str, messages: list[StoredMessage]) -> list[StoredMessage]:
        """Catch-up's moderation: learn the owner's decisions among ``messages`` (verified by
        catch-up as the owner's), then leave out what the room's moderation refuses now."""
        owner = room_owner(room)
        if owner is None:
            return messages
        for stored in messages:
            if stored.sender != owner:
                continue
            try:
                payload = decode(envelope_data(stored.envelope), max_text_bytes=1 << 20)
            except (WireError, ValueError):
                continue
            if isinstance(payload, Moderation):
                self.decided(payload)
        now = now_ms()
        return [m for m in messages if self._state.check(room, m.sender, now) is None]

    async def reannounce(self, room: str) -> None:
        """Publish the decisions in force in ``room`` again, if this peer owns it (see the
        module's note)."""
        if room_owner(room) != self._me:
            return
        now = now_ms()
        if now - self._announced.get(room, -REANNOUNCE_EVERY_MS) < REANNOUNCE_EVERY_MS:
            return
        self._announced[room] = now
        for decision, _ in list(self._state.in_force(room, now)):
            await self._publish(room, encode(decision))

    # --- commands --------------------------------------------------------------------------------

    def mods(self, room: str) -> OutputEvent | ErrorEvent:
        """/mods: the room's owner and the decisions in force."""
        try:
            owner = room_owner(validate_room(room))
        except ValueError as error:
            return ErrorEvent("invalid_room", str(error), "mods")
        if owner is None:
            return OutputEvent(
                "mods",
                f"{room} has no owner: nobody moderates it (/create <name> makes a room you own)",
                {"room": room, "owner": None, "moderators": [], "in_force": []},
            )
        now = now_ms()
        in_force = []
        lines = [
            f"{room}: owner {safe_name(self._name_of(owner))} ({owner})"
            + (" (you)" if owner == self._me else "")
        ]
        for decision, _ in self._state.in_force(room, now):
            name = self._name_of(decision.target)
            in_force.append(decision_data(decision, name))
            lines.append(f"  {describe(decision, name)}")
        lines.insert(1, f"in force: {len(in_force)}")
        return OutputEvent(
            "mods",
            "\n".join(lines),
            {"room": room, "owner": owner, "moderators": [owner], "in_force": in_force},
        )

    async def decide(
        self,
        command: str,
        room: str,
        argument: str,
        peer_named: Callable[[str, str, Reply], str | None],
        reply: Reply,
    ) -> None:
        """/mute <who> <duration> [reason], /remove <who> [reason], /unmute <who>,
        /unremove <who>: decide about a peer of ``room`` (which this peer must own)."""
        if room_owner(room) != self._me:
            reply(
                ErrorEvent(
                    "not_owner",
                    f"only the owner of {room} moderates it; /create <name> makes a room you own",
                    command,
                )
            )
            return
        words = argument.split(maxsplit=2 if command == "mute" else 1)
        if not words:
            reply(ErrorEvent("missing_argument", f"/{command} needs a name or peer id", command))
            return
        target = peer_named(words[0], command, reply)
        if target is None:
            return
        if target == self._me:
            reply(ErrorEvent("bad_argument", "you cannot moderate yourself", command))
            return
        now = now_ms()
        latest = self._state.latest(room, target)
        until = 0
        rest = words[1:]
        if command == "mute":
            duration = parse_duration(rest[0]) if rest else None
            if duration is None or not 0 < duration <= MAX_MUTE_MS:
                reply(
                    ErrorEvent(
                        "bad_argument",
                        "/mute <name|id> <duration> [reason]: a duration such as 30s, 10m, 2h, "
                        "7d (at most 366d)",
                        command,
                    )
                )
                return
            until, rest = max(now, latest + 1) + duration, rest[1:]
        reason = rest[0].strip() if rest else ""
        if len(reason.encode()) > MAX_REASON_BYTES:
            reply(
                ErrorEvent(
                    "bad_argument", f"a reason has at most {MAX_REASON_BYTES} bytes", command
                )
            )
            return
        action: ModerationAction = {"mute": "mute", "remove": "remove"}.get(  # type: ignore[assignment]
            command, "restore"
        )
        if action == "restore":
            current = self._state.check(room, target, now)
            wanted = "muted" if command == "unmute" else "removed"
            if current != wanted:
                reply(
                    ErrorEvent(
                        "not_moderated",
                        f"{safe_name(self._name_of(target))} is not {wanted} in {room}",
                        command,
                    )
                )
                return
        # Later than the decision it replaces even within the same millisecond (or a clock that
        # went back): the newest (sent_at_ms, id) wins, and this one must.
        sent_at = max(now, latest + 1)
        decision = Moderation(
            id=new_message_id(),
            room=room,
            target=target,
            action=action,
            sent_at_ms=sent_at,
            until_ms=until,
            reason=reason,
        )
        try:  # as every receiver will check it (a reason with control characters, ...)
            decode(encode(decision), max_text_bytes=MAX_REASON_BYTES)
        except WireError as error:
            reply(ErrorEvent("bad_argument", f"not a valid decision: {error}", command))
            return
        if self.decided(decision) == "full":
            reply(
                ErrorEvent(
                    "moderation_full",
                    f"{room} holds as many decisions in force as it can; restore someone first",
                    command,
                )
            )
            return
        data = encode(decision)
        await self._publish(room, data)

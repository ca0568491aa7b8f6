"""Who is who, as the chat service uses it: name conflicts told loudly, names resolved with the
bindings in mind, ``/verify`` and the verified mark on messages.

The bookkeeping is :class:`~p2pchat.roles.peer.contacts.Contacts`; the numbers are
:mod:`~p2pchat.roles.peer.safety_number`. This module turns them into events: a
``name_conflict`` notice when a known name comes from another PeerId, an ``ambiguous_name``
error naming the PeerIds when a name stands for several, the ``/verify`` output, and the
``verified`` flag of messages from verified contacts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

from p2pchat.node.ids import short_id
from p2pchat.node.terminal_text import safe_name
from p2pchat.roles.peer.contacts import Conflict, Contacts
from p2pchat.roles.peer.events import (
    ChatEvent,
    DirectEvent,
    ErrorEvent,
    MessageEvent,
    NoticeEvent,
    OutputEvent,
)
from p2pchat.roles.peer.names import Names
from p2pchat.roles.peer.safety_number import NoKey, grouped, safety_number

MAX_LISTED = 5  # PeerIds an ambiguous-name error names (one line); /whois lists them all

Marked = TypeVar("Marked", MessageEvent, DirectEvent)


def looks_like_peer_id(who: str) -> bool:
    """Whether ``who`` is given as a PeerId rather than a name."""
    return who.startswith(("12D3Koo", "Qm")) and len(who) >= 46


def conflict_notice(conflict: Conflict) -> NoticeEvent:
    """The loud warning about ``conflict``."""
    name = safe_name(conflict.name)
    if conflict.verified:
        text = (
            f"!!! KEY CHANGE: {name} is a verified contact ({short_id(conflict.bound)}), but "
            f"another key ({conflict.peer}) now uses the name. It may be an impostor: check "
            f"with them out of band (/verify {conflict.peer}) before trusting it"
        )
    else:
        text = (
            f"!! WARNING: {name} was first seen here as {short_id(conflict.bound)}; another "
            f"key ({conflict.peer}) now uses the name. It may be somebody else: compare "
            f"/verify numbers before trusting it"
        )
    return NoticeEvent(
        "name_conflict",
        text,
        {
            "name": conflict.name,
            "peer": conflict.peer,
            "bound": conflict.bound,
            "verified": conflict.verified,
        },
    )


class Trust:
    """Name bindings and verified contacts, for the chat service."""

    def __init__(
        self, me: str, contacts: Contacts, names: Names, emit: Callable[[ChatEvent], None]
    ) -> None:
        self._me = me
        self._contacts = contacts
        self._names = names
        self._emit = emit

    def claimed(self, peer: str, name: str) -> None:
        """``peer`` (authenticated) used ``name``: bind it, or warn of a conflict."""
        conflict = self._contacts.claimed(peer, name)
        if conflict is not None:
            self._emit(conflict_notice(conflict))

    def is_verified(self, peer: str) -> bool:
        return self._contacts.is_verified(peer)

    def bound_to(self, name: str) -> str | None:
        """The PeerId ``name`` is bound to (first seen using it, or verified), or None."""
        return self._contacts.bound_to(name)

    def mark(self, event: Marked) -> Marked:
        """``event`` with ``verified`` set when its peer is a verified contact."""
        peer = event.sender if isinstance(event, MessageEvent) else event.peer
        if self._contacts.is_verified(peer) and not event.verified:
            return dataclasses.replace(event, verified=True)
        return event

    def resolve(self, who: str, command: str) -> str | ErrorEvent:
        """The one peer ``who`` names: a PeerId as given; or the peer using that name, which
        must be the one the name is bound to if it is bound (a name no one uses now still
        names its bound peer); else the error to reply (no one, or several: named)."""
        if looks_like_peer_id(who):
            return who
        users = self._names.peers_named(who)
        bound = self._contacts.bound_to(who)
        candidates = list(dict.fromkeys([*([bound] if bound else []), *users]))
        if not candidates:
            return ErrorEvent(
                "unknown_name", f"nobody known here uses the name {safe_name(who)}", command
            )
        if len(candidates) == 1:
            return candidates[0]
        listed = [self._describe(peer, bound) for peer in candidates[:MAX_LISTED]]
        more = len(candidates) - len(listed)
        tail = f" and {more} more (/whois {safe_name(who)})" if more > 0 else ""
        return ErrorEvent(
            "ambiguous_name",
            f"{len(candidates)} peers use the name {safe_name(who)}: {', '.join(listed)}{tail}; "
            "give the PeerId",
            command,
        )

    def _describe(self, peer: str, bound: str | None) -> str:
        notes = []
        if peer == bound:
            notes.append("first seen")
        if self._contacts.is_verified(peer):
            notes.append("verified")
        return f"{peer} ({', '.join(notes)})" if notes else peer

    def verify(self, argument: str, reply: Callable[[ChatEvent], None]) -> None:
        """``/verify <name|PeerId>``: the safety number; ``... confirm``: mark it verified."""
        who, _, rest = argument.partition(" ")
        rest = rest.strip().lower()
        if rest not in ("", "confirm"):
            reply(
                ErrorEvent(
                    "bad_argument",
                    "/verify <name or peer id> shows the safety number; add confirm once it "
                    "matches the other side's",
                    "verify",
                )
            )
            return
        peer = self.resolve(who, "verify")
        if isinstance(peer, ErrorEvent):
            reply(peer)
            return
        if peer == self._me:
            reply(ErrorEvent("bad_argument", "you cannot verify yourself", "verify"))
            return
        try:
            number = safety_number(self._me, peer)
        except (NoKey, ValueError) as error:
            reply(ErrorEvent("bad_argument", f"no safety number: {error}", "verify"))
            return
        name = self._names.name_of(peer)
        if rest == "confirm" and not self._contacts.verify(peer, name):
            reply(ErrorEvent("bad_argument", "you verified as many contacts as can be", "verify"))
            return
        verified = self._contacts.is_verified(peer)
        state = (
            f"{safe_name(name)} ({short_id(peer)}) is verified"
            if verified
            else f"if it matches what {safe_name(name)} reads on their side: /verify {peer} confirm"
        )
        reply(
            OutputEvent(
                "verify",
                f"safety number with {safe_name(name)} ({peer}):\n{grouped(number)}\n{state}",
                {"peer": peer, "name": name, "safety_number": number, "verified": verified},
            )
        )

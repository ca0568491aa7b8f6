"""Who is who: trust on first use of names, and the contacts this user verified.

A name is a claim: any key pair makes a PeerId, and any PeerId may claim any name. What this
peer can do is remember the first PeerId it saw using a name (the *binding*, kept in the store,
so it outlives a restart) and say so, loudly, when the name comes from another PeerId (in a
room, in a direct message, or when ``/msg <name>`` is resolved): :meth:`Contacts.claimed`
returns the :class:`Conflict` to warn about. A contact the user verified (``/verify <name>
confirm``, after comparing safety numbers out of band: :mod:`~p2pchat.roles.peer.safety_number`)
is marked, and its name arriving from another key is a louder warning: that is a key change.

Bounds: at most ``max_bindings`` names are bound (``chat.max_name_bindings``). Strangers can
make fresh PeerIds with fresh names for nothing, so a full table forgets the binding used least
recently among those of unverified peers (``evicted``); verified contacts are never forgotten
(at most :data:`MAX_VERIFIED`, which only the user adds), and when every binding belongs to one
a new name is not bound (``full``). A conflict is warned about once per (name, PeerId) among
the last :data:`MAX_WARNED`, and those of unverified names at most :data:`WARNINGS_PER_SECOND`
(burst :data:`WARNINGS_BURST`): past that they are counted (``rate_limited``) and logged, not
shown, so a flood of impostors is not a flood of warnings. A verified contact's key change is
always shown.

Store layout (namespace :data:`NAMESPACE`): ``n/<name, casefolded>`` -> ``<PeerId>\x00<when
bound, ms: 8 bytes>`` (read back oldest first: the first evicted after a restart) and
``v/<PeerId>`` -> ``<name>``. Only this peer's own bookkeeping writes there.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from p2pchat.node.bounded import BoundedDict
from p2pchat.node.ratelimit import TokenBucket
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.store import KeyValue
from p2pchat.node.wire.chat import ANONYMOUS_NAME

NAMESPACE = "contacts"  # of the node's store (NodeContext.keys)
BINDING = b"n/"
VERIFIED = b"v/"
MAX_VERIFIED = 1000  # contacts the user verified (only /verify ... confirm adds one)
MAX_WARNED = 1024  # (name, PeerId) conflicts already warned about, the newest
WARNINGS_PER_SECOND = 1.0  # conflicts of unverified names shown, sustained...
WARNINGS_BURST = 20  # ... and at once (a verified contact's key change is always shown)


class ContactsObserver(Protocol):
    """What the contacts report (the role's metrics implement it). Called inline."""

    def name_bindings_count(self, count: int) -> None: ...

    def name_binding_dropped(self, reason: str) -> None: ...

    def name_conflict(self, outcome: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Conflict:
    """``peer`` used ``name``, which is bound to ``bound`` (first seen, or verified);
    ``verified``: ``bound`` is a verified contact (so this is a key change of a contact)."""

    name: str
    peer: str
    bound: str
    verified: bool


class Contacts:
    """Name bindings (trust on first use) and verified contacts; no I/O but the store."""

    def __init__(
        self,
        me: str,
        keys: KeyValue,
        max_bindings: int,
        observer: ContactsObserver,
        refusals: RefusalLog,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._me = me
        self._keys = keys
        self._max = max_bindings
        self._observer = observer
        self._refusals = refusals
        self._verified: dict[str, str] = {}  # PeerId -> the name it was verified with
        for key, value in keys.items(VERIFIED):
            if len(self._verified) < MAX_VERIFIED:
                self._verified[key[len(VERIFIED) :].decode(errors="replace")] = value.decode(
                    errors="replace"
                )
        # casefolded name -> PeerId, least recently used first.
        self._bound: OrderedDict[str, str] = OrderedDict()
        # Read back oldest bound first (when each was bound is kept with it; when each was
        # last used is not, that would be a write per message), so they are evicted first.
        found: list[tuple[int, bytes, bytes]] = []
        for key, value in keys.items(BINDING):
            bound_peer, _, at = value.partition(b"\x00")
            found.append((int.from_bytes(at, "big"), key, bound_peer))
        found.sort()
        for _, key, bound_peer in found[-max_bindings:]:
            name = key[len(BINDING) :].decode(errors="replace")
            self._bound[name] = bound_peer.decode(errors="replace")
        for _, key, _ in found[:-max_bindings]:
            keys.delete(key)  # the bound was lowered: the oldest go
        self._warned: BoundedDict[tuple[str, str], None] = BoundedDict(MAX_WARNED)
        self._clock = clock
        self._warnings = TokenBucket(WARNINGS_PER_SECOND, WARNINGS_BURST, clock())
        observer.name_bindings_count(len(self._bound))

    def __len__(self) -> int:
        """How many names are bound."""
        return len(self._bound)

    def bound_to(self, name: str) -> str | None:
        """The PeerId ``name`` is bound to (ignoring case), or None."""
        return self._bound.get(name.casefold())

    def is_verified(self, peer: str) -> bool:
        return peer in self._verified

    def verified_peers(self) -> list[str]:
        return list(self._verified)

    def claimed(self, peer: str, name: str) -> Conflict | None:
        """``peer`` (authenticated: it signed, or its stream is) uses ``name``: bind the name
        if it is new; the conflict to warn about if it is bound to another PeerId and was not
        warned about lately, else None."""
        if peer == self._me or name == ANONYMOUS_NAME:
            return None
        folded = name.casefold()
        bound = self._bound.get(folded)
        if bound is None:
            self._bind(folded, peer)
            return None
        if bound == peer:
            self._bound.move_to_end(folded)  # recently used: evicted last
            return None
        if (folded, peer) in self._warned:
            return None
        self._warned[(folded, peer)] = None
        verified = bound in self._verified
        if not verified and not self._warnings.take(self._clock()):
            self._observer.name_conflict("rate_limited")
            self._refusals.refused("warning_rate", peer=peer)
            return None
        self._observer.name_conflict("key_change" if verified else "warned")
        return Conflict(name, peer, bound, verified)

    def verify(self, peer: str, name: str) -> bool:
        """Mark ``peer`` verified and bind ``name`` to it (replacing another binding: the user
        compared safety numbers with this one). False when :data:`MAX_VERIFIED` are already
        verified (nothing changes)."""
        if peer not in self._verified and len(self._verified) >= MAX_VERIFIED:
            return False
        self._verified[peer] = name
        self._keys.put(VERIFIED + peer.encode(), name.encode())
        if name != ANONYMOUS_NAME:
            folded = name.casefold()
            self._bound.pop(folded, None)
            self._bind(folded, peer)
        return True

    def _bind(self, folded: str, peer: str) -> None:
        if len(self._bound) >= self._max and not self._evict_one():
            self._observer.name_binding_dropped("full")
            self._refusals.refused("full", peer=peer)
            return
        self._bound[folded] = peer
        at = int(time.time() * 1000).to_bytes(8, "big")
        self._keys.put(BINDING + folded.encode(), peer.encode() + b"\x00" + at)
        self._observer.name_bindings_count(len(self._bound))

    def _evict_one(self) -> bool:
        """Forget the least recently used binding of an unverified peer; False if none."""
        for folded, peer in self._bound.items():
            if peer not in self._verified:
                del self._bound[folded]
                self._keys.delete(BINDING + folded.encode())
                self._observer.name_binding_dropped("evicted")
                self._refusals.refused("evicted", peer=peer)
                return True
        return False

"""Which rooms an ``all_rooms`` archiver keeps: admitted by evidence, not by announcement.

A subscription costs nothing to send: the audit's 12 PeerIds announcing 100 room names each
filled ``max_rooms`` with junk until a restart. Here a room heard of goes through three steps
(sans-IO: the role does the joining, leaving and storing; the clock is passed in):

1. **Waiting.** A name a peer subscribed to waits in that peer's queue (at most
   :data:`NAMES_PER_PEER` names per peer, :data:`MAX_WAITING` in all; more are dropped).
2. **Probation.** :meth:`RoomAdmission.next_candidates` takes names round-robin across the
   peers that announced them, at most ``max_candidate_rooms`` at once and
   :data:`CANDIDATES_PER_PEER` per announcing peer, so that many names from a few PeerIds
   cannot crowd out a room announced by others. The role joins a candidate's topic and tells
   :meth:`heard` the signer of every valid message (it holds the messages back, at most
   :data:`HELD_PER_CANDIDATE`).
3. **Admitted** once ``admit_senders`` distinct PeerIds have signed valid messages in it
   (members heard): from then on it is archived, the messages held back included. A candidate
   not admitted within ``probation`` seconds is left and not taken again for as long
   (``expired``). Admission needs a free slot of ``max_rooms``; when all are taken, the room
   heard of that has been silent the longest gives its slot up if it has been silent for
   ``room_idle`` seconds (``evicted_idle``), otherwise the candidate is refused
   (``refused_full``). Configured rooms (``archiver.rooms``) are always kept.

Signing messages as two PeerIds is cheap too, so a determined attacker can still have rooms
admitted; but only while it keeps talking in them, and idle ones give their slots back.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from p2pchat.node.bounded import BoundedDict

NAMES_PER_PEER = 16  # room names waiting per announcing peer
MAX_WAITING = 1024  # room names waiting in all
CANDIDATES_PER_PEER = 2  # rooms on probation per announcing peer
HELD_PER_CANDIDATE = 256  # messages held back per room on probation
MAX_ANNOUNCERS = 4096  # peers with names waiting

# The outcomes counted (p2pchat_archive_room_admissions_total{outcome}).
OUTCOMES = ("admitted", "expired", "refused_full", "evicted_idle")


@dataclass
class Candidate:
    """A room on probation: who announced it, since when, which signers were heard."""

    announcer: str
    since: float
    senders: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Admitted:
    """A candidate admitted (``evicted``: the room whose slot it took, to be left) or refused
    for want of a slot (``refused`` True: leave it)."""

    room: str
    evicted: str | None = None
    refused: bool = False


class RoomAdmission:
    """The admission state of one archiver (see the module's note)."""

    def __init__(
        self,
        configured: set[str],
        *,
        max_rooms: int,
        max_candidates: int,
        admit_senders: int,
        probation: float,
        room_idle: float,
    ) -> None:
        self._configured = set(configured)
        self._max_rooms = max_rooms
        self._max_candidates = max_candidates
        self._admit_senders = admit_senders
        self._probation = probation
        self._room_idle = room_idle
        self._waiting: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()  # per peer
        self._waiting_count = 0
        self.candidates: dict[str, Candidate] = {}
        self.archived: dict[str, float] = dict.fromkeys(configured, float("inf"))  # last heard
        self._cooling: BoundedDict[str, float] = BoundedDict(MAX_WAITING)  # room -> until

    # --- heard of ---

    def announced(self, peer: str, room: str, now: float) -> None:
        """``peer`` subscribed to ``room`` (a valid room name)."""
        if room in self.archived or room in self.candidates:
            return
        until = self._cooling.get(room)
        if until is not None and until > now:
            return
        names = self._waiting.get(peer)
        if names is None:
            if len(self._waiting) >= MAX_ANNOUNCERS:
                return
            names = self._waiting[peer] = OrderedDict()
        if room in names or len(names) >= NAMES_PER_PEER or self._waiting_count >= MAX_WAITING:
            return
        names[room] = None
        self._waiting_count += 1

    def next_candidates(self, now: float) -> list[str]:
        """Names to put on probation now (the role joins them), round-robin by announcer."""
        taken: list[str] = []
        per_peer: dict[str, int] = {}
        for candidate in self.candidates.values():
            per_peer[candidate.announcer] = per_peer.get(candidate.announcer, 0) + 1
        progress = True
        while progress and len(self.candidates) < self._max_candidates:
            progress = False
            for peer in list(self._waiting):
                if len(self.candidates) >= self._max_candidates:
                    break
                if per_peer.get(peer, 0) >= CANDIDATES_PER_PEER:
                    continue
                room = self._pop_name(peer)
                if room is None:
                    continue
                progress = True
                if room in self.archived or room in self.candidates:
                    continue
                self.candidates[room] = Candidate(peer, now)
                per_peer[peer] = per_peer.get(peer, 0) + 1
                taken.append(room)
                # the peer goes to the back of the round
                if peer in self._waiting:
                    self._waiting.move_to_end(peer)
        return taken

    def _pop_name(self, peer: str) -> str | None:
        names = self._waiting.get(peer)
        if not names:
            self._waiting.pop(peer, None)
            return None
        room, _ = names.popitem(last=False)
        self._waiting_count -= 1
        if not names:
            del self._waiting[peer]
        return room

    # --- probation ---

    def heard(self, room: str, sender: str, now: float) -> Admitted | None:
        """A valid message of ``room`` signed by ``sender``: for a candidate that now has its
        ``admit_senders``, the decision (admitted, maybe in an idle room's place, or refused);
        None otherwise."""
        if room in self.archived:
            if self.archived[room] != float("inf"):
                self.archived[room] = now
            return None
        candidate = self.candidates.get(room)
        if candidate is None:
            return None
        candidate.senders.add(sender)
        if len(candidate.senders) < self._admit_senders:
            return None
        del self.candidates[room]
        evicted = None
        if len(self.archived) >= self._max_rooms:
            evicted = self._idlest(now)
            if evicted is None:
                self._cooling[room] = now + self._probation
                return Admitted(room, refused=True)
            del self.archived[evicted]
        self.archived[room] = now
        return Admitted(room, evicted)

    def _idlest(self, now: float) -> str | None:
        """The room heard of (not configured) silent the longest, if for ``room_idle``."""
        heard = [
            (last, room) for room, last in self.archived.items() if room not in self._configured
        ]
        if not heard:
            return None
        last, room = min(heard)
        return room if now - last >= self._room_idle else None

    def expired(self, now: float) -> list[str]:
        """Candidates whose probation ended unadmitted (the role leaves them); each is not
        taken again for ``probation`` seconds."""
        gone = [r for r, c in self.candidates.items() if now - c.since >= self._probation]
        for room in gone:
            del self.candidates[room]
            self._cooling[room] = now + self._probation
        return gone

    def configured(self, room: str) -> None:
        """``room`` is archived from the start (``archiver.rooms``): never evicted."""
        self._configured.add(room)
        self.archived[room] = float("inf")

    @property
    def waiting(self) -> int:
        """Names waiting to be taken on probation."""
        return self._waiting_count

"""Names: this peer's display name (kept in the store) and the names other peers use.

A name is a claim, not an identity: the front ends always show it beside the short PeerId.
Other peers' names are remembered for the newest ``max_known`` peers only (any key pair makes
a fresh PeerId, so the table must not grow with what strangers send); a forgotten peer reads as
``anon`` until it speaks or announces its name again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from p2pchat.node.bounded import BoundedDict
from p2pchat.node.store import KeyValue
from p2pchat.node.wire.chat import ANONYMOUS_NAME, validate_name

NAMESPACE = "peer"  # of the node's store (NodeContext.keys)
NAME_KEY = b"name"  # in NAMESPACE: ``peer/name`` on disk
ANONYMOUS = ANONYMOUS_NAME
MAX_KNOWN_NAMES = 10_000  # other peers whose name is remembered


@dataclass(frozen=True, slots=True)
class NameChange:
    """``peer`` announced ``name``; it was known as ``previous`` (None: not known)."""

    peer: str
    previous: str | None
    name: str


class Names:
    """This peer's name and the names of others; no I/O but the store's name key.

    ``keys`` is the :data:`NAMESPACE` namespace of the node's store (``ctx.keys(NAMESPACE)``):
    this peer's name is kept under :data:`NAME_KEY`, which wins over ``configured`` (the name
    set in the config).
    """

    def __init__(
        self,
        me: str,
        keys: KeyValue,
        configured: str | None,
        max_known: int = MAX_KNOWN_NAMES,
        claims: Callable[[str, str], None] = lambda peer, name: None,
    ) -> None:
        """``claims`` is told every (peer, name) another peer signed (announced or used):
        who-is-who checks it against the names' bindings
        (:class:`~p2pchat.roles.peer.trust.Trust`)."""
        self._me = me
        self._claims = claims
        self._keys = keys
        stored = keys.get(NAME_KEY)
        self._own: str | None = stored.decode() if stored is not None else configured
        self._known: BoundedDict[str, str] = BoundedDict(max_known)

    @property
    def own(self) -> str | None:
        """The name this peer chose, or None."""
        return self._own

    @property
    def display_name(self) -> str:
        """The name this peer's messages carry: its own, or ``anon``."""
        return self._own or ANONYMOUS

    def set_own(self, name: str) -> str:
        """Validate ``name``, keep it in the store and return it cleaned.

        Raises:
            ValueError: the name is not acceptable (the message says why).
        """
        cleaned = validate_name(name)
        self._own = cleaned
        self._keys.put(NAME_KEY, cleaned.encode())
        return cleaned

    def name_of(self, peer: str) -> str:
        """The last name ``peer`` announced or used, or ``anon``."""
        if peer == self._me:
            return self.display_name
        return self._known.get(peer, ANONYMOUS)

    def announced(self, peer: str, name: str) -> NameChange | None:
        """``peer`` signed an announcement of ``name``: remember it. Returns the change to tell
        the user about, or None (this peer itself, or the name it was already known by)."""
        if peer == self._me:
            return None
        self._claims(peer, name)
        previous = self._known.get(peer)
        self._known[peer] = name
        return NameChange(peer, previous, name) if previous != name else None

    def used(self, peer: str, name: str) -> None:
        """``peer`` signed a message carrying ``name``: known by it unless it announced one,
        and remembered as recently heard from."""
        if peer == self._me:
            return
        self._claims(peer, name)
        if peer in self._known:
            self._known.touch(peer)
        else:
            self._known[peer] = name

    def peers_named(self, name: str) -> list[str]:
        """Every other peer whose remembered name is ``name``, ignoring case (a name is a
        claim: several peers may use one)."""
        wanted = name.casefold()
        return [peer for peer, known in self._known.items() if known.casefold() == wanted]

    def __len__(self) -> int:
        """How many other peers' names are remembered."""
        return len(self._known)

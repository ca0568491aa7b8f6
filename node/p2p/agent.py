"""What a connected peer is: the p2pchat roles it says it runs, in identify's agent version.

A p2pchat node tells every peer ``p2pchat/<version> (roles: archiver, relay)`` as its identify
``agent_version`` (go-libp2p and js-libp2p put their own name and version there the same way),
so that a chat peer can tell a bootstrap, relay or archiver node from a room member. The text
is the remote's word, so it is read as hostile input: at most :data:`MAX_AGENT_CHARS`
characters are kept of it, it must match the exact form above, and only the role names in
:data:`KNOWN_ROLES` are taken from it. It is a self-description, not a proof: a peer may claim
any role, so nothing may trust it for more than showing it.

py-libp2p 0.8.1 has no option for either side: every host sends the module constant
``AGENT_VERSION`` (``py-libp2p/0.8.1``) and the agent version received is dropped, not kept in
the peerstore as go-libp2p keeps it (under ``AgentVersion``). Two rows of
:data:`p2pchat.node.p2p.patches.PATCHES` change both with the wrappers here
(:func:`sending_our_agent`, :func:`keeping_their_agent`):
identify messages built for a host whose agent was set by :func:`set_agent_version` carry it,
and the agent version of every identify received is kept in the receiving host's peerstore
under :data:`AGENT_KEY` (bounded) before the rest of the message is applied, so that it is
known when the host reports the identify (:class:`~p2pchat.node.p2p.host.IdentifyReceived`).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from libp2p.abc import IHost, IPeerStore
from libp2p.identity.identify.pb.identify_pb2 import Identify
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStoreError

KNOWN_ROLES: frozenset[str] = frozenset({"peer", "bootstrap", "relay", "archiver"})
"""The role names read from a remote agent version (the config's role names; a test keeps them
equal). Others are ignored: a newer p2pchat may run roles this one does not know."""

MAX_AGENT_CHARS = 256  # longer agent versions are not p2pchat's: kept cut, never parsed
AGENT_KEY = "AgentVersion"  # the peerstore metadata key go-libp2p uses for it
PRODUCT = "p2pchat"

_AGENT = re.compile(r"p2pchat/[0-9A-Za-z.+!_-]{1,64}(?: \(roles: ([a-z, ]{0,128})\))?")

# The agent version each of our hosts sends; hosts without one send the library's.
_agents: weakref.WeakKeyDictionary[IHost, str] = weakref.WeakKeyDictionary()


def agent_version(version: str, roles: Sequence[str]) -> str:
    """What a p2pchat node of ``version`` running ``roles`` tells peers in identify."""
    if not roles:
        return f"{PRODUCT}/{version}"
    return f"{PRODUCT}/{version} (roles: {', '.join(roles)})"


def roles_of(agent: str | None) -> frozenset[str] | None:
    """The p2pchat roles an agent version announces; None when it is not a p2pchat agent
    version (another implementation, none received, too long or malformed). A p2pchat node
    without roles (a one-off client) gives an empty set."""
    if agent is None or len(agent) > MAX_AGENT_CHARS:
        return None
    match = _AGENT.fullmatch(agent)
    if match is None:
        return None
    names = (match.group(1) or "").split(",")
    return frozenset(name.strip() for name in names) & KNOWN_ROLES


def set_agent_version(host: IHost, agent: str) -> None:
    """Make ``host`` send ``agent`` in identify (and identify push) from now on."""
    _agents[host] = agent


def received_agent_version(peerstore: IPeerStore, peer_id: ID) -> str | None:
    """The agent version ``peer_id`` sent in its last identify (at most
    :data:`MAX_AGENT_CHARS` + 1 characters), or None if none was received."""
    try:
        value = peerstore.get(peer_id, AGENT_KEY)
    except PeerStoreError:  # no identify yet, or the peer is not in the peerstore
        return None
    return value if isinstance(value, str) else None


# --- the patches (applied by p2pchat.node.p2p.patches.apply) -------------------------------------


def sending_our_agent(original: Callable[..., Identify]) -> Callable[..., Identify]:
    """Replaces ``_mk_identify_protobuf``: the message carries the host's agent version."""

    def make_identify(host: IHost, *args: Any, **kwargs: Any) -> Identify:
        message = original(host, *args, **kwargs)
        agent = _agents.get(host)
        if agent is not None:
            message.agent_version = agent
        return message

    return make_identify


UpdateFromIdentify = Callable[[IPeerStore, ID, Identify], Awaitable[None]]


def keeping_their_agent(original: UpdateFromIdentify) -> UpdateFromIdentify:
    """Replaces ``update_peerstore_from_identify``: the agent version received is kept in the
    peerstore (cut to :data:`MAX_AGENT_CHARS` + 1 characters: enough to tell it is too long),
    before the protocols are applied (which is what the host reports as an identify)."""

    async def update(peerstore: IPeerStore, peer_id: ID, message: Identify) -> None:
        if message.HasField("agent_version"):
            peerstore.put(peer_id, AGENT_KEY, message.agent_version[: MAX_AGENT_CHARS + 1])
        await original(peerstore, peer_id, message)

    return update

"""The chat peer role: rooms over GossipSub, the console, signed messages, local history."""

from p2pchat.roles.peer.role import PeerRole

__all__ = ["PeerRole"]

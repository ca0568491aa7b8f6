"""Peers this user ignores: kept in the store, checked for every message before its payload.

An ignored peer's messages (texts and name announcements) in every room are dropped where the
node's pubsub validates them: not shown, not stored, and not forwarded by this peer to others
(GossipSub forwards only what every validator accepted). Ignoring is local: others still see
the peer unless they ignore it too. At most :data:`MAX_IGNORED` peers: a PeerId costs nothing to
make, so a list without end would only grow; past it, /ignore says so.
"""

from __future__ import annotations

from p2pchat.node.store import KeyValue

NAMESPACE = "ignore"  # of the node's store (NodeContext.keys): one key per ignored PeerId
MAX_IGNORED = 1000
DROP_REASON = "ignored"


class Ignored:
    """The ignored PeerIds (``keys``: the :data:`NAMESPACE` namespace of the node's store)."""

    def __init__(self, keys: KeyValue) -> None:
        self._keys = keys
        self._peers: set[str] = set()
        for key, _ in keys.items():
            if len(self._peers) >= MAX_IGNORED:
                break
            try:
                self._peers.add(key.decode())
            except UnicodeDecodeError:
                continue

    def check(self, sender: str) -> str | None:
        """The pubsub sender check: the drop reason for an ignored sender, else None."""
        return DROP_REASON if sender in self._peers else None

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    def peers(self) -> list[str]:
        return sorted(self._peers)

    def add(self, peer: str) -> bool:
        """Ignore ``peer``; False if that would pass :data:`MAX_IGNORED` (nothing changes)."""
        if peer not in self._peers and len(self._peers) >= MAX_IGNORED:
            return False
        self._peers.add(peer)
        self._keys.put(peer.encode(), b"")
        return True

    def remove(self, peer: str) -> bool:
        """Stop ignoring ``peer``; False if it was not ignored."""
        if peer not in self._peers:
            return False
        self._peers.discard(peer)
        self._keys.delete(peer.encode())
        return True

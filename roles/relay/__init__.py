"""The relay role: Circuit Relay v2 hop server (issue #4); AutoNAT is served by the node."""

from p2pchat.roles.relay.role import RelayRole

__all__ = ["RelayRole"]

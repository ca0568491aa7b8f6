"""The roles a node can run; each is a module that never imports another role."""

from __future__ import annotations

from p2pchat.node.config import Config
from p2pchat.node.role import Role
from p2pchat.roles.archiver import ArchiverRole
from p2pchat.roles.bootstrap import BootstrapRole
from p2pchat.roles.peer import PeerRole
from p2pchat.roles.relay import RelayRole

ROLE_TYPES: dict[str, type[Role]] = {
    role.name: role for role in (PeerRole, BootstrapRole, RelayRole, ArchiverRole)
}


def create_roles(config: Config) -> list[Role]:
    """The roles ``config`` names, in its order, each built with the settings it uses
    (:meth:`~p2pchat.node.role.Role.from_config`)."""
    return [ROLE_TYPES[name].from_config(config) for name in dict.fromkeys(config.roles)]

"""The roles a node can run; each is a module that never imports another role."""

from __future__ import annotations

from collections.abc import Callable

from p2pchat.node.config import Config
from p2pchat.node.role import Role
from p2pchat.node.store import KeyValue
from p2pchat.roles.archiver import ArchiverRole
from p2pchat.roles.bootstrap import BootstrapRole
from p2pchat.roles.peer import PeerRole, dm_crypto, group_crypto
from p2pchat.roles.peer.console import INPUT_HISTORY
from p2pchat.roles.relay import RelayRole

ROLE_TYPES: dict[str, type[Role]] = {
    role.name: role for role in (PeerRole, BootstrapRole, RelayRole, ArchiverRole)
}


def create_roles(config: Config) -> list[Role]:
    """The roles ``config`` names, in its order, each built with the settings it uses
    (:meth:`~p2pchat.node.role.Role.from_config`)."""
    return [ROLE_TYPES[name].from_config(config) for name in dict.fromkeys(config.roles)]


def repickle_at_rest(namespace: Callable[[str], KeyValue], old: bytes, new: bytes) -> int:
    """Re-pickle every role's ratchet state (vodozemac pickles) in the store's namespaces from
    pickle key ``old`` to ``new``, for ``p2pchat passphrase set|remove``; how many pickles were.
    A role that pickles state adds its namespace here."""
    return dm_crypto.repickle(namespace(dm_crypto.NAMESPACE), old, new) + group_crypto.repickle(
        namespace(group_crypto.NAMESPACE), old, new
    )


# Files the roles keep in the data dir in plaintext, deleted when a passphrase is set (they
# are not kept with one): the console's input history.
PLAINTEXT_FILES = (INPUT_HISTORY,)

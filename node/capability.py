"""What a capability is: a part of the node that no role owns, switched on by the config.

Modelled on rust-libp2p's behaviours under ``Toggle``: the DHT, AutoNAT, AutoRelay, hole
punching, mDNS, discovery, the history server and the bootstrap dials each implement
:class:`Capability`, and :mod:`p2pchat.node.parts` lists them, with the config switch of each,
in the order the node starts them. Roles are the other kind of part (:mod:`p2pchat.node.role`).
"""

from __future__ import annotations

from typing import Protocol

import trio


class Capability(Protocol):
    """A capability of the node (its name and config switch are in its
    :class:`~p2pchat.node.parts.Part`).

    ``run`` installs what the capability serves (protocol handlers), calls
    ``task_status.started()`` once it is ready, then runs until cancelled, leaving nothing
    running behind it (structured concurrency).
    """

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...

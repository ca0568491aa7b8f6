"""The bootstrap role: a stable node peers dial first to find each other.

It serves the Kad-DHT (the node runs it in server mode when this role is on; see
:mod:`p2pchat.node.p2p.dht`): peers that know only a bootstrap node announce their rooms to it
and learn the other members from it (:mod:`p2pchat.node.rendezvous`). It never joins a room, so
it is never part of a chat mesh and never sees chat traffic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

import trio
from p2pchat.node.config import Config
from p2pchat.node.p2p.dht import PROTOCOL_ID
from p2pchat.node.role import NodeContext


class BootstrapRole:
    """Bootstrap node: a DHT server with a stable identity and address."""

    name: ClassVar[str] = "bootstrap"
    protocols: ClassVar[Sequence[str]] = (PROTOCOL_ID,)
    in_rooms: ClassVar[bool] = False

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """A bootstrap node has no settings of its own (the DHT's are the node's)."""
        return cls()

    async def run(
        self, ctx: NodeContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start serving and wait for cancellation (the DHT itself is run by the node)."""
        ctx.log.info("bootstrap role started", dht_protocol=PROTOCOL_ID)
        task_status.started()
        await trio.sleep_forever()

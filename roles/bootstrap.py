"""The bootstrap role: a stable node peers dial first to find each other.

At this stage it is a stable, always-on peer that accepts connections; the Kad-DHT server and
room rendezvous are issue #4.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import trio
from p2pchat.node.role import NodeContext


class BootstrapRole:
    """Bootstrap node."""

    name: ClassVar[str] = "bootstrap"
    protocols: ClassVar[Sequence[str]] = ()

    async def run(
        self, ctx: NodeContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start serving and wait for cancellation."""
        ctx.log.info("bootstrap role started")
        task_status.started()
        await trio.sleep_forever()

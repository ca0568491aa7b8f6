"""The relay role: Circuit Relay v2 hop server and AutoNAT service (issue #4).

At this stage it only takes part in the node's lifecycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import trio
from p2pchat.node.role import NodeContext


class RelayRole:
    """Relay node."""

    name: ClassVar[str] = "relay"
    protocols: ClassVar[Sequence[str]] = ()

    async def run(
        self, ctx: NodeContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start serving and wait for cancellation."""
        ctx.log.info("relay role started")
        task_status.started()
        await trio.sleep_forever()

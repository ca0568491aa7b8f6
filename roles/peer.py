"""The chat peer role: what end users run.

At this stage of the project the role joins the node (identity, listeners, bootstrap dialling,
metrics) and reports its room; rooms over GossipSub, the console and history are issue #3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import trio
from p2pchat.node.role import NodeContext


class PeerRole:
    """Chat peer."""

    name: ClassVar[str] = "peer"
    protocols: ClassVar[Sequence[str]] = ()

    async def run(
        self, ctx: NodeContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start serving (nothing to register yet) and wait for cancellation."""
        ctx.log.info("peer role started", room=ctx.config.chat.room)
        task_status.started()
        await trio.sleep_forever()

"""The archiver role: durable room history and the history protocol (issue #5).

At this stage it only takes part in the node's lifecycle (its store is opened and closed by the
node).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import trio
from p2pchat.node.role import NodeContext


class ArchiverRole:
    """Archiver node."""

    name: ClassVar[str] = "archiver"
    protocols: ClassVar[Sequence[str]] = ()

    async def run(
        self, ctx: NodeContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start serving and wait for cancellation."""
        ctx.log.info("archiver role started", store=str(ctx.store.path))
        task_status.started()
        await trio.sleep_forever()

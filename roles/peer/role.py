"""The chat peer role: what end users run (``p2pchat --role peer``, the default).

Composes the node's GossipSub (rooms), the local history and the chat service, and runs the
front end chosen by ``chat.ui``. Quitting the front end stops the node.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import ClassVar

import trio
from p2pchat.node.history import History
from p2pchat.node.p2p.pubsub import Gossip
from p2pchat.node.role import NodeContext
from p2pchat.roles.peer.console import run_console
from p2pchat.roles.peer.events import ChatEvent
from p2pchat.roles.peer.frontends import run_headless, run_json, run_lines
from p2pchat.roles.peer.metrics import ChatMetrics
from p2pchat.roles.peer.service import ChatService

EVENT_BUFFER = 10_000


class PeerRole:
    """Chat peer."""

    name: ClassVar[str] = "peer"
    protocols: ClassVar[Sequence[str]] = ("/meshsub/1.2.0", "/meshsub/1.1.0", "/meshsub/1.0.0")

    async def run(
        self, ctx: NodeContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start GossipSub and the room, report started, then run the front end."""
        metrics = ChatMetrics(ctx.metrics.registry)
        gossip = Gossip(ctx.host, metrics)
        send, receive = trio.open_memory_channel[ChatEvent](EVENT_BUFFER)

        def emit(event: ChatEvent) -> None:
            try:
                send.send_nowait(event)
            except trio.WouldBlock:  # nobody reads (headless and stalled): never block chat
                ctx.log.warning("chat event dropped: front end is not keeping up")

        service = ChatService(ctx, gossip, History(ctx.store), metrics, emit)
        ui = ctx.config.chat.ui
        if ui == "auto":
            ui = "console" if sys.stdin.isatty() else "none"
        async with trio.open_nursery() as nursery:
            await nursery.start(gossip.run)
            await nursery.start(service.run)
            ctx.log.info("peer role started", room=service.current_room, ui=ui)
            task_status.started()
            if ui == "none":
                await run_headless(receive, ctx.log)
                return
            if ui == "json":
                await run_json(service, receive)
            elif sys.stdin.isatty():
                await run_console(service, receive, ctx.config.data_dir() / "input_history")
            else:  # console asked for without a terminal: plain lines in, plain lines out
                await run_lines(service, receive)
            ctx.log.info("chat closed by the user")
            ctx.request_stop()

"""The chat peer role: what end users run (``p2pchat --role peer``, the default).

Uses the node's GossipSub (rooms) and history, and composes the chat service and catch-up
(``history.catchup``); the node serves the history (``history.serve``). Runs the front end
chosen by ``chat.ui``. Quitting the front end stops the node.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Self

import trio
from p2pchat.node import logs
from p2pchat.node.atrest import is_encrypted
from p2pchat.node.catchup import CatchUp
from p2pchat.node.catchup_charge import ChargeSettings
from p2pchat.node.catchup_sources import SourceAllowance
from p2pchat.node.config import ChatSection, Config, HistorySection, MailboxSection, UcSection
from p2pchat.node.role import NodeContext
from p2pchat.node.store_client import StoreClient
from p2pchat.node.wire.dm import KEYS_PROTOCOL_ID as DM_KEYS_PROTOCOL
from p2pchat.node.wire.dm import PROTOCOL_ID as DM_PROTOCOL
from p2pchat.node.wire.store_query import PROTOCOL_ID as STORE_QUERY
from p2pchat.roles.peer.console import INPUT_HISTORY, run_console
from p2pchat.roles.peer.events import ChatEvent
from p2pchat.roles.peer.frontends import run_headless, run_json, run_lines
from p2pchat.roles.peer.metrics import ChatMetrics
from p2pchat.roles.peer.service import ChatService

EVENT_BUFFER = 10_000
DROPPED = "chat event dropped: front end is not keeping up"


class PeerRole:
    """Chat peer."""

    name: ClassVar[str] = "peer"
    protocols: ClassVar[Sequence[str]] = (
        "/meshsub/1.2.0",
        "/meshsub/1.1.0",
        "/meshsub/1.0.0",
        STORE_QUERY,
        DM_PROTOCOL,
        DM_KEYS_PROTOCOL,
    )
    in_rooms: ClassVar[bool] = True

    def __init__(
        self,
        chat: ChatSection,
        history: HistorySection,
        node_roles: Sequence[str],
        data_dir: Path,
        mailbox: MailboxSection | None = None,
        uc: UcSection | None = None,
    ) -> None:
        """``chat`` and ``history``: their config sections; ``node_roles``: every role of this
        node (``/info`` shows them); ``data_dir``: the node's data directory (the console keeps
        its input history there)."""
        self._chat = chat
        self._history = history
        self._node_roles = tuple(node_roles)
        self._data_dir = data_dir
        self._mailbox = mailbox
        self._uc = uc

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """The chat peer with the ``chat`` and ``history`` sections of ``config``, the node's
        roles and its data directory."""
        return cls(
            config.chat,
            config.history,
            config.roles,
            config.data_dir(),
            config.mailbox,
            config.uc,
        )

    async def run(
        self, ctx: NodeContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Join the room, report started, then run the front end."""
        metrics = ChatMetrics(ctx.metrics.registry, store_size=ctx.store_size)
        gossip, history = ctx.rooms(metrics)
        send, receive = trio.open_memory_channel[ChatEvent](EVENT_BUFFER)

        def emit(event: ChatEvent) -> None:
            try:
                send.send_nowait(event)
            except trio.WouldBlock:  # nobody reads (headless and stalled): never block chat
                ctx.log.warning(DROPPED)

        settings = self._history
        catch_up: CatchUp | None = None
        ui = self._chat.front_end(sys.stdin.isatty())
        service = ChatService(
            ctx,
            self._chat,
            self._node_roles,
            gossip,
            history,
            metrics,
            emit,
            on_join=lambda room: catch_up.request(room) if catch_up is not None else None,
            on_heard_live=lambda room, senders: (
                catch_up.heard_live(room, senders) if catch_up is not None else None
            ),
            data_dir=self._data_dir,
            log_file=logs.log_file,
            # Scripts get every missed message; the console (and a headless node's log) the
            # newest few.
            missed_inline=None if ui == "json" else self._chat.missed_inline,
            emit_waiting=send.send,
            mailbox=self._mailbox,
            uc=self._uc,
        )
        if settings.catchup:
            client = StoreClient(ctx.host, ctx.metrics.history_client, self._chat.max_message_bytes)
            catch_up = CatchUp(
                ctx.host,
                history,
                client,
                settings,
                service.room_names,
                service.caught_up,
                ctx.metrics.catch_up,
                ctx.log,
                sender_check=service.sender_check,
                moderate=service.moderate_fetched,
                charged=ChargeSettings(
                    self._chat.history_max_messages,
                    self._chat.history_sender_share,
                    settings.catchup_newcomer_share,
                ),
                trim=service.trim_history,
                per_source=SourceAllowance(
                    max(1, int(self._chat.history_max_messages * settings.catchup_source_share)),
                    settings.catchup_source_window_seconds,
                ),
            )
        async with trio.open_nursery() as nursery:
            if catch_up is not None:
                await nursery.start(catch_up.run)
            await nursery.start(service.run)
            ctx.log.info("peer role started", room=service.current_room, ui=ui)
            task_status.started()
            # The front end answers commands (/info shows the listen addresses) and says
            # "ready" only once the node listens.
            await ctx.listening.wait()
            if ui == "none":
                await run_headless(receive, ctx.log)
                return
            if ui == "json":
                await run_json(service, receive)
            elif sys.stdin.isatty():
                await self._run_console(service, receive)
            else:  # console asked for without a terminal: plain lines in, plain lines out
                await run_lines(service, receive)
            ctx.log.info("chat closed by the user")
            ctx.request_stop()

    async def _run_console(
        self, service: ChatService, events: trio.MemoryReceiveChannel[ChatEvent]
    ) -> None:
        """The console, with the node's warnings shown in it as one notice line each (its logs
        go to a file: a log line must never land between chat lines)."""
        token = trio.lowlevel.current_trio_token()

        def warned(summary: str) -> None:  # any thread
            if summary.startswith(DROPPED):
                return  # shown as an event it would be dropped again, and warned of again
            with contextlib.suppress(trio.RunFinishedError):  # the node is stopping
                token.run_sync_soon(service.warning, summary)

        unwatch = logs.watch_warnings(warned)
        try:
            # With a passphrase the lines typed (/msg texts among them) are kept in memory only.
            history_file = None if is_encrypted(self._data_dir) else self._data_dir / INPUT_HISTORY
            await run_console(service, events, history_file, bell=self._chat.bell)
        finally:
            unwatch()

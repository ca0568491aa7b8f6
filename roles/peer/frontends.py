"""Front ends of the chat peer: JSON lines for scripts, a line console, and headless.

Each takes the service (to hand it input lines) and the channel of events it renders, and
returns when the user quits (``/quit``, ``/exit``, end of input).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from typing import TextIO

import structlog
import trio
import trio.lowlevel
from p2pchat.roles.peer.commands import render_message, short_id
from p2pchat.roles.peer.events import (
    ChatEvent,
    ErrorEvent,
    MessageEvent,
    NoticeEvent,
    OutputEvent,
    PeerEvent,
    to_json_object,
)
from p2pchat.roles.peer.service import ChatService

MAX_LINE_BYTES = 64 * 1024
Events = trio.MemoryReceiveChannel[ChatEvent]


async def stdin_lines() -> AsyncIterator[str | None]:
    """Lines from stdin without blocking the event loop; None stands for an over-long line."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    discarding = False
    async with stream:
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                if buffer and not discarding:
                    yield buffer.decode(errors="replace")
                return
            buffer += chunk
            while (newline := buffer.find(b"\n")) >= 0:
                line, buffer = buffer[:newline], buffer[newline + 1 :]
                if discarding:
                    discarding = False
                    continue
                yield line.decode(errors="replace")
            if len(buffer) > MAX_LINE_BYTES:
                buffer, discarding = b"", True
                yield None


def render_text(event: ChatEvent) -> str:
    """How the console shows an event."""
    if isinstance(event, MessageEvent):
        return render_message(event.sender_name, event.sender, event.text, event.sent_at_ms)
    if isinstance(event, PeerEvent):
        verb = "joined" if event.change == "joined" else "left"
        return f"* {event.name} ({short_id(event.peer)}) {verb} {event.room}"
    if isinstance(event, NoticeEvent):
        return f"* {event.text}"
    if isinstance(event, ErrorEvent):
        return f"! {event.text}"
    return event.text


def show_pending(events: Events, show: Callable[[ChatEvent], None]) -> None:
    """Show every event already queued, without waiting for more."""
    while True:
        try:
            show(events.receive_nowait())
        except trio.WouldBlock:
            return


async def _drive(
    service: ChatService, events: Events, out: TextIO, render: Callable[[ChatEvent], str]
) -> None:
    """Feed stdin lines to the service; write each event as one line to ``out``.

    Events queued together are written together and flushed once: in profiles of a burst, the
    write-and-flush per message was about 5% of a peer's CPU.
    """

    def show(event: ChatEvent) -> None:
        out.write(render(event) + "\n")

    async def show_events() -> None:
        async for event in events:
            show(event)
            show_pending(events, show)
            out.flush()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(show_events)
        async for line in stdin_lines():
            if line is None:
                show(ErrorEvent(f"input line longer than {MAX_LINE_BYTES} bytes ignored"))
                out.flush()
            elif not await service.handle_line(line):
                break
        # Let the events of the last command reach the user before leaving.
        await trio.lowlevel.checkpoint()
        show_pending(events, show)
        out.flush()
        nursery.cancel_scope.cancel()


async def run_json(service: ChatService, events: Events, out: TextIO = sys.stdout) -> None:
    """One JSON object per event on stdout; stdin lines are commands or messages."""

    def render(event: ChatEvent) -> str:
        return json.dumps(to_json_object(event), ensure_ascii=False)

    ready = OutputEvent(
        "ready", "chat ready", {"peer_id": service.peer_id, "room": service.current_room}
    )
    out.write(render(ready) + "\n")
    out.flush()
    await _drive(service, events, out, render)


async def run_lines(service: ChatService, events: Events, out: TextIO = sys.stdout) -> None:
    """Plain text lines in and out, for a console without a terminal (pipes)."""
    greeting = NoticeEvent(
        f"you are {service.display_name} ({short_id(service.peer_id)}) in "
        f"{service.current_room}; /help lists the commands"
    )
    out.write(render_text(greeting) + "\n")
    out.flush()
    await _drive(service, events, out, render_text)


async def run_headless(events: Events, log: structlog.stdlib.BoundLogger) -> None:
    """No user: every event becomes a log line."""
    async for event in events:
        log.info(
            "chat " + type(event).__name__.removesuffix("Event").lower(), **to_json_object(event)
        )

"""Front ends of the chat peer: JSON lines for scripts, a line console, and headless.

Each takes the service (to hand it input lines) and the channel of events it renders, and
returns when the user quits (``/quit``, ``/exit``, end of input).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable
from typing import TextIO

import structlog
import trio
import trio.lowlevel
from p2pchat.roles.peer.commands import render_message, short_id
from p2pchat.roles.peer.events import (
    CaughtUpEvent,
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


def render_text(event: ChatEvent, width: int | None = None) -> str:
    """How the console shows an event, on a terminal ``width`` columns wide (None: output
    that is not a terminal)."""
    if isinstance(event, MessageEvent):
        return render_message(event.sender_name, event.sender, event.text, event.sent_at_ms, width)
    if isinstance(event, PeerEvent):
        verb = "joined" if event.change == "joined" else "left"
        return f"* {event.name} ({short_id(event.peer)}) {verb} {event.room}"
    if isinstance(event, NoticeEvent | CaughtUpEvent):
        return f"* {event.text}"
    if isinstance(event, ErrorEvent):
        return f"! {event.text}"
    return event.text


def take_pending(events: Events) -> list[ChatEvent]:
    """Every event already queued, without waiting for more."""
    pending: list[ChatEvent] = []
    while True:
        try:
            pending.append(events.receive_nowait())
        except trio.WouldBlock:
            return pending


class _Output:
    """Where a front end writes its text.

    A pipe (the usual stdout of a script or a test) is written through trio without blocking:
    a reader slow to drain it holds back only the writes, never the node. A terminal or a file
    is written directly (neither stalls for long). In profiles of a burst, blocking pipe writes
    inside the event loop were 5-15% of a peer's CPU; handing them to a thread added tens of
    milliseconds of latency under load, so neither is used.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = trio.Lock()
        self._pipe: trio.lowlevel.FdStream | None = None
        fd = _fileno(out)
        if fd is not None and stat.S_ISFIFO(os.fstat(fd).st_mode):
            out.flush()
            self._pipe = trio.lowlevel.FdStream(os.dup(fd))  # restores blocking mode on close

    async def write(self, text: str) -> None:
        """Write ``text`` whole; raises :class:`trio.BrokenResourceError` if the reader left."""
        async with self._lock:
            if self._pipe is not None:
                await self._pipe.send_all(text.encode())
                return
            try:
                self._out.write(text)
                self._out.flush()
            except OSError as error:  # e.g. a closed terminal
                raise trio.BrokenResourceError(str(error)) from error

    async def aclose(self) -> None:
        if self._pipe is not None:
            await self._pipe.aclose()


def _fileno(out: TextIO) -> int | None:
    try:
        return out.fileno()
    except (AttributeError, OSError, ValueError):  # io.StringIO and friends
        return None


# How long events already taken may still take to be written once the front end is stopping.
EXIT_WRITE_SECONDS = 2.0


async def _drive(
    service: ChatService, events: Events, out: TextIO, render: Callable[[ChatEvent], str]
) -> None:
    """Feed stdin lines to the service; write each event as one line to ``out``.

    Events queued together are rendered into one text and written together. If the reader of
    ``out`` goes away, the front end ends (as on end of input).
    """
    output = _Output(out)

    def text_of(batch: list[ChatEvent]) -> str:
        return "".join(render(event) + "\n" for event in batch)

    async def write(batch: list[ChatEvent]) -> None:
        # Taken events are written even while stopping, for a bounded time.
        with trio.CancelScope(shield=True) as scope:
            scope.relative_deadline = EXIT_WRITE_SECONDS
            await output.write(text_of(batch))

    async def show_events(done: trio.CancelScope) -> None:
        try:
            async for event in events:
                await write([event, *take_pending(events)])
        except trio.BrokenResourceError:
            done.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(show_events, nursery.cancel_scope)
            async for line in stdin_lines():
                if line is None:
                    await write(
                        [ErrorEvent(f"input line longer than {MAX_LINE_BYTES} bytes ignored")]
                    )
                elif not await service.handle_line(line):
                    break
            # Let the events of the last command reach the user before leaving.
            await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
        # Outside the cancelled nursery: whatever show_events had not taken yet.
        pending = take_pending(events)
        if pending:
            await write(pending)
    except trio.BrokenResourceError:
        pass  # the reader of our output is gone: nothing more to say to anyone
    finally:
        with trio.CancelScope(shield=True):
            await output.aclose()


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

"""The interactive console: prompt_toolkit line editing, input history, tab completion.

prompt_toolkit runs its own (asyncio) loop, so the prompt lives in a worker thread and hands
each line to the trio side. Events are printed from the trio side through prompt_toolkit's
``patch_stdout`` proxy, which prints above the prompt and redraws it: an incoming message never
garbles the line being typed. Ctrl-C and Ctrl-D at the prompt leave the chat like ``/quit``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import trio
from p2pchat.roles.peer.commands import COMMANDS, short_id
from p2pchat.roles.peer.events import ChatEvent, NoticeEvent
from p2pchat.roles.peer.frontends import render_text, show_pending
from p2pchat.roles.peer.service import ChatService
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from prompt_toolkit.patch_stdout import patch_stdout

ROOM_COMMANDS = ("/join", "/leave", "/switch")
TAKES_ARGUMENT = (*ROOM_COMMANDS, "/name", "/history")


class ChatCompleter(Completer):
    """Completes command names, and room names after /join, /leave and /switch."""

    def __init__(self, rooms: Callable[[], Iterable[str]]) -> None:
        self._rooms = rooms

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        text = document.text_before_cursor
        if not text.startswith("/"):
            return
        command, space, partial = text.partition(" ")
        if not space:
            for name in COMMANDS:
                if name.startswith(command):
                    suffix = " " if name in TAKES_ARGUMENT else ""
                    yield Completion(name + suffix, start_position=-len(command))
        elif command in ROOM_COMMANDS:
            for room in sorted(self._rooms()):
                if room.startswith(partial):
                    yield Completion(room, start_position=-len(partial))


async def run_console(
    service: ChatService, events: trio.MemoryReceiveChannel[ChatEvent], history_file: Path
) -> None:
    """Run the console until the user quits."""
    session: PromptSession[str] = PromptSession(
        history=FileHistory(str(history_file)),
        completer=ChatCompleter(service.room_names),
        complete_while_typing=False,
    )

    def prompt() -> str | None:
        try:
            return session.prompt(f"{service.current_room}> ", handle_sigint=False)
        except (EOFError, KeyboardInterrupt):
            return None

    with patch_stdout(raw=True):

        def show(event: ChatEvent) -> None:
            print(render_text(event), flush=True)

        async def show_events() -> None:
            async for event in events:
                show(event)

        show(
            NoticeEvent(
                f"you are {service.display_name} ({short_id(service.peer_id)}) in "
                f"{service.current_room}; /help lists the commands"
            )
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(show_events)
            while True:
                line = await trio.to_thread.run_sync(prompt, abandon_on_cancel=True)
                if line is None or not await service.handle_line(line):
                    break
                # Show what the command produced before the next prompt is drawn.
                show_pending(events, show)
            nursery.cancel_scope.cancel()
    sys.stdout.flush()

"""The interactive console: prompt_toolkit line editing, input history, tab completion.

prompt_toolkit runs its own (asyncio) loop, so the prompt lives in a worker thread and hands
each line to the trio side. Events are printed from the trio side through prompt_toolkit's
``patch_stdout`` proxy, which prints above the prompt and redraws it: an incoming message never
garbles the line being typed. Ctrl-C and Ctrl-D at the prompt leave the chat like ``/quit``.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import trio
from p2pchat.roles.peer.commands import COMMANDS
from p2pchat.roles.peer.events import ChatEvent
from p2pchat.roles.peer.rendering import View, render_text
from p2pchat.roles.peer.service import ChatService
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.patch_stdout import patch_stdout

# The lines typed, in the data dir (kept across restarts; not with a passphrase: they hold the
# texts of /msg, and ``p2pchat passphrase set`` deletes the file).
INPUT_HISTORY = "input_history"

ROOM_COMMANDS = ("/join", "/leave", "/switch", "/export")
TAKES_ARGUMENT = (
    *ROOM_COMMANDS,
    "/name",
    "/history",
    "/me",
    "/whois",
    "/search",
    "/ignore",
    "/unignore",
)


class ChatCompleter(Completer):
    """Completes command names, and room names after /join, /leave, /switch and /export."""

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
    service: ChatService,
    events: trio.MemoryReceiveChannel[ChatEvent],
    history_file: Path | None,
    *,
    bell: bool = True,
) -> None:
    """Run the console until the user quits (``bell``: a message that mentions the user's
    name rings the terminal bell; ``history_file`` None: the lines typed are not kept)."""
    session: PromptSession[str] = PromptSession(
        history=InMemoryHistory() if history_file is None else FileHistory(str(history_file)),
        completer=ChatCompleter(service.room_names),
        complete_while_typing=False,
    )

    def prompt_text() -> str:
        # Redrawn whenever an event is printed above the prompt: the unread count of every
        # other room stays in sight while typing (``lobby [ops 3]> ``).
        current = service.current_room
        unread = [
            f"{room} {n}" for room, n in service.unread_counts().items() if n and room != current
        ]
        return f"{current} [{', '.join(unread)}]> " if unread else f"{current}> "

    def prompt() -> str | None:
        try:
            return session.prompt(prompt_text, handle_sigint=False)
        except (EOFError, KeyboardInterrupt):
            return None

    async def run_command(line: str) -> tuple[bool, str]:
        # The answer of this line only: events that arrive meanwhile go to show_events.
        keep_going, answer = await service.execute(line)
        shown = view()  # after the line: a /switch answers in the room switched to
        return keep_going, "".join(render_text(event, shown) + "\n" for event in answer)

    terminal = sys.stdout

    def view() -> View:
        # Asked each time: terminals are resized, and the current room changes.
        width = shutil.get_terminal_size().columns
        return View(room=service.current_room, width=width, bell=bell)

    def converse() -> None:
        """The prompt loop, in a worker thread: prompt_toolkit runs its own event loop."""
        while (line := prompt()) is not None:
            keep_going, answer = trio.from_thread.run(run_command, line)
            # No prompt is drawn between two prompts: the answer goes straight to the terminal,
            # so it is complete before the next prompt appears (the stdout proxy writes from
            # its own thread, later, and could land in the middle of the new prompt).
            terminal.write(answer)
            terminal.flush()
            if not keep_going:
                return

    terminal.write(render_text(service.welcome(), view()) + "\n")
    with patch_stdout(raw=True):

        async def show_events() -> None:
            # Events that arrive while a prompt is shown: the proxy prints them above it.
            async for event in events:
                print(render_text(event, view()), flush=True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(show_events)
            await trio.to_thread.run_sync(converse, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()
    terminal.flush()

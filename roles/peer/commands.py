"""The chat commands and how events are shown: pure functions, shared by every front end.

A line typed by the user is parsed into a command (:func:`parse_line`); anything not starting
with ``/`` is a message to the current room. Events from the chat service are rendered as the
original design printed them (:func:`render`), e.g. ``[14:23:15] Bob (12D3Ko…x7Qa): Hi Alice!``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from p2pchat.node.terminal_text import after_header

HELP = """Commands:
  /help              this help
  /peers             connected peers and room members (name, id, direct or relayed)
  /name <name>       set your display name (others see it next to your id)
  /history [N]       the last N messages of this room (default 50)
  /info              your id, addresses, roles, rooms
  /join <room>       join a room and make it current
  /leave [room]      leave a room (default: the current one)
  /rooms             the rooms you are in
  /switch <room>     make a joined room current
  /quit, /exit       leave the chat
Anything else is sent to the current room."""

COMMANDS = (
    "/help",
    "/peers",
    "/name",
    "/history",
    "/info",
    "/join",
    "/leave",
    "/rooms",
    "/switch",
    "/quit",
    "/exit",
)
DEFAULT_HISTORY = 50


@dataclass(frozen=True, slots=True)
class Send:
    text: str


@dataclass(frozen=True, slots=True)
class Command:
    """A slash command: its name without the slash and its argument (may be empty)."""

    name: str
    argument: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """A line that cannot be acted on, with the hint to show."""

    hint: str


Parsed = Send | Command | Invalid


def parse_line(line: str) -> Parsed | None:
    """Parse one input line; None for a blank line (nothing to do)."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    if not text.startswith("/"):
        return Send(text)
    name, _, argument = text[1:].partition(" ")
    name, argument = name.lower(), argument.strip()
    if f"/{name}" not in COMMANDS:
        return Invalid(f"unknown command /{name}; type /help for the list")
    if name in ("name", "join", "switch") and not argument:
        return Invalid(
            f"/{name} needs an argument: /{name} <{'room' if name != 'name' else 'name'}>"
        )
    if name == "history" and argument and not (argument.isdigit() and int(argument) > 0):
        return Invalid("/history takes a positive number: /history 20")
    if name == "exit":
        name = "quit"
    return Command(name, argument)


def short_id(peer_id: str) -> str:
    """``12D3KooW…x7Qa``-style short form: enough to tell peers apart, short enough to read."""
    return peer_id if len(peer_id) <= 14 else f"{peer_id[:6]}…{peer_id[-4:]}"


def clock(ms: int) -> str:
    """``HH:MM:SS`` in local time."""
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000))


def render_message(
    sender_name: str, sender: str, text: str, sent_at_ms: int, width: int | None = None
) -> str:
    """A chat message as the console shows it on a terminal ``width`` columns wide (None: not
    a terminal). The short PeerId always follows the name: names alone can be spoofed; every
    row of the text after the first is indented, so none can pass for a message of its own."""
    header = f"[{clock(sent_at_ms)}] {sender_name} ({short_id(sender)}): "
    return after_header(header, text, width)

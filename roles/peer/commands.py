"""The chat commands: parsing a typed line, a pure function shared by every front end.

A line typed by the user is parsed into a command (:func:`parse_line`); anything not starting
with ``/`` is a message to the current room, and ``//text`` sends ``/text`` (so a message may
start with a slash).
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pchat.roles.peer.events import ErrorCode

HELP = """Commands:
  /help              this help
  /peers             connected peers (with their role), room members
  /whois <name>      who uses a name: ids, connection, when last heard
  /ignore [name|id]  drop a peer's messages (not shown, stored or forwarded); alone: the list
  /unignore <name|id>
                     stop ignoring a peer
  /name <name>       set your display name (others see it next to your id)
  /me <action>       send an action: "* Alice waves"
  /msg <name|id> <text>
                     a direct message, end-to-end encrypted: says delivered or waiting
  /dm <name|id>      open a direct conversation (@name, listed in /rooms): what you
                     type goes to that peer, end-to-end encrypted; /history lists it
  /verify <name|id> [confirm]
                     the safety number you and that peer both see: compare it out of
                     band, then confirm to mark the contact verified
  /history [N]       the last N messages of this room (default 50)
  /search <words>    messages of your rooms containing all the words (local history)
  /export [room] [file]
                     write a room's history as JSON lines (default: current room,
                     <data dir>/exports/<room>-<date>.jsonl)
  /info              your id, addresses, roles, rooms, metrics address, log file
  /join <room>       join a room and make it current (remembered across restarts)
  /create <name>     join the room you own: <name>~<your peer id> (only you moderate it)
  /mods [room]       a room's owner and the moderation in force (default: current room)
  /mute <name|id> <duration> [reason]
                     (owner) drop a peer's messages in this room for 30s, 10m, 2h, 7d...
  /unmute <name|id>  (owner) end a mute
  /remove <name|id> [reason]
                     (owner) drop a peer's messages in this room until /unremove
  /unremove <name|id>
                     (owner) end a removal
  /create-private <name>
                     a private room: invite-only, end-to-end encrypted (Megolm), made current
  /invite <name|id>  (any member) add a peer to the current private room
  /remove <name|id>  in a private room (creator): remove a member; the keys rotate
  /members [room]    the members of a private room (default: the current one)
  /leave [room]      leave a room (default: the current one); /leave @name closes a DM
  /rooms             the rooms you are in and open DM conversations, with unread counts
  /switch <room>     make a joined room (or @name, a DM conversation) current and show
                     what arrived there
  /uc <text>         send to universal-connectivity's room (libp2p's chat demo; uc.enabled)
  /send-file <path>  share a file in universal-connectivity's room
  /get <id>          fetch a file shared there (saved under <data dir>/uc-files/)
  /quit, /exit       leave the chat
Anything else is sent to the current room; //text sends /text."""

COMMANDS = (
    "/help",
    "/peers",
    "/whois",
    "/ignore",
    "/unignore",
    "/name",
    "/me",
    "/msg",
    "/verify",
    "/dm",
    "/history",
    "/search",
    "/export",
    "/info",
    "/join",
    "/create",
    "/mods",
    "/mute",
    "/unmute",
    "/remove",
    "/unremove",
    "/create-private",
    "/invite",
    "/members",
    "/leave",
    "/rooms",
    "/switch",
    "/uc",
    "/send-file",
    "/get",
    "/quit",
    "/exit",
)
DEFAULT_HISTORY = 50
MAX_HISTORY = 10_000  # /history N at most: the answer is held in memory whole

# What each command that needs an argument calls it, for the hint.
_NEEDS_ARGUMENT = {
    "name": "name",
    "join": "room",
    "switch": "room",
    "me": "action",
    "msg": "name or peer id> <text",
    "verify": "name or peer id",
    "dm": "name or peer id",
    "whois": "name",
    "unignore": "name or peer id",
    "search": "words",
    "create": "name",
    "mute": "name or peer id> <duration",
    "unmute": "name or peer id",
    "remove": "name or peer id",
    "unremove": "name or peer id",
    "create-private": "name",
    "invite": "name or peer id",
    "uc": "text",
    "send-file": "path",
    "get": "file id",
}

_DURATION_UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration(text: str) -> int | None:
    """``30s``, ``10m``, ``2h``, ``7d`` in milliseconds; None for anything else."""
    number, unit = text[:-1], text[-1:].lower()
    if unit not in _DURATION_UNITS or not number.isdigit() or len(number) > 6:
        return None
    return int(number) * _DURATION_UNITS[unit]


@dataclass(frozen=True, slots=True)
class Send:
    text: str
    action: bool = False


@dataclass(frozen=True, slots=True)
class Command:
    """A slash command: its name without the slash and its argument (may be empty)."""

    name: str
    argument: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """A line that cannot be acted on: the error code, the hint to show, the command named
    (without its slash, as every event names commands)."""

    code: ErrorCode
    hint: str
    command: str | None = None


Parsed = Send | Command | Invalid


def parse_line(line: str) -> Parsed | None:
    """Parse one input line; None for a blank line (nothing to do)."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    if text.startswith("//"):
        return Send(text[1:])
    if not text.startswith("/"):
        return Send(text)
    name, _, argument = text[1:].partition(" ")
    name, argument = name.lower(), argument.strip()
    if f"/{name}" not in COMMANDS:
        return Invalid(
            "unknown_command",
            f"unknown command /{name}; type /help for the list (//{text[1:]} sends it as text)",
            name,
        )
    if name in _NEEDS_ARGUMENT and not argument:
        return Invalid(
            "missing_argument",
            f"/{name} needs an argument: /{name} <{_NEEDS_ARGUMENT[name]}>",
            name,
        )
    if name == "history" and argument and not _is_count(argument):
        return Invalid(
            "bad_argument", f"/history takes a number 1..{MAX_HISTORY}: /history 20", "history"
        )
    if name == "me":
        return Send(argument, action=True)
    if name == "msg" and len(argument.split(maxsplit=1)) < 2:
        return Invalid("missing_argument", "/msg needs a text: /msg <name or peer id> <text>", name)
    if name == "exit":
        name = "quit"
    return Command(name, argument)


def _is_count(argument: str) -> bool:
    return argument.isdigit() and 0 < int(argument) <= MAX_HISTORY

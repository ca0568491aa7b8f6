"""How the console shows events: one text per event, pure functions over the event and the view.

A message shows its time (with the date when it was not sent today), its room when that is
not the room being looked at (``[14:04:35] #ops Alice (12D3Ko…QPNK): …``: an answer typed now
goes to the current room, so a message of another room must never look like one of it), the
sender's name and short PeerId (names alone can be spoofed), and the text, every row after the
first indented (:mod:`p2pchat.node.terminal_text`), so none can pass for a message of its own.

Every name is shown through :func:`~p2pchat.node.terminal_text.safe_name`: invisible characters
escaped, and a name that mixes scripts or passes for an ASCII one marked `` (!)``, so "Alice"
spelt with a Cyrillic A (U+0410) never reads as ``Alice``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from p2pchat.node.ids import short_id
from p2pchat.node.terminal_text import after_header, safe_name
from p2pchat.roles.peer.commands import MAX_HISTORY
from p2pchat.roles.peer.events import (
    CaughtUpEvent,
    ChatEvent,
    ConnectionEvent,
    DirectEvent,
    ErrorEvent,
    HistoryEndEvent,
    MessageEvent,
    NameEvent,
    NoticeEvent,
    OutputEvent,
    PeerEvent,
)

# Reverse video for a message that mentions you, and the terminal bell; only on a terminal.
HIGHLIGHT = "\x1b[7m"
RESET = "\x1b[0m"
BELL = "\a"


def timestamp(ms: int, today: tuple[int, int, int] | None = None) -> str:
    """``HH:MM:SS`` in local time, ``YYYY-MM-DD HH:MM:SS`` when not sent ``today`` (a local
    (year, month, day); default: the current day)."""
    sent = time.localtime(ms / 1000)
    if today is None:
        now = time.localtime()
        today = (now.tm_year, now.tm_mon, now.tm_mday)
    if (sent.tm_year, sent.tm_mon, sent.tm_mday) == today:
        return time.strftime("%H:%M:%S", sent)
    return time.strftime("%Y-%m-%d %H:%M:%S", sent)


@dataclass(frozen=True, slots=True)
class View:
    """What the reader is looking at: the current room, the terminal's width (None: not a
    terminal), and whether a mention rings the bell."""

    room: str | None = None
    width: int | None = None
    bell: bool = False


VERIFIED = " ✓"  # after the name of a contact this user verified (/verify ... confirm)


def render_message(event: MessageEvent, view: View = View()) -> str:
    """A chat message as the console shows it (see the module's note)."""
    room = f"#{event.room} " if view.room is not None and event.room != view.room else ""
    mark = VERIFIED if event.verified else ""
    who = f"{safe_name(event.sender_name)}{mark} ({short_id(event.sender)})"
    if event.action:
        header = f"[{timestamp(event.sent_at_ms)}] {room}* {who} "
    else:
        header = f"[{timestamp(event.sent_at_ms)}] {room}{who}: "
    shown = after_header(header, event.text, view.width)
    if event.mention and not event.own and view.width is not None:
        # Styled after the layout, which measured the plain header.
        shown = HIGHLIGHT + header + RESET + shown[len(header) :]
        if view.bell and not event.history:
            shown += BELL
    return shown


def render_direct(event: DirectEvent, view: View = View()) -> str:
    """A direct message, tagged ``[dm]`` so it never passes for a room's: ``[dm] Alice
    (12D3Ko…QPNK): …`` received, ``[dm to Alice (12D3Ko…QPNK)] …`` sent."""
    who = f"{safe_name(event.name)}{VERIFIED if event.verified else ''} ({short_id(event.peer)})"
    tag = f"[dm to {who}] " if event.own else f"[dm] {who}: "
    return after_header(f"[{timestamp(event.sent_at_ms)}] {tag}", event.text, view.width)


def render_text(event: ChatEvent, view: View = View()) -> str:
    """How the console shows ``event`` to a reader with ``view``."""
    if isinstance(event, MessageEvent):
        return render_message(event, view)
    if isinstance(event, DirectEvent):
        return render_direct(event, view)
    if isinstance(event, PeerEvent):
        return f"* {safe_name(event.name)} ({short_id(event.peer)}) {event.change} {event.room}"
    if isinstance(event, NameEvent):
        was = f"{safe_name(event.previous)} " if event.previous else ""
        return f"* {was}({short_id(event.peer)}) is now known as {safe_name(event.name)}"
    if isinstance(event, ConnectionEvent):
        verb = "connected to" if event.change == "opened" else "disconnected from"
        what = f"{', '.join(event.roles)} " if event.roles else ""
        how = " (relayed)" if event.relayed and event.change == "opened" else ""
        return f"* {verb} {what}{safe_name(event.name)} ({short_id(event.peer)}){how}"
    if isinstance(event, NoticeEvent | CaughtUpEvent):
        return f"* {event.text}"
    if isinstance(event, ErrorEvent):
        return f"! {event.text}"
    if isinstance(event, HistoryEndEvent):
        return _history_end(event)
    assert isinstance(event, OutputEvent)
    return event.text


def _history_end(event: HistoryEndEvent) -> str:
    if event.command == "search":
        older = f"; {event.more} older match(es): add words to narrow it" if event.more else ""
        cut = (
            " (older messages were not searched: add words to narrow it)" if event.truncated else ""
        )
        return f"* {event.count} match(es){older}{cut}"
    if event.count == 0:
        return f"* no messages in {event.room} yet" if event.room else "* nothing found"
    more = ""
    if event.more:
        asked = min(event.count + event.more, MAX_HISTORY)
        more = f"; {event.more} more: /history {asked}"
    return f"* end of {event.room}: {event.count} message(s){more}"

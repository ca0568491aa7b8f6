"""Front ends of the chat peer: JSON lines for scripts, a line console, and headless.

Each takes the service (to hand it input lines) and the channel of live events it renders, and
returns when the user quits (``/quit``, ``/exit``, end of input).

``--json`` (:func:`run_json`) is a contract for scripts, described by the JSON Schemas shipped
in ``schema/`` (``events-v1`` for what it writes, ``input-v1`` for the objects it reads) and
by docs/json-contract.md: one JSON object per event on stdout; on stdin, a line that does not
start with ``{`` is acted on as typed in the console, and a line that does is an input object
(:func:`parse_json_input`) whose answer echoes its ``id`` and ends with a ``done`` event.
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

import structlog
import trio
import trio.lowlevel
from p2pchat.roles.peer.events import (
    SCHEMA_VERSION,
    ChatEvent,
    DirectEvent,
    DoneEvent,
    ErrorEvent,
    OutputEvent,
    to_json_object,
)
from p2pchat.roles.peer.rendering import View, render_text
from p2pchat.roles.peer.service import ChatService

MAX_LINE_BYTES = 64 * 1024
Events = trio.MemoryReceiveChannel[ChatEvent]

# --- input ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Overlong:
    """A stdin line over :data:`MAX_LINE_BYTES`, dropped unread; ``json``: it started with
    ``{`` (an input object, whose answer must still end with ``done``)."""

    json: bool


async def stdin_lines() -> AsyncIterator[str | Overlong]:
    """Lines from stdin without blocking the event loop (at most :data:`MAX_LINE_BYTES` bytes
    are held: a longer line is dropped and stands as :class:`Overlong`)."""
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
                elif len(line) > MAX_LINE_BYTES:  # came whole within the last chunk
                    yield Overlong(json=line.startswith(b"{"))
                else:
                    yield line.decode(errors="replace")
            if len(buffer) > MAX_LINE_BYTES:
                if not discarding:
                    yield Overlong(json=buffer.startswith(b"{"))
                buffer, discarding = b"", True


InputId = str | int
"""The ``id`` of an input object, echoed as ``reply_to``."""

MAX_ID_CHARS = 256
MAX_SAFE_INTEGER = 2**53 - 1  # the largest integer a JavaScript number holds exactly


@dataclass(frozen=True, slots=True)
class LineInput:
    """``{"id"?, "line"}``: one line acted on as typed in the console."""

    id: InputId | None
    line: str


@dataclass(frozen=True, slots=True)
class SendInput:
    """``{"id"?, "send", "room"?}``: a message sent verbatim (None: to the current room);
    ``{"id"?, "send", "to"}``: a direct message, sent verbatim to a name or PeerId."""

    id: InputId | None
    text: str
    room: str | None
    to: str | None = None


@dataclass(frozen=True, slots=True)
class BadInput:
    """A line starting with ``{`` that is not an input object of the contract: why, in one
    line, and its ``id`` if one could be read."""

    id: InputId | None
    reason: str


JsonInput = LineInput | SendInput | BadInput


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # {"line": "/quit", "line": "hi"} means nothing certain: refuse it rather than pick one.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"input repeats the field {key!r}")
        result[key] = value
    return result


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


class _BadField(ValueError):
    """A field of an input object that is unusable; the message says why."""


def _read_id(raw: object) -> InputId:
    """The input's id; raises :class:`_BadField` if it is not one."""
    if isinstance(raw, str):
        if len(raw) > MAX_ID_CHARS:
            raise _BadField(f'"id" is longer than {MAX_ID_CHARS} characters')
        return raw
    # JSON Schema counts 1.0 as an integer; bool is an int in Python but not in JSON.
    if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        raw = int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise _BadField('"id" must be a string or an integer')
    if not -MAX_SAFE_INTEGER <= raw <= MAX_SAFE_INTEGER:
        raise _BadField(f'"id" is outside ±{MAX_SAFE_INTEGER} (2^53 - 1)')
    return raw


def parse_json_input(text: str) -> JsonInput:
    """Read one input line that starts with ``{`` (the contract: ``input-v1.schema.json``).

    Never raises: anything that is not an object of the contract is a :class:`BadInput`
    carrying a one-line reason and the ``id`` when that could be read.
    """
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except _DuplicateKey as error:
        return BadInput(None, str(error))
    except json.JSONDecodeError as error:
        return BadInput(None, f"input is not valid JSON: {error.msg} (column {error.colno})")
    except (ValueError, RecursionError) as error:  # NaN, Infinity; absurd nesting
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        return BadInput(None, f"input is not valid JSON: {reason}")
    if not isinstance(value, dict):
        return BadInput(None, f"input must be a JSON object, not {type(value).__name__}")
    input_id: InputId | None = None
    if "id" in value:
        try:
            input_id = _read_id(value["id"])
        except _BadField as error:
            return BadInput(None, str(error))
    actions = [key for key in ("line", "send") if key in value]
    if len(actions) != 1:
        return BadInput(input_id, 'input needs exactly one of "line" or "send"')
    allowed = {"id", "line"} if actions == ["line"] else {"id", "send", "room", "to"}
    unknown = sorted(set(value) - allowed)
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        return BadInput(input_id, f"unknown field(s) {names} in a {actions[0]!r} input")
    if "line" in value:
        line = value["line"]
        if not isinstance(line, str):
            return BadInput(input_id, '"line" must be a string')
        if "\n" in line or "\r" in line:
            return BadInput(input_id, '"line" is one line; send multi-line text with "send"')
        return LineInput(input_id, line)
    send, room = value["send"], value.get("room")
    if not isinstance(send, str) or not send:
        return BadInput(input_id, '"send" must be a non-empty string')
    if room is not None and not isinstance(room, str):
        return BadInput(input_id, '"room" must be a string')
    if "room" in value and room is None:
        return BadInput(input_id, '"room" must be a string (leave it out for the current room)')
    if "to" in value:
        to = value["to"]
        if "room" in value:
            return BadInput(input_id, 'a "send" goes to a "room" or "to" a peer, not both')
        if not isinstance(to, str) or not to:
            return BadInput(input_id, '"to" must be a name or a PeerId')
        return SendInput(input_id, send, None, to)
    return SendInput(input_id, send, room)


# --- output ---------------------------------------------------------------------------------------


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

Answer = Callable[[str | Overlong], Awaitable[tuple[bool, str]]]
"""Acts on one input line: False when the user asked to quit, and the answer's text."""


async def _drive(
    events: Events, out: TextIO, render: Callable[[ChatEvent], str], answer: Answer
) -> None:
    """Hand each stdin line to ``answer`` and write its text; write each live event as one
    line to ``out``.

    Live events queued together are rendered into one text and written together. If the reader
    of ``out`` goes away, the front end ends (as on end of input).
    """
    output = _Output(out)
    # Taken events are written even while stopping, for EXIT_WRITE_SECONDS at most from when
    # the stop began. Before that a write waits for the reader however long it lags: a write
    # cut short leaves part of a line in the pipe (the next object glued to it) and loses the
    # rest, which a 2 s bound on every write did on a loaded machine.
    writing: set[trio.CancelScope] = set()
    stop_by = math.inf

    async def write(text: str) -> None:
        with trio.CancelScope(shield=True, deadline=stop_by) as scope:
            writing.add(scope)
            try:
                await output.write(text)
            finally:
                writing.discard(scope)

    async def bound_writes_once_stopping() -> None:
        nonlocal stop_by
        try:
            await trio.sleep_forever()
        finally:  # cancelled: the front end is stopping (end of input, quit or the node's stop)
            stop_by = trio.current_time() + EXIT_WRITE_SECONDS
            for scope in writing:
                scope.deadline = min(scope.deadline, stop_by)

    def text_of(batch: Iterable[ChatEvent]) -> str:
        return "".join(render(event) + "\n" for event in batch)

    async def show_events(done: trio.CancelScope) -> None:
        try:
            async for event in events:
                await write(text_of([event, *take_pending(events)]))
        except trio.BrokenResourceError:
            done.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bound_writes_once_stopping)
            nursery.start_soon(show_events, nursery.cancel_scope)
            async for line in stdin_lines():
                keep_going, text = await answer(line)
                if text:
                    try:
                        await write(text)
                    except trio.BrokenResourceError:
                        break  # caught here: raised in a nursery, it would come out in a group
                if not keep_going:
                    break
            # Let the live events of the last command reach the user before leaving.
            await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
        # Outside the cancelled nursery: whatever show_events had not taken yet.
        pending = take_pending(events)
        if pending:
            await write(text_of(pending))
    except trio.BrokenResourceError:
        pass  # the reader of our output is gone: nothing more to say to anyone
    finally:
        with trio.CancelScope(shield=True):
            await output.aclose()


def overlong_error() -> ErrorEvent:
    """The answer to a dropped over-long input line."""
    return ErrorEvent("line_too_long", f"input line longer than {MAX_LINE_BYTES} bytes ignored")


def json_line(event: ChatEvent, reply_to: InputId | None = None) -> str:
    """The event as one line of JSON (no newline), with ``reply_to`` after ``type`` if given."""
    fields = to_json_object(event)
    if reply_to is not None:
        fields = {"type": fields["type"], "reply_to": reply_to, **fields}
    return json.dumps(fields, ensure_ascii=False)


async def _json_answer(
    service: ChatService, item: str | Overlong
) -> tuple[bool, list[ChatEvent], InputId | None]:
    """Act on one ``--json`` input line: keep going?, the answer, and the id it echoes. The
    answer to an input object (a line starting with ``{``) ends with :class:`DoneEvent`."""
    if isinstance(item, Overlong):
        answer: list[ChatEvent] = [overlong_error()]
        if item.json:  # an input object, unread: its id is unknown, its answer still ends
            answer.append(DoneEvent(ok=False))
        return True, answer, None
    if not item.startswith("{"):
        keep_going, answer = await service.execute(item)
        return keep_going, answer, None
    parsed = parse_json_input(item)
    keep_going = True
    if isinstance(parsed, BadInput):
        answer = [ErrorEvent("bad_input", parsed.reason)]
    elif isinstance(parsed, LineInput):
        keep_going, answer = await service.execute(parsed.line)
    elif parsed.to is not None:
        answer = await service.send_direct(parsed.to, parsed.text)
    else:
        answer = await service.send(parsed.text, parsed.room)
    ok = not any(isinstance(event, ErrorEvent) for event in answer)
    return keep_going, [*answer, DoneEvent(ok=ok)], parsed.id


async def run_json(service: ChatService, events: Events, out: TextIO = sys.stdout) -> None:
    """One JSON object per event on stdout, starting with the ``ready`` output (which carries
    ``schema_version``); stdin lines are input (see the module's note)."""

    async def answer(item: str | Overlong) -> tuple[bool, str]:
        keep_going, reply, reply_to = await _json_answer(service, item)
        return keep_going, "".join(json_line(event, reply_to) + "\n" for event in reply)

    ready = OutputEvent(
        "ready",
        "chat ready",
        {
            "schema_version": SCHEMA_VERSION,
            "peer_id": service.peer_id,
            "name": service.display_name,
            "room": service.current_room,
        },
    )
    out.write(json_line(ready) + "\n")
    out.flush()
    await _drive(events, out, json_line, answer)


async def run_lines(service: ChatService, events: Events, out: TextIO = sys.stdout) -> None:
    """Plain text lines in and out, for a console without a terminal (pipes)."""

    def render(event: ChatEvent) -> str:
        return render_text(event, View(room=service.current_room))

    async def answer(item: str | Overlong) -> tuple[bool, str]:
        if isinstance(item, Overlong):
            return True, render(overlong_error()) + "\n"
        keep_going, reply = await service.execute(item)
        return keep_going, "".join(render(event) + "\n" for event in reply)

    out.write(render(service.welcome()) + "\n")
    out.flush()
    await _drive(events, out, render, answer)


async def run_headless(events: Events, log: structlog.stdlib.BoundLogger) -> None:
    """No user: every event becomes a log line; a direct message's without its text (it is
    end-to-end encrypted: the log file is no place for it)."""
    async for event in events:
        fields = to_json_object(event)
        if isinstance(event, DirectEvent):
            fields["text"] = f"({len(event.text.encode())} bytes, not logged)"
        log.info("chat " + type(event).__name__.removesuffix("Event").lower(), **fields)

"""``p2pchat history ADDR``: ask one history source (an archiver, or a peer serving its
history) for a room's messages by hand, as an operator checking an archive would.

The query runs from a throwaway identity, without listening and without joining any room, so
it can run beside a node on the same machine and data directory. Every message is verified as
catch-up verifies it (signature, room, id and time); what fails is counted, not printed.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

import trio
from p2pchat.node.errors import ConfigError, P2PChatError
from p2pchat.node.history import StoredMessage, now_ms
from p2pchat.node.p2p.envelopes import envelope_data
from p2pchat.node.p2p.host import HostSettings, P2PHost, QuietObserver
from p2pchat.node.p2p.identity import ephemeral_identity
from p2pchat.node.store_client import (
    Fetched,
    QuietStoreClientObserver,
    SourceError,
    StoreClient,
)
from p2pchat.node.terminal_text import after_header
from p2pchat.node.wire.chat import ChatText, decode

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class HistoryQueryError(P2PChatError):
    """The source could not be asked, refused, or broke the protocol."""


def parse_since(text: str, now: int) -> int:
    """The start of the range, Unix ms, from a duration back from ``now`` (``90s``, ``15m``,
    ``2h``, ``7d``) or an ISO 8601 time (``2026-11-24T18:00``, UTC unless it says otherwise).

    Raises:
        ValueError: neither form, or a negative duration.
    """
    unit = DURATION_UNITS.get(text[-1:])
    if unit is not None:
        try:
            amount = float(text[:-1])
        except ValueError:
            amount = -1.0
        if amount >= 0:
            return max(0, now - int(amount * unit * 1000))
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r}: not a duration (90s, 15m, 2h, 7d) or an ISO time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


@dataclass(frozen=True)
class Shown:
    """One message as printed."""

    message_id: str
    sent_at_ms: int
    sender: str
    sender_name: str
    text: str

    @classmethod
    def of(cls, message: StoredMessage, max_text_bytes: int) -> Shown:
        payload = decode(envelope_data(message.envelope), max_text_bytes=max_text_bytes)
        assert isinstance(payload, ChatText)  # verified as a chat text already
        return cls(
            message.message_id.hex(),
            message.sent_at_ms,
            message.sender,
            payload.sender_name,
            payload.text,
        )

    def line(self, width: int | None = None) -> str:
        """One message, for a terminal ``width`` columns wide (None: not a terminal)."""
        when = datetime.fromtimestamp(self.sent_at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        header = f"{when}  {self.sender_name} ({self.sender[-6:]}): "
        return after_header(header, self.text, width)

    def json(self) -> str:
        return json.dumps(
            {
                "id": self.message_id,
                "sent_at_ms": self.sent_at_ms,
                "sender": self.sender,
                "sender_name": self.sender_name,
                "text": self.text,
            },
            ensure_ascii=False,
        )


async def fetch(
    addr: str, room: str, start_ms: int | None, limit: int, max_text_bytes: int
) -> Fetched:
    """Dial ``addr`` and walk ``room`` from ``start_ms`` (oldest first, at most ``limit``).

    Raises:
        DialError: the source cannot be reached.
        HistoryQueryError: it refused or broke the protocol.
    """
    host = P2PHost(ephemeral_identity(), HostSettings(listen=()), QuietObserver())
    client = StoreClient(host, QuietStoreClientObserver(), max_text_bytes)
    async with host.run():
        peer = await host.connect(addr)
        try:
            return await client.fetch_range(peer, room, start_ms, limit)
        except SourceError as error:
            raise HistoryQueryError(f"history query to {addr} failed: {error}") from None


def show(
    fetched: Fetched,
    max_text_bytes: int,
    as_json: bool,
    out: TextIO = sys.stdout,
    err: Callable[[str], object] = sys.stderr.write,
) -> None:
    """Print the messages (one line or JSON object each) and a summary line on ``err``."""
    width = shutil.get_terminal_size().columns if out.isatty() else None
    for message in fetched.messages:
        shown = Shown.of(message, max_text_bytes)
        out.write((shown.json() if as_json else shown.line(width)) + "\n")
    more = "" if fetched.complete else " (more exist: raise --limit)"
    rejected = f", {fetched.rejected} rejected (forged or altered)" if fetched.rejected else ""
    err(f"{len(fetched.messages)} messages from {fetched.source}{rejected}{more}\n")


def run_query(
    addr: str,
    room: str,
    since: str | None,
    limit: int,
    max_text_bytes: int,
    as_json: bool,
    timeout: float,
) -> int:
    """The ``history`` command: 0 when the source answered (rejected messages included: they
    are reported); a bad ``since`` is a :class:`ConfigError`, a failed query another
    :class:`P2PChatError`."""
    try:
        start_ms = parse_since(since, now_ms()) if since is not None else None
    except ValueError as error:
        raise ConfigError(str(error)) from None

    async def within_timeout() -> Fetched:
        with trio.move_on_after(timeout):
            return await fetch(addr, room, start_ms, limit, max_text_bytes)
        raise HistoryQueryError(f"history query to {addr}: no answer within {timeout:g} s")

    fetched = trio.run(within_timeout)
    show(fetched, max_text_bytes, as_json)
    return 0

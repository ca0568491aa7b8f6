"""``p2pchat history ADDR``: ask one history source (an archiver, or a peer serving its
history) for a room's messages by hand, as an operator checking an archive would.

The query runs from a throwaway identity, without listening and without joining any room, so
it can run beside a node on the same machine and data directory. Every message is verified as
catch-up verifies it (signature, room, id and time); what fails is counted, not printed.

A failure is one line in plain words: a wrong address says what is wrong with it (exit 2); a
source that refuses the connection, cannot be reached, does not answer in time, is another node
than the address names, or serves no history says which (exit 1).
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

import trio
from p2pchat.node.errors import ConfigError, P2PChatError
from p2pchat.node.history import StoredMessage, now_ms
from p2pchat.node.ids import AddressError, check_peer_addr, short_id
from p2pchat.node.p2p.envelopes import envelope_data
from p2pchat.node.p2p.host import DialError, HostSettings, P2PHost, QuietObserver
from p2pchat.node.p2p.identity import ephemeral_identity
from p2pchat.node.store_client import (
    Fetched,
    QuietStoreClientObserver,
    SourceError,
    SourceUnsupported,
    StoreClient,
)
from p2pchat.node.terminal_text import after_header, safe_name
from p2pchat.node.wire.chat import ChatText, decode
from p2pchat.node.wire.store_query import PROTOCOL_ID

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
    def of(cls, message: StoredMessage, max_text_bytes: int) -> Shown | None:
        """None for a verified entry that is no text (a room owner's moderation decision)."""
        payload = decode(envelope_data(message.envelope), max_text_bytes=max_text_bytes)
        if not isinstance(payload, ChatText):
            return None
        return cls(
            message.message_id.hex(),
            message.sent_at_ms,
            message.sender,
            payload.sender_name,
            payload.text,
        )

    def line(self, width: int | None = None) -> str:
        """One message, for a terminal ``width`` columns wide (None: not a terminal); the
        sender's name as :func:`safe_name` shows it (JSON keeps it raw)."""
        when = datetime.fromtimestamp(self.sent_at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        header = f"{when}  {safe_name(self.sender_name)} ({short_id(self.sender)}): "
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
        HistoryQueryError: the source cannot be reached, refused, serves no history, or broke
            the protocol; the message says which in plain words.
    """
    host = P2PHost(ephemeral_identity(), HostSettings(listen=()), QuietObserver())
    client = StoreClient(host, QuietStoreClientObserver(), max_text_bytes)
    async with host.run():
        try:
            peer = await host.connect(addr)
        except DialError as error:
            raise HistoryQueryError(dial_failure(addr, error)) from None
        try:
            return await client.fetch_range(peer, room, start_ms, limit)
        except SourceUnsupported:
            raise HistoryQueryError(
                f"{_where(addr)} ({short_id(peer)}) does not serve room history (it does not "
                f"speak {PROTOCOL_ID}): ask an archiver, or a chat peer with history.serve on"
            ) from None
        except SourceError as error:
            raise HistoryQueryError(f"history query to {addr} failed: {error}") from None


_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}
_HOST_PORT = re.compile(r"^/(?:ip4|ip6|dns|dns4|dns6)/([^/]+)/tcp/(\d+)")
_ACTUAL_PEER = re.compile(r"remote_peer_id_from_pubkey=(\w+)")


def _where(addr: str) -> str:
    """``host:port`` of a TCP address (what the user can check), else the address itself."""
    found = _HOST_PORT.match(addr)
    if found is None:
        return addr
    host, port = found.groups()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _causes(error: BaseException) -> list[BaseException]:
    """``error`` and everything behind it: causes, contexts (kept by ``raise ... from None``),
    and the members of exception groups and of py-libp2p's MultiError (``.errors``)."""
    found: list[BaseException] = []
    pending = [error]
    while pending and len(found) < 64:
        current = pending.pop()
        if any(current is seen for seen in found):
            continue
        found.append(current)
        members = getattr(current, "exceptions", None) or getattr(current, "errors", None)
        if isinstance(members, list | tuple):
            pending.extend(m for m in members if isinstance(m, BaseException))
        pending.extend(c for c in (current.__cause__, current.__context__) if c is not None)
    return found


def dial_failure(addr: str, error: DialError) -> str:
    """One line saying why dialling ``addr`` failed: refused, unreachable, timed out, another
    node than the address names, not a libp2p node, or (else) what the host layer said."""
    where = _where(addr)
    causes = _causes(error)
    texts = [str(cause) for cause in causes]
    if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
        return (
            f"{where} refused the connection: nothing listens there (is the node running, and "
            "is the port right?)"
        )
    if any(isinstance(cause, OSError) and cause.errno in _UNREACHABLE for cause in causes):
        return f"{where} is unreachable: no route to it from this machine"
    if any(isinstance(cause, OSError) and cause.errno == errno.ETIMEDOUT for cause in causes) or (
        str(error).endswith(": timed out")
    ):
        return (
            f"{where} did not answer in time: the node is down, or a firewall drops the connection"
        )
    for text in texts:
        actual = _ACTUAL_PEER.search(text)
        if actual is not None:
            return (
                f"the node at {where} is {actual[1]}, not the peer id the address names: fix "
                "the /p2p/ part (`p2pchat id` on that node prints its id)"
            )
    if any("not found in multiaddr" in text or "resolve" in text.lower() for text in texts):
        return f"{where}: the host name could not be resolved"
    if any(type(cause).__name__ == "SecurityUpgradeFailure" for cause in causes):
        return (
            f"{where} answered, but not as a libp2p node (the encryption handshake failed): is "
            "that the node's p2pchat port?"
        )
    return f"cannot reach {where}: {error}"


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
        if shown is None:
            continue
        out.write((shown.json() if as_json else shown.line(width)) + "\n")
    more = "" if fetched.complete else " (more exist: raise --limit)"
    rejected = f", {fetched.rejected} rejected (forged or altered)" if fetched.rejected else ""
    source = short_id(fetched.source)
    err(f"{len(fetched.messages)} messages from {source}{rejected}{more}\n")


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
    are reported); a bad ``addr`` or ``since`` is a :class:`ConfigError`, a failed query
    another :class:`P2PChatError`."""
    try:
        check_peer_addr(addr, "history source")
    except AddressError as error:
        raise ConfigError(str(error)) from None
    try:
        start_ms = parse_since(since, now_ms()) if since is not None else None
    except ValueError as error:
        raise ConfigError(str(error)) from None

    async def within_timeout() -> Fetched:
        with trio.move_on_after(timeout):
            return await fetch(addr, room, start_ms, limit, max_text_bytes)
        raise HistoryQueryError(
            f"{_where(addr)} did not answer within {timeout:g} s (--timeout): the node is down, "
            "or a firewall drops the connection"
        )

    fetched = trio.run(within_timeout)
    show(fetched, max_text_bytes, as_json)
    return 0

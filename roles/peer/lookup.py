"""Looking through the local history: /search and /export.

Both read the store synchronously (RocksDB); the service runs them in a worker thread so chat
goes on meanwhile. Both are bounded: a search reads at most :data:`SEARCH_SCAN` messages per
room (newest first) and keeps :data:`SEARCH_HITS` hits; an export streams page by page to its
file and holds one page in memory.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from p2pchat.node.history import History, StoredMessage
from p2pchat.node.wire.chat import ChatText
from p2pchat.roles.peer.presentation import stored_text

SEARCH_SCAN = 50_000  # messages read per room at most, newest first
SEARCH_HITS = 50  # hits kept, newest
MAX_SEARCH_WORDS = 16
PAGE = 500  # messages read per step (History.page's limit is bounded)


@dataclass(frozen=True)
class SearchResult:
    """The newest hits (oldest first), how many more matched, whether the scan bound was hit."""

    hits: list[StoredMessage]
    more: int
    truncated: bool


def search(history: History, rooms: Iterable[str], query: str) -> SearchResult:
    """Messages of ``rooms`` whose text or sender name contains every word of ``query``
    (ignoring case), the newest :data:`SEARCH_HITS`."""
    words = [word.casefold() for word in query.split()][:MAX_SEARCH_WORDS]
    hits: list[StoredMessage] = []
    matched = 0
    truncated = False
    for room in rooms:
        scanned = 0
        cursor: bytes | None = None
        while scanned < SEARCH_SCAN:
            page = history.page(room, after=cursor, limit=PAGE, forward=False)
            for stored in reversed(page.messages):  # newest first
                text = stored_text(stored)
                if text is None:
                    continue
                haystack = f"{text.sender_name}\n{text.text}".casefold()
                if all(word in haystack for word in words):
                    matched += 1
                    hits.append(stored)
            scanned += len(page.messages)
            if not page.more or not page.messages:
                break
            cursor = page.messages[0].message_id
        else:
            truncated = True
    hits.sort(key=lambda m: (m.sent_at_ms, m.message_id))
    kept = hits[-SEARCH_HITS:]
    return SearchResult(kept, matched - len(kept), truncated)


def export_lines(history: History, room: str, path: Path) -> int:
    """Write every message of ``room`` to ``path`` as JSON lines, oldest first; returns how
    many. Each line has the message's facts and its signed envelope (base64), so whoever reads
    the file can verify it. Written to a temporary file first and renamed: an interrupted
    export never leaves half a file under the name asked for.

    Raises:
        OSError: the file cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    count = 0
    with partial.open("w", encoding="utf-8") as out:
        cursor: bytes | None = None
        while True:
            page = history.page(room, after=cursor, limit=PAGE)
            for stored in page.messages:
                text = stored_text(stored)
                if text is None:
                    continue
                out.write(json.dumps(_export_object(stored, text), ensure_ascii=False) + "\n")
                count += 1
            if not page.more or not page.messages:
                break
            cursor = page.messages[-1].message_id
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)
    return count


def _export_object(stored: StoredMessage, text: ChatText) -> dict[str, object]:
    return {
        "room": stored.room,
        "id": stored.message_id.hex(),
        "sender": stored.sender,
        "sender_name": text.sender_name,
        "text": text.text,
        "action": text.action,
        "sent_at_ms": text.sent_at_ms,
        "received_at_ms": stored.received_at_ms,
        "envelope": base64.b64encode(stored.envelope).decode(),
    }

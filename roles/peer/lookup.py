"""Looking through the local history: /search and /export.

Both read the store synchronously (RocksDB); the service runs them in a worker thread so chat
goes on meanwhile. Both are bounded: a search reads at most :data:`SEARCH_SCAN` messages per
room (newest first) and holds at most :data:`SEARCH_HITS` hits; an export streams page by page
to its file and holds one page in memory.

Retention may delete a room's oldest messages meanwhile (on the chat's thread), among them the
message a walk continues from: a search then ends that room's walk (it counts as cut short),
an export goes on from the time of the last message it wrote.
"""

from __future__ import annotations

import base64
import heapq
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from p2pchat.node.history import History, StoredMessage, UnknownCursor
from p2pchat.node.wire.chat import ChatText
from p2pchat.roles.peer.presentation import stored_text

SEARCH_SCAN = 50_000  # messages read per room at most, newest first
SEARCH_HITS = 50  # hits kept, newest
MAX_SEARCH_WORDS = 16
PAGE = 500  # messages read per step (History.page's limit is bounded)


@dataclass(frozen=True)
class SearchResult:
    """The newest hits (oldest first); how many older ones matched too; whether a room's walk
    was cut short (by :data:`SEARCH_SCAN`, or by retention deleting where it was)."""

    hits: list[StoredMessage]
    more: int
    truncated: bool


def search(history: History, rooms: Iterable[str], query: str) -> SearchResult:
    """Messages of ``rooms`` whose text or sender name contains every word of ``query``
    (ignoring case), the newest :data:`SEARCH_HITS`."""
    words = [word.casefold() for word in query.split()][:MAX_SEARCH_WORDS]
    newest: list[tuple[int, bytes, StoredMessage]] = []  # a min-heap of the newest hits
    matched = 0
    truncated = False
    for room in rooms:
        scanned = 0
        cursor: bytes | None = None
        while True:
            if scanned >= SEARCH_SCAN:
                truncated = True
                break
            try:
                page = history.page(room, after=cursor, limit=PAGE, forward=False)
            except UnknownCursor:  # retention deleted where the walk was
                truncated = True
                break
            for stored in page.messages:
                text = stored_text(stored)
                if text is None:
                    continue
                haystack = f"{text.sender_name}\n{text.text}".casefold()
                if all(word in haystack for word in words):
                    matched += 1
                    entry = (stored.sent_at_ms, stored.message_id, stored)
                    if len(newest) < SEARCH_HITS:
                        heapq.heappush(newest, entry)
                    elif entry[:2] > newest[0][:2]:
                        heapq.heapreplace(newest, entry)
            scanned += len(page.messages)
            if not page.more or not page.messages:
                break
            cursor = page.messages[0].message_id
    hits = [stored for _, _, stored in sorted(newest, key=lambda e: e[:2])]
    return SearchResult(hits, matched - len(hits), truncated)


def export_lines(history: History, room: str, path: Path) -> int:
    """Write every message of ``room`` to ``path`` as JSON lines, oldest first; returns how
    many. Each line has the message's facts and its signed envelope (base64), so whoever reads
    the file can verify it. Written to a temporary file first and renamed: an interrupted or
    failed export never leaves a file under the name asked for, nor the temporary one.

    Raises:
        OSError: the file cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as out:
            count = _write_room(history, room, out)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return count


def _write_room(history: History, room: str, out: TextIO) -> int:
    count = 0
    cursor: bytes | None = None
    since_ms: int | None = None  # where to go on from if retention deletes the cursor
    written_at_since: set[bytes] = set()  # ids written at since_ms: not written twice
    while True:
        try:
            page = history.page(room, start_ms=since_ms, after=cursor, limit=PAGE)
        except UnknownCursor:  # retention deleted where the walk was: go on by time
            cursor = None
            continue
        for stored in page.messages:
            if stored.sent_at_ms == since_ms and stored.message_id in written_at_since:
                continue
            if stored.sent_at_ms != since_ms:
                since_ms, written_at_since = stored.sent_at_ms, set()
            written_at_since.add(stored.message_id)
            text = stored_text(stored)
            if text is None:
                continue
            out.write(json.dumps(_export_object(stored, text), ensure_ascii=False) + "\n")
            count += 1
        if not page.more or not page.messages:
            return count
        cursor = page.messages[-1].message_id


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

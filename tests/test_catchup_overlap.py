"""Catch-up asks for ids first (issue #21): what a peer already holds costs its source ~30
bytes a message, not the message; only what is missing is fetched.

Real processes: an archiver holding 200 messages of 3 KB sent in the last minutes (inside the
catch-up's 5-minute overlap), and a peer that already holds 190 of them in its own store.
"""

from __future__ import annotations

import time
from pathlib import Path

from p2pchat.node.history import StoredMessage

from tests.conftest import NodeProcess, start_node
from tests.history_fixtures import ROOM, fill_store, signed_message, signer
from tests.test_archive import caught_up, history_texts
from tests.test_chat import chat_peer

COUNT = 200
MISSING = 10
TEXT_BYTES = 3000


def _messages(path: Path) -> list[StoredMessage]:
    key = signer(path)
    start = int(time.time() * 1000) - 120_000  # two minutes ago, 0.5 s apart
    return [
        signed_message(key, ROOM, n, start + n * 500, text=f"{n:03d} " + "w" * TEXT_BYTES)
        for n in range(1, COUNT + 1)
    ]


def test_a_catch_up_fetches_only_what_is_missing(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    messages = _messages(tmp_path / "signer")
    fill_store(tmp_path / "archiver", messages)
    held = [m for n, m in enumerate(messages) if n % (COUNT // MISSING) != 7]
    assert len(held) == COUNT - MISSING
    fill_store(tmp_path / "peer", held)
    archiver = start_node(tmp_path / "archiver", "--role", "archiver")
    nodes.append(archiver)
    peer = chat_peer(tmp_path / "peer", nodes, "--bootstrap", archiver.addr())
    assert caught_up(peer)["count"] == MISSING
    texts = history_texts(peer, COUNT)
    assert texts == [f"{n:03d} " + "w" * TEXT_BYTES for n in range(1, COUNT + 1)]
    served = archiver.metric("p2pchat_store_served_bytes_total")
    # The ten missing messages (~3.3 KB each) and 200 ids (~30 B each): well under what the
    # whole overlap (200 x 3.3 KB = 660 KB) cost before.
    assert served < MISSING * (TEXT_BYTES + 400) + COUNT * 40, served

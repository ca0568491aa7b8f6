"""A lying archiver cannot inject, alter or re-room messages, and hiding them gets noticed.

A returning peer catches up from an honest archiver and from a forging one
(tests/forging_archiver.py, a real process serving the history protocol) that holds the same
archive. The peer keeps exactly the genuine messages, drops each forgery under its reason, and
counts the messages the liar withheld or replaced as gaps of that source.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import NodeProcess, node_env, start_node
from tests.history_fixtures import ROOM, fill_store, forging_archiver, make_messages, signer
from tests.test_archive import caught_up, history_texts
from tests.test_chat import chat_peer

COUNT = 20


def test_forged_history_is_detected_and_dropped(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    key = signer(tmp_path / "signer")
    archive = make_messages(key, ROOM, COUNT) + make_messages(key, "elsewhere", 5, first_id=100)
    fill_store(tmp_path / "honest", archive)
    fill_store(tmp_path / "liar", archive)
    honest = start_node(tmp_path / "honest", "--role", "archiver")
    nodes.append(honest)
    with forging_archiver(tmp_path / "liar", node_env()) as forger:
        peer = chat_peer(
            tmp_path / "peer", nodes, "--bootstrap", f"{honest.addr()},{forger['addr']}"
        )
        event = caught_up(peer)
        assert event["count"] == COUNT
        assert sorted(event["sources"]) == sorted([honest.peer_id, forger["peer_id"]])
        texts = history_texts(peer, COUNT)
        assert texts == [f"message {n}" for n in range(1, COUNT + 1)]  # genuine, complete, once
        rejected = {
            reason: peer.metric("p2pchat_history_rejected_total", reason=reason)
            for reason in ("bad_signature", "wrong_room", "mismatch")
        }
        # altered text and injected message: bad signature; swapped room; moved send time
        assert rejected == {"bad_signature": 2, "wrong_room": 1, "mismatch": 1}
        assert peer.metric("p2pchat_history_source_gaps_total") == 4  # 2 withheld, 3-5 replaced
        assert peer.metric("p2pchat_history_caught_up_total") == COUNT

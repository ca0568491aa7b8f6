"""``p2pchat history``: an operator asks an archive for a room's messages by hand.

A real archiver process holds a real RocksDB archive; the command runs as a real process and
prints what it fetched, verified. Against the forging archiver (tests/forging_archiver.py) it
prints only the genuine messages and reports the rejected ones. Bad input gets one line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NodeProcess, node_env, run_cli, start_node
from tests.history_fixtures import (
    ROOM,
    fill_store,
    forging_archiver,
    history_id_of,
    make_messages,
    signer,
)

COUNT = 23


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[NodeProcess]:
    """An archiver holding 23 messages of ROOM, an hour old, and 5 of another room."""
    key = signer(tmp_path / "signer")
    fill_store(
        tmp_path / "archiver",
        make_messages(key, ROOM, COUNT) + make_messages(key, "elsewhere", 5, first_id=100),
    )
    node = start_node(tmp_path / "archiver", "--role", "archiver")
    try:
        yield node
    finally:
        node.stop()


def test_history_prints_a_rooms_messages_in_order(archive: NodeProcess) -> None:
    result = run_cli("history", archive.addr(), "--room", ROOM, "--since", "2h")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [f"message {n}" for n in range(1, 24)]
    assert " filler (" in lines[0]
    assert result.stderr == f"{COUNT} messages from {archive.peer_id}\n"

    # --json: one object per message; --limit cuts the walk and says so.
    result = run_cli("history", archive.addr(), "--room", ROOM, "--json", "--limit", "5")
    assert result.returncode == 0, result.stderr
    shown = [json.loads(line) for line in result.stdout.splitlines()]
    assert [m["text"] for m in shown] == [f"message {n}" for n in range(1, 6)]
    assert shown[0]["id"] == history_id_of(shown[0]["sender"], 1).hex()
    assert shown[0]["sender_name"] == "filler" and shown[0]["sent_at_ms"] > 0
    assert "more exist" in result.stderr

    # Only the asked room, and only the asked time.
    other = run_cli("history", archive.addr(), "--room", "elsewhere", "--json")
    assert len(other.stdout.splitlines()) == 5
    recent = run_cli("history", archive.addr(), "--room", ROOM, "--since", "30m")
    assert recent.returncode == 0 and recent.stdout == ""

    # Each client went away at the end of its walk: the server saw each stream end cleanly.
    deadline = time.monotonic() + 30
    while archive.metric("p2pchat_store_query_streams") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert archive.metric("p2pchat_store_query_streams") == 0
    assert archive.metric("p2pchat_stream_handler_failures_total") == 0


def test_history_from_a_forging_archive_shows_only_genuine_messages(tmp_path: Path) -> None:
    key = signer(tmp_path / "signer")
    fill_store(
        tmp_path / "liar",
        make_messages(key, ROOM, 20) + make_messages(key, "elsewhere", 5, first_id=100),
    )
    with forging_archiver(tmp_path / "liar", node_env()) as forger:
        result = run_cli("history", forger["addr"], "--room", ROOM, "--json")
        assert result.returncode == 0, result.stderr
        texts = [json.loads(line)["text"] for line in result.stdout.splitlines()]
        # What the liar withheld or replaced is missing; nothing forged is shown.
        assert texts and set(texts) <= {f"message {n}" for n in range(1, 21)}
        assert len(texts) == len(set(texts))
        assert "4 rejected (forged or altered)" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--since", "yesterday"], 2, "--since 'yesterday'"),
        (["--limit", "0"], 2, "--limit 0"),
        (["--timeout", "-1"], 2, "--timeout"),
    ],
)
def test_history_refuses_bad_options_in_one_line(
    archive: NodeProcess, args: list[str], code: int, says: str
) -> None:
    result = run_cli("history", archive.addr(), *args)
    assert result.returncode == code
    assert says in result.stderr and len(result.stderr.splitlines()) == 1


def test_history_from_nowhere_fails_in_one_line(archive: NodeProcess) -> None:
    for addr in ("not-a-multiaddr", f"/ip4/127.0.0.1/tcp/1/p2p/{archive.peer_id}"):
        result = run_cli("history", addr, "--timeout", "20")
        assert result.returncode == 1, result
        assert result.stderr.startswith("p2pchat: error: ")
        assert len(result.stderr.splitlines()) == 1, result.stderr

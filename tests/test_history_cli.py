"""``p2pchat history``: an operator asks an archive for a room's messages by hand.

A real archiver process holds a real RocksDB archive; the command runs as a real process and
prints what it fetched, verified. Against the forging archiver (tests/forging_archiver.py) it
prints only the genuine messages and reports the rejected ones. Bad input gets one line.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from p2pchat.node.history_cli import dial_failure
from p2pchat.node.ids import short_id
from p2pchat.node.p2p.host import DialError

from tests.conftest import NodeProcess, node_env, run_cli, start_node
from tests.history_fixtures import (
    ROOM,
    fill_store,
    forging_archiver,
    history_id_of,
    make_messages,
    signer,
)
from tests.peer_ids import fresh_peer_id

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
    assert re.search(r" filler \(12D3Ko…\w{4}\): message 1$", lines[0]), lines[0]
    assert result.stderr == f"{COUNT} messages from {short_id(archive.peer_id)}\n"

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


@pytest.mark.parametrize(
    ("addr", "says"),
    [
        ("not-a-multiaddr", "history source 'not-a-multiaddr' is not a multiaddr"),
        ("/ip4/127.0.0.1/tcp/4021", "has no peer id: it must end with /p2p/<peer id>"),
        ("/ip4/127.0.0.1/tcp/4021/p2p/12D3KooW-bad", "'12D3KooW-bad' after /p2p, which is not"),
    ],
)
def test_a_bad_address_is_explained_in_one_line(addr: str, says: str) -> None:
    result = run_cli("history", addr)
    assert result.returncode == 2
    assert result.stderr.startswith("p2pchat: config error: history source ")
    assert says in result.stderr and "e.g. /ip4/" in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_a_node_serving_no_history_says_so(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    bootstrap = start_node(tmp_path / "bootstrap", "--role", "bootstrap")
    quiet_peer = start_node(tmp_path / "peer", env=node_env(P2PCHAT_HISTORY__SERVE="false"))
    nodes += [bootstrap, quiet_peer]
    for node in (bootstrap, quiet_peer):
        result = run_cli("history", node.addr(), "--timeout", "20")
        assert result.returncode == 1
        assert result.stderr == (
            f"p2pchat: error: {node.addr().split('/')[2]}:{node.addr().split('/')[4]} "
            f"({short_id(node.peer_id)}) does not serve room history (it does not speak "
            "/p2pchat/store-query/2.0.0): ask an archiver, or a chat peer with history.serve "
            "on\n"
        )


def test_refused_wrong_node_and_silent_sources_are_told_apart(archive: NodeProcess) -> None:
    # Nothing listens on port 1.
    refused = run_cli("history", f"/ip4/127.0.0.1/tcp/1/p2p/{archive.peer_id}")
    assert refused.returncode == 1
    assert refused.stderr == (
        "p2pchat: error: 127.0.0.1:1 refused the connection: nothing listens there (is the node "
        "running, and is the port right?)\n"
    )
    # The archiver's address with another node's id: the archiver answers, as itself.
    other = fresh_peer_id()
    wrong = run_cli("history", archive.addr().replace(archive.peer_id, other))
    assert wrong.returncode == 1
    assert f"is {archive.peer_id}, not the peer id the address names" in wrong.stderr
    assert len(wrong.stderr.splitlines()) == 1
    # A socket that accepts the connection and then never says a word.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        result = run_cli(
            "history", f"/ip4/127.0.0.1/tcp/{port}/p2p/{archive.peer_id}", "--timeout", "3"
        )
    assert result.returncode == 1
    assert result.stderr == (
        f"p2pchat: error: 127.0.0.1:{port} did not answer within 3 s (--timeout): the node is "
        "down, or a firewall drops the connection\n"
    )


def test_an_unreachable_network_is_named() -> None:
    """No test network can be made unreachable safely, so the classification is checked on the
    failure chain py-libp2p builds (an OSError inside its MultiError, behind the DialError)."""

    class MultiError(Exception):
        def __init__(self, errors: list[Exception]) -> None:
            super().__init__("Error 1: fail to open connection")
            self.errors = errors

    def connect() -> None:  # as trio.open_tcp_stream fails: an OSError from the group
        unreachable = OSError(errno.ENETUNREACH, "Network is unreachable")
        try:
            raise ExceptionGroup("attempts", [unreachable])
        except ExceptionGroup as group:
            raise OSError("all attempts to connect to 198.51.100.7:4021 failed") from group

    try:
        connect()
    except OSError as failed:
        library_error = MultiError([failed])
    try:
        try:
            raise library_error
        except MultiError:
            raise DialError("dial ...: unable to connect") from None
    except DialError as error:
        said = dial_failure("/ip4/198.51.100.7/tcp/4021/p2p/x", error)
    assert said == "198.51.100.7:4021 is unreachable: no route to it from this machine"

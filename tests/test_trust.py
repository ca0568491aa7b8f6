"""Who is who (issue #19), between real ``p2pchat --json`` processes on 127.0.0.1: the first
PeerId seen with a name is bound to it (kept across a restart); the name from another PeerId is
a ``name_conflict`` warning, and ``/msg <name>`` then refuses, naming the PeerIds; ``/verify``
shows the same safety number on both sides (another pair's differs), ``confirm`` marks the
contact (messages, ``/peers``, kept across a restart), and the verified name from another key
is the louder warning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import NodeProcess
from tests.test_chat import wait_members
from tests.test_dm import WAIT, connected
from tests.test_json_contract import answer, chat_peer, is_message, seen


def is_conflict(peer: str) -> Any:
    return lambda e: (
        e["type"] == "notice" and e["kind"] == "name_conflict" and (e["data"]["peer"] == peer)
    )


def name(node: NodeProcess, new: str) -> None:
    assert answer(node, {"id": "name", "line": f"/name {new}"})[-1]["ok"] is True


def verify(node: NodeProcess, who: str, confirm: bool = False) -> dict[str, Any]:
    line = f"/verify {who}" + (" confirm" if confirm else "")
    events = answer(node, {"id": "v", "line": line})
    assert events[-1]["ok"] is True, events
    (output,) = [e for e in events if e["type"] == "output"]
    assert output["command"] == "verify"
    return output


def test_a_known_name_from_another_peer_is_warned_about_and_msg_refuses(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    c, _ = chat_peer(tmp_path / "c", nodes)
    a, _ = chat_peer(tmp_path / "a", nodes, "--bootstrap", c.addr())
    wait_members(c, 1)
    name(a, "alice")
    seen(c, lambda e: e["type"] == "name" and e["peer"] == a.peer_id)
    a.say("it is me")
    assert c.next_event(is_message("it is me"), timeout=WAIT)["sender"] == a.peer_id
    # Bound on first use: /msg alice reaches A.
    assert answer(c, {"id": 1, "line": "/msg alice hi"})[0]["kind"] == "dm_delivered"

    # Mallory takes the same name (another case, the same name) and speaks.
    m, _ = chat_peer(tmp_path / "m", nodes, "--bootstrap", c.addr())
    wait_members(c, 2)
    name(m, "Alice")
    warning = seen(c, is_conflict(m.peer_id))
    assert warning["data"] == {
        "name": "Alice",
        "peer": m.peer_id,
        "bound": a.peer_id,
        "verified": False,
    }
    assert "WARNING" in warning["text"] and m.peer_id in warning["text"]
    m.say("it is me, really")
    c.next_event(is_message("it is me, really"), timeout=WAIT)
    assert c.metric("p2pchat_name_conflicts_total", outcome="warned") == 1  # warned once
    # /msg alice: two peers use it now; refused in one line naming both PeerIds.
    refused = answer(c, {"id": 2, "line": "/msg alice are you there"})
    assert refused[0]["type"] == "error" and refused[0]["code"] == "ambiguous_name", refused
    assert a.peer_id in refused[0]["text"] and m.peer_id in refused[0]["text"]
    assert "\n" not in refused[0]["text"]
    assert refused[-1]["ok"] is False
    (whois,) = [e for e in answer(c, {"id": 3, "line": "/whois alice"}) if e["type"] == "output"]
    first = {p["peer"]: p["first_seen"] for p in whois["data"]["peers"]}
    assert first == {a.peer_id: True, m.peer_id: False}

    # The binding is kept: after a restart Mallory alone claiming the name is still warned of.
    assert c.stop() == 0
    nodes.remove(c)
    c, _ = chat_peer(tmp_path / "c", nodes, "--bootstrap", m.addr())
    wait_members(c, 1)
    m.say("me again")
    c.next_event(is_message("me again"), timeout=WAIT)
    seen(c, is_conflict(m.peer_id))
    assert c.metric("p2pchat_name_bindings") >= 1


def test_verify_numbers_match_on_both_sides_and_confirm_marks_the_contact(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a, _ = chat_peer(tmp_path / "a", nodes)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    c, _ = chat_peer(tmp_path / "c", nodes, "--bootstrap", a.addr())
    connected(a, b)
    connected(a, c)
    name(b, "bob")
    seen(a, lambda e: e["type"] == "name" and e["peer"] == b.peer_id)

    on_a = verify(a, "bob")
    on_b = verify(b, a.peer_id)
    assert on_a["data"]["safety_number"] == on_b["data"]["safety_number"]
    assert len(on_a["data"]["safety_number"]) == 60 and on_a["data"]["safety_number"].isdigit()
    assert on_a["data"]["verified"] is False
    # Another pair has another number.
    assert verify(a, c.peer_id)["data"]["safety_number"] != on_a["data"]["safety_number"]
    assert verify(b, c.peer_id)["data"]["safety_number"] != on_a["data"]["safety_number"]

    confirmed = verify(a, "bob", confirm=True)
    assert confirmed["data"]["verified"] is True and confirmed["data"]["peer"] == b.peer_id
    wait_members(a, 2)
    b.say("verified hello")
    got = a.next_event(is_message("verified hello"), timeout=WAIT)
    assert got["verified"] is True
    c.say("unverified hello")
    assert a.next_event(is_message("unverified hello"), timeout=WAIT)["verified"] is False
    (peers,) = [e for e in answer(a, {"id": "p", "line": "/peers"}) if e["type"] == "output"]
    marks = {p["peer"]: p["verified"] for p in peers["data"]["peers"]}
    assert marks[b.peer_id] is True and marks[c.peer_id] is False

    # Verified is kept across a restart; the name from another key is the louder warning.
    assert a.stop() == 0
    nodes.remove(a)
    a, _ = chat_peer(tmp_path / "a", nodes, "--bootstrap", c.addr())
    assert verify(a, b.peer_id)["data"]["verified"] is True
    wait_members(a, 1)
    name(c, "Bob")
    warning = seen(a, is_conflict(c.peer_id))
    assert warning["data"]["verified"] is True and warning["data"]["bound"] == b.peer_id
    assert "KEY CHANGE" in warning["text"]
    assert a.metric("p2pchat_name_conflicts_total", outcome="key_change") == 1

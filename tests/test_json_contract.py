"""The ``--json`` contract: the shipped JSON Schemas, the input forms and their answers.

The schemas are checked against events.py (neither can drift) and against the input parser;
real ``p2pchat --json`` processes on 127.0.0.1 exercise every input form and every event type.
Every object these processes write is validated against the schema by tests/conftest.py.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import subprocess
import sys
import time
import tomllib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from p2pchat.roles.peer import events as events_module
from p2pchat.roles.peer.events import EVENT_TYPES, SCHEMA_VERSION
from p2pchat.roles.peer.frontends import (
    MAX_ID_CHARS,
    MAX_LINE_BYTES,
    MAX_SAFE_INTEGER,
    BadInput,
    LineInput,
    SendInput,
    parse_json_input,
)

from tests.conftest import (
    EVENTS_SCHEMA,
    INPUT_SCHEMA,
    NodeProcess,
    contract_violations,
    load_schema,
    node_env,
    p2pchat_command,
    start_node,
)
from tests.test_chat import wait_members

ROOT = Path(__file__).parent.parent
WAIT = 60.0
# GossipSub offers its last 5 s of messages to a peer joining the mesh; messages older than
# that reach a new peer only through catch-up (tests/test_archive.py says the same).
GOSSIP_WINDOW = 7.0

# --- the schemas ---------------------------------------------------------------------------------


def test_schemas_ship_in_the_package_and_carry_the_version() -> None:
    for name in (EVENTS_SCHEMA, INPUT_SCHEMA):
        schema = load_schema(name)  # through importlib.resources, from the installed package
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith(f":v{SCHEMA_VERSION}"), schema["$id"]
        assert name.endswith(f"-v{SCHEMA_VERSION}.schema.json")
    events = load_schema(EVENTS_SCHEMA)
    assert events["$defs"]["ready_data"]["properties"]["schema_version"] == {
        "description": events["$defs"]["ready_data"]["properties"]["schema_version"]["description"],
        "const": SCHEMA_VERSION,
    }
    # The wheel takes them: package data of p2pchat.roles (which is roles/) covers each file.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["p2pchat.roles"]
    for path in sorted((ROOT / "roles" / "peer" / "schema").iterdir()):
        relative = path.relative_to(ROOT / "roles").as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


def _literal_values(annotation: object) -> set[str] | None:
    if get_origin(annotation) is typing.Literal:
        return set(get_args(annotation))
    return None


def test_schema_and_events_py_agree() -> None:
    schema = load_schema(EVENTS_SCHEMA)
    assert set(schema["properties"]["type"]["enum"]) == set(EVENT_TYPES.values())
    assert [branch["$ref"] for branch in schema["oneOf"]] == [
        f"#/$defs/{name}" for name in schema["properties"]["type"]["enum"]
    ]
    for cls, name in EVENT_TYPES.items():
        branch = schema["$defs"][name]
        names = [f.name for f in dataclasses.fields(cls)]
        assert branch["properties"]["type"] == {"const": name}
        assert set(branch["properties"]) == {"type", "reply_to", *names}, name
        assert set(branch["required"]) == {"type", *names}, name
        assert branch["additionalProperties"] is False, name
        hints = typing.get_type_hints(cls)
        for field_name in names:
            values = _literal_values(hints[field_name])
            if values is not None:
                assert set(branch["properties"][field_name]["enum"]) == values, (name, field_name)
    notice_kinds = set(get_args(events_module.NoticeKind))
    error_codes = set(get_args(events_module.ErrorCode))
    assert set(schema["$defs"]["notice"]["properties"]["kind"]["enum"]) == notice_kinds
    data_rules = [
        rule["if"]["properties"]["kind"]["const"] for rule in schema["$defs"]["notice"]["allOf"]
    ]
    assert set(data_rules) <= notice_kinds and len(set(data_rules)) == len(data_rules)
    assert set(schema["$defs"]["error"]["properties"]["code"]["enum"]) == error_codes
    # The ids a script may give are the ids echoed back, within the parser's bounds.
    ids = load_schema(INPUT_SCHEMA)["$defs"]["id"]["oneOf"]
    assert schema["$defs"]["input_id"]["oneOf"] == ids
    assert ids == [
        {"type": "string", "maxLength": MAX_ID_CHARS},
        {"type": "integer", "minimum": -MAX_SAFE_INTEGER, "maximum": MAX_SAFE_INTEGER},
    ]


def test_the_validator_rejects_what_breaks_the_contract(tmp_path: Path) -> None:
    good = {"type": "done", "reply_to": 3, "ok": True}
    assert contract_violations(good) == []
    for bad in (
        {"type": "done"},  # a required field missing
        {"type": "done", "ok": True, "extra": 1},  # a field the contract does not have
        {"type": "done", "ok": "yes"},
        {"type": "done", "ok": True, "reply_to": None},
        {"type": "error", "code": "oops", "text": "x", "command": None},
        {"type": "notice", "kind": "gossip", "text": "x", "data": {}},
        {"type": "notice", "kind": "room_joined", "text": "joined x", "data": {}},  # no room
        {"type": "notice", "kind": "name_conflict", "text": "x", "data": {"name": "a"}},
        {"type": "notice", "kind": "dm_opened", "text": "x", "data": {"peer": "12D3"}},
        {"type": "output", "command": "ready", "text": "x", "data": {"schema_version": 2}},
        {"type": "notice", "kind": "uc_file", "text": "x", "data": {"id": "f"}},  # no peer, room
        {"type": "frobnicated"},
        ["not", "an", "object"],
    ):
        assert contract_violations(bad), bad
    # ... and a violation read from a node's stdout fails the test that reads it.
    proc = subprocess.Popen([sys.executable, "-c", "pass"], stdout=subprocess.DEVNULL)
    proc.wait()
    node = NodeProcess(proc=proc, data_dir=tmp_path)
    assert node.read_stdout_line(json.dumps(good) + "\n") == good
    node.check_contract()
    node.read_stdout_line('{"type": "done", "ok": 1}\n')
    node.read_stdout_line("not json\n")
    with pytest.raises(AssertionError, match="breaks events-v1") as failure:
        node.next_event(lambda e: True, timeout=1)
    assert "ok: 1 is not of type 'boolean'" in str(failure.value)
    assert "not JSON" in str(failure.value)
    node.contract_violations.clear()  # seen to fail: the fixture's check is not this test's


INPUTS: list[tuple[str, type | None]] = [
    ('{"line": "/rooms"}', LineInput),
    ('{"id": 1, "line": "hello"}', LineInput),
    ('{"id": "a-1", "line": ""}', LineInput),
    ('{"id": 1.0, "line": "x"}', LineInput),  # 1.0 is an integer to JSON Schema
    ('{"id": -9007199254740991, "line": "x"}', LineInput),
    ('{"send": "/not a command\\nsecond line"}', SendInput),
    ('{"id": 2, "send": "x", "room": "ops"}', SendInput),
    ('{"id": 3, "send": "psst\\nsecond line", "to": "Alice"}', SendInput),
    ('{"send": "x", "room": "ops", "to": "Alice"}', BadInput),
    ('{"send": "x", "to": ""}', BadInput),
    ('{"id": 1, "line": "a\\nb"}', BadInput),
    ('{"id": 1, "line": "a\\r"}', BadInput),
    ('{"id": 1}', BadInput),
    ('{"line": "x", "send": "y"}', BadInput),
    ('{"line": "x", "room": "ops"}', BadInput),
    ('{"line": 5}', BadInput),
    ('{"send": ""}', BadInput),
    ('{"send": "x", "room": null}', BadInput),
    ('{"send": "x", "room": 3}', BadInput),
    ('{"send": "x", "at": "ops"}', BadInput),
    ('{"id": null, "line": "x"}', BadInput),
    ('{"id": true, "line": "x"}', BadInput),
    ('{"id": 1.5, "line": "x"}', BadInput),
    ('{"id": [1], "line": "x"}', BadInput),
    ('{"id": 9007199254740992, "line": "x"}', BadInput),
    ('{"id": "' + "x" * 257 + '", "line": "x"}', BadInput),
    ("{}", BadInput),
]


@pytest.mark.parametrize(("line", "expected"), INPUTS)
def test_the_input_parser_and_the_input_schema_agree(line: str, expected: type) -> None:
    parsed = parse_json_input(line)
    assert isinstance(parsed, expected), parsed
    assert (contract_violations(json.loads(line), INPUT_SCHEMA) == []) == (expected is not BadInput)


@pytest.mark.parametrize(
    ("line", "reply_to", "reason"),
    [
        ('{"id": 4, "line": ', None, "not valid JSON"),
        ('{"id": 4, "line": NaN}', None, "NaN is not JSON"),
        ('{"id": ' + "[" * 100_000, None, "nested too deeply"),
        ('{"id": 4, "line": "x", "line": "y"}', None, "repeats the field 'line'"),
        ('{"id": 4, "send": "x", "line": "y"}', 4, 'exactly one of "line" or "send"'),
        ('{"id": "q", "send": "x", "from": "me"}', "q", "unknown field(s) 'from'"),
    ],
)
def test_bad_input_gets_a_one_line_reason_and_its_id_when_readable(
    line: str, reply_to: object, reason: str
) -> None:
    parsed = parse_json_input(line)
    assert isinstance(parsed, BadInput)
    assert parsed.id == reply_to
    assert reason in parsed.reason and "\n" not in parsed.reason


# --- the contract between real processes ---------------------------------------------------------


def chat_peer(
    path: Path, nodes: list[NodeProcess], *args: str
) -> tuple[NodeProcess, dict[str, Any]]:
    node = start_node(path, "--json", *args)
    nodes.append(node)
    ready = node.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    return node, ready


def answer(node: NodeProcess, message: dict[str, Any]) -> list[dict[str, Any]]:
    """Send an input object with an id; its whole answer, up to and with its ``done``. Live
    events arriving meanwhile are passed over (they stay in ``node.chat``)."""
    node.send_json(message)
    reply_to = message["id"]
    events: list[dict[str, Any]] = []
    while True:
        event = node.next_event(lambda e: "reply_to" in e, timeout=WAIT)
        assert event["reply_to"] == reply_to, f"answer to {reply_to!r} interleaved: {event}"
        events.append(event)
        if event["type"] == "done":
            return events


def answer_raw(node: NodeProcess, line: str) -> list[dict[str, Any]]:
    """Write a raw stdin line starting with ``{``; its answer, up to and with its ``done``."""
    node.say(line)
    events: list[dict[str, Any]] = []
    while True:
        event = node.next_event(
            lambda e: e["type"] in ("error", "done") or "reply_to" in e, timeout=WAIT
        )
        events.append(event)
        if event["type"] == "done":
            return events


def seen(node: NodeProcess, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first event so far, consumed or not, matching ``predicate``, or the next one: for
    live events whose order among others is not part of the contract."""
    for event in node.drain_events():
        if predicate(event):
            return event
    return node.next_event(predicate, timeout=WAIT)


def is_message(text: str) -> Any:
    return lambda e: e["type"] == "message" and e["text"] == text and not e["history"]


def test_every_input_form_and_every_event_type(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    a, ready = chat_peer(tmp_path / "a", nodes)
    assert ready["data"]["schema_version"] == SCHEMA_VERSION
    assert ready["data"]["peer_id"] == a.peer_id and ready["data"]["room"] == "p2p-chat-default"
    assert "reply_to" not in ready

    # Alone in the room: a message is queued (a notice), and delivered when B comes.
    queued = answer(a, {"id": "q1", "send": "anyone here?"})
    assert [e["type"] for e in queued] == ["notice", "done"]
    assert queued[0]["kind"] == "queued" and queued[-1]["ok"] is True
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    b.next_event(is_message("anyone here?"), timeout=WAIT)
    seen(a, lambda e: e["type"] == "notice" and e["kind"] == "delivered")
    connected = seen(a, lambda e: e["type"] == "connection")
    assert connected["change"] == "opened" and connected["peer"] == b.peer_id
    wait_members(a, 1)
    wait_members(b, 1)

    # A plain line, as typed in the console: a message, and `//text` sends "/text".
    a.say("plain hello")
    b.next_event(is_message("plain hello"), timeout=WAIT)
    a.say("//plain slash")
    b.next_event(is_message("/plain slash"), timeout=WAIT)

    # {"line"}: as typed, with the id echoed on every event of the answer and `done` last.
    slash = answer(a, {"id": 1, "line": "//json slash"})
    assert slash == [{"type": "done", "reply_to": 1, "ok": True}]
    b.next_event(is_message("/json slash"), timeout=WAIT)

    # {"send"}: verbatim, even a leading slash and several lines, arriving whole.
    text = "/not a command\n  indented second line\n\tthird"
    sent = answer(b, {"id": "multi", "send": text})
    assert sent == [{"type": "done", "reply_to": "multi", "ok": True}]
    got = a.next_event(is_message(text), timeout=WAIT)
    assert got["sender"] == b.peer_id and got["own"] is False

    # /msg: a direct message, answered with its delivery; the recipient gets a `direct` event.
    dm = answer(a, {"id": "dm", "line": f"/msg {b.peer_id} just for you"})
    assert [(e["type"], e.get("kind")) for e in dm] == [("notice", "dm_delivered"), ("done", None)]
    got_dm = b.next_event(lambda e: e["type"] == "direct", timeout=WAIT)
    assert got_dm["peer"] == a.peer_id and got_dm["text"] == "just for you"
    # {"send", "to"}: a direct message verbatim, several lines and a leading slash kept.
    dm = answer(b, {"id": "dm2", "send": "/psst\nline two", "to": a.peer_id})
    assert [(e["type"], e.get("kind")) for e in dm] == [("notice", "dm_delivered"), ("done", None)]
    a.next_event(lambda e: e["type"] == "direct" and e["text"] == "/psst\nline two", timeout=WAIT)

    rooms = answer(a, {"id": 2, "line": "/rooms"})
    assert [e["type"] for e in rooms] == ["output", "done"]
    assert rooms[0]["command"] == "rooms" and rooms[0]["reply_to"] == 2

    # /history: its messages, then the end marker, then done; every one with the id.
    history = answer(a, {"id": "h", "line": "/history 2"})
    assert [e["type"] for e in history] == ["message", "message", "history_end", "done"]
    assert [e["text"] for e in history[:2]] == ["/json slash", text]
    assert all(e["history"] for e in history[:2])
    assert history[2]["count"] == 2 and history[2]["more"] >= 1
    assert {e["reply_to"] for e in history} == {"h"}

    # Names: a notice for the one who set it, a name event for the others.
    named = answer(a, {"id": 3, "line": "/name Alice"})
    assert [(e["type"], e.get("kind")) for e in named] == [("notice", "name_set"), ("done", None)]
    name = seen(b, lambda e: e["type"] == "name")
    assert name["peer"] == a.peer_id and name["name"] == "Alice"

    # Rooms: joining is a notice; the other peer sees a peer event for the room.
    joined = answer(a, {"id": 4, "line": "/join ops"})
    assert joined[0]["type"] == "notice" and joined[0]["kind"] == "room_joined"
    answer(b, {"id": 4, "line": "/join ops"})
    peer = seen(a, lambda e: e["type"] == "peer" and e["room"] == "ops")
    assert peer["change"] == "joined" and peer["peer"] == b.peer_id
    to_room = answer(b, {"id": 5, "send": "to ops, from the JSON input", "room": "ops"})
    assert to_room[-1]["ok"] is True
    assert a.next_event(is_message("to ops, from the JSON input"), timeout=WAIT)["room"] == "ops"

    # A private room: created (and made current), a member invited, told, listed; a message
    # to it by room arrives decrypted (sent again until the new member's mesh has formed).
    created = answer(a, {"id": "p1", "line": "/create-private club"})
    kinds = [(e["type"], e.get("kind")) for e in created]
    assert kinds == [("notice", "private_created"), ("done", None)]
    club = created[0]["data"]["room"]
    invited = answer(a, {"id": "p2", "line": f"/invite {b.peer_id}"})
    assert invited[0]["kind"] == "private_member" and invited[0]["data"]["change"] == "invited"
    seen(b, lambda e: e["type"] == "notice" and e["kind"] == "private_invited")
    members = answer(b, {"id": "p3", "line": f"/members {club}"})
    assert members[0]["command"] == "members"
    assert set(members[0]["data"]["members"]) == {a.peer_id, b.peer_id}
    deadline = time.monotonic() + WAIT
    while not any(e["type"] == "message" and e["room"] == club for e in b.drain_events()):
        assert time.monotonic() < deadline, "the private room's message never arrived"
        assert answer(a, {"id": "p4", "send": "for members only", "room": club})[-1]["ok"]
        time.sleep(2)

    # Errors: a stable code, the command that caused it, the id, and done says not ok.
    unknown = answer(a, {"id": 6, "line": "/frobnicate now"})
    assert unknown[0]["type"] == "error" and unknown[0]["code"] == "unknown_command"
    assert unknown[0]["command"] == "frobnicate" and unknown[0]["reply_to"] == 6
    assert unknown[-1] == {"type": "done", "reply_to": 6, "ok": False}
    elsewhere = answer(a, {"id": 7, "send": "hello?", "room": "nowhere"})
    assert elsewhere[0]["code"] == "not_in_room" and elsewhere[-1]["ok"] is False

    # Input that is not an object of the contract: bad_input, never a crash.
    for line, reply_to in (
        ('{"id": 8, "line": ', None),
        ('{"id": 8, "line": "x", "send": "y"}', 8),
        ('{"id": 8, "send": "x", "from": "me"}', 8),
        ("{" * 70_000, None),  # over 64 KiB
    ):
        bad = answer_raw(a, line)
        assert [e["type"] for e in bad] == ["error", "done"], bad
        assert bad[0]["code"] == ("line_too_long" if len(line) > MAX_LINE_BYTES else "bad_input")
        assert bad[0].get("reply_to") == reply_to and bad[1].get("reply_to") == reply_to
        assert bad[1]["ok"] is False
    assert answer(a, {"id": 9, "line": "/switch p2p-chat-default"})[-1]["ok"] is True

    # A newcomer catches up on what was said before it came.
    time.sleep(GOSSIP_WINDOW)
    c, _ = chat_peer(tmp_path / "c", nodes, "--bootstrap", a.addr())
    caught_up = seen(c, lambda e: e["type"] == "caught_up")
    assert caught_up["count"] >= 1 and caught_up["shown"] >= 1

    # {"line": "/quit"}: the answer ends with done, then the peer leaves; the others see it go.
    assert answer(b, {"id": "bye", "line": "/quit"}) == [
        {"type": "done", "reply_to": "bye", "ok": True}
    ]
    assert b.proc.wait(timeout=WAIT) == 0
    closed = seen(
        a,
        lambda e: e["type"] == "connection" and e["change"] == "closed" and e["peer"] == b.peer_id,
    )
    assert closed["relayed"] is False

    emitted = {e["type"] for node in (a, b, c) for e in node.drain_events()}
    missing = set(EVENT_TYPES.values()) - emitted
    assert not missing, f"never emitted: {missing}"


def test_many_inputs_at_once_are_answered_in_order(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a, _ = chat_peer(tmp_path / "a", nodes)
    lines = [json.dumps({"id": n, "line": "/rooms" if n % 2 else "/info"}) for n in range(20)]
    a.say("\n".join(lines))
    ends = [a.next_event(lambda e: e["type"] == "done", timeout=WAIT) for _ in lines]
    assert [e["reply_to"] for e in ends] == list(range(20))
    assert all(e["ok"] for e in ends)


LOOPBACK = ("--listen", "/ip4/127.0.0.1/tcp/0")


def test_a_reader_that_lags_gets_every_object_whole(tmp_path: Path) -> None:
    """A script that stops reading for a while (a loaded machine, a paused pipeline) gets every
    object whole once it reads again: a write into the full pipe waits for it however long.
    It once gave up after 2 s, leaving half an object in the pipe with the next glued to it."""
    helps = 150  # each answer is kilobytes: far more than a pipe holds
    node = subprocess.Popen(
        [*p2pchat_command(), "--json", "--data-dir", str(tmp_path), *LOOPBACK],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=node_env(),
    )
    try:
        assert node.stdin is not None and node.stdout is not None
        node.stdin.write(b"".join(b'{"line": "/help"}\n' for _ in range(helps)))
        node.stdin.flush()
        time.sleep(8)  # nothing read: the node's writes wait on the full pipe for 8 s
        out, _ = node.communicate(timeout=WAIT)  # reads all, then closes stdin: the node ends
    finally:
        if node.poll() is None:
            node.kill()
            node.wait(timeout=10)
    objects = [json.loads(line) for line in out.decode().splitlines()]  # each line whole
    answered = [o for o in objects if o["type"] == "output" and o.get("command") == "help"]
    assert len(answered) == helps, len(answered)


def test_universal_connectivity_events_are_in_the_contract() -> None:
    """A UC room's message (room ``uc:<topic>``) and the ``uc_file`` notice, as roles/peer/uc.py
    makes them; tests/test_uc.py checks the live ones."""
    peer = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
    message = events_module.MessageEvent(
        "uc:universal-connectivity", "ab12", peer, peer[-8:], "hi", 1, False
    )
    notice = events_module.NoticeEvent(
        "uc_file", "x", {"id": "f", "peer": peer, "room": "uc:universal-connectivity"}
    )
    for event in (message, notice):
        assert contract_violations(events_module.to_json_object(event)) == [], event


def test_the_contract_page_documents_every_event_kind_and_code() -> None:
    page = (ROOT / "docs" / "json-contract.md").read_text()
    for name in EVENT_TYPES.values():
        assert f"### `{name}`" in page, f"docs/json-contract.md lacks the {name} event"
    for value in (*get_args(events_module.NoticeKind), *get_args(events_module.ErrorCode)):
        assert f"`{value}`" in page, f"docs/json-contract.md lacks {value}"
    assert "(docs/json-contract.md)" in (ROOT / "README.md").read_text()


def test_dm_conversations_and_who_is_who_in_the_contract(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """/dm, a {"send"} and /history in a conversation, /rooms, /verify and /leave @: the
    events each answers with (every line is checked against the schema by the fixture)."""
    a, _ = chat_peer(tmp_path / "a", nodes)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    seen(a, lambda e: e["type"] == "connection" and e["peer"] == b.peer_id)
    tag = f"@{b.peer_id}"  # b has no name: its conversation is tagged with its PeerId
    opened = answer(a, {"id": "dm", "line": f"/dm {b.peer_id}"})
    assert [(e["type"], e.get("kind")) for e in opened] == [("notice", "dm_opened"), ("done", None)]
    assert opened[0]["data"] == {"peer": b.peer_id, "room": tag, "unread": 0}
    sent = answer(a, {"id": "s", "send": "in the conversation"})
    assert [e.get("kind") for e in sent] == ["dm_delivered", None]
    b.next_event(lambda e: e["type"] == "direct" and e["text"] == "in the conversation", WAIT)
    listed = answer(a, {"id": "h", "line": "/history"})
    assert [e["type"] for e in listed] == ["direct", "history_end", "done"]
    assert listed[0]["history"] is True and listed[0]["own"] is True
    assert listed[1]["room"] == tag and listed[1]["count"] == 1
    (rooms,) = [e for e in answer(a, {"id": "r", "line": "/rooms"}) if e["type"] == "output"]
    assert rooms["data"]["conversations"][0]["room"] == tag
    (verify,) = [e for e in answer(a, {"id": "v", "line": f"/verify {b.peer_id}"})[:-1]]
    assert verify["command"] == "verify" and set(verify["data"]) == {
        "peer",
        "name",
        "safety_number",
        "verified",
    }
    closed = answer(a, {"id": "c", "line": f"/leave {tag}"})
    assert closed[0]["kind"] == "dm_closed" and closed[0]["data"]["room"] == tag
    # /leave alone in a conversation closes it (not the room behind it).
    assert answer(a, {"id": "o", "line": f"/switch {tag}"})[0]["kind"] == "dm_opened"
    assert answer(a, {"id": "c2", "line": "/leave"})[0]["kind"] == "dm_closed"
    assert answer(a, {"id": "r2", "line": "/rooms"})[0]["data"]["current"] == "p2p-chat-default"
    missing = answer(a, {"id": "x", "line": "/dm nobody-here"})
    assert missing[0]["code"] == "unknown_name" and missing[-1]["ok"] is False

"""The receive-side rules written in chat.proto and store_query.proto are the code's rules.

A client is meant to be writable from the .proto files alone (issue #20), so each number they
state is checked here against the constant or config default the code uses, and each rule is
tried once against the codec.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from p2pchat.node.config import ChatSection, HistorySection, PubsubSection
from p2pchat.node.store_client import MAX_RETRY_WAIT
from p2pchat.node.store_server import STREAM_RETRY_MS
from p2pchat.node.wire import chat, store_query
from p2pchat.node.wire.room_names import MAX_ROOM_CHARS

WIRE = Path(chat.__file__).parent
CHAT_PROTO = (WIRE / "chat.proto").read_text()
STORE_PROTO = (WIRE / "store_query.proto").read_text()


def said(text: str, pattern: str) -> list[str]:
    """The groups of ``pattern`` in ``text`` (comments re-joined across line breaks)."""
    flat = re.sub(r"\n\s*//\s*", " ", text)
    found = re.search(pattern, flat)
    assert found is not None, f"the .proto no longer says {pattern!r}"
    return list(found.groups())


def test_chat_proto_numbers_are_the_codecs() -> None:
    assert said(CHAT_PROTO, r"`data` at most (\d+) bytes") == [str(chat.DEFAULT_MAX_PAYLOAD_BYTES)]
    assert said(CHAT_PROTO, r"`version` must be (\d+)") == [str(chat.WIRE_VERSION)]
    assert said(CHAT_PROTO, r"`id`: exactly (\d+) bytes") == [str(chat.MESSAGE_ID_BYTES)]
    assert said(CHAT_PROTO, r"\((\d+) ms\) ahead") == [str(chat.MAX_CLOCK_AHEAD_MS)]
    assert said(CHAT_PROTO, r"plain room is 1-(\d+) characters") == [str(MAX_ROOM_CHARS)]
    assert said(CHAT_PROTO, r"then 1-(\d+) characters") == [str(chat.MAX_NAME_CHARS)]
    assert said(CHAT_PROTO, r'read as "(\w+)"') == [chat.ANONYMOUS_NAME]
    assert said(CHAT_PROTO, r"at most (\d+) bytes, no control") == [str(chat.MAX_REASON_BYTES)]
    chat_defaults = ChatSection()
    assert said(CHAT_PROTO, r"UTF-8 bytes \(default (\d+)\)") == [
        str(chat_defaults.max_message_bytes)
    ]
    assert said(CHAT_PROTO, r"\(chat.history_max_age_days, (\d+) days;") == [
        f"{chat_defaults.history_max_age_days:.0f}"
    ]
    pubsub = PubsubSection()
    assert said(CHAT_PROTO, r"sender_rate (\d+)/s, pubsub.sender_burst (\d+)") == [
        f"{pubsub.sender_rate:.0f}",
        str(pubsub.sender_burst),
    ]
    assert said(CHAT_PROTO, r"new_sender_rate (\d+)/s, burst (\d+)") == [
        f"{pubsub.new_sender_rate:.0f}",
        str(pubsub.new_sender_burst),
    ]


def test_store_proto_numbers_are_the_servers() -> None:
    history = HistorySection()
    mib = 1024 * 1024
    assert said(STORE_PROTO, r"over (\d+) KiB") == [str(store_query.MAX_QUERY_BYTES // 1024)]
    assert said(STORE_PROTO, r"limit over (\d+), time") == [str(store_query.MAX_LIMIT)]
    assert said(STORE_PROTO, r"more than (\d+) message_ids") == [str(store_query.MAX_LIMIT)]
    assert said(STORE_PROTO, r"within (\d+) s \(history.read_timeout\)") == [
        f"{history.read_timeout:.0f}"
    ]
    assert said(STORE_PROTO, r"per PeerId: (\d+) queries/s, (\d+) at once") == [
        f"{history.rate:.0f}",
        str(history.burst),
    ]
    assert said(STORE_PROTO, r"bytes (\d+) MiB/s, (\d+) MiB at once") == [
        str(history.bytes_rate // mib),
        str(history.bytes_burst // mib),
    ]
    assert said(STORE_PROTO, r"IPv6 /(\d+)\) (\d+) MiB/s, (\d+) MiB at once") == [
        str(history.ipv6_prefix),
        str(history.group_bytes_rate // mib),
        str(history.group_bytes_burst // mib),
    ]
    assert said(STORE_PROTO, r"(\d+) per PeerId, (\d+) per address group, (\d+) in all") == [
        str(history.max_streams_per_peer),
        str(history.max_streams_per_group),
        str(history.max_streams),
    ]
    assert said(STORE_PROTO, r"retry_after_ms (\d+)\) and closed") == [str(STREAM_RETRY_MS)]
    assert said(STORE_PROTO, r"waits at most (\d+) s") == [f"{MAX_RETRY_WAIT:.0f}"]


def _text(**changes: object) -> bytes:
    fields: dict[str, object] = {
        "id": bytes(16),
        "room": "lobby",
        "sender_name": "Bob",
        "text": "hi",
        "sent_at_ms": 1,
    }
    fields.update(changes)
    return chat.encode(chat.ChatText(**fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"id": bytes(15)}, "invalid"),
        ({"sent_at_ms": 0}, "invalid"),
        ({"room": "x" * 65}, "invalid"),
        ({"sender_name": "x" * 33}, "invalid"),
        ({"sender_name": "a\u200bb"}, "invalid"),  # format character (category Cf)
        ({"sender_name": "a\u2028b"}, "invalid"),  # line separator
        ({"text": "a\u202eb"}, "invalid"),  # bidi override
        ({"text": "a\x07b"}, "invalid"),  # C0 control
        ({"text": "x" * 4097}, "oversized"),
    ],
)
def test_each_documented_refusal(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(chat.WireError) as raised:
        chat.decode(_text(**changes), max_text_bytes=4096)
    assert raised.value.reason == reason


@pytest.mark.parametrize(
    "changes",
    [
        {"room": "Straße-ü_1.x" + "y" * 52},  # 64 characters, Unicode letters
        {"sender_name": "  Zoë  "},  # stripped
        {"sender_name": ""},
        {"text": "line\n\ttab \u200d joiner"},
        {"text": "é" * 2048},  # 4096 bytes
    ],
)
def test_each_documented_allowance(changes: dict[str, object]) -> None:
    assert chat.decode(_text(**changes), max_text_bytes=4096)


def test_the_clock_bound_is_exact() -> None:
    now = 10_000_000
    ahead = now + chat.MAX_CLOCK_AHEAD_MS
    assert chat.decode_for_room(_text(sent_at_ms=ahead), "lobby", max_text_bytes=4096, now_ms=now)
    with pytest.raises(chat.WireError) as raised:
        chat.decode_for_room(_text(sent_at_ms=ahead + 1), "lobby", max_text_bytes=4096, now_ms=now)
    assert raised.value.reason == "future_timestamp"

"""The chat payload codec: vectors, every drop reason, and random bytes never crash it."""

from __future__ import annotations

import contextlib
import random
import unicodedata

import pytest
from p2pchat.node.wire import chat_pb2
from p2pchat.node.wire.chat import (
    _BIDI_CONTROLS,
    ANONYMOUS_NAME,
    ChatText,
    NameAnnouncement,
    WireError,
    decode,
    encode,
    new_message_id,
    validate_name,
    validate_room,
)
from p2pchat.node.wire.chat import _unsafe_in_text as unsafe_in_text

ID = bytes(range(16))
TEXT = ChatText(
    id=ID, room="lobby", sender_name="Bob", text="Hi Alice!", sent_at_ms=1_700_000_000_000
)
# The encoding of TEXT, fixed: a change here is a wire-format change (bump the version).
TEXT_VECTOR = bytes.fromhex(
    "080112300a10000102030405060708090a0b0c0d0e0f12056c6f6262791a03426f6222094869"
    "20416c696365212880d095ffbc31"
)


def test_text_encodes_to_the_fixed_vector_and_back() -> None:
    assert encode(TEXT) == TEXT_VECTOR
    assert decode(TEXT_VECTOR, max_text_bytes=4096) == TEXT


def test_name_announcement_round_trips() -> None:
    announcement = NameAnnouncement(id=new_message_id(), name="Alice", sent_at_ms=5)
    assert decode(encode(announcement), max_text_bytes=4096) == announcement


def reason_of(data: bytes, max_text_bytes: int = 4096) -> str:
    with pytest.raises(WireError) as raised:
        decode(data, max_text_bytes=max_text_bytes)
    return raised.value.reason


def with_text(**changes: object) -> bytes:
    fields = {"id": ID, "room": "lobby", "sender_name": "Bob", "text": "hi", "sent_at_ms": 1}
    fields.update(changes)
    return encode(ChatText(**fields))  # type: ignore[arg-type]


def test_each_drop_reason() -> None:
    assert reason_of(b"\xff\xff\xff") == "malformed"
    assert reason_of(b"") == "unsupported_version"  # version 0: an empty message
    assert reason_of(chat_pb2.ChatEnvelope(version=1).SerializeToString()) == "malformed"
    future = chat_pb2.ChatEnvelope(version=2)
    future.text.room = "lobby"
    assert reason_of(future.SerializeToString()) == "unsupported_version"
    assert reason_of(with_text(id=b"short")) == "invalid"
    assert reason_of(with_text(sent_at_ms=0)) == "invalid"
    assert reason_of(with_text(room="no spaces")) == "invalid"
    assert reason_of(with_text(sender_name="\x1b[2Jevil")) == "invalid"
    assert reason_of(with_text(text="clear\x1b[2J")) == "invalid"
    assert reason_of(with_text(text="x" * 4097)) == "oversized"


def test_a_text_without_a_sender_name_is_read_as_anon() -> None:
    # proto3's default is an empty string: a minimal client that never sets a name is heard.
    for no_name in ("", "   "):
        decoded = decode(with_text(sender_name=no_name), max_text_bytes=4096)
        assert isinstance(decoded, ChatText)
        assert decoded.sender_name == ANONYMOUS_NAME == "anon"
    bare = chat_pb2.ChatEnvelope(version=1)  # sender_name never set, as a minimal client sends
    bare.text.id, bare.text.room, bare.text.text, bare.text.sent_at_ms = ID, "lobby", "hi", 1
    assert decode(bare.SerializeToString(), max_text_bytes=4096).sender_name == "anon"  # type: ignore[union-attr]
    assert reason_of(with_text(sender_name="x" * 33)) == "invalid"  # a name, when set, is checked


def test_text_size_limit_counts_utf8_bytes() -> None:
    at_limit = "é" * 2048  # 4096 bytes
    assert decode(with_text(text=at_limit), max_text_bytes=4096)
    assert reason_of(with_text(text=at_limit + "x")) == "oversized"
    assert decode(with_text(text="line one\n\tline two"), max_text_bytes=4096)


def test_a_huge_payload_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_parsing() -> None:
        raise AssertionError("an oversized payload reached the parser")

    monkeypatch.setattr(chat_pb2, "ChatEnvelope", no_parsing)
    assert reason_of(b"\x00" * (10 * 1024 * 1024)) == "oversized"


def test_the_payload_limit_is_inclusive() -> None:
    size = len(TEXT_VECTOR)
    assert decode(TEXT_VECTOR, max_text_bytes=4096, max_payload_bytes=size) == TEXT
    with pytest.raises(WireError) as raised:
        decode(TEXT_VECTOR, max_text_bytes=4096, max_payload_bytes=size - 1)
    assert raised.value.reason == "oversized"


def test_name_announcement_drop_reasons() -> None:
    def announcement(**changes: object) -> bytes:
        fields = {"id": ID, "name": "Alice", "sent_at_ms": 1}
        fields.update(changes)
        return encode(NameAnnouncement(**fields))  # type: ignore[arg-type]

    assert decode(announcement(name="  Alice "), max_text_bytes=1).name == "Alice"  # type: ignore[union-attr]
    assert reason_of(announcement(id=b"")) == "invalid"
    assert reason_of(announcement(id=bytes(17))) == "invalid"
    assert reason_of(announcement(sent_at_ms=0)) == "invalid"
    assert reason_of(announcement(name="")) == "invalid"
    assert reason_of(announcement(name="x" * 33)) == "invalid"
    assert reason_of(announcement(name="\x1b]0;pwned\x07")) == "invalid"


def test_random_bytes_only_ever_raise_wire_errors() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        data = rng.randbytes(rng.randrange(0, 200))
        with contextlib.suppress(WireError):
            decode(data, max_text_bytes=4096)
    # Mutations of a valid payload too: every single-byte change.
    for index in range(len(TEXT_VECTOR)):
        for value in (0x00, 0x7F, 0x80, 0xFF):
            mutated = bytearray(TEXT_VECTOR)
            mutated[index] = value
            with contextlib.suppress(WireError):
                decode(bytes(mutated), max_text_bytes=4096)


def test_name_and_room_rules() -> None:
    assert validate_name("  Alice  ") == "Alice"
    for bad in ("", "   ", "x" * 33, "a\nb", "a\u2028b", "bell\x07", "\x1b[31mred"):
        with pytest.raises(ValueError):
            validate_name(bad)
    assert validate_room("p2p-chat_default.2") == "p2p-chat_default.2"
    for bad in ("", "a b", "x" * 65, "a/b", "a\x00b"):
        with pytest.raises(ValueError):
            validate_room(bad)


def test_texts_allow_emoji_sequences_but_not_terminal_tricks() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # joined by zero-width joiners
    assert decode(with_text(text=f"hi {family}"), max_text_bytes=4096)
    assert decode(with_text(text="new emoji \U0001fae8"), max_text_bytes=4096)
    for bad in ("\x1b[31mred", "bell\x07", "abc\u202edcba", "x\u2066y\u2069", "cr\rlf"):
        assert reason_of(with_text(text=bad)) == "invalid", bad


def test_the_text_check_refuses_exactly_controls_surrogates_and_bidi_overrides() -> None:
    # The check is one regex; this is its definition by Unicode category, over every code point.
    for code in range(0x110000):
        ch = chr(code)
        category = unicodedata.category(ch)
        unsafe = (category == "Cc" and ch not in "\n\t") or category == "Cs" or ch in _BIDI_CONTROLS
        assert unsafe_in_text(f"a{ch}b") == unsafe, hex(code)

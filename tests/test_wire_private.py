"""The codec of a private room's message (``PrivateText`` in node/wire/chat.proto): its
envelope checks, and the inner ChatText a member decrypts."""

from __future__ import annotations

import pytest
from p2pchat.node.wire.chat import (
    PRIVATE_OVERHEAD_BYTES,
    ChatText,
    PrivateText,
    WireError,
    check_inner_text,
    decode,
    decode_for_room,
    encode,
    encode_inner_text,
)

ROOM = "private-" + "0f" * 16
SESSION = "Abc+/09" * 6
LIMIT = 4096


def private(**changes: object) -> PrivateText:
    fields: dict[str, object] = {
        "id": b"\x01" * 16,
        "room": ROOM,
        "sent_at_ms": 1_700_000_000_000,
        "session_id": SESSION,
        "ciphertext": b"\x03" * 100,
    }
    fields.update(changes)
    return PrivateText(**fields)  # type: ignore[arg-type]


def reason(payload: PrivateText) -> str:
    with pytest.raises(WireError) as caught:
        decode(encode(payload), max_text_bytes=LIMIT)
    return caught.value.reason


def test_a_private_text_round_trips_and_names_its_room() -> None:
    sent = private()
    assert decode(encode(sent), max_text_bytes=LIMIT) == sent
    with pytest.raises(WireError) as caught:
        decode_for_room(encode(sent), "lobby", max_text_bytes=LIMIT, now_ms=sent.sent_at_ms)
    assert caught.value.reason == "wrong_room"


def test_each_drop_reason_of_its_envelope() -> None:
    assert reason(private(id=b"short")) == "invalid"
    assert reason(private(sent_at_ms=0)) == "invalid"
    assert reason(private(room="no spaces")) == "invalid"
    assert reason(private(session_id="")) == "invalid"
    assert reason(private(session_id="x" * 65)) == "invalid"
    assert reason(private(session_id="not base64!")) == "invalid"
    assert reason(private(ciphertext=b"")) == "invalid"
    assert reason(private(ciphertext=b"x" * (LIMIT + PRIVATE_OVERHEAD_BYTES + 1))) == "oversized"
    biggest = private(ciphertext=b"x" * (LIMIT + PRIVATE_OVERHEAD_BYTES))
    assert decode(encode(biggest), max_text_bytes=LIMIT) == biggest


def test_the_inner_text_is_checked_as_a_text_on_the_wire() -> None:
    text = ChatText(b"\x02" * 16, ROOM, "alice", "hello", 1_700_000_000_000, action=True)
    assert check_inner_text(encode_inner_text(text), LIMIT) == text
    for bad, why in (
        (ChatText(b"\x02" * 16, ROOM, "alice", "\x1b[2J", 1), "invalid"),
        (ChatText(b"\x02" * 16, ROOM, "alice", "x" * (LIMIT + 1), 1), "oversized"),
        (ChatText(b"\x02", ROOM, "alice", "hi", 1), "invalid"),
    ):
        with pytest.raises(WireError) as caught:
            check_inner_text(encode_inner_text(bad), LIMIT)
        assert caught.value.reason == why
    with pytest.raises(WireError) as caught:
        check_inner_text(b"\xff\xff\xff", LIMIT)
    assert caught.value.reason == "malformed"

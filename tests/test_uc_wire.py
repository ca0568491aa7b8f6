"""universal-connectivity's wire formats (node/wire/uc.py) and the dial check of announced
addresses (node/p2p/multiaddr_bytes.py): vectors and every refusal."""

from __future__ import annotations

import pytest
from p2pchat.node.p2p.multiaddr_bytes import dial_target, from_bytes, to_bytes
from p2pchat.node.wire import uc
from p2pchat.node.wire.framing import FrameDecoder

PEER = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
OTHER = "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"


def test_chat_is_the_text_itself() -> None:
    assert uc.encode_chat("héllo") == "héllo".encode()
    assert uc.decode_chat("héllo".encode(), 100) == "héllo"
    assert uc.decode_chat(b"two\n\tlines", 100) == "two\n\tlines"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"x" * 101, "oversized"),
        (b"\xff\xfe", "malformed"),
        (b"  \n", "malformed"),
        (b"red \x1b[31m text", "malformed"),  # a terminal escape sequence
        ("abc \u202e cba".encode(), "malformed"),  # a bidi override
    ],
)
def test_chat_refusals(data: bytes, reason: str) -> None:
    with pytest.raises(uc.UcWireError) as caught:
        uc.decode_chat(data, 100)
    assert caught.value.reason == reason


def test_file_frames_are_varint_length_prefixed() -> None:
    # As UC's go peer writes them: binary.AppendUvarint(len), then the bytes.
    assert uc.file_request("ab") == b"\x02ab"
    body = b"z" * 300
    assert uc.file_response(body) == b"\xac\x02" + body
    assert FrameDecoder(1000).feed(uc.file_response(body)) == [body]


@pytest.mark.parametrize(
    "data", [b"", b"x" * (uc.MAX_FILE_ID_BYTES + 1), b"\xff", b"a\x00b", b" padded", b"a\nb"]
)
def test_bad_file_ids(data: bytes) -> None:
    with pytest.raises(uc.UcWireError) as caught:
        uc.check_file_id(data)
    assert caught.value.reason == "bad_file_id"


def test_a_uuid_is_a_file_id() -> None:
    assert uc.check_file_id(b"0f8fad5b-d9cb-469f-a165-70867728950e")


def test_peer_records_round_trip_and_are_bounded() -> None:
    addrs = tuple(to_bytes(f"/ip4/10.0.0.{i}/tcp/4001") or b"" for i in range(20))
    record = uc.decode_peer(uc.encode_peer(uc.PeerRecord(b"key", addrs)))
    assert record.public_key == b"key"
    assert record.addrs == addrs[: uc.MAX_RECORD_ADDRS]
    for data, reason in (
        (b"\x0a" * (uc.MAX_PEER_RECORD_BYTES + 1), "oversized"),
        (b"\xff\xff", "malformed"),
        (uc.encode_peer(uc.PeerRecord(b"", addrs)), "malformed"),
    ):
        with pytest.raises(uc.UcWireError) as caught:
            uc.decode_peer(data)
        assert caught.value.reason == reason


def test_multiaddr_bytes_never_raise() -> None:
    assert from_bytes(b"\xff\xff\xff") is None
    assert to_bytes("not an address") is None
    data = to_bytes("/ip4/1.2.3.4/tcp/4001")
    assert data is not None and from_bytes(data) == "/ip4/1.2.3.4/tcp/4001"


@pytest.mark.parametrize(
    ("addr", "private", "expected"),
    [
        ("/ip4/1.2.3.4/tcp/4001", False, f"/ip4/1.2.3.4/tcp/4001/p2p/{PEER}"),
        ("/ip4/1.2.3.4/tcp/4001/ws", False, f"/ip4/1.2.3.4/tcp/4001/ws/p2p/{PEER}"),
        (f"/ip4/1.2.3.4/tcp/4001/p2p/{PEER}", False, f"/ip4/1.2.3.4/tcp/4001/p2p/{PEER}"),
        (f"/ip4/1.2.3.4/tcp/4001/p2p/{OTHER}", False, None),  # names another peer
        ("/ip4/127.0.0.1/tcp/4001", False, None),  # loopback: not unless private
        ("/ip4/127.0.0.1/tcp/4001", True, f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"),
        ("/ip4/192.168.1.2/tcp/4001", False, None),
        ("/ip4/0.0.0.0/tcp/4001", True, None),
        ("/ip4/1.2.3.4/udp/4001/quic-v1", False, None),  # not a transport this node dials
        (f"/ip4/1.2.3.4/tcp/1/p2p/{OTHER}/p2p-circuit", False, None),
        ("/dns4/example.com/tcp/4001", False, None),
        ("garbage", True, None),
    ],
)
def test_which_announced_addresses_are_dialled(
    addr: str, private: bool, expected: str | None
) -> None:
    assert dial_target(addr, PEER, private=private) == expected

"""StrictSign checks (node/p2p/signatures.py) against py-libp2p's own, for every key type a
libp2p peer may sign with, and for each way a message can be forged or damaged."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from libp2p.crypto import rsa, secp256k1
from libp2p.crypto.ed25519 import create_new_key_pair as ed25519_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import signature_validator
from p2pchat.node.p2p import signatures
from p2pchat.node.p2p.signatures import has_valid_signature, signed_bytes

KEY_PAIRS: dict[str, Callable[[], KeyPair]] = {
    "ed25519": ed25519_key_pair,
    "secp256k1": secp256k1.create_new_key_pair,
    "rsa": lambda: rsa.create_new_key_pair(bits=2048),
}


def signed(pair: KeyPair, data: bytes = b"hello", *, with_key: bool = True) -> rpc_pb2.Message:
    """A message signed as py-libp2p, go-libp2p and js-libp2p sign them."""
    message = rpc_pb2.Message(
        data=data,
        topicIDs=["room"],
        from_id=ID.from_pubkey(pair.public_key).to_bytes(),
        seqno=(7).to_bytes(8, "big"),
    )
    message.signature = pair.private_key.sign(signed_bytes(message))
    if with_key:
        message.key = pair.public_key.serialize()
    return message


def library_verdict(message: rpc_pb2.Message) -> bool:
    try:
        return bool(signature_validator(message))
    except Exception:
        return False


@pytest.fixture(scope="module", params=sorted(KEY_PAIRS))
def pair(request: pytest.FixtureRequest) -> KeyPair:
    return KEY_PAIRS[request.param]()


@pytest.fixture(scope="module")
def other() -> KeyPair:
    return ed25519_key_pair()


def test_a_signed_message_verifies_as_the_library_says(pair: KeyPair) -> None:
    message = signed(pair)
    assert has_valid_signature(message) and library_verdict(message)


def test_the_key_field_may_be_left_out_only_when_the_peer_id_inlines_the_key(
    pair: KeyPair,
) -> None:
    message = signed(pair, with_key=False)
    inlined = ID(message.from_id).extract_public_key() is not None
    assert has_valid_signature(message) is inlined
    assert library_verdict(message) is inlined


DAMAGE: dict[str, Callable[[rpc_pb2.Message, KeyPair], None]] = {
    "data altered": lambda m, _: setattr(m, "data", m.data + b"!"),
    "seqno altered": lambda m, _: setattr(m, "seqno", (8).to_bytes(8, "big")),
    "room altered": lambda m, _: m.topicIDs.__setitem__(0, "elsewhere"),
    "room added": lambda m, _: m.topicIDs.append("elsewhere"),
    "no signature": lambda m, _: m.ClearField("signature"),
    "signature truncated": lambda m, _: setattr(m, "signature", m.signature[:-1]),
    "signature flipped": lambda m, _: setattr(
        m, "signature", bytes([m.signature[0] ^ 1]) + m.signature[1:]
    ),
    "sender claimed": lambda m, o: setattr(m, "from_id", ID.from_pubkey(o.public_key).to_bytes()),
    "sender not a PeerId": lambda m, _: setattr(m, "from_id", b"\x00\x05junk!"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_an_altered_or_forged_message_is_refused_as_the_library_refuses_it(
    pair: KeyPair, other: KeyPair, damage: str
) -> None:
    message = signed(pair)
    assert has_valid_signature(message)  # its sender's key is now remembered
    DAMAGE[damage](message, other)
    assert not has_valid_signature(message)
    assert not library_verdict(message)


@pytest.mark.parametrize(
    "key",
    [lambda other: other.public_key.serialize(), lambda other: b"\x08\x01\x12\x03abc"],
    ids=["somebody else's key", "not a key"],
)
def test_a_key_field_that_is_not_the_senders_key_is_refused_as_go_libp2p_refuses_it(
    pair: KeyPair, other: KeyPair, key: Callable[[KeyPair], bytes]
) -> None:
    # Where the PeerId inlines its key, py-libp2p ignores the key field (and accepts these);
    # go-libp2p requires it to be the sender's (messagePubKey: "bad signing key; doesn't match
    # originating peer").
    message = signed(pair)
    message.key = key(other)
    assert not has_valid_signature(message)


def test_a_remembered_sender_is_still_verified_message_by_message(other: KeyPair) -> None:
    signatures.signing_key.cache_clear()
    first = signed(other, b"first")
    assert has_valid_signature(first)
    forged = signed(ed25519_key_pair(), b"second")
    forged.from_id, forged.key = first.from_id, first.key  # the remembered sender and key
    assert not has_valid_signature(forged)
    assert signatures.signing_key.cache_info().hits >= 1


def test_senders_keys_are_resolved_once_and_remembered_within_a_bound() -> None:
    signatures.signing_key.cache_clear()
    pair = ed25519_key_pair()
    for n in range(100):
        assert has_valid_signature(signed(pair, b"%d" % n))
    info = signatures.signing_key.cache_info()
    assert (info.misses, info.hits) == (1, 99)
    assert info.maxsize == signatures.REMEMBERED_SIGNERS


def test_oversized_senders_and_keys_are_refused_before_they_are_remembered() -> None:
    signatures.signing_key.cache_clear()
    message = signed(ed25519_key_pair())
    message.key = b"\x08\x01\x12" + b"k" * (1 << 20)  # a megabyte of "key"
    assert not has_valid_signature(message)
    message = signed(ed25519_key_pair())
    message.from_id = b"\x00" * 1000
    assert not has_valid_signature(message)
    assert signatures.signing_key.cache_info().currsize == 0  # nothing of either kept

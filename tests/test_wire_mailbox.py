"""The mailbox protocol's codec (node/wire/mailbox.py): round trips, every refusal with its
reason, a fetch's authorization (key, archiver, time, ids), and arbitrary bytes never raising
anything but MailboxWireError."""

from __future__ import annotations

import contextlib

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st
from p2pchat.node.wire import mailbox
from p2pchat.node.wire.mailbox import (
    Deposit,
    Entry,
    Fetch,
    Letter,
    MailboxWireError,
    Response,
    Status,
)

ARCHIVER = b"\x00\x24" + b"k" * 36
NOW = 1_800_000_000_000


def signed_fetch(
    key: nacl.signing.SigningKey,
    archiver: bytes = ARCHIVER,
    at_ms: int = NOW,
    delete: tuple[bytes, ...] = (),
) -> Fetch:
    signed = mailbox.fetch_signed_bytes(archiver, at_ms, delete)
    return Fetch(bytes(key.verify_key), at_ms, key.sign(signed).signature, delete)


def test_round_trips() -> None:
    deposit = Deposit(b"a" * 32, b"sealed")
    assert mailbox.decode_request(mailbox.encode_request(deposit), 1024) == deposit
    fetch = signed_fetch(nacl.signing.SigningKey.generate(), delete=(b"i" * 16,))
    assert mailbox.decode_request(mailbox.encode_request(fetch), 1024) == fetch
    response = Response(Status.OK, (Entry(b"i" * 16, b"x"),), True)
    assert mailbox.decode_response(mailbox.encode_response(response)) == response
    letter = Letter(b"sender", b"message")
    assert mailbox.decode_letter(mailbox.encode_letter(letter)) == letter


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (mailbox.encode_request(Deposit(b"a" * 31, b"x")), "malformed"),
        (mailbox.encode_request(Deposit(b"a" * 32, b"")), "malformed"),
        (mailbox.encode_request(Deposit(b"a" * 32, b"x" * 1025)), "too_large"),
        (mailbox.encode_request(Fetch(b"k" * 31, NOW, b"s" * 64)), "malformed"),
        (mailbox.encode_request(Fetch(b"k" * 32, NOW, b"s" * 63)), "malformed"),
        (mailbox.encode_request(Fetch(b"k" * 32, NOW, b"s" * 64, (b"i" * 15,))), "malformed"),
        (
            mailbox.encode_request(
                Fetch(b"k" * 32, NOW, b"s" * 64, (b"i" * 16,) * (mailbox.MAX_DELETE_IDS + 1))
            ),
            "malformed",
        ),
        (b"", "malformed"),
        (b"\xff\xff\xff", "malformed"),
    ],
)
def test_refusals(request_bytes: bytes, reason: str) -> None:
    with pytest.raises(MailboxWireError) as refused:
        mailbox.decode_request(request_bytes, 1024)
    assert refused.value.reason == reason


def test_a_fetch_is_good_for_its_key_archiver_time_and_ids_only() -> None:
    key = nacl.signing.SigningKey.generate()
    mailbox.check_fetch(signed_fetch(key), ARCHIVER, NOW + 1000)
    bad = [
        signed_fetch(key, archiver=b"\x00\x24" + b"o" * 36),  # made for another archiver
        signed_fetch(key, at_ms=NOW - mailbox.MAX_CLOCK_SKEW_MS - 1),  # stale
        signed_fetch(key, at_ms=NOW + mailbox.MAX_CLOCK_SKEW_MS + 1),  # from the future
    ]
    fetch = signed_fetch(key, delete=(b"i" * 16,))
    bad.append(Fetch(fetch.auth_key, fetch.at_ms, fetch.signature, (b"j" * 16,)))  # other ids
    other = nacl.signing.SigningKey.generate()
    bad.append(Fetch(bytes(other.verify_key), NOW, fetch.signature))  # another key's mailbox
    for fetch in bad:
        with pytest.raises(MailboxWireError) as refused:
            mailbox.check_fetch(fetch, ARCHIVER, NOW)
        assert refused.value.reason == "unauthorized"
    assert signed_fetch(key).address == mailbox.address_of(bytes(key.verify_key))
    assert signed_fetch(key).address != mailbox.address_of(bytes(other.verify_key))


def test_a_response_with_an_unknown_status_or_bad_entry_is_malformed() -> None:
    for data in (
        mailbox.encode_response(Response(Status.OK, (Entry(b"i" * 15, b"x"),))),
        mailbox.encode_response(Response(Status.OK, (Entry(b"i" * 16, b""),))),
        b"\x08\x63",  # status 99
    ):
        with pytest.raises(MailboxWireError):
            mailbox.decode_response(data)


@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_the_codec_error(data: bytes) -> None:
    for decode in (
        lambda: mailbox.decode_request(data, 256),
        lambda: mailbox.decode_response(data),
        lambda: mailbox.decode_letter(data),
    ):
        with contextlib.suppress(MailboxWireError):
            decode()

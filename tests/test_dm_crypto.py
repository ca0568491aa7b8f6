"""Unit tests of the DM codec and the Olm sessions (sans-IO): keys bound to the PeerId, sessions
kept across a restart, and every bound on what a remote peer can make a peer keep."""

from __future__ import annotations

import itertools

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from p2pchat.node.store import Store
from p2pchat.node.wire import dm
from p2pchat.roles.peer.dm_crypto import DmDrop, OlmSessions, SessionLimits


class Peer:
    """A PeerId with its key, signing as the host does (the libp2p key, the bundle's prefix)."""

    def __init__(self) -> None:
        self.keys = create_new_key_pair()
        self.id = ID.from_pubkey(self.keys.public_key)
        self.text = self.id.to_base58()
        self.raw = self.id.to_bytes()

    def sign(self, data: bytes) -> bytes:
        return bytes(self.keys.private_key.sign(data))


def signed_by(peer: str, data: bytes, signature: bytes) -> bool:
    from p2pchat.node.p2p.peer_keys import signed_by as check

    return check(peer, data, signature)


def sessions(store: Store, peer: Peer, **limits: object) -> OlmSessions:
    clock = itertools.count()
    return OlmSessions(
        store.namespace("dm"),
        peer.text,
        peer.raw,
        peer.sign,
        signed_by,
        SessionLimits(**limits),  # type: ignore[arg-type]
        clock=lambda: float(next(clock)) * 1000,
    )


@pytest.fixture
def store(tmp_path):  # type: ignore[no-untyped-def]
    opened = Store.open(tmp_path / "store")
    yield opened
    opened.close()


def test_a_message_both_ways_from_the_signed_bundle(store: Store) -> None:
    alice, bob = Peer(), Peer()
    a, b = (
        sessions(store, alice),
        OlmSessions(
            Store.open(store.path.parent / "b").namespace("dm"),
            bob.text,
            bob.raw,
            bob.sign,
            signed_by,
            SessionLimits(),
        ),
    )
    bundle = a.verified_bundle(bob.text, bob.raw, b.bundle)
    first = a.encrypt(bob.text, b"hello", bundle)
    assert first.olm_type == dm.OLM_PRE_KEY and first.sender_bundle == a.bundle
    wire = dm.decode_message(dm.encode_message(first), 4096)
    assert b.decrypt(alice.text, alice.raw, wire) == b"hello"
    answer = b.encrypt(alice.text, b"hi", None)
    assert answer.olm_type == dm.OLM_NORMAL  # the inbound session answers
    assert a.decrypt(bob.text, bob.raw, answer) == b"hi"
    # A replayed message is not decrypted twice.
    with pytest.raises(DmDrop) as replay:
        a.decrypt(bob.text, bob.raw, answer)
    assert replay.value.reason == "undecryptable"


def test_a_bundle_signed_by_another_key_or_for_another_peer_is_refused(store: Store) -> None:
    alice, bob, mallory = Peer(), Peer(), Peer()
    a = sessions(store, alice)
    forged = dm.SignedBundle(a.bundle.bundle, mallory.sign(a.bundle.signed_bytes()))
    with pytest.raises(DmDrop) as bad:
        a.verified_bundle(alice.text, alice.raw, forged)
    assert bad.value.reason == "bad_bundle"
    # Signed by alice, but presented as bob's (bob's PeerId would not have signed it).
    with pytest.raises(DmDrop):
        a.verified_bundle(bob.text, bob.raw, a.bundle)
    with pytest.raises(dm.DmWireError):
        dm.decode_signed_bundle(b"\x0a" + bytes(2000))


def test_tampered_ciphertext_is_dropped(store: Store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    alice, bob = Peer(), Peer()
    a = sessions(store, alice)
    b_store = Store.open(tmp_path / "b")
    b = sessions(b_store, bob)
    first = a.encrypt(bob.text, b"hello", a.verified_bundle(bob.text, bob.raw, b.bundle))
    flipped = bytearray(first.ciphertext)
    flipped[-5] ^= 1
    with pytest.raises(DmDrop) as tampered:
        b.decrypt(alice.text, alice.raw, dm.DirectMessage(0, bytes(flipped), first.sender_bundle))
    assert tampered.value.reason == "undecryptable"
    assert b.decrypt(alice.text, alice.raw, first) == b"hello"  # the genuine one still passes
    b_store.close()


def test_sessions_survive_a_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    alice, bob = Peer(), Peer()
    sa, sb = Store.open(tmp_path / "a"), Store.open(tmp_path / "b")
    a, b = sessions(sa, alice), sessions(sb, bob)
    b.decrypt(
        alice.text,
        alice.raw,
        a.encrypt(bob.text, b"1", a.verified_bundle(bob.text, bob.raw, b.bundle)),
    )
    a.decrypt(bob.text, bob.raw, b.encrypt(alice.text, b"2", None))
    sa.close()
    sa = Store.open(tmp_path / "a")
    again = sessions(sa, alice)
    assert again.restored and again.has_session(bob.text)
    message = again.encrypt(bob.text, b"3", None)
    assert message.olm_type == dm.OLM_NORMAL
    assert b.decrypt(alice.text, alice.raw, message) == b"3"
    sa.close()
    sb.close()


def test_sessions_per_peer_and_peers_are_bounded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bob = Peer()
    sb = Store.open(tmp_path / "b")
    b = sessions(
        sb,
        bob,
        max_sessions_per_peer=2,
        max_peers=3,
        new_sessions_per_peer_burst=100,
        new_sessions_burst=100,
    )
    alice = Peer()
    for n in range(5):  # five fresh sessions from one peer
        sa = Store.open(tmp_path / f"a{n}")
        a = sessions(sa, alice)
        b.decrypt(
            alice.text,
            alice.raw,
            a.encrypt(bob.text, b"x", a.verified_bundle(bob.text, bob.raw, b.bundle)),
        )
        sa.close()
    assert b.session_count(alice.text) == 2
    for n in range(5):  # five fresh peers
        stranger = Peer()
        ss = Store.open(tmp_path / f"s{n}")
        s = sessions(ss, stranger)
        b.decrypt(
            stranger.text,
            stranger.raw,
            s.encrypt(bob.text, b"x", s.verified_bundle(bob.text, bob.raw, b.bundle)),
        )
        ss.close()
    assert b.peers() == 3 and b.session_count() <= 3 * 2
    assert len(list(sb.namespace("dm").items(b"s/"))) == b.session_count()
    sb.close()


def test_new_sessions_are_rate_limited(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bob = Peer()
    sb = Store.open(tmp_path / "b")
    b = OlmSessions(
        sb.namespace("dm"),
        bob.text,
        bob.raw,
        bob.sign,
        signed_by,
        SessionLimits(new_sessions_burst=3, new_sessions_per_second=0.001),
        clock=lambda: 0.0,
    )
    refused = 0
    for n in range(6):
        stranger = Peer()
        ss = Store.open(tmp_path / f"s{n}")
        s = sessions(ss, stranger)
        try:
            b.decrypt(
                stranger.text,
                stranger.raw,
                s.encrypt(bob.text, b"x", s.verified_bundle(bob.text, bob.raw, b.bundle)),
            )
        except DmDrop as drop:
            assert drop.reason == "session_rate"
            refused += 1
        ss.close()
    assert refused == 3
    sb.close()


def test_codec_refuses_oversized_and_malformed() -> None:
    with pytest.raises(dm.DmWireError) as big:
        dm.decode_message(b"x" * 101, 100)
    assert big.value.reason == "oversized"
    with pytest.raises(dm.DmWireError) as pre:
        dm.decode_message(dm.encode_message(dm.DirectMessage(0, b"abc")), 100)
    assert pre.value.reason == "malformed"
    with pytest.raises(dm.DmWireError):
        dm.decode_message(dm.encode_message(dm.DirectMessage(7, b"abc")), 100)
    with pytest.raises(dm.DmWireError):
        dm.decode_plaintext(dm.encode_plaintext(dm.Plaintext(b"1" * 16, "é" * 10, 1)), 10)
    ack = dm.Ack(dm.AckStatus.DELIVERED, b"1" * 16)
    assert dm.decode_ack(dm.encode_ack(ack)) == ack


def test_remembered_message_ids_are_bounded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import structlog
    from p2pchat.node.config import ChatSection
    from p2pchat.node.p2p.identity import load_or_create_identity
    from p2pchat.roles.peer.dm import REMEMBERED_IDS, DirectMessages
    from p2pchat.roles.peer.metrics import ChatMetrics
    from prometheus_client import CollectorRegistry

    from tests.chat_fakes import FakeHost

    store = Store.open(tmp_path / "store")
    direct = DirectMessages(
        FakeHost(load_or_create_identity(tmp_path)),  # type: ignore[arg-type]
        store.namespace("dm"),
        ChatSection(),
        ChatMetrics(CollectorRegistry()),
        lambda event: None,
        lambda peer: "anon",
        structlog.get_logger(),
    )
    ids = [n.to_bytes(16, "big") for n in range(REMEMBERED_IDS + 10)]
    assert all(direct._first_time("peer", i) for i in ids)
    assert len(direct._seen) == REMEMBERED_IDS
    assert not direct._first_time("peer", ids[-1])  # a resent message: acknowledged, not shown
    assert direct._first_time("peer", ids[0])  # the oldest were forgotten
    store.close()


def test_a_message_made_by_one_olm_account_with_another_peers_bundle_is_refused(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """Mallory passes on Alice's first message under her own PeerId and signed bundle: the
    Olm identity key in the message is not the bundle's, so no session is made."""
    alice, bob, mallory = Peer(), Peer(), Peer()
    stores = [Store.open(tmp_path / name) for name in ("a", "b", "m")]
    a, b, m = (sessions(s, p) for s, p in zip(stores, (alice, bob, mallory), strict=True))
    first = a.encrypt(bob.text, b"from alice", a.verified_bundle(bob.text, bob.raw, b.bundle))
    relabelled = dm.DirectMessage(first.olm_type, first.ciphertext, m.bundle)
    with pytest.raises(DmDrop) as refused:
        b.decrypt(mallory.text, mallory.raw, relabelled)
    assert refused.value.reason == "undecryptable" and b.session_count() == 0
    for store in stores:
        store.close()


def test_the_fallback_key_rotates_the_previous_opens_for_one_period_then_is_forgotten(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """Bob's fallback key rotates every 10 s (a fake wall clock): a first message made with
    the key of his earlier bundle still opens after one rotation (the grace) and no longer
    after two; the bundle he serves has the new key. The schedule survives a restart, and an
    account saved rotated by a run killed before stamping it is stamped, not rotated again."""
    alice, bob = Peer(), Peer()
    now = [1_000_000]
    b_store = Store.open(tmp_path / "b")

    def bobs() -> OlmSessions:
        return OlmSessions(
            b_store.namespace("dm"),
            bob.text,
            bob.raw,
            bob.sign,
            signed_by,
            SessionLimits(),
            wall_ms=lambda: now[0],
            fallback_rotation=10.0,
        )

    def first_message(with_bundle: dm.SignedBundle) -> dm.DirectMessage:
        a_store = Store.open(tmp_path / f"a{now[0]}-{len(list(tmp_path.iterdir()))}")
        a = sessions(a_store, alice)
        message = a.encrypt(bob.text, b"first", a.verified_bundle(bob.text, bob.raw, with_bundle))
        a_store.close()
        return message

    def opens(b: OlmSessions, message: dm.DirectMessage) -> bool:
        b.forget(alice.text)  # a new inbound session each time: only the fallback key decides
        try:
            return b.decrypt(alice.text, alice.raw, message) == b"first"
        except DmDrop:
            return False

    b = bobs()
    old_bundle = b.bundle
    to_old = [first_message(old_bundle) for _ in range(2)]
    assert b.fallback_due_in() == 10.0 and not b.rotate_fallback_if_due()
    now[0] += 9_999
    assert not b.rotate_fallback_if_due()
    now[0] += 1
    assert b.rotate_fallback_if_due()
    assert b.bundle != old_bundle
    new_key = dm.decode_bundle(b.bundle, bob.raw).fallback_key
    assert new_key != dm.decode_bundle(old_bundle, bob.raw).fallback_key
    assert opens(b, to_old[0])  # within the grace
    to_new = first_message(b.bundle)
    # A restart keeps the schedule: not due again before a whole period.
    b = bobs()
    assert dm.decode_bundle(b.bundle, bob.raw).fallback_key == new_key
    assert b.fallback_due_in() == 10.0
    now[0] += 10_000
    assert b.rotate_fallback_if_due()
    assert not opens(b, to_old[1])  # rotated out twice: forgotten
    assert opens(b, to_new)  # the control: the previous key still opens
    # Killed between saving the rotated account and its stamp: stamped at the next start.
    stale = b_store.namespace("dm").get(b"fallback-at")
    assert stale is not None
    now[0] += 10_000
    assert b.rotate_fallback_if_due()
    b_store.namespace("dm").put(b"fallback-at", stale)
    now[0] += 3_000
    b = bobs()
    assert b.fallback_due_in() == 10.0  # stamped now, not rotated again at once
    b_store.close()


def test_no_rotation_without_a_period(store: Store) -> None:
    bob = sessions(store, Peer())
    assert bob.fallback_due_in() is None and not bob.rotate_fallback_if_due()


def test_the_pair_mailboxes_fetched_are_bounded_to_those_written_to_last(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Of 12 peers written to, a recipient with ``max_pair_mailboxes`` 3 fetches its published
    mailbox, the pair mailboxes of the last 2 and 1 of the others in turn (all within 10
    fetches); each pair's key is the one the peer computes
    from its own side (so it deposits where the recipient fetches)."""
    import structlog
    from p2pchat.node.config import MailboxSection
    from p2pchat.node.p2p.identity import load_or_create_identity
    from p2pchat.roles.peer.dm_mailbox import Mail, MailKeys
    from p2pchat.roles.peer.metrics import ChatMetrics
    from prometheus_client import CollectorRegistry

    from tests.chat_fakes import FakeHost

    def mail_of(store: Store, peer: Peer, settings: MailboxSection) -> tuple[Mail, MailKeys]:
        own = MailKeys(store.namespace("dm"))
        olm = OlmSessions(
            store.namespace("dm"),
            peer.text,
            peer.raw,
            peer.sign,
            signed_by,
            SessionLimits(),
            mailbox_keys=(own.sealing_key, own.mailbox_key),
        )
        mail = Mail(
            FakeHost(load_or_create_identity(tmp_path / peer.text)),  # type: ignore[arg-type]
            store.namespace("dm"),
            own,
            olm,
            settings,
            4096,
            16384,
            ChatMetrics(CollectorRegistry()),
            structlog.get_logger(),
            lambda sender, plains: None,
            lambda reason, peer: None,
        )
        mail.bundle = olm.bundle  # type: ignore[attr-defined]
        return mail, own

    settings = MailboxSection(max_pair_mailboxes=3)
    bob = Peer()
    b_store = Store.open(tmp_path / "bob")
    b_mail, b_keys = mail_of(b_store, bob, settings)
    others = [Peer() for _ in range(12)]
    stores = [Store.open(tmp_path / f"o{n}") for n in range(12)]
    pairs = []
    for peer, store in zip(others, stores, strict=True):
        mail, keys = mail_of(store, peer, settings)
        b_mail.remember(peer.text, mail.bundle)  # type: ignore[attr-defined]
        b_mail.wrote_to(peer.text)
        pairs.append(bytes(keys.pair(b_keys.sealing_key).verify_key))
    read: set[bytes] = set()
    for _ in range(10):  # 2 newest each time, and 1 of the 10 others in turn
        fetched = b_mail.fetched_mailboxes()
        assert fetched[0] is None and len(fetched) == 4
        keys = [bytes(k.verify_key) for k in fetched[1:] if k is not None]
        assert set(pairs[-2:]) <= set(keys)
        read.update(keys)
    assert read == set(pairs)  # every peer written to had its turn
    for store in [b_store, *stores]:
        store.close()

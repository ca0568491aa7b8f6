"""Olm sessions of the direct messages, sans-IO: keys, sessions, their store, their bounds.

Cryptography: Olm (an X3DH-style first message from a published prekey, then the Double
Ratchet: forward secrecy and post-compromise recovery), from vodozemac, Matrix's Rust
implementation (audited by Least Authority, 2022), through its Python bindings
(``vodozemac`` on PyPI, wheels for CPython 3.11 x86_64). Weighed against it on this machine:
Syndace's ``x3dh`` + ``doubleratchet`` (pure Python, maintained, never audited), PyNaCl and
``pyhpke`` (sound primitives, but a ratchet built on them would be ours: home-made protocol
code), ``cryptography`` (primitives only). Nothing here does cryptography itself: it calls Olm
and keeps its state.

Keys bound to the PeerId: this peer's Olm account (Curve25519 identity key, a fallback key) is
published as a :class:`~p2pchat.node.wire.dm.KeyBundle` signed by the node's libp2p identity
key; a bundle is only used once its signature by the PeerId's key verifies, and a pre-key
message is only accepted with the sender's signed bundle (its identity key is the one the
message was made with). Only the fallback key is published, not one-time keys: handing a
one-time key to whoever asks lets a stranger drain them; the cost is a weaker first message
until the recipient answers (as with Signal's signed prekey alone).

Fallback-key rotation: the fallback key in the bundle is replaced every ``fallback_rotation``
(vodozemac's ``generate_fallback_key``); the account then still holds the previous one, so a
first message made with it (a sealed letter waiting on an archiver, or a bundle a sender kept)
still opens, until the next rotation makes the account forget it. So a key lives at most two
periods, the grace is one period, and the configuration keeps the period no shorter than the
mailbox TTL (a letter sealed just before a rotation still opens when fetched before its TTL).
A later copy of the account (a stolen disk) no longer holds a key rotated out twice, so it cannot
read the first messages made with it. The binding has no ``forget_fallback_key``; none is needed:
vodozemac keeps exactly the current and the previous fallback key. When the current key was made
is kept beside the account with that key's public part: an account saved rotated with its stamp
not yet written (a kill between the two writes) is stamped at the next start, never rotated twice.

State: the account and every session are pickled (vodozemac's encrypted pickles) into the
role's store namespace after every change, so a restart keeps the sessions. The pickle key is
the store's (:attr:`~p2pchat.node.store.KeyValue.pickle_key`): derived from the data dir's
passphrase when it has one (and the ``dm`` namespace's values are then sealed too), else the
fixed zero key, the data dir's privacy (0700) protecting them. A pickle that does not open
(another key, damaged) is dropped: a new account or session follows, never a crash.

Bounds on what remote peers can make this peer keep: at most ``max_sessions_per_peer``
sessions per peer (the least recently used goes), at most ``max_peers`` peers with sessions
(the least recently used peer's sessions go), new inbound sessions rate-limited per peer and
overall. Failures are :class:`DmDrop` with a reason (the drop counter's label).
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import vodozemac
from p2pchat.node.ratelimit import PeerRateLimit, TokenBucket
from p2pchat.node.store import KeyValue
from p2pchat.node.wire.dm import (
    OLM_NORMAL,
    OLM_PRE_KEY,
    DirectMessage,
    DmWireError,
    KeyBundle,
    SignedBundle,
    decode_bundle,
    encode_bundle,
)

NAMESPACE = "dm"
_ACCOUNT = b"account"
_SESSIONS = b"s/"
_STAMP = struct.Struct(">Q")  # last use, Unix ms, before each session's pickle
_FALLBACK_AT = b"fallback-at"  # when the current fallback key was made (Unix ms) + its key


Signer = Callable[[bytes], bytes]
SignatureCheck = Callable[[str, bytes, bytes], bool]
"""(peer_id, data, signature) -> whether the PeerId's key signed ``data``."""


class DmDrop(Exception):
    """A message refused; ``reason`` labels the drop counter, ``no_session`` tells the sender
    to start a new session (the message could not be decrypted) rather than retry."""

    def __init__(self, reason: str, detail: str, *, no_session: bool = False) -> None:
        super().__init__(detail)
        self.reason = reason
        self.no_session = no_session


@dataclass(frozen=True)
class SessionLimits:
    max_sessions_per_peer: int = 4
    max_peers: int = 1024
    new_sessions_per_peer_per_second: float = 0.2
    new_sessions_per_peer_burst: int = 5
    new_sessions_per_second: float = 5.0
    new_sessions_burst: int = 50


@dataclass
class _Session:
    session: vodozemac.Session
    used_ms: int


class OlmSessions:
    """This peer's Olm account and its sessions with other peers (one object per node)."""

    def __init__(
        self,
        keys: KeyValue,
        me: str,
        me_bytes: bytes,
        sign: Signer,
        signed_by: SignatureCheck,
        limits: SessionLimits,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        mailbox_keys: tuple[bytes, bytes] = (b"", b""),
        fallback_rotation: float | None = None,
    ) -> None:
        """``me``/``me_bytes``: this peer's PeerId (text, binary); ``sign`` signs with its
        libp2p key; ``signed_by`` checks another peer's signature; ``mailbox_keys``: the
        sealing and mailbox keys published in the bundle (:mod:`.dm_mailbox`);
        ``fallback_rotation``: seconds between two fallback keys (None: never rotated; the
        rotation is :meth:`rotate_fallback_if_due`'s, called by the role)."""
        self._sign = sign
        self._rotation_ms = None if fallback_rotation is None else int(fallback_rotation * 1000)
        self._mailbox_keys = mailbox_keys
        self._keys = keys
        self._pickle_key = keys.pickle_key
        self._me = me
        self._me_bytes = me_bytes
        self._signed_by = signed_by
        self._limits = limits
        self._clock = clock
        self._wall_ms = wall_ms
        self._per_peer = PeerRateLimit(
            limits.new_sessions_per_peer_per_second,
            limits.new_sessions_per_peer_burst,
            max_peers=max(1, limits.max_peers),
        )
        self._overall = TokenBucket(
            limits.new_sessions_per_second, limits.new_sessions_burst, clock()
        )
        self.account, self.restored = self._load_account()
        self._fallback_at = self._load_fallback_at()
        self.bundle = self._own_bundle(sign)
        # peer -> its sessions, most recently used last; peers least recently used first.
        self._sessions: OrderedDict[str, list[_Session]] = OrderedDict()
        self._load_sessions()

    # --- own keys --------------------------------------------------------------------------------

    def _load_account(self) -> tuple[vodozemac.Account, bool]:
        pickled = self._keys.get(_ACCOUNT)
        if pickled is not None:
            try:
                return vodozemac.Account.from_pickle(pickled.decode(), self._pickle_key), True
            except (ValueError, UnicodeDecodeError):
                pass  # unreadable: a new account (peers re-establish their sessions)
        account = vodozemac.Account()
        # vodozemac 0.10.0's type stubs lack the fallback key's two members (the module has them).
        account.generate_fallback_key()  # type: ignore[attr-defined]
        self._keys.put(_ACCOUNT, account.pickle(self._pickle_key).encode())
        return account, False

    def _current_fallback(self) -> bytes:
        fallback: vodozemac.Curve25519PublicKey
        (fallback,) = self.account.fallback_key.values()  # type: ignore[attr-defined]
        return fallback.to_bytes()

    def _load_fallback_at(self) -> int:
        """When the current fallback key was made; now if that is not known (an account from
        before rotation, or saved rotated by a run killed before it stamped it)."""
        stamped = self._keys.get(_FALLBACK_AT)
        if (
            stamped is not None
            and len(stamped) == _STAMP.size + 32
            and stamped[_STAMP.size :] == self._current_fallback()
        ):
            return int(_STAMP.unpack_from(stamped)[0])
        return self._stamp_fallback()

    def _stamp_fallback(self) -> int:
        now = self._wall_ms()
        self._keys.put(_FALLBACK_AT, _STAMP.pack(now) + self._current_fallback())
        return now

    def fallback_due_in(self) -> float | None:
        """Seconds until the fallback key is to be rotated (0: now); None if it never is."""
        if self._rotation_ms is None:
            return None
        return max(0.0, (self._fallback_at + self._rotation_ms - self._wall_ms()) / 1000)

    def rotate_fallback_if_due(self) -> bool:
        """Replace the published fallback key if it is as old as the rotation period: the
        account keeps the previous one (a first message made with it still opens) and forgets
        the one before; the bundle served from now on has the new key. Whether it rotated."""
        due = self.fallback_due_in()
        if due is None or due > 0:
            return False
        self.account.generate_fallback_key()  # type: ignore[attr-defined]
        # The account first: killed before the stamp, the next start stamps it (see above).
        self._keys.put(_ACCOUNT, self.account.pickle(self._pickle_key).encode())
        self._fallback_at = self._stamp_fallback()
        self.bundle = self._own_bundle(self._sign)
        return True

    def _own_bundle(self, sign: Signer) -> SignedBundle:
        fallback = self._current_fallback()
        bundle = encode_bundle(
            KeyBundle(
                peer_id=self._me_bytes,
                identity_key=self.account.curve25519_key.to_bytes(),
                fallback_key=fallback,
                created_at_ms=self._wall_ms(),
                sealing_key=self._mailbox_keys[0],
                mailbox_key=self._mailbox_keys[1],
            )
        )
        signed = SignedBundle(bundle, b"")
        return SignedBundle(bundle, sign(signed.signed_bytes()))

    # --- other peers' keys -----------------------------------------------------------------------

    def verified_bundle(self, peer: str, peer_bytes: bytes, signed: SignedBundle) -> KeyBundle:
        """The keys of ``peer``'s ``signed`` bundle, if its PeerId's key signed it.

        Raises:
            DmDrop: ``bad_bundle`` (bad signature, another peer's, malformed keys).
        """
        if not self._signed_by(peer, signed.signed_bytes(), signed.signature):
            raise DmDrop("bad_bundle", "bundle signature does not verify")
        try:
            return decode_bundle(signed, peer_bytes)
        except DmWireError as error:
            raise DmDrop(error.reason, str(error)) from None

    # --- sessions --------------------------------------------------------------------------------

    def has_session(self, peer: str) -> bool:
        return bool(self._sessions.get(peer))

    def session_count(self, peer: str | None = None) -> int:
        """Sessions held with ``peer`` (None: with every peer)."""
        if peer is not None:
            return len(self._sessions.get(peer, ()))
        return sum(len(s) for s in self._sessions.values())

    def peers(self) -> int:
        return len(self._sessions)

    def forget(self, peer: str) -> None:
        """Drop every session with ``peer`` (its state was lost: a new session follows)."""
        for held in self._sessions.pop(peer, []):
            self._keys.delete(self._session_key(peer, held.session.session_id))

    def encrypt(self, peer: str, plaintext: bytes, bundle: KeyBundle | None) -> DirectMessage:
        """``plaintext`` for ``peer``, in the most recently used session with it, or in a new
        one made from ``bundle`` (which must then be given; checked already).

        Raises:
            LookupError: no session with ``peer`` and no bundle.
        """
        held = self._sessions.get(peer)
        if held:
            current = held[-1]
        else:
            if bundle is None:
                raise LookupError(f"no session with {peer}")
            session = self.account.create_outbound_session(
                vodozemac.Curve25519PublicKey.from_bytes(bundle.identity_key),
                vodozemac.Curve25519PublicKey.from_bytes(bundle.fallback_key),
            )
            current = self._add(peer, session)
        olm_type, ciphertext = current.session.encrypt(plaintext).to_parts()
        self._touch(peer, current)
        return DirectMessage(olm_type, ciphertext, self.bundle if olm_type == OLM_PRE_KEY else None)

    def decrypt(self, peer: str, peer_bytes: bytes, message: DirectMessage) -> bytes:
        """The plaintext of ``message`` from ``peer``: decrypted by a session with it, or, for
        a pre-key message no session matches, by a new inbound session (rate-limited).

        Raises:
            DmDrop: ``undecryptable`` (no session decrypts it: tampered, replayed, or a
                session this peer lost; ``no_session`` set), ``bad_bundle``,
                ``session_rate`` (too many new sessions).
        """
        held = self._sessions.get(peer, [])
        if message.olm_type == OLM_NORMAL:
            olm = vodozemac.AnyOlmMessage.from_parts(OLM_NORMAL, message.ciphertext)
            for candidate in reversed(held):
                try:
                    plaintext = candidate.session.decrypt(olm)
                except ValueError:
                    continue
                self._touch(peer, candidate)
                return plaintext
            raise DmDrop("undecryptable", "no session decrypts it", no_session=True)
        assert message.sender_bundle is not None  # the codec refuses a pre-key message without
        bundle = self.verified_bundle(peer, peer_bytes, message.sender_bundle)
        try:
            prekey = vodozemac.AnyOlmMessage.from_parts(OLM_PRE_KEY, message.ciphertext)
            pre_key_message = prekey.to_pre_key()
        except ValueError:
            raise DmDrop("undecryptable", "not an Olm pre-key message", no_session=True) from None
        if pre_key_message is None:
            raise DmDrop("undecryptable", "not an Olm pre-key message", no_session=True)
        for candidate in reversed(held):
            if candidate.session.session_matches(pre_key_message):
                try:
                    plaintext = candidate.session.decrypt(prekey)
                except ValueError:
                    raise DmDrop("undecryptable", "pre-key message of a known session") from None
                self._touch(peer, candidate)
                return plaintext
        now = self._clock()
        if not self._per_peer.allow(peer, now) or not self._overall.take(now):
            raise DmDrop("session_rate", "too many new sessions")
        try:
            session, plaintext = self.account.create_inbound_session(
                vodozemac.Curve25519PublicKey.from_bytes(bundle.identity_key), pre_key_message
            )
        except ValueError:
            raise DmDrop("undecryptable", "no session from it", no_session=True) from None
        self._keys.put(_ACCOUNT, self.account.pickle(self._pickle_key).encode())
        self._add(peer, session)
        return plaintext

    # --- bookkeeping -----------------------------------------------------------------------------

    def _add(self, peer: str, session: vodozemac.Session) -> _Session:
        held = self._sessions.pop(peer, [])
        while len(held) >= self._limits.max_sessions_per_peer:
            oldest = held.pop(0)
            self._keys.delete(self._session_key(peer, oldest.session.session_id))
        added = _Session(session, self._wall_ms())
        held.append(added)
        self._sessions[peer] = held  # the most recently used peer: last, never evicted here
        while len(self._sessions) > self._limits.max_peers:
            self.forget(next(iter(self._sessions)))
        self._save(peer, added)
        return added

    def _touch(self, peer: str, held: _Session) -> None:
        sessions = self._sessions[peer]
        sessions.remove(held)
        sessions.append(held)
        self._sessions.move_to_end(peer)
        held.used_ms = self._wall_ms()
        self._save(peer, held)

    def _session_key(self, peer: str, session_id: str) -> bytes:
        return _SESSIONS + peer.encode() + b"/" + session_id.encode()

    def _save(self, peer: str, held: _Session) -> None:
        self._keys.put(
            self._session_key(peer, held.session.session_id),
            _STAMP.pack(held.used_ms) + held.session.pickle(self._pickle_key).encode(),
        )

    def _load_sessions(self) -> None:
        if not self.restored:  # a new account: sessions of the old one are void
            for key, _ in list(self._keys.items(_SESSIONS)):
                self._keys.delete(key)
            return
        loaded: list[tuple[int, str, _Session]] = []
        for key, value in self._keys.items(_SESSIONS):
            peer = key[len(_SESSIONS) :].split(b"/", 1)[0].decode(errors="replace")
            try:
                (used,) = _STAMP.unpack_from(value)
                session = vodozemac.Session.from_pickle(
                    value[_STAMP.size :].decode(), self._pickle_key
                )
            except (ValueError, struct.error, UnicodeDecodeError):
                self._keys.delete(key)
                continue
            loaded.append((used, peer, _Session(session, used)))
        for _, peer, held in sorted(loaded, key=lambda item: item[0]):
            self._sessions.setdefault(peer, []).append(held)
            self._sessions.move_to_end(peer)


def repickle(keys: KeyValue, old: bytes, new: bytes) -> int:
    """Re-pickle the Olm account and sessions kept in ``keys`` (the ``dm`` namespace) from
    pickle key ``old`` to ``new`` (``p2pchat passphrase set|remove``); how many were. A pickle
    that does not open with ``old`` (already under ``new``: an interrupted run resumed) is
    left as it is."""
    done = 0
    for key, value in list(keys.items()):
        if key == _ACCOUNT:
            try:
                account = vodozemac.Account.from_pickle(value.decode(), old)
            except (ValueError, UnicodeDecodeError):
                continue
            keys.put(key, account.pickle(new).encode())
        elif key.startswith(_SESSIONS):
            try:
                session = vodozemac.Session.from_pickle(value[_STAMP.size :].decode(), old)
            except (ValueError, UnicodeDecodeError):
                continue
            keys.put(key, value[: _STAMP.size] + session.pickle(new).encode())
        else:
            continue
        done += 1
    return done

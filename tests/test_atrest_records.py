"""Encryption at rest, in process on a real RocksDB store (issue #19, must have 5): the
passphrase file, sealed records bound to their keys, sealed namespaces, sealed history bodies,
the sealed identity key, and the conversion ``p2pchat passphrase set|remove`` runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from p2pchat.node.atrest import (
    NO_PASSPHRASE_PICKLE_KEY,
    AtRestKeys,
    KdfParams,
    SealError,
    create_vault,
    is_sealed,
    rewrap,
    unlock,
    vault_path,
)
from p2pchat.node.atrest_store import compact, convert_store
from p2pchat.node.errors import IdentityError, PassphraseError
from p2pchat.node.history import History, StoredMessage
from p2pchat.node.p2p.identity import load_or_create_identity, reseal_identity
from p2pchat.node.store import Store

# Cheap parameters: the tests check the file and the cipher, not Argon2id's cost.
FAST = KdfParams(iterations=1, lanes=1, memory_kib=64)
SECRET = b"the eagle lands at 0430"


def keys() -> AtRestKeys:
    return AtRestKeys(bytes(range(32)))


def on_disk(path: Path, needle: bytes) -> list[Path]:
    return [f for f in path.rglob("*") if f.is_file() and needle in f.read_bytes()]


def message(n: int, body: bytes = SECRET) -> StoredMessage:
    return StoredMessage("room", bytes([n]) * 16, 1000 + n, 2000 + n, "12D3KooWsender", body)


def test_a_sealed_value_opens_only_under_its_own_key_and_untampered() -> None:
    k = keys()
    sealed = k.seal(b"dm/w/1", SECRET)
    assert is_sealed(sealed) and SECRET not in sealed
    assert k.open(b"dm/w/1", sealed) == SECRET
    with pytest.raises(SealError):
        k.open(b"dm/w/2", sealed)  # moved to another record
    with pytest.raises(SealError):
        k.open(b"dm/w/1", sealed[:-1] + bytes([sealed[-1] ^ 1]))  # tampered
    with pytest.raises(SealError):
        k.open(b"dm/w/1", sealed[:20])  # truncated
    with pytest.raises(SealError):
        AtRestKeys(bytes(32)).open(b"dm/w/1", sealed)  # another data dir's key
    assert k.pickle_key != NO_PASSPHRASE_PICKLE_KEY and len(k.pickle_key) == 32


def test_the_passphrase_file_unlocks_only_with_its_passphrase(tmp_path: Path) -> None:
    made = create_vault(tmp_path, "right", FAST)
    assert vault_path(tmp_path).stat().st_mode & 0o777 == 0o600
    assert b"right" not in vault_path(tmp_path).read_bytes()
    assert unlock(tmp_path, "right").pickle_key == made.pickle_key
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        unlock(tmp_path, "wrong")
    before = vault_path(tmp_path).read_bytes()
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        rewrap(tmp_path, "wrong", "new", FAST)
    assert vault_path(tmp_path).read_bytes() == before  # nothing changed
    rewrap(tmp_path, "right", "new", FAST)
    with pytest.raises(PassphraseError):
        unlock(tmp_path, "right")
    # The data key is the same: everything sealed before still opens.
    assert unlock(tmp_path, "new").pickle_key == made.pickle_key
    with pytest.raises(PassphraseError, match="empty"):
        create_vault(tmp_path / "x", "", FAST)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.update(format=9),
        lambda d: d["kdf"].update(memory_kib=1 << 40),  # would allocate what the file says
        lambda d: d.update(data_key="not base64!"),
        lambda d: d.pop("kdf"),
    ],
)
def test_a_damaged_passphrase_file_is_one_clear_error(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    create_vault(tmp_path, "right", FAST)
    document = json.loads(vault_path(tmp_path).read_text())
    damage(document)
    vault_path(tmp_path).write_text(json.dumps(document))
    with pytest.raises(PassphraseError, match="damaged"):
        unlock(tmp_path, "right")


def test_a_sealed_namespace_keeps_no_plaintext_and_a_moved_value_reads_as_absent(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "store", keys())
    dm, names = store.namespace("dm"), store.namespace("peer")
    dm.put(b"w/1", SECRET)
    dm.put(b"w/2", b"another")
    names.put(b"name", b"alice")  # not a sealed namespace: as it was
    assert dm.get(b"w/1") == SECRET and list(dm.items(b"w/")) == [
        (b"w/1", SECRET),
        (b"w/2", b"another"),
    ]
    assert is_sealed(store.db[b"dm/w/1"]) and store.db[b"peer/name"] == b"alice"
    assert dm.pickle_key == keys().pickle_key
    # Swapping two records on disk: neither opens (bound to its key), neither is shown.
    store.db[b"dm/w/1"], store.db[b"dm/w/2"] = store.db[b"dm/w/2"], store.db[b"dm/w/1"]
    assert dm.get(b"w/1") is None and list(dm.items(b"w/")) == []
    store.close()
    assert on_disk(tmp_path, SECRET) == []
    assert on_disk(tmp_path, b"alice")  # the control: what is not sealed is found


def test_without_keys_nothing_is_sealed(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    store.namespace("dm").put(b"w/1", SECRET)
    assert store.db[b"dm/w/1"] == SECRET
    assert store.namespace("dm").pickle_key == NO_PASSPHRASE_PICKLE_KEY
    History(store).add(message(1))
    assert (
        SECRET
        in store.db[next(k for k, _ in store.db.items(from_key=b"hist/") if k.startswith(b"hist/"))]
    )
    store.close()


def test_history_bodies_are_sealed_and_a_swapped_body_is_refused(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store", keys())
    history = History(store)
    history.add_many([message(1), message(2, b"second body")])
    assert [m.envelope for m in history.last("room", 5)] == [SECRET, b"second body"]
    assert history.count("room") == 2
    hist_keys = [k for k, _ in store.db.items(from_key=b"hist/") if k.startswith(b"hist/")]
    assert all(SECRET not in store.db[k] for k in hist_keys)
    first, second = hist_keys
    store.db[first], store.db[second] = store.db[second], store.db[first]
    assert history.last("room", 5) == []  # neither opens under the other's key: not shown
    assert history.lookup("room", [message(1).message_id]) == []
    store.close()
    assert on_disk(tmp_path, SECRET) == []


def test_the_identity_key_is_sealed_and_needs_the_keys(tmp_path: Path) -> None:
    made = load_or_create_identity(tmp_path, keys())
    raw = made.key_pair.private_key.serialize()
    assert on_disk(tmp_path, raw) == [] and on_disk(tmp_path, raw[-32:]) == []
    assert load_or_create_identity(tmp_path, keys()).peer_id == made.peer_id
    with pytest.raises(IdentityError, match="encrypted"):
        load_or_create_identity(tmp_path)
    with pytest.raises(IdentityError, match="does not open"):
        load_or_create_identity(tmp_path, AtRestKeys(bytes(32)))
    reseal_identity(tmp_path, keys(), seal=False)
    assert (tmp_path / "identity.key").read_bytes() == raw
    assert load_or_create_identity(tmp_path).peer_id == made.peer_id


def test_converting_a_store_seals_everything_private_then_opens_it_again(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "store")
    History(store).add_many([message(n) for n in range(1, 6)])
    store.namespace("dm").put(b"w/1", b"waiting " + SECRET)
    size = History(store).size("room")
    store.close()
    assert on_disk(tmp_path, SECRET)  # the control: plaintext before

    store = Store.open(tmp_path / "store")
    done = convert_store(store, keys(), seal=True)
    assert (done.history, done.values, done.skipped) == (5, 1, 0)
    assert convert_store(store, keys(), seal=True).history == 0  # idempotent: resumable
    compact(store)
    store.close()
    assert on_disk(tmp_path, SECRET) == []

    store = Store.open(tmp_path / "store", keys())
    history = History(store)
    assert [m.envelope for m in history.last("room", 10)] == [SECRET] * 5
    assert history.size("room") > size  # the sealed bodies are counted as they are now
    assert store.namespace("dm").get(b"w/1") == b"waiting " + SECRET
    done = convert_store(store, keys(), seal=False)
    assert (done.history, done.values) == (5, 1)
    store.close()
    store = Store.open(tmp_path / "store")
    assert [m.envelope for m in History(store).last("room", 10)] == [SECRET] * 5
    assert History(store).size("room") == size
    assert store.namespace("dm").get(b"w/1") == b"waiting " + SECRET
    store.close()


def test_ratchet_state_that_does_not_open_is_replaced_never_a_crash(tmp_path: Path) -> None:
    from tests.test_dm_crypto import Peer, sessions

    me = Peer()
    store = Store.open(tmp_path / "store", keys())
    first = sessions(store, me)
    assert not first.restored
    sealed = store.db[b"dm/account"]
    assert is_sealed(sealed)
    assert sessions(store, me).restored  # opens with the data dir's pickle key
    # Another data dir's key (a restored backup of the wrong one), then a tampered value: a
    # new account each time, said by `restored`, and the node goes on.
    store.close()
    store = Store.open(tmp_path / "store", AtRestKeys(bytes(32)))
    again = sessions(store, me)
    assert not again.restored
    bundle = again.verified_bundle(me.text, me.raw, again.bundle)
    assert bundle.identity_key != first.account.curve25519_key.to_bytes()
    raw = store.db[b"dm/account"]
    store.db[b"dm/account"] = raw[:-1] + bytes([raw[-1] ^ 1])
    assert not sessions(store, me).restored
    store.close()

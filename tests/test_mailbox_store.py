"""The archiver's mailbox store on a real RocksDB (roles/archiver/mailbox_store.py): every bound
refuses with its reason and holds exactly what it admitted; fetch pages oldest first and skips
expired letters; delete and the TTL sweep give the room back; a restart counts what is kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from p2pchat.node.config import MailboxSection
from p2pchat.node.store import Store
from p2pchat.roles.archiver.mailbox_store import MAX_ENTRIES_PER_FETCH, NAMESPACE, MailboxStore

A = b"a" * 32
B = b"b" * 32
NOW = 1_800_000_000_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "store")
    yield opened
    opened.close()


def mailboxes(store: Store, **limits: float) -> MailboxStore:
    boxes = MailboxStore(store.namespace(NAMESPACE), MailboxSection(**limits))  # type: ignore[arg-type]
    boxes.load()
    return boxes


def test_per_mailbox_entries_and_bytes(store: Store) -> None:
    boxes = mailboxes(store, max_entries_per_mailbox=2, max_bytes_per_mailbox=1024)
    assert boxes.deposit(A, b"x" * 100, "p1", "g1", NOW) is None
    assert boxes.deposit(A, b"x" * 100, "p2", "g2", NOW) is None
    assert boxes.deposit(A, b"x" * 100, "p3", "g3", NOW) == "mailbox_full"
    assert boxes.deposit(B, b"x" * 1000, "p3", "g3", NOW) is None
    assert boxes.deposit(B, b"x" * 100, "p4", "g4", NOW) == "mailbox_full"  # 1,100 bytes
    assert (boxes.entries, boxes.size, boxes.mailboxes) == (3, 1200, 2)


def test_totals_mailboxes_entries_and_bytes(store: Store) -> None:
    boxes = mailboxes(store, max_mailboxes=2, max_entries=3, max_bytes=2048)
    assert boxes.deposit(A, b"x" * 100, "p1", "g1", NOW) is None
    assert boxes.deposit(B, b"x" * 100, "p2", "g2", NOW) is None
    assert boxes.deposit(b"c" * 32, b"x", "p3", "g3", NOW) == "full"  # a third mailbox
    assert boxes.deposit(A, b"x" * 1900, "p3", "g3", NOW) == "full"  # bytes in all
    assert boxes.deposit(A, b"x" * 100, "p3", "g3", NOW) is None
    assert boxes.deposit(B, b"x", "p4", "g4", NOW) == "full"  # letters in all
    assert boxes.entries == 3


def test_quotas_per_depositor_and_group_entries_and_bytes(store: Store) -> None:
    boxes = mailboxes(
        store,
        max_entries_per_depositor=2,
        max_bytes_per_depositor=1024,
        max_entries_per_group=3,
        max_bytes_per_group=1500,
        max_entry_bytes=2048,
    )
    assert boxes.deposit(A, b"x" * 10, "p1", "g1", NOW) is None
    assert boxes.deposit(A, b"x" * 10, "p1", "g1", NOW) is None
    assert boxes.deposit(B, b"x" * 10, "p1", "g1", NOW) == "quota"  # p1's letters
    assert boxes.deposit(A, b"x" * 1025, "p2", "g1", NOW) == "quota"  # p2's bytes
    assert boxes.deposit(A, b"x" * 10, "p2", "g1", NOW) is None
    assert boxes.deposit(A, b"x" * 10, "p3", "g1", NOW) == "quota"  # g1's letters
    assert boxes.deposit(A, b"x" * 10, "p3", "g2", NOW) is None
    assert boxes.deposit(A, b"x" * 1000, "p4", "g2", NOW) is None
    assert boxes.deposit(A, b"x" * 1000, "p5", "g2", NOW) == "quota"  # g2's bytes
    # Fetched and deleted: the depositor's room comes back.
    entries, _ = boxes.fetch(A, 1 << 20, NOW)
    assert boxes.delete(A, tuple(e.id for e in entries[:2])) == 2
    assert boxes.deposit(B, b"x" * 10, "p1", "g1", NOW) is None
    assert boxes.depositors <= boxes.entries * 2


def test_too_large(store: Store) -> None:
    boxes = mailboxes(store, max_entry_bytes=1024)
    assert boxes.deposit(A, b"x" * 1025, "p1", "g1", NOW) == "too_large"
    assert boxes.entries == 0


def test_fetch_pages_oldest_first_and_delete(store: Store) -> None:
    boxes = mailboxes(store, max_entries_per_mailbox=1000, max_entries_per_depositor=1000)
    for n in range(MAX_ENTRIES_PER_FETCH + 4):
        assert boxes.deposit(A, n.to_bytes(2, "big"), "p", "g", NOW + n) is None
    assert boxes.deposit(B, b"other", "p", "g", NOW) is None
    page, more = boxes.fetch(A, 1 << 20, NOW + 1000)
    assert more and len(page) == MAX_ENTRIES_PER_FETCH
    assert [int.from_bytes(e.sealed, "big") for e in page] == list(range(MAX_ENTRIES_PER_FETCH))
    small, more = boxes.fetch(A, 5, NOW + 1000)  # bytes: at least one, then what fits
    assert more and len(small) == 2
    assert boxes.delete(A, tuple(e.id for e in page)) == MAX_ENTRIES_PER_FETCH
    assert boxes.delete(A, tuple(e.id for e in page)) == 0  # gone already
    assert boxes.delete(B, (page[0].id,)) == 0  # another mailbox's id
    rest, more = boxes.fetch(A, 1 << 20, NOW + 1000)
    assert not more and len(rest) == 4
    assert boxes.entries == 5


def test_ttl_sweep_and_fetch_skip_expired(store: Store) -> None:
    boxes = mailboxes(store, ttl=10)
    assert boxes.deposit(A, b"old", "p", "g", NOW) is None
    assert boxes.deposit(A, b"new", "p", "g", NOW + 8000) is None
    later = NOW + 10_001
    assert [e.sealed for e in boxes.fetch(A, 1 << 20, later)[0]] == [b"new"]
    assert boxes.sweep(later) == 1
    assert (boxes.entries, boxes.size) == (1, 3)
    assert boxes.sweep(later) == 0
    assert boxes.sweep(NOW + 18_001) == 1
    assert (boxes.entries, boxes.mailboxes) == (0, 0)
    assert list(store.namespace(NAMESPACE).items()) == []  # letters and index both gone


def test_a_restart_counts_what_is_kept(store: Store) -> None:
    boxes = mailboxes(store, max_entries_per_mailbox=2)
    assert boxes.deposit(A, b"x" * 10, "p", "g", NOW) is None
    assert boxes.deposit(A, b"x" * 10, "p", "g", NOW) is None
    again = mailboxes(store, max_entries_per_mailbox=2)
    assert (again.entries, again.size, again.mailboxes) == (2, 20, 1)
    assert again.deposit(A, b"x", "q", "h", NOW) == "mailbox_full"
    entries, _ = again.fetch(A, 1 << 20, NOW)
    assert again.delete(A, (entries[0].id,)) == 1  # a letter deposited before the restart
    assert again.deposit(A, b"y", "q", "h", NOW) is None
    ids = {e.id for e in again.fetch(A, 1 << 20, NOW)[0]}
    assert len(ids) == 2  # the serial went on: no id reused

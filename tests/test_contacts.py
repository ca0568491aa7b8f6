"""Name bindings and verified contacts (:mod:`p2pchat.roles.peer.contacts`) on a real RocksDB
store: the first PeerId seen with a name keeps it, across reopening; a flood of fresh PeerIds
with fresh names cannot grow the table past its bound (the least recently used unverified
binding is forgotten, counted), verified contacts are never forgotten, and a conflict is warned
about once. And the safety number's construction (:mod:`p2pchat.roles.peer.safety_number`)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import structlog
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.store import Store
from p2pchat.roles.peer.contacts import (
    MAX_WARNED,
    NAMESPACE,
    WARNINGS_BURST,
    Conflict,
    Contacts,
)
from p2pchat.roles.peer.dm_rooms import DmRooms
from p2pchat.roles.peer.events import DirectEvent, ErrorEvent, MessageEvent
from p2pchat.roles.peer.metrics import ChatMetrics
from p2pchat.roles.peer.names import Names
from p2pchat.roles.peer.rendering import render_text
from p2pchat.roles.peer.safety_number import fingerprint, grouped, safety_number
from p2pchat.roles.peer.trust import Trust, conflict_notice
from prometheus_client import CollectorRegistry

from tests.peer_ids import fresh_peer_id, fresh_peer_ids

ME = fresh_peer_id()


def _contacts(store: Store, metrics: ChatMetrics, max_bindings: int) -> Contacts:
    refusals = RefusalLog(structlog.get_logger(), "name binding dropped")
    return Contacts(ME, store.namespace(NAMESPACE), max_bindings, metrics, refusals)


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_first_use_binds_a_conflict_is_warned_once_and_bindings_are_kept(tmp_path: Path) -> None:
    alice, mallory = fresh_peer_id(), fresh_peer_id()
    registry = CollectorRegistry()
    store = Store.open(tmp_path / "store")
    try:
        contacts = _contacts(store, ChatMetrics(registry), 10)
        assert contacts.claimed(alice, "Alice") is None
        assert contacts.claimed(alice, "alice") is None  # the same name, another case
        assert contacts.claimed(ME, "Alice") is None  # this peer itself
        assert contacts.claimed(mallory, "anon") is None  # the default name binds nobody
        assert contacts.claimed(mallory, "ALICE") == Conflict("ALICE", mallory, alice, False)
        assert contacts.claimed(mallory, "Alice") is None  # warned once
        assert contacts.bound_to("alice") == alice
        assert _sample(registry, "p2pchat_name_conflicts_total", outcome="warned") == 1
    finally:
        store.close()
    store = Store.open(tmp_path / "store")
    try:
        contacts = _contacts(store, ChatMetrics(CollectorRegistry()), 10)
        assert contacts.bound_to("Alice") == alice  # kept across reopening
        assert contacts.claimed(mallory, "alice") == Conflict("alice", mallory, alice, False)
        # Verifying Mallory (the user compared numbers with them) binds the name to them.
        assert contacts.verify(mallory, "alice")
        assert contacts.bound_to("alice") == mallory
        assert contacts.claimed(alice, "alice") == Conflict("alice", alice, mallory, True)
    finally:
        store.close()


def test_a_flood_of_fresh_names_is_bounded_and_verified_contacts_stay(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    store = Store.open(tmp_path / "store")
    friend = fresh_peer_id()
    try:
        contacts = _contacts(store, ChatMetrics(registry), 100)
        contacts.claimed(friend, "friend")
        assert contacts.verify(friend, "friend")
        for n, stranger in enumerate(fresh_peer_ids(5000)):
            contacts.claimed(stranger, f"stranger{n}")
        assert len(contacts) == 100
        assert contacts.bound_to("friend") == friend  # verified: never forgotten
        assert contacts.bound_to("stranger4999") is not None  # the newest are kept
        assert contacts.bound_to("stranger0") is None
        assert _sample(registry, "p2pchat_name_bindings_dropped_total", reason="evicted") == 4901
        assert _sample(registry, "p2pchat_name_bindings") == 100
        assert sum(1 for _ in store.namespace(NAMESPACE).items(b"n/")) == 100  # and on disk
    finally:
        store.close()
    # Every binding a verified contact's: a new name is not bound (counted as full).
    store = Store.open(tmp_path / "small")
    registry = CollectorRegistry()
    try:
        contacts = _contacts(store, ChatMetrics(registry), 2)
        for n, peer in enumerate(fresh_peer_ids(2)):
            assert contacts.verify(peer, f"friend{n}")
        assert contacts.claimed(fresh_peer_id(), "newcomer") is None
        assert contacts.bound_to("newcomer") is None and len(contacts) == 2
        assert _sample(registry, "p2pchat_name_bindings_dropped_total", reason="full") == 1
    finally:
        store.close()


def test_the_safety_number_is_symmetric_and_differs_per_pair() -> None:
    a, b, c = fresh_peer_id(), fresh_peer_id(), fresh_peer_id()
    assert safety_number(a, b) == safety_number(b, a)
    assert safety_number(a, b) != safety_number(a, c)
    assert safety_number(a, b) == "".join(sorted((fingerprint(a), fingerprint(b))))
    number = safety_number(a, b)
    assert len(number) == 60 and number.isdigit()
    assert grouped(number).count("\n") == 1 and len(grouped(number).split()) == 12


def test_an_ambiguous_name_is_refused_in_one_line_naming_at_most_five(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    try:
        metrics = ChatMetrics(CollectorRegistry())
        contacts = _contacts(store, metrics, 100)
        names = Names(ME, store.namespace("peer"), None, claims=contacts.claimed)
        trust = Trust(ME, contacts, names, lambda event: None)
        sams = list(fresh_peer_ids(8))
        names.used(sams[0], "sam")
        assert trust.resolve("Sam", "msg") == sams[0]  # one user: it
        for peer in sams[1:]:
            names.used(peer, "sam")
        error = trust.resolve("sam", "msg")
        assert isinstance(error, ErrorEvent) and error.code == "ambiguous_name"
        assert "\n" not in error.text and "and 3 more" in error.text
        assert f"{sams[0]} (first seen)" in error.text
        assert sum(peer in error.text for peer in sams) == 5
        assert trust.resolve(sams[3], "msg") == sams[3]  # a PeerId is taken as given
    finally:
        store.close()


def test_the_console_marks_verified_contacts_and_shouts_conflicts() -> None:
    bob, mallory = fresh_peer_id(), fresh_peer_id()
    message = MessageEvent("lobby", "ab", bob, "bob", "hi", 0, False, verified=True)
    assert "bob ✓ (" in render_text(message)
    assert " ✓" not in render_text(dataclasses.replace(message, verified=False))
    direct = DirectEvent(bob, "bob", "ab", "psst", 0, False, verified=True)
    assert "[dm] bob ✓ (" in render_text(direct)
    loud = render_text(conflict_notice(Conflict("bob", mallory, bob, True)))
    assert loud.startswith("* !!! KEY CHANGE") and mallory in loud
    assert render_text(conflict_notice(Conflict("bob", mallory, bob, False))).startswith(
        "* !! WARNING"
    )


def test_an_impostors_conversation_is_tagged_with_its_peer_id(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    try:
        contacts = _contacts(store, ChatMetrics(CollectorRegistry()), 100)
        names = Names(ME, store.namespace("peer"), None, claims=contacts.claimed)
        alice, mallory, nobody = fresh_peer_id(), fresh_peer_id(), fresh_peer_id()
        names.used(alice, "alice")
        names.used(mallory, "alice")
        trust = Trust(ME, contacts, names, lambda event: None)
        rooms = DmRooms(None, ME, names.name_of, trust.resolve, trust.mark, trust.bound_to)
        assert rooms.tag(alice) == "@alice"
        assert rooms.tag(mallory) == f"@{mallory}"
        assert rooms.tag(nobody) == f"@{nobody}"
    finally:
        store.close()


def test_a_flood_of_impostors_is_not_a_flood_of_warnings(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    store = Store.open(tmp_path / "store")
    now = [0.0]
    friend, alice = fresh_peer_id(), fresh_peer_id()
    try:
        contacts = Contacts(
            ME,
            store.namespace(NAMESPACE),
            100,
            ChatMetrics(registry),
            RefusalLog(structlog.get_logger(), "name binding dropped"),
            clock=lambda: now[0],
        )
        contacts.claimed(alice, "alice")
        assert contacts.verify(friend, "friend")
        shown = [contacts.claimed(p, "alice") for p in fresh_peer_ids(2000)]
        assert sum(c is not None for c in shown) == WARNINGS_BURST
        # A verified contact's key change is shown whatever the rate.
        assert contacts.claimed(fresh_peer_id(), "friend") is not None
        now[0] += 5.0
        assert sum(contacts.claimed(p, "alice") is not None for p in fresh_peer_ids(50)) == 5
        assert _sample(registry, "p2pchat_name_conflicts_total", outcome="warned") == 25
        assert _sample(registry, "p2pchat_name_conflicts_total", outcome="key_change") == 1
        assert _sample(registry, "p2pchat_name_conflicts_total", outcome="rate_limited") == 2025
        assert len(contacts._warned) == MAX_WARNED
    finally:
        store.close()


def test_after_a_restart_the_oldest_bindings_go_first_not_the_first_by_name(
    tmp_path: Path,
) -> None:
    names = ["b0", "d1", "a2", "e3", "c4"]  # bound in this order, not in byte order
    peers = list(fresh_peer_ids(len(names)))
    store = Store.open(tmp_path / "store")
    try:
        contacts = _contacts(store, ChatMetrics(CollectorRegistry()), 10)
        for name, peer in zip(names, peers, strict=True):
            contacts.claimed(peer, name)
            time.sleep(0.005)  # distinct binding times
    finally:
        store.close()
    store = Store.open(tmp_path / "store")
    try:  # reopened with a lower bound: the two bound first are forgotten
        contacts = _contacts(store, ChatMetrics(CollectorRegistry()), 3)
        assert [contacts.bound_to(name) for name in names] == [None, None, *peers[2:]]
        contacts.claimed(fresh_peer_id(), "newcomer")  # evicts the oldest left: a2
        assert contacts.bound_to("a2") is None and contacts.bound_to("c4") == peers[4]
    finally:
        store.close()

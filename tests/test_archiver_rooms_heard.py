"""An ``all_rooms`` archiver admits rooms by evidence (members heard), sans-IO: announced names
wait in bounded per-peer queues, go on probation round-robin, are admitted on distinct signers,
expire when silent, and give idle slots to rooms with evidence."""

from __future__ import annotations

from p2pchat.roles.archiver.admission import (
    CANDIDATES_PER_PEER,
    MAX_WAITING,
    NAMES_PER_PEER,
    Admitted,
    RoomAdmission,
)

from tests.peer_ids import fresh_peer_ids


def admission(**overrides: float) -> RoomAdmission:
    settings: dict[str, float] = {
        "max_rooms": 10,
        "max_candidates": 8,
        "admit_senders": 2,
        "probation": 60,
        "room_idle": 3600,
    }
    settings.update(overrides)
    return RoomAdmission(
        {"lobby"},
        max_rooms=int(settings["max_rooms"]),
        max_candidates=int(settings["max_candidates"]),
        admit_senders=int(settings["admit_senders"]),
        probation=settings["probation"],
        room_idle=settings["room_idle"],
    )


def test_a_flood_of_room_names_is_bounded_per_peer_and_in_all() -> None:
    rooms = admission()
    peers = list(fresh_peer_ids(200))
    for peer in peers:
        for n in range(100):
            rooms.announced(peer, f"junk-{peer[-6:]}-{n}", now=0)
    assert rooms.waiting == MAX_WAITING  # 200 x 100 names announced
    one = admission()
    for n in range(100):
        one.announced(peers[0], f"junk-{n}", now=0)
    assert one.waiting == NAMES_PER_PEER


def test_junk_from_a_few_peers_cannot_crowd_out_a_room_announced_by_others() -> None:
    # The audit: 12 PeerIds announcing 100 names each filled max_rooms with junk.
    rooms = admission(max_candidates=32)
    attackers = list(fresh_peer_ids(12))
    for attacker in attackers:
        for n in range(100):
            rooms.announced(attacker, f"junk-{attacker[-6:]}-{n}", now=0)
    rooms.announced("alice", "real-room", now=1)
    taken = rooms.next_candidates(now=1)
    assert "real-room" in taken
    assert len(taken) == 12 * CANDIDATES_PER_PEER + 1
    # Announced is not heard: nothing is archived but the configured room.
    assert set(rooms.archived) == {"lobby"}
    assert rooms.heard("real-room", "alice", now=2) is None  # one member is not enough
    assert rooms.heard("real-room", "alice", now=2) is None  # nor the same one twice
    assert rooms.heard("real-room", "bob", now=3) == Admitted("real-room")
    assert "real-room" in rooms.archived
    # The junk never heard expires at the end of its probation and is not taken again soon.
    expired = rooms.expired(now=61)
    assert len(expired) == 24 and "real-room" not in expired
    rooms.announced(attackers[0], expired[0], now=62)
    assert expired[0] not in rooms.next_candidates(now=62)
    # The next junk names get their turn (bounded per peer); they expire the same way.
    assert len(rooms.candidates) == 24


def test_a_full_archiver_gives_an_idle_rooms_slot_to_a_room_with_members_heard() -> None:
    rooms = admission(max_rooms=2, admit_senders=1, room_idle=100)
    rooms.announced("p", "first", now=0)
    rooms.announced("q", "second", now=0)
    assert sorted(rooms.next_candidates(now=0)) == ["first", "second"]
    assert rooms.heard("first", "p", now=1) == Admitted("first")  # lobby + first: full
    assert rooms.heard("second", "q", now=50) == Admitted("second", refused=True)
    rooms.announced("q", "second", now=200)  # refused at 50: not taken again before 110
    assert rooms.next_candidates(now=200) == ["second"]
    assert rooms.heard("second", "q", now=201) == Admitted("second", evicted="first")
    assert set(rooms.archived) == {"lobby", "second"}
    # A room heard recently keeps its slot; the configured room is never evicted.
    rooms.announced("r", "third", now=202)
    rooms.next_candidates(now=202)
    assert rooms.heard("second", "q", now=250) is None  # second heard again: not idle
    assert rooms.heard("third", "r", now=260) == Admitted("third", refused=True)

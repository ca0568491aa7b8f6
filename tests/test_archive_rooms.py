"""Which rooms an archiver keeps, and how much of each: real processes, real RocksDB.

``archiver.all_rooms`` makes an archiver keep every room a connected peer is subscribed to once
``archiver.admit_senders`` of its members are heard, up to ``archiver.max_rooms``;
``archiver.room_retention`` gives a room its own retention policy in place of
``archiver.retention``. Each is proven end to end: what the archiver keeps is what
a newly arrived peer catches up from it.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from tests.conftest import NodeProcess, node_env, start_node, wait_metric
from tests.test_archive import AWAY, caught_up, history_texts
from tests.test_autorelay import logged
from tests.test_chat import chat_peer, wait_members

ROOM = "p2p-chat-default"


def _archiver(path: Path, nodes: list[NodeProcess], *args: str, **env: str) -> NodeProcess:
    node = start_node(path, "--role", "archiver", *args, env=node_env(**env))
    nodes.append(node)
    return node


def test_all_rooms_archives_every_room_its_peers_join_up_to_max_rooms(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    store = _archiver(
        tmp_path / "archiver",
        nodes,
        P2PCHAT_ARCHIVER__ROOMS="lobby",
        P2PCHAT_ARCHIVER__ALL_ROOMS="true",
        P2PCHAT_ARCHIVER__MAX_ROOMS="2",
        P2PCHAT_ARCHIVER__ADMIT_SENDERS="1",
    )
    assert store.metric("p2pchat_archive_rooms") == 1  # the configured one

    # A peer in a room nobody configured: the archiver hears of it, listens, and keeps it
    # once a member is heard (the message that proved it included).
    alpha = chat_peer(tmp_path / "alpha", nodes, "--room", "alpha", "--bootstrap", store.addr())
    wait_members(alpha, 1)  # the archiver is in alpha's mesh now (on probation)
    alpha.say("kept in alpha")
    logged(store, "archiving room", room="alpha")
    wait_metric(store, "p2pchat_archive_inserted_total", 1)

    # The room cap reached (and alpha not idle), a further room heard is refused, not archived.
    beta = chat_peer(tmp_path / "beta", nodes, "--room", "beta", "--bootstrap", store.addr())
    wait_members(beta, 1)
    beta.say("not kept: beta is over the cap")
    logged(store, "room heard of not archived", reason="refused_full", room="beta")
    assert store.metric("p2pchat_archive_room_admissions_total", outcome="refused_full") == 1
    assert store.metric("p2pchat_archive_rooms") == 2
    time.sleep(AWAY)  # past GossipSub's message cache, which would hand it out live

    # What was kept is served: a newcomer to alpha catches up from the archiver.
    late = chat_peer(tmp_path / "late", nodes, "--room", "alpha", "--bootstrap", store.addr())
    event = caught_up(late)
    assert (event["room"], event["count"], event["sources"]) == ("alpha", 1, [store.peer_id])
    assert history_texts(late, 1) == ["kept in alpha"]
    assert store.metric("p2pchat_archive_messages") == 1  # nothing of beta


def test_room_retention_replaces_the_default_policy_for_its_room(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    config = tmp_path / "archiver.yaml"
    unlimited = {"max_age_days": None, "max_messages": None, "max_bytes": None}
    config.write_text(
        yaml.safe_dump(
            {
                "archiver": {
                    "rooms": [ROOM, "quiet"],
                    "retention": unlimited,
                    "room_retention": {ROOM: {**unlimited, "max_messages": 5}},
                    "retention_interval": 0.2,
                }
            }
        )
    )
    store = _archiver(tmp_path / "archiver", nodes, "--config", str(config))
    busy = chat_peer(tmp_path / "busy", nodes, "--bootstrap", store.addr())
    quiet = chat_peer(tmp_path / "quiet", nodes, "--room", "quiet", "--bootstrap", store.addr())
    wait_members(busy, 1)
    wait_members(quiet, 1)
    for n in range(1, 13):
        busy.say(f"busy {n}")
        quiet.say(f"quiet {n}")
    wait_metric(store, "p2pchat_archive_inserted_total", 24)

    # The busy room keeps its newest 5; the quiet room, under the default policy, all 12.
    wait_metric(store, "p2pchat_archive_retention_deleted_total", 7)
    assert store.metric("p2pchat_archive_messages") == 5 + 12
    time.sleep(AWAY)  # past GossipSub's message cache, which would hand them out live
    late_busy = chat_peer(tmp_path / "late-busy", nodes, "--bootstrap", store.addr())
    assert caught_up(late_busy)["count"] == 5
    assert history_texts(late_busy, 5) == [f"busy {n}" for n in range(8, 13)]
    late_quiet = chat_peer(
        tmp_path / "late-quiet", nodes, "--room", "quiet", "--bootstrap", store.addr()
    )
    assert caught_up(late_quiet)["count"] == 12
    # Nothing more is deleted: the pass runs every 0.2 s and finds nothing over the limits.
    assert store.metric("p2pchat_archive_retention_deleted_total") == 7

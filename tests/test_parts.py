"""The node's capabilities are one list (node/parts.py): which start is the config's decision,
role presets included, and the composition root starts them in the list's order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from p2pchat.node.config import load_config
from p2pchat.node.parts import PARTS
from p2pchat.roles import create_roles


def started(flags: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, list[str]]:
    config = load_config(environ=environ or {}, flags=flags)
    roles = create_roles(config)
    on: dict[str, list[str]] = {"start": [], "listening": []}
    for part in PARTS:
        if part.enabled(config, roles):
            on[part.phase].append(part.name)
    return on


def names(parts: Sequence[str]) -> set[str]:
    return set(parts)


def test_a_chat_peer_runs_rooms_history_and_finds_peers_after_listening() -> None:
    on = started({})
    assert on["start"] == [
        "dht",
        "autonat",
        "autorelay",
        "holepunch",
        "circuit-renewal",
        "rooms",
        "history-server",
    ]
    assert on["listening"] == ["discovery", "mdns", "archiver-discovery"]


def test_only_chat_peers_that_catch_up_look_for_archivers_in_the_dht() -> None:
    assert (
        "archiver-discovery" not in started({}, {"P2PCHAT_HISTORY__CATCHUP": "false"})["listening"]
    )
    for roles in ("archiver", "relay", "bootstrap"):
        assert "archiver-discovery" not in started({"roles": roles})["listening"]
    assert "archiver-discovery" in started({"roles": "peer,archiver"})["listening"]


def test_each_switch_turns_its_part_off() -> None:
    on = started(
        {},
        {
            "P2PCHAT_DHT__ENABLED": "false",
            "P2PCHAT_DISCOVERY__MDNS": "false",
            "P2PCHAT_HOLEPUNCH__ENABLED": "false",
            "P2PCHAT_AUTONAT__PROBE": "false",
            "P2PCHAT_HISTORY__SERVE": "false",
            "P2PCHAT_AUTORELAY__RENEW_CIRCUITS_AT": "0",
        },
    )
    assert on["start"] == ["autorelay", "rooms"]
    assert on["listening"] == []


def test_infrastructure_roles_serve_and_never_join_rooms() -> None:
    on = started(
        {
            "roles": "relay,bootstrap",
            "node": {
                "bootstrap": [
                    "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
                ]
            },
        }
    )
    assert "autonat-server" in on["start"] and "dht" in on["start"]
    assert not names(on["start"]) & {"rooms", "history-server"}
    assert "bootstrap" in on["listening"]


def test_a_peer_that_archives_runs_one_pubsub_and_one_history_server() -> None:
    on = started({"roles": "peer,archiver"})
    assert on["start"].count("rooms") == 1 and on["start"].count("history-server") == 1
    # even with history.serve off: an archiver always serves
    assert (
        "history-server"
        in started({"roles": "peer,archiver"}, {"P2PCHAT_HISTORY__SERVE": "false"})["start"]
    )

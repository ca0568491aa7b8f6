"""A node knows what a connected peer is: the p2pchat roles it tells in identify's agent
version (``p2pchat/<version> (roles: archiver)``), read as hostile input."""

from __future__ import annotations

from pathlib import Path

from p2pchat.node.config import ROLE_NAMES
from p2pchat.node.p2p.agent import KNOWN_ROLES, MAX_AGENT_CHARS, agent_version, roles_of
from p2pchat.node.p2p.host import HostSettings, IdentifyReceived, P2PHost
from p2pchat.node.p2p.identity import load_or_create_identity

from tests.conftest import NodeProcess, start_node
from tests.test_autorelay import logged
from tests.test_host import LOOPBACK, RecordingObserver, loopback_addr, wait_until


def test_the_agent_version_names_the_roles_and_reads_back() -> None:
    assert agent_version("0.1.0", ["archiver", "relay"]) == "p2pchat/0.1.0 (roles: archiver, relay)"
    assert roles_of(agent_version("0.1.0", ["archiver", "relay"])) == {"archiver", "relay"}
    assert roles_of(agent_version("0+unknown", ["peer"])) == {"peer"}
    assert roles_of(agent_version("0.1.0", [])) == frozenset()  # a one-off client
    assert set(ROLE_NAMES) == KNOWN_ROLES


def test_other_implementations_and_hostile_agents_give_no_roles() -> None:
    for agent in (
        None,
        "",
        "py-libp2p/0.8.1",
        "js-libp2p/2.8.2 UserAgent=v22.11.0",
        "go-libp2p/0.41.1",
        "p2pchat",  # no version
        "p2pchat/0.1.0 (roles: archiver",  # unclosed
        "p2pchat/0.1.0 (roles: archiver)\x1b[2J",  # a terminal escape after it
        "p2pchat/0.1.0 (roles: arch\niver)",
        "xp2pchat/0.1.0 (roles: archiver)",
        "p2pchat/0.1.0 (roles: " + "archiver, " * 40 + "relay)",  # over the length cap
        "p2pchat/" + "1" * MAX_AGENT_CHARS,
    ):
        assert roles_of(agent) is None, agent


def test_only_known_role_names_are_taken_from_an_agent() -> None:
    assert roles_of("p2pchat/9.0 (roles: archiver, admin, moderator)") == {"archiver"}
    assert roles_of("p2pchat/9.0 (roles: admin)") == frozenset()


async def test_hosts_learn_each_others_roles_from_identify(tmp_path: Path) -> None:
    archiver = P2PHost(
        load_or_create_identity(tmp_path / "a"),
        HostSettings(listen=LOOPBACK[:1], agent_version=agent_version("0.1.0", ["archiver"])),
        RecordingObserver(),
    )
    library = P2PHost(  # no agent set: the library's own, py-libp2p/0.8.1
        load_or_create_identity(tmp_path / "l"),
        HostSettings(listen=LOOPBACK[:1]),
        RecordingObserver(),
    )
    peer = P2PHost(
        load_or_create_identity(tmp_path / "p"),
        HostSettings(listen=LOOPBACK[:1], agent_version=agent_version("0.1.0", ["peer"])),
        RecordingObserver(),
    )
    async with archiver.run(), library.run(), peer.run():
        received: list[IdentifyReceived] = []
        peer.watch_identify(received.append)
        assert peer.peer_roles(archiver.peer_id) is None  # not known before identify
        await peer.connect(loopback_addr(archiver))
        await peer.connect(loopback_addr(library))
        await wait_until(
            lambda: (
                peer.peer_roles(archiver.peer_id) is not None
                and peer.peer_agent(library.peer_id) is not None
                and archiver.peer_roles(peer.peer_id) is not None
            )
        )
        assert peer.peer_roles(archiver.peer_id) == {"archiver"}
        assert peer.peer_agent(library.peer_id) == "py-libp2p/0.8.1"
        assert peer.peer_roles(library.peer_id) is None  # not a p2pchat node
        assert archiver.peer_roles(peer.peer_id) == {"peer"}  # both ways
        # The identify event carries the roles (they are known when it is reported).
        assert {(e.peer_id, e.roles) for e in received} >= {
            (archiver.peer_id, frozenset({"archiver"})),
            (library.peer_id, None),
        }
        assert peer.peer_roles("not a peer id") is None


async def test_a_hostile_agent_is_cut_and_gives_no_roles(tmp_path: Path) -> None:
    huge = "p2pchat/1.0 (roles: archiver)" + "x" * 100_000
    liar = P2PHost(
        load_or_create_identity(tmp_path / "h"),
        HostSettings(listen=LOOPBACK[:1], agent_version=huge),
        RecordingObserver(),
    )
    claims = P2PHost(
        load_or_create_identity(tmp_path / "c"),
        HostSettings(listen=LOOPBACK[:1], agent_version="p2pchat/1.0 (roles: admin, relay)"),
        RecordingObserver(),
    )
    me = P2PHost(
        load_or_create_identity(tmp_path / "m"),
        HostSettings(listen=LOOPBACK[:1]),
        RecordingObserver(),
    )
    async with liar.run(), claims.run(), me.run():
        await me.connect(loopback_addr(liar))
        await me.connect(loopback_addr(claims))
        await wait_until(
            lambda: (
                me.peer_agent(liar.peer_id) is not None
                and me.peer_agent(claims.peer_id) is not None
            )
        )
        kept = me.peer_agent(liar.peer_id)
        assert kept is not None and len(kept) == MAX_AGENT_CHARS + 1  # what is kept is bounded
        assert me.peer_roles(liar.peer_id) is None
        assert me.peer_roles(claims.peer_id) == {"relay"}


def _infra(path: Path, nodes: list[NodeProcess], role: str, *args: str) -> NodeProcess:
    node = start_node(path, "--role", role, *args)
    nodes.append(node)
    return node


def test_a_peer_knows_the_roles_of_the_bootstrap_relay_and_archiver_it_is_connected_to(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    bootstrap = _infra(tmp_path / "bootstrap", nodes, "bootstrap")
    relay = _infra(tmp_path / "relay", nodes, "relay")
    archiver = _infra(tmp_path / "archiver", nodes, "archiver")
    peer = start_node(
        tmp_path / "peer",
        "--json",
        *("--bootstrap", bootstrap.addr()),
        *("--bootstrap", relay.addr()),
        *("--bootstrap", archiver.addr()),
    )
    nodes.append(peer)
    for node, roles in ((bootstrap, ["bootstrap"]), (relay, ["relay"]), (archiver, ["archiver"])):
        logged(peer, "peer identified", remote=node.peer_id, roles=roles)
        # ...and each of them knows the peer for a chat peer.
        logged(node, "peer identified", remote=peer.peer_id, roles=["peer"])

"""Racing a peer's QUIC and TCP addresses, QUIC first (node/p2p/dial_race.py; #20 must-have 2).

The plan and the race's schedule on their own (no network: the dials are functions), then real
processes on 127.0.0.1: a node given a peer's TCP and QUIC addresses (``node.bootstrap`` names
both) ends up on QUIC; with the QUIC port firewalled (a UDP socket that swallows every packet)
TCP still connects, started after the head start; with the QUIC port closed (nothing bound:
the kernel answers "port unreachable") likewise. Each race's time is read from
``p2pchat_dial_race_seconds`` and printed (``pytest -s``).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from p2pchat.node.keepalive import group_by_peer
from p2pchat.node.p2p.dial_race import (
    MAX_ADDRS,
    QUIC,
    TCP,
    WEBSOCKET,
    Planned,
    RaceLost,
    plan,
    race,
    transport_of,
    worth_racing,
)

from tests.conftest import NodeProcess, start_node

WAIT = 60
PEER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
Q1, Q2 = "/ip4/1.2.3.4/udp/4001/quic-v1", "/ip6/::1/udp/4002/quic-v1"
T1, T2 = "/ip4/1.2.3.4/tcp/4001", "/dns4/example.org/tcp/443"
W1 = "/ip4/1.2.3.4/tcp/4003/ws"


# --- the plan -------------------------------------------------------------------------------------


def test_transport_of_each_address() -> None:
    assert transport_of(Q1) == QUIC
    assert transport_of(f"{T1}/p2p/{PEER}") == TCP
    assert transport_of(W1) == WEBSOCKET
    for other in (
        f"{T1}/p2p/{PEER}/p2p-circuit/p2p/{PEER}",
        "/ip4/1.2.3.4/udp/4001/quic",  # draft-29: no transport here dials it
        "/ip4/1.2.3.4/tcp/x",
        "/ip4/1.2.3.4/tcp/1/wss",
        "/unix/tmp",
        "garbage",
        "",
    ):
        assert transport_of(other) is None, other


def test_quic_first_then_tcp_then_websocket_each_a_head_start_later() -> None:
    steps = plan([W1, T1, f"{T1}/p2p/{PEER}", Q1, "garbage", T2, Q2], 0.25)
    assert steps == [
        Planned(Q1, QUIC, 0.0),
        Planned(Q2, QUIC, 0.25),
        Planned(T1, TCP, 0.5),  # its duplicate with /p2p/ is dialled once
        Planned(T2, TCP, 0.75),
        Planned(W1, WEBSOCKET, 1.0),
    ]
    assert worth_racing(steps)
    assert not worth_racing(plan([T1, T2, W1], 0.25))  # nothing to race: the library dials
    assert not worth_racing(plan([Q1, Q2], 0.25))
    assert [step.delay for step in plan([T1, W1], 0.1)] == [0.0, 0.1]


def test_a_long_list_is_cut_at_max_addrs() -> None:
    many = [f"/ip4/10.0.0.{i}/tcp/1" for i in range(50)] + [Q1]
    steps = plan(many, 0.25)
    assert len(steps) == MAX_ADDRS and steps[0].addr == Q1


# --- the race, with functions for dials ---------------------------------------------------------


def run_race(
    delays: dict[str, float],
    fails: set[str],
    head_start: float = 0.25,
    shielded: frozenset[str] = frozenset(),
) -> tuple[str | Exception, list[tuple[str, float]], list[str]]:
    """Race ``delays`` (address -> seconds its dial takes; addresses in ``fails`` fail after
    it; those in ``shielded`` cannot be cancelled, as the library's registration of a QUIC
    connection) on trio's autojump clock: (the winner or the error, when each dial started,
    what was discarded)."""
    started: list[tuple[str, float]] = []
    discarded: list[str] = []

    async def dial(addr: str) -> str:
        started.append((addr, trio.current_time()))
        with trio.CancelScope(shield=addr in shielded):
            await trio.sleep(delays[addr])
        if addr in fails:
            raise OSError(f"{addr} unreachable")
        return addr

    async def discard(result: str) -> None:
        discarded.append(result)

    async def main() -> str | Exception:
        try:
            won = await race(plan(list(delays), head_start), dial, discard)
        except RaceLost as lost:
            return lost
        return won.result

    outcome = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return outcome, started, discarded


def test_quic_answering_in_time_wins_and_tcp_is_never_dialled() -> None:
    outcome, started, _ = run_race({Q1: 0.04, T1: 0.01}, set())
    assert outcome == Q1
    assert [addr for addr, _ in started] == [Q1]


def test_a_silent_quic_lets_tcp_win_after_the_head_start() -> None:
    outcome, started, _ = run_race({Q1: 30.0, T1: 0.01}, set())
    assert outcome == T1
    assert started == [(Q1, 0.0), (T1, 0.25)]


def test_a_refused_quic_starts_tcp_at_once() -> None:
    outcome, started, _ = run_race({Q1: 0.01, T1: 0.01}, {Q1})
    assert outcome == T1
    assert started == [(Q1, 0.0), (T1, 0.01)]


def test_a_slow_quic_still_wins_over_a_slower_tcp() -> None:
    outcome, _, discarded = run_race({Q1: 0.3, T1: 0.2}, set())
    assert outcome == Q1  # 0.3 < 0.25 + 0.2: TCP's dial is cancelled, nothing to discard
    assert discarded == []


def test_every_dial_failing_is_one_error_naming_each() -> None:
    outcome, started, _ = run_race({Q1: 0.01, T1: 0.01}, {Q1, T1})
    assert isinstance(outcome, RaceLost)
    assert set(outcome.errors) == {Q1, T1}
    assert len(started) == 2


def test_a_connection_finished_after_the_winner_is_discarded() -> None:
    # TCP wins at 0.26 s; QUIC's dial cannot be cancelled and ends at 0.3 s: closed.
    outcome, _, discarded = run_race({Q1: 0.3, T1: 0.01}, set(), shielded=frozenset({Q1}))
    assert outcome == T1
    assert discarded == [Q1]


# --- real processes -------------------------------------------------------------------------------

BOTH = "/ip4/127.0.0.1/tcp/0,/ip4/127.0.0.1/udp/0/quic-v1"


def node(path: Path, nodes: list[NodeProcess], listen: str, *args: str) -> NodeProcess:
    started = start_node(path, "--json", "--listen", listen, *args)
    nodes.append(started)
    started.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    return started


def connected_over(dialler: NodeProcess, peer: str) -> dict[str, object]:
    opened = dialler.next_event(
        lambda e: e["type"] == "connection" and e["change"] == "opened" and e["peer"] == peer,
        timeout=WAIT,
    )
    return opened


def race_time(dialler: NodeProcess, transport: str) -> float:
    count = dialler.metric("p2pchat_dial_race_seconds_count", transport=transport)
    assert count == 1, f"{count} races won over {transport}"
    return dialler.metric("p2pchat_dial_race_seconds_sum", transport=transport)


def test_a_peer_listening_on_both_is_reached_over_quic(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    listener = node(tmp_path / "listener", nodes, BOTH)
    # TCP named first: the ranking, not the order given, puts QUIC first.
    dialler = node(
        tmp_path / "dialler",
        nodes,
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap",
        f"{listener.addr('tcp')},{listener.addr('quic')}",
    )
    connected_over(dialler, listener.peer_id)
    assert dialler.metric("libp2p_swarm_connections_opened_total", transport="quic") == 1
    assert dialler.metric("libp2p_swarm_connections_opened_total", transport="tcp") == 0
    seconds = race_time(dialler, "quic")
    print(f"\nboth answer: QUIC won after {seconds * 1000:.0f} ms")


@pytest.fixture
def silent_udp() -> Iterator[int]:
    """A UDP port that swallows every packet: a firewall dropping QUIC."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        yield sink.getsockname()[1]


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed on return: the kernel refuses it


@pytest.mark.parametrize("blocked", ["firewalled", "closed"])
def test_tcp_still_connects_when_quic_is_blocked(
    tmp_path: Path, nodes: list[NodeProcess], silent_udp: int, blocked: str
) -> None:
    listener = node(tmp_path / "listener", nodes, "/ip4/127.0.0.1/tcp/0")
    port = silent_udp if blocked == "firewalled" else closed_udp_port()
    quic = f"/ip4/127.0.0.1/udp/{port}/quic-v1/p2p/{listener.peer_id}"
    dialler = node(
        tmp_path / "dialler",
        nodes,
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap",
        f"{quic},{listener.addr('tcp')}",
    )
    connected_over(dialler, listener.peer_id)
    assert dialler.metric("libp2p_swarm_connections_opened_total", transport="tcp") == 1
    assert dialler.metric("libp2p_swarm_connections_opened_total", transport="quic") == 0
    seconds = race_time(dialler, "tcp")
    print(f"\nQUIC {blocked}: TCP won after {seconds * 1000:.0f} ms")
    # TCP was started no earlier than the head start (0.25 s): a lower bound, not a timing.
    assert seconds >= 0.25


def test_bootstrap_addresses_of_one_peer_are_dialled_together() -> None:
    other = "12D3KooWRBhwfeP2Y9CDkFRBAZ1pmxUadH36TKuk3KtKm5XXP8mA"
    a_tcp, a_quic = f"{T1}/p2p/{PEER}", f"{Q1}/p2p/{PEER}"
    b_tcp = f"{T2}/p2p/{other}"
    circuit = f"{b_tcp}/p2p-circuit/p2p/{PEER}"
    assert group_by_peer([a_tcp, b_tcp, a_quic, circuit]) == [[a_tcp, a_quic], [b_tcp], [circuit]]

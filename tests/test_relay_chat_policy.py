"""Chat-friendly circuits (issue #21): a relay gives the peers its operator lists circuits
without go-libp2p's data and time limits, and only when both ends are listed.

Real processes on loopback: a relay whose default circuits carry 8 KiB per direction; A holds
a reservation there; B (listed with A) and C (not listed) know only A's circuit address; no
one can be dialled (each announces a dead port), so every connection to A is relayed.
"""

from __future__ import annotations

from pathlib import Path

from p2pchat.node.wire import circuit_pb2
from p2pchat.node.wire.circuit import (
    MAX_MESSAGE_BYTES,
    HopStatus,
    Limit,
    Status,
    StopConnect,
    encode,
)
from p2pchat.node.wire.framing import FrameDecoder
from p2pchat.roles.relay.chat_policy import OTHER, ChatPolicy
from p2pchat.roles.relay.limits import RelayLimits

from tests.conftest import NodeProcess, node_env, run_cli, start_node, wait_metric
from tests.test_autorelay import (
    connection_kind,
    dead_port,
    relayed_peer,
    tcp_circuit,
    unreachable_peer,
)
from tests.test_chat import WAIT, is_message, wait_members

CIRCUIT_DATA = 8192
TEXT = "y" * 2000
ROUNDS = 10  # 20 KB each way: more than twice what a default circuit may carry

A_ID, B_ID = "12D3KooWA", "12D3KooWB"  # PeerId-shaped entries, as the config accepts them


def test_both_ends_listed_get_the_chat_terms_and_no_limit_is_sent() -> None:
    limits = RelayLimits(circuit_duration=120, circuit_data=131072)
    policy = ChatPolicy([A_ID, "10.0.0.0/8"], 0, 0, limits)
    chat = policy.terms(A_ID, "192.0.2.1", "12D3KooWZ", "10.1.2.3")  # one by id, one by network
    assert (chat.limit, chat.duration, chat.data) == (None, None, None)
    assert chat.entries == (A_ID, "10.0.0.0/8")
    one_end = policy.terms(A_ID, "192.0.2.1", "12D3KooWZ", "192.0.2.9")
    assert one_end.limit == Limit(duration=120, data=131072) and one_end.entries == (OTHER,)
    assert (one_end.duration, one_end.data) == (120, 131072)
    bounded = ChatPolicy([A_ID], 3600, 0, limits).terms(A_ID, None, A_ID, None)
    assert bounded.limit == Limit(duration=3600, data=None) and bounded.data is None
    assert bounded.entries == (A_ID,)
    assert ChatPolicy([], 0, 0, limits).terms(A_ID, None, B_ID, None).entries == (OTHER,)


def _identity(path: Path) -> str:
    made = run_cli("id", "--data-dir", str(path))
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def test_listed_peers_chat_past_the_default_limit_and_others_are_cut_at_it(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a_id, b_id = _identity(tmp_path / "a"), _identity(tmp_path / "b")
    relay = start_node(
        tmp_path / "relay",
        "--role",
        "relay",
        env=node_env(
            P2PCHAT_RELAY__CIRCUIT_DATA=str(CIRCUIT_DATA),
            P2PCHAT_RELAY__CHAT_PEERS=f"{a_id},{b_id}",
        ),
    )
    nodes.append(relay)
    a = relayed_peer(
        tmp_path / "a",
        nodes,
        P2PCHAT_AUTORELAY__RELAYS=relay.addr(),
        P2PCHAT_HOLEPUNCH__ENABLED="false",
        P2PCHAT_NODE__ANNOUNCE=f"/ip4/127.0.0.1/tcp/{dead_port()}",
    )
    circuit = f"{tcp_circuit(a, relay)}/p2p/{a.peer_id}"
    b = unreachable_peer(tmp_path / "b", nodes, circuit)
    assert b.peer_id == b_id
    wait_members(b, 1)
    for n in range(ROUNDS):
        b.say(f"{n} {TEXT}")
        a.next_event(is_message(f"{n} {TEXT}"), timeout=WAIT)
        a.say(f"back {n} {TEXT}")
        b.next_event(is_message(f"back {n} {TEXT}"), timeout=WAIT)
    # One circuit carried it all, never reset, its bytes counted under both entries.
    assert connection_kind(b, a.peer_id) == "relayed"
    assert relay.metric("p2pchat_relay_circuit_resets_total", limit="data") == 0
    assert b.metric("libp2p_swarm_connections_opened_total", transport="p2p-circuit") == 1
    for entry in (a_id, b_id):
        assert relay.metric("p2pchat_relay_bytes_total", entry=entry) > 2 * ROUNDS * len(TEXT)
    assert relay.metric("p2pchat_relay_bytes_total", entry="other") == 0

    # C is not listed: its circuit to A has the default 8 KiB, and the relay cuts it there.
    unreachable_peer(tmp_path / "c", nodes, circuit)
    wait_metric(relay, "p2pchat_relay_circuit_resets_total", 1, limit="data")
    assert relay.metric("p2pchat_relay_bytes_total", entry="other") > 0


def test_a_chat_circuits_answers_carry_no_limit_field_at_all() -> None:
    # go-libp2p counts a connection limited when the Limit field is present, even empty
    # (tests/test_interop_chat_circuits.py fails with an empty one): the field must be absent
    # from both the dialler's HOP STATUS and the listener's STOP CONNECT.
    terms = ChatPolicy([A_ID, B_ID], 0, 0, RelayLimits()).terms(A_ID, None, B_ID, None)
    hop, stop = circuit_pb2.HopMessage(), circuit_pb2.StopMessage()
    hop.ParseFromString(_unframed(encode(HopStatus(Status.OK, limit=terms.limit))))
    stop.ParseFromString(_unframed(encode(StopConnect(b"\x00", terms.limit))))
    assert not hop.HasField("limit") and not stop.HasField("limit")
    default = ChatPolicy([A_ID], 0, 0, RelayLimits()).terms(A_ID, None, B_ID, None)
    hop.ParseFromString(_unframed(encode(HopStatus(Status.OK, limit=default.limit))))
    assert hop.HasField("limit") and hop.limit.data == RelayLimits().circuit_data


def _unframed(framed: bytes) -> bytes:
    decoder = FrameDecoder(MAX_MESSAGE_BYTES)
    (payload,) = decoder.feed(framed)
    return bytes(payload)

"""Chat-friendly circuits of a p2pchat relay, as go-libp2p and js-libp2p see them (issue #21,
must-have 4).

go-libp2p-pubsub opens no stream on a limited connection (its ``handlePendingPeers`` wants
``Connectedness == Connected``), and js-libp2p's GossipSub runs on one only with
``runOnLimitedConnection`` (off by default; punch.mjs leaves it off here). Both decide a
circuit is limited by the Limit of the relay's answer: go-libp2p sets ``Stat().Limited`` when
the HOP STATUS (dialler) or STOP CONNECT (listener) carries one; js-libp2p's ``LimitTracker``
gives the connection ``limits`` only when the Limit names a duration or data. The Circuit
Relay v2 spec: "if the limit is not set, the relay does not impose a limit". A p2pchat relay
whose ``relay.chat_peers`` lists both ends of a circuit, with ``chat_circuit_duration`` and
``chat_circuit_data`` at 0 (the defaults), leaves the Limit out of both answers.

Real processes on loopback: a p2pchat relay (not a room member, so the chat can only cross
the circuit), the go peer (tests/interop/go) or the js peer (tests/interop/js/punch.mjs), and
a p2pchat peer that can only be reached through the relay. Each implementation both ways
round: they hold the reservation and p2pchat dials them (``they-listen``: their side reads
the STOP CONNECT), and the reverse (``they-dial``: their side reads the HOP STATUS). With both
ends listed the circuit is not limited for them and chat crosses it both ways; the control,
the same relay with its default (limited) circuits, shows their side marks the circuit
limited and never gossips over it.

Last, the next circuit (node/circuit_renewal.py) with js-libp2p on the other side, on a relay's
limited circuits (js's GossipSub told to run on them): js renews no circuit, and keeps its
stream on the old one until that closes, so p2pchat opens every next circuit, as the dialler or
as the listener (through js's own reservation), and closes the old one once the wait to hear js
on the new one is over ("unheard"); js then reopens its stream on the new one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from p2pchat.node.wire.chat import ChatText, encode, new_message_id

from tests.conftest import NodeProcess, node_env, run_cli, start_node
from tests.interop_peers import ROOM, JsPunchPeer, only_over, p2pchat_listening_on
from tests.test_autorelay import (
    command,
    connection_kind,
    dead_port,
    relayed_peer,
    tcp_circuit,
    unreachable_peer,
)
from tests.test_chat import is_message, wait_members
from tests.test_interop_go import GoPeer, go_peer
from tests.test_interop_go import go_peers as go_peers  # the fixture
from tests.test_interop_js_dcutr import _carries, _chat_round

WAIT = 60.0
# How long the controls wait for a message that must not come: many GossipSub heartbeats (1 s)
# after the circuit is up, so a peer that would gossip over it would have.
NOT_DELIVERED = 15.0
LOOPBACK = "127.0.0.1/32"  # every end on loopback: the js tests' chat_peers (see below)
ROLES = ("they-listen", "they-dial")


def _identity(path: Path) -> str:
    made = run_cli("id", "--data-dir", str(path))
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def _relay(path: Path, nodes: list[NodeProcess], chat_peers: list[str], *args: str) -> NodeProcess:
    """A relay only (no room member) on the default limits (2 min, 128 KiB per direction),
    serving chat-friendly circuits without limits to ``chat_peers``; ``args`` for p2pchat."""
    env = {"P2PCHAT_RELAY__CHAT_PEERS": ",".join(chat_peers)} if chat_peers else {}
    relay = start_node(path, "--role", "relay", *args, env=node_env(**env))
    nodes.append(relay)
    return relay


def _reserved_peer(path: Path, nodes: list[NodeProcess], relay: NodeProcess) -> NodeProcess:
    """A p2pchat peer that holds a reservation on ``relay`` and cannot be dialled directly."""
    return relayed_peer(
        path,
        nodes,
        P2PCHAT_AUTORELAY__RELAYS=relay.addr(),
        P2PCHAT_HOLEPUNCH__ENABLED="false",
        P2PCHAT_NODE__ANNOUNCE=f"/ip4/127.0.0.1/tcp/{dead_port()}",
    )


def _in_room(node: NodeProcess, peer: str) -> bool:
    peers = {p["peer"]: p for p in command(node, "/peers", "peers")["peers"]}
    return bool(peers[peer]["in_room"])


def _go_pair(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer], role: str, chat: bool
) -> tuple[NodeProcess, NodeProcess, GoPeer]:
    """relay, p2pchat peer B and the go peer, connected through the relay only."""
    go = go_peer(go_peers)
    b_id = _identity(tmp_path / "b")
    relay = _relay(tmp_path / "relay", nodes, [go.peer_id, b_id] if chat else [])
    if role == "they-listen":
        circuit = go.run(f"reserve {relay.addr()}", "reserved")["circuit"]
        b = unreachable_peer(tmp_path / "b", nodes, circuit)
    else:
        b = _reserved_peer(tmp_path / "b", nodes, relay)
        go.run(f"dial {tcp_circuit(b, relay)}/p2p/{b.peer_id}", "dialed")
    assert b.peer_id == b_id
    b.next_event(lambda e: e["type"] == "connection" and e["peer"] == go.peer_id, timeout=WAIT)
    assert connection_kind(b, go.peer_id) == "relayed"
    return relay, b, go


def _go_sees(go: GoPeer, b: NodeProcess) -> list[dict[str, object]]:
    return [c for c in go.run("peers", "peers") if c["peer"] == b.peer_id]


@pytest.mark.interop("go", "tcp", "relay-ours")
@pytest.mark.parametrize("role", ROLES)
def test_go_gossips_over_a_chat_circuit_of_a_p2pchat_relay(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer], role: str
) -> None:
    relay, b, go = _go_pair(tmp_path, nodes, go_peers, role, chat=True)
    to_b = _go_sees(go, b)
    assert to_b and all(c["relayed"] and not c["limited"] for c in to_b), to_b
    go.wait_topic_peer(b.peer_id)
    wait_members(b, 1)
    b.say("over a chat circuit")
    got = go.message("over a chat circuit")
    assert (got["from"], got["via"]) == (b.peer_id, b.peer_id)  # straight over the circuit
    go.run("say back over the chat circuit", "published")
    assert b.next_event(is_message("back over the chat circuit"), timeout=WAIT)["sender"] == (
        go.peer_id
    )
    assert connection_kind(b, go.peer_id) == "relayed"
    for entry in (go.peer_id, b.peer_id):
        assert relay.metric("p2pchat_relay_bytes_total", entry=entry) > 0
    assert relay.metric("p2pchat_relay_bytes_total", entry="other") == 0


@pytest.mark.parametrize("role", ROLES)
def test_go_does_not_gossip_over_a_default_circuit(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer], role: str
) -> None:
    # The control: the same setup, the relay's default circuits (limited).
    _, b, go = _go_pair(tmp_path, nodes, go_peers, role, chat=False)
    to_b = _go_sees(go, b)
    assert to_b and all(c["relayed"] and c["limited"] for c in to_b), to_b
    b.say("over a default circuit")
    with pytest.raises(AssertionError, match="no matching output"):
        go.message("over a default circuit", timeout=NOT_DELIVERED)
    assert b.peer_id not in go.run("topic-peers", "topic_peers")
    assert not _in_room(b, go.peer_id)


@pytest.fixture
def js_peers() -> Iterator[list[JsPunchPeer]]:
    started: list[JsPunchPeer] = []
    yield started
    for peer in started:
        peer.stop()
        print(f"js peer {peer.ready.get('peer_id')} stderr:\n{''.join(peer.stderr)[-6000:]}")


def _js_pair(
    tmp_path: Path, nodes: list[NodeProcess], js_peers: list[JsPunchPeer], role: str, chat: bool
) -> tuple[NodeProcess, NodeProcess, JsPunchPeer]:
    """relay, p2pchat peer B and the js peer, connected through the relay only. The js peer
    makes its identity as it starts, after the relay, so the relay lists loopback (every end
    here) rather than PeerIds; the go tests list PeerIds."""
    relay = _relay(tmp_path / "relay", nodes, [LOOPBACK] if chat else [])
    if role == "they-listen":
        js = JsPunchPeer(None, "--listen", "127.0.0.1", "--reserve", relay.addr())
        js_peers.append(js)
        circuit = next(
            a
            for a in js.next(lambda e: "reservation" in e)["reservation"]["addrs"]
            if a.startswith("/ip4/127.0.0.1/tcp/")
        )
        b = unreachable_peer(tmp_path / "b", nodes, circuit)
    else:
        b = _reserved_peer(tmp_path / "b", nodes, relay)
        circuit = f"{tcp_circuit(b, relay)}/p2p/{b.peer_id}"
        js = JsPunchPeer(None, "--listen", "127.0.0.1", "--dial", circuit)
        js_peers.append(js)
        js.next(lambda e: "dialed" in e or "error" in e)
        assert not any("error" in e for e in js.seen), js.seen
    b.next_event(lambda e: e["type"] == "connection" and e["peer"] == js.peer_id, timeout=WAIT)
    assert connection_kind(b, js.peer_id) == "relayed"
    return relay, b, js


def _js_sees(js: JsPunchPeer, b: NodeProcess) -> list[dict[str, object]]:
    return [c for c in js.connections() if c["peer"] == b.peer_id]


@pytest.mark.interop("js", "tcp", "relay-ours")
@pytest.mark.parametrize("role", ROLES)
def test_js_gossips_over_a_chat_circuit_of_a_p2pchat_relay(
    tmp_path: Path, nodes: list[NodeProcess], js_peers: list[JsPunchPeer], role: str
) -> None:
    relay, b, js = _js_pair(tmp_path, nodes, js_peers, role, chat=True)
    to_b = _js_sees(js, b)
    assert to_b and all(c["relayed"] and not c["limited"] for c in to_b), to_b
    wait_members(b, 1)  # js's GossipSub said its subscription over the circuit
    _chat_round(b, js, "over a chat circuit")
    assert connection_kind(b, js.peer_id) == "relayed"
    assert relay.metric("p2pchat_relay_bytes_total", entry=LOOPBACK) > 0
    assert relay.metric("p2pchat_relay_bytes_total", entry="other") == 0


@pytest.mark.parametrize(
    "transport",
    [pytest.param(t, marks=pytest.mark.interop("js", t, "relay-ours")) for t in ("ws", "quic")],
)
def test_js_reserves_on_a_p2pchat_relay_over_websocket_or_quic(
    tmp_path: Path, nodes: list[NodeProcess], js_peers: list[JsPunchPeer], transport: str
) -> None:
    # js-libp2p dials the relay's /ws address (Node 20's WebSocket, tests/interop_peers.py
    # NODE) or its /quic-v1 one (@chainsafe/libp2p-quic; the relay listens on QUIC only),
    # reserves a slot there, and B reaches it through the circuit, over the same transport.
    relay = _relay(tmp_path / "relay", nodes, [LOOPBACK], *p2pchat_listening_on(transport))
    js = JsPunchPeer(None, "--listen", "127.0.0.1", "--reserve", relay.addr(transport))
    js_peers.append(js)
    marker = "/ws/" if transport == "ws" else "/quic-v1/"
    circuit = next(
        a
        for a in js.next(lambda e: "reservation" in e, timeout=WAIT)["reservation"]["addrs"]
        if a.startswith("/ip4/127.0.0.1/") and marker in a
    )
    b = unreachable_peer(tmp_path / "b", nodes, circuit)
    b.next_event(lambda e: e["type"] == "connection" and e["peer"] == js.peer_id, timeout=WAIT)
    assert connection_kind(b, js.peer_id) == "relayed"
    wait_members(b, 1)
    _chat_round(b, js, f"through a relay reached over {transport}")
    assert relay.metric("p2pchat_relay_reservations") == 1
    only_over(relay, transport)  # js's reservation and B's circuit both came in over it


@pytest.mark.parametrize("role", ROLES)
def test_js_does_not_gossip_over_a_default_circuit(
    tmp_path: Path, nodes: list[NodeProcess], js_peers: list[JsPunchPeer], role: str
) -> None:
    # The control: the same setup, the relay's default circuits (limited).
    _, b, js = _js_pair(tmp_path, nodes, js_peers, role, chat=False)
    to_b = _js_sees(js, b)
    assert to_b and all(c["relayed"] and c["limited"] for c in to_b), to_b
    b.say("over a default circuit from p2pchat")
    with pytest.raises(AssertionError, match="no matching output"):
        js.next(_carries("over a default circuit from p2pchat"), timeout=NOT_DELIVERED)
    assert not _in_room(b, js.peer_id)


# --- the next circuit, with js-libp2p on the other side -----------------------------------------

CIRCUIT_DATA = 64 * 1024  # per direction: reached after ~50 messages of 1 KB
MESSAGES = 80
PACE = 0.3  # seconds between two messages
RENEWALS = "p2pchat_relayed_circuit_renewals_total"


def _js_text(text: str) -> str:
    return encode(
        ChatText(
            id=new_message_id(),
            room=ROOM,
            sender_name="js",
            text=text,
            sent_at_ms=int(time.time() * 1000),
        )
    ).hex()


@pytest.mark.parametrize("role", ROLES)
def test_a_relayed_conversation_with_js_moves_to_the_next_circuit(
    tmp_path: Path, nodes: list[NodeProcess], js_peers: list[JsPunchPeer], role: str
) -> None:
    # js-libp2p renews no circuit and its GossipSub runs on a limited one only when told to
    # (--pubsub-on-limited): p2pchat opens each next circuit, as the dialler (they-listen) or,
    # since js does not, as the listener through js's own reservation (they-dial).
    relay = start_node(
        tmp_path / "relay",
        "--role",
        "relay",
        env=node_env(P2PCHAT_RELAY__CIRCUIT_DATA=str(CIRCUIT_DATA)),
    )
    nodes.append(relay)
    renew = {"P2PCHAT_AUTORELAY__RENEW_CIRCUITS_AT": "0.5"}
    js_args = ["--listen", "127.0.0.1", "--reserve", relay.addr(), "--pubsub-on-limited"]
    if role == "they-listen":
        js = JsPunchPeer(None, *js_args)
        js_peers.append(js)
        circuit = next(
            a
            for a in js.next(lambda e: "reservation" in e)["reservation"]["addrs"]
            if a.startswith("/ip4/127.0.0.1/tcp/")
        )
        py = start_node(
            tmp_path / "py",
            "--json",
            "--bootstrap",
            circuit,
            env=node_env(
                P2PCHAT_NODE__ANNOUNCE=f"/ip4/127.0.0.1/tcp/{dead_port()}",
                P2PCHAT_AUTORELAY__MODE="off",
                P2PCHAT_HOLEPUNCH__ENABLED="false",
                **renew,
            ),
        )
        nodes.append(py)
        trigger = "limit"
    else:
        py = relayed_peer(
            tmp_path / "py",
            nodes,
            P2PCHAT_AUTORELAY__RELAYS=relay.addr(),
            P2PCHAT_HOLEPUNCH__ENABLED="false",
            P2PCHAT_NODE__ANNOUNCE=f"/ip4/127.0.0.1/tcp/{dead_port()}",
            **renew,
        )
        js = JsPunchPeer(None, *js_args, "--dial", f"{tcp_circuit(py, relay)}/p2p/{py.peer_id}")
        js_peers.append(js)
        trigger = "listener_limit"
    wait_members(py, 1)
    py.drain_events()
    texts = [f"py{n:03d} " + "r" * 1000 for n in range(MESSAGES)]
    back = [f"js{n:03d}" for n in range(MESSAGES // 10)]
    for n, text in enumerate(texts):
        py.say(text)
        if n % 10 == 5:
            js.send(f"publish {_js_text(back[n // 10])}")
        time.sleep(PACE)
    for text in texts:
        js.next(_carries(text), timeout=WAIT)
    deadline = time.monotonic() + WAIT
    shown: set[str] = set()
    while set(back) - shown and time.monotonic() < deadline:
        shown |= {e["text"] for e in py.drain_events() if e["type"] == "message"}
        time.sleep(0.3)
    assert set(back) <= shown, f"from js: {sorted(shown & set(back))} of {back}"
    assert (
        py.metric(RENEWALS, trigger=trigger, outcome="renewed")
        + py.metric(RENEWALS, trigger=trigger, outcome="unheard")
        >= 1
    )
    print(
        "renewals:",
        {o: py.metric(RENEWALS, trigger=trigger, outcome=o) for o in ("renewed", "unheard")},
        "resets:",
        relay.metric("p2pchat_relay_circuit_resets_total", limit="data"),
    )
    assert relay.metric("p2pchat_relay_circuit_resets_total", limit="data") == 0

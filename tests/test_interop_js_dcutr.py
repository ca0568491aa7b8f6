"""Hole punching with js-libp2p: p2pchat's DCUtR and js-libp2p's meet through real NAT.

The NAT lab of tests/nat_lab.py (port-preserving NATs that drop unsolicited inbound
connections), a p2pchat relay on its "internet", and a mixed pair: one peer is p2pchat, the
other js-libp2p 3 (tests/interop/js/punch.mjs: circuit relay v2 transport, @libp2p/dcutr,
GossipSub with StrictSign), each behind its own NAT. Both directions run:

* ``js-dialer``: p2pchat reserves a slot on the relay (autorelay); js dials p2pchat's circuit
  address. p2pchat received the relayed connection, so it runs DCUtR's initiating side
  (``B`` in the spec; our metric side ``initiator``) and js-libp2p serves it (``A``).
* ``js-listener-roles-fixed``: js reserves; p2pchat dials the js peer's circuit address. js-libp2p
  initiates (``B``) and p2pchat serves (``A``, our side ``receiver``).

Each must end with the pair on a direct (non-relayed) TCP connection as both sides report it,
p2pchat counting one successful hole punch and no protocol error, and chat crossing that
direct connection both ways, with nothing relayed left between them. `make unit` installs the
pinned js packages (package-lock.json); without node or them this test fails, it never skips.

What js-libp2p 3.3.11 does (read in node_modules) shapes the lab and the js peer:

* @libp2p/dcutr dials only "public" addresses (``isPublicAndDialable``; @libp2p/utils'
  ``isPrivate`` covers 10/8, 100.64/10, 198.18/15 and the TEST-NETs) and drops a CONNECT
  without one. So the lab's internet is :data:`INTERNET`, a range js counts as public; no
  namespace has a route out of the lab, so nothing is sent beyond it.
* It ignores observed TCP addresses (@libp2p/identify, js-libp2p#2620) and dials from
  ephemeral ports, so by itself it has no address a TCP hole punch can reach. The js peer is
  set up as an operator of a known port-preserving NAT would do it: every dial leaves from
  :data:`JS_DIAL_PORT`, announced at its router's internet address.
* As ``B`` it cannot be the server of the simultaneous open, which the spec makes it: the
  ``initiator: false`` its DCUtR asks for is lost in the connection manager's dial queue, and
  its Yamux takes the client role from the dialled socket anyway. Against p2pchat, a
  spec-following ``A`` (a client, as rust-libp2p's), both handshakes fail: with stock js-libp2p
  as ``B`` a hole punch to p2pchat cannot succeed. (go-libp2p's default roles are the reverse
  of the spec's, go-libp2p#3171.) For ``js-listener-roles-fixed`` the js peer runs with
  ``--fix-dcutr-roles``, which repairs exactly that in the js process (see punch.mjs), so this
  direction proves p2pchat's ``A`` side against js-libp2p's unchanged DCUtR exchange; the
  ``js-dialer`` direction runs stock js-libp2p.

Over QUIC (issue #20, the matrix's js/quic DCUtR cells), read in node_modules
(@libp2p/dcutr 3.0.28, @chainsafe/libp2p-quic 2.1.1 on quinn), then run:

* js-libp2p's DCUtR has no QUIC procedure ("TODO: when we have a QUIC transport, the dial step
  is different - for now we only have tcp support", dcutr.js): as ``A`` and as ``B`` it dials
  the other's addresses (``connectionManager.openConnection``) and never sends the spec's
  random UDP packets.
* @chainsafe/libp2p-quic dials every connection from one client endpoint (``napi.Client``: a
  quinn endpoint bound to 0.0.0.0:0 when the transport is built, *without a server
  configuration*), never from its listening endpoint (``napi.Server``, which cannot dial).
  A port-preserving NAT maps the client's port, so the only hole js's NAT ever opens is to that
  port, and an endpoint without a server configuration answers a QUIC Initial with at most a
  stateless reset (quinn-proto's ``handle_first_packet``): nothing can connect to it.
* js-libp2p dials a list of addresses one after another, reliable transports (TCP) first, and
  DCUtR gives the whole dial its 5 s: a TCP dial into ``block_tcp_between_nats``' DROP uses it
  up and QUIC is never tried. The js peer therefore runs QUIC-only (``--quic``), reaching the
  relay at its QUIC address, and announces its client port at its router's address
  (``--announce-quic-client``: as ``--dial-port`` for TCP, what an operator of a known
  port-preserving NAT would do; js-libp2p keeps observed addresses unverified without AutoNAT).

So with js as ``A`` (``js-dialer``: p2pchat initiates) a punch can work: js dials p2pchat's
QUIC listen port from its client port, and p2pchat, as the spec's ``B``, sends random packets
from its listen socket to that announced port, opening its NAT for js's (retransmitted)
Initial; p2pchat's listener accepts it (the test below: 17 of 17 runs passed, 6-10 s each).
With js as ``B`` (``js-listener``: js initiates) it cannot: p2pchat as ``A`` dials js's
announced client port from a socket connected to it, which js's client endpoint cannot accept,
and js's own dial (from that port, to p2pchat's listen port) is delivered to that connected
dialling socket, a client, not to p2pchat's listener, for as long as the dial lasts (5 s, js's
whole round). Run once through this lab (``_quic_pair`` with "js-listener"): js's log shows
"B dialing [/ip4/11.77.0.2/udp/.../quic-v1]" then "TimeoutError" 5 s later, no punch in 90 s.
Only a js-side QUIC procedure (random packets from the listening socket, as the spec asks of
``B``) would make that direction work, and the add-on's Server cannot send any.

Through symmetric NATs every punch fails; with js-libp2p serving, p2pchat must still make its
three attempts and record the failure (js-libp2p, like go-libp2p, serves one round per stream).

It caught two p2pchat bugs. Relayed connections were addressed ``/p2p/<relay>/p2p-circuit/...``,
identify reports that as the peer's observed address, and js-libp2p fails the whole identify
on an observed address without an IP (see ``_circuit_conn_addr`` in node/p2p/circuit.py), so
a js peer never learnt our protocols over a relay and never started DCUtR. And p2pchat's
initiator retried only on the stream of its first round, which js-libp2p ends after a failed
round: it gave up after one attempt without recording an outcome (node/holepunch.py).

A third (issue #20, bug 1): js-gossipsub run on limited connections keeps its one stream on the
relayed connection and reopens it only on a new connection or a new stream of ours arriving
while it has none; p2pchat closed the relayed connection 2 s after the punch and js went silent
for good. The handover tests (punch.mjs ``--pubsub-on-limited``, ``--keep-relayed``,
``--never-reopen``) check node/relay_handover.py: the relayed connection kept while js's stream
is on it, then js heard on the direct connection again, every message both ways, and the
renewals bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from p2pchat.node.p2p.pubsub_streams import STREAMS_PER_CONNECTION
from p2pchat.node.relay_handover import LOOKS
from p2pchat.node.wire.chat import ChatText, decode, encode, new_message_id
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import NodeProcess, start_node_in
from tests.interop_peers import ROOM, JsPunchPeer, stopped_at_teardown
from tests.nat_lab import Lab, block_tcp_between_nats, nat_lab
from tests.test_autorelay import CHAT_FRIENDLY, connection_kind, logged
from tests.test_chat import is_message, wait_members
from tests.test_holepunch_quic import quic_peer

INTERNET = "11.77.0"  # not private for js-libp2p (see the module docstring); stays in the lab
JS_DIAL_PORT = 24001  # below the ephemeral range, so no listener on port 0 can take it
WAIT = 60.0
PUNCH_WAIT = 90.0  # identify, a 5 s direct-dial attempt, up to three punch rounds of 5 s


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The NAT lab on :data:`INTERNET`; port-preserving NATs unless parametrized otherwise."""
    with nat_lab(getattr(request, "param", "port-preserving"), internet=INTERNET) as built:
        yield built


@pytest.fixture
def js_peers() -> Iterator[list[JsPunchPeer]]:
    """Collects started js peers and kills them at the end of the test, whatever happened;
    their DCUtR logs go to the captured output (shown when the test fails)."""
    yield from stopped_at_teardown()


def _js(js_peers: list[JsPunchPeer], lab: Lab, ns: str, ip: str, *args: str) -> JsPunchPeer:
    peer = JsPunchPeer(
        ns,
        "--listen",
        ip,
        "--dial-port",
        str(JS_DIAL_PORT),
        "--announce",
        f"/ip4/{lab.outside_ip(ns)}/tcp/{JS_DIAL_PORT}",
        *args,
    )
    js_peers.append(peer)
    return peer


@dataclass(frozen=True)
class Pair:
    py: NodeProcess
    js: JsPunchPeer
    py_ns: str  # the namespace p2pchat runs in
    py_side: str  # p2pchat's side in libp2p_holepunch_outcomes_total


def _pair(
    lab: Lab,
    tmp_path: Path,
    nodes: list[NodeProcess],
    js_peers: list[JsPunchPeer],
    js_role: str,
    *js_args: str,
    relay_env: dict[str, str] = CHAT_FRIENDLY,
    py_env: dict[str, str] | None = None,
) -> Pair:
    """A p2pchat relay (its config from ``relay_env``), then the pair: the listener reserves a
    slot on it, the dialer dials the listener's circuit address (the js peer started with
    ``js_args`` too, the p2pchat peer with ``py_env`` in its environment). Returns once the
    relayed connection is open."""
    relay = start_node_in(
        lab.relay_ns, lab.relay_ip, tmp_path / "relay", nodes, "--role", "relay", **relay_env
    )
    relay_addr = next(
        a for a in relay.ready["advertised"] if a.startswith(f"/ip4/{lab.relay_ip}/tcp/")
    )
    if js_role == "js-listener-roles-fixed":
        js = _js(
            js_peers,
            lab,
            lab.listener_ns,
            lab.listener_ip,
            "--reserve",
            relay_addr,
            "--fix-dcutr-roles",
            *js_args,
        )
        circuit = f"{relay_addr}/p2p-circuit/p2p/{js.peer_id}"
        assert circuit in js.next(lambda e: "reservation" in e)["reservation"]["addrs"]
        pair = Pair(
            start_node_in(
                lab.dialer_ns,
                lab.dialer_ip,
                tmp_path / "py",
                nodes,
                "--json",
                "--bootstrap",
                circuit,
                **(py_env or {}),
            ),
            js,
            lab.dialer_ns,
            "receiver",
        )
    else:
        py = start_node_in(
            lab.listener_ns,
            lab.listener_ip,
            tmp_path / "py",
            nodes,
            "--json",
            P2PCHAT_AUTORELAY__MODE="on",
            P2PCHAT_AUTORELAY__RELAYS=relay_addr,
            **(py_env or {}),
        )
        logged(py, "relay reservation", relay=relay.peer_id)
        circuit = f"{relay_addr}/p2p-circuit/p2p/{py.peer_id}"
        js = _js(js_peers, lab, lab.dialer_ns, lab.dialer_ip, "--dial", circuit, *js_args)
        pair = Pair(py, js, lab.listener_ns, "initiator")
    pair.py.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    # They meet through the relay: the only way, each NAT drops the other's connections.
    first = js.next(lambda e: e.get("connection", {}).get("peer") == pair.py.peer_id)
    assert first["connection"]["relayed"] and first["connection"]["limited"], first
    return pair


def direct_over(addr: str, ip: str, transport: str) -> None:
    """``addr``, the other side's address of a punched connection, is ``ip`` (the NAT's
    outside address) over ``transport``: ``tcp``, or ``quic`` (``/udp/N/quic-v1``)."""
    over = "/udp/" if transport == "quic" else "/tcp/"
    assert addr.startswith(f"/ip4/{ip}{over}"), addr
    assert ("/quic-v1" in addr) == (transport == "quic"), addr


def _total(node: NodeProcess, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` in ``node``'s /metrics whose labels include ``labels``."""
    status, text = node.http_get("/metrics")
    assert status == 200
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _open_relayed(node: NodeProcess) -> float:
    """How many relayed connections ``node`` has open, by its swarm's opened/closed counters."""
    opened = _total(node, "libp2p_swarm_connections_opened_total", transport="p2p-circuit")
    return opened - _total(node, "libp2p_swarm_connections_closed_total", transport="p2p-circuit")


def _connection(event: str, peer: str, *, relayed: bool) -> Callable[[dict[str, Any]], bool]:
    """A predicate: the js peer's ``event`` (open, close) of a (non-)relayed connection."""
    return lambda e: (
        e.get("connection", {}).get("event") == event
        and e["connection"]["peer"] == peer
        and e["connection"]["relayed"] == relayed
    )


@pytest.mark.interop("js", "tcp", "relay-ours")
@pytest.mark.parametrize(
    "js_role",
    [
        pytest.param("js-dialer", marks=pytest.mark.interop("js", "tcp", "dcutr-they-dial")),
        pytest.param(
            "js-listener-roles-fixed", marks=pytest.mark.interop("js", "tcp", "dcutr-we-dial")
        ),
    ],
)
def test_hole_punch_between_p2pchat_and_js_libp2p(
    lab: Lab,  # first: built first, torn down after every process is gone
    tmp_path: Path,
    nodes: list[NodeProcess],
    js_peers: list[JsPunchPeer],
    js_role: str,
) -> None:
    pair = _pair(lab, tmp_path, nodes, js_peers, js_role)
    _punched_then_chat(lab, pair, "tcp")
    outcomes = "libp2p_holepunch_outcomes_total"
    py = pair.py
    assert _total(py, outcomes, side=pair.py_side, outcome="success", num_attempts="1") == 1
    assert _total(py, outcomes) == 1  # and no other outcome, on either side
    assert _total(py, "p2pchat_holepunch_protocol_errors_total") == 0


def _punched_then_chat(lab: Lab, pair: Pair, transport: str) -> None:
    """The pair hole punched (over ``transport``, tcp or quic), both see the direct connection
    through the other's NAT, they chat both ways over it and nothing relayed is left."""
    py, js = pair.py, pair.js
    punched = logged(py, "hole punch succeeded", timeout=PUNCH_WAIT, peer=js.peer_id)
    assert punched["side"] == pair.py_side
    direct = js.next(_connection("open", py.peer_id, relayed=False), timeout=PUNCH_WAIT)
    assert not direct["connection"]["limited"]
    direct_over(direct["connection"]["addr"], lab.outside_ip(pair.py_ns), transport)

    # Chat both ways. js-libp2p runs no GossipSub on a limited (relayed) connection and the
    # relay joins no room, so these messages can only cross the direct connection.
    wait_members(py, 1)
    py.say("hello js, directly")
    seen = js.next(lambda e: "message" in e, timeout=WAIT)["message"]
    assert seen["from"] == py.peer_id
    text = decode(bytes.fromhex(seen["data_hex"]), max_text_bytes=4096).text  # type: ignore[union-attr]
    assert text == "hello js, directly"
    chat = ChatText(
        id=new_message_id(),
        room=ROOM,
        sender_name="js",
        text="hello p2pchat, directly",
        sent_at_ms=int(time.time() * 1000),
    )
    js.send(f"publish {encode(chat).hex()}")
    got = py.next_event(is_message("hello p2pchat, directly"), timeout=WAIT)
    assert (got["sender"], got["sender_name"]) == (js.peer_id, "js")

    # The relayed connection is gone on both sides.
    js.next(_connection("close", py.peer_id, relayed=True), timeout=WAIT)
    deadline = time.monotonic() + WAIT
    while _open_relayed(py) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _open_relayed(py) == 0
    assert connection_kind(py, js.peer_id) == "direct"
    to_py = [c for c in js.connections() if c["peer"] == py.peer_id]
    assert to_py and not any(c["relayed"] for c in to_py), to_py


def _quic_pair(
    lab: Lab, tmp_path: Path, nodes: list[NodeProcess], js_peers: list[JsPunchPeer], js_role: str
) -> Pair:
    """As :func:`_pair` over QUIC: TCP between the NATs dropped, the relay listening on TCP and
    QUIC, p2pchat on both (it reaches the relay over TCP: its NAT's address is learnt there),
    the js peer on QUIC only (``--quic``: it reaches the relay at its QUIC address) and
    announcing its QUIC client port at its router's address (see the module docstring)."""
    block_tcp_between_nats(lab)
    relay = start_node_in(
        lab.relay_ns,
        lab.relay_ip,
        tmp_path / "relay",
        nodes,
        "--role",
        "relay",
        quic=True,
        **CHAT_FRIENDLY,
    )
    advertised = relay.ready["advertised"]
    relay_tcp = next(a for a in advertised if a.startswith(f"/ip4/{lab.relay_ip}/tcp/"))
    relay_quic = next(a for a in advertised if a.startswith(f"/ip4/{lab.relay_ip}/udp/"))

    def js_in(ns: str, ip: str, *args: str) -> JsPunchPeer:
        peer = JsPunchPeer(
            ns, "--listen", ip, "--quic", "--announce-quic-client", lab.outside_ip(ns), *args
        )
        js_peers.append(peer)
        return peer

    if js_role == "js-listener":
        js = js_in(lab.listener_ns, lab.listener_ip, "--reserve", relay_quic)
        assert js.next(lambda e: "reservation" in e)["reservation"]["addrs"]
        circuit = f"{relay_tcp}/p2p-circuit/p2p/{js.peer_id}"
        py = quic_peer(lab.dialer_ns, lab.dialer_ip, tmp_path / "py", nodes, "--bootstrap", circuit)
        pair = Pair(py, js, lab.dialer_ns, "receiver")
    else:
        py = quic_peer(
            lab.listener_ns,
            lab.listener_ip,
            tmp_path / "py",
            nodes,
            P2PCHAT_AUTORELAY__MODE="on",
            P2PCHAT_AUTORELAY__RELAYS=relay_tcp,
        )
        logged(py, "relay reservation", relay=relay.peer_id)
        js = js_in(
            lab.dialer_ns, lab.dialer_ip, "--dial", f"{relay_quic}/p2p-circuit/p2p/{py.peer_id}"
        )
        pair = Pair(py, js, lab.listener_ns, "initiator")
    first = js.next(lambda e: e.get("connection", {}).get("peer") == pair.py.peer_id)
    assert first["connection"]["relayed"] and first["connection"]["limited"], first
    return pair


# Only the js-dialer role: as DCUtR's B over QUIC js-libp2p cannot punch (the module docstring).
@pytest.mark.interop("js", "quic", "dcutr-they-dial")
def test_hole_punch_over_quic_between_p2pchat_and_js_libp2p(
    lab: Lab, tmp_path: Path, nodes: list[NodeProcess], js_peers: list[JsPunchPeer]
) -> None:
    # Over QUIC as go's and rust's DCUtR tests do it: the direct connection can only be a
    # punched QUIC one. One success and no protocol error are asserted, not one outcome.
    pair = _quic_pair(lab, tmp_path, nodes, js_peers, "js-dialer")
    _punched_then_chat(lab, pair, "quic")
    outcomes = "libp2p_holepunch_outcomes_total"
    assert _total(pair.py, outcomes, side=pair.py_side, outcome="success") == 1
    assert _total(pair.py, "p2pchat_holepunch_protocol_errors_total") == 0


@pytest.mark.parametrize("lab", ["symmetric"], indirect=True)
def test_a_failed_hole_punch_with_js_libp2p_takes_three_attempts(
    lab: Lab, tmp_path: Path, nodes: list[NodeProcess], js_peers: list[JsPunchPeer]
) -> None:
    # Symmetric NATs: every punch fails. js-libp2p serves one DCUtR round per stream and ends
    # it after a failed one; p2pchat initiates, so it must go on with a new stream for each
    # of its three attempts, then give up cleanly (an outcome, no protocol error).
    pair = _pair(lab, tmp_path, nodes, js_peers, "js-dialer")
    py, js = pair.py, pair.js
    failed = logged(py, "hole punch failed; staying relayed", timeout=PUNCH_WAIT, peer=js.peer_id)
    assert (failed["side"], failed["attempts"], failed["outcome"]) == ("initiator", 3, "failed")
    outcomes = "libp2p_holepunch_outcomes_total"
    assert _total(py, outcomes, side="initiator", outcome="failed", num_attempts="3") == 1
    assert _total(py, outcomes) == 1
    assert _total(py, "p2pchat_holepunch_protocol_errors_total") == 0
    # They stay on the relay (js-libp2p runs no chat there: GossipSub skips limited connections).
    assert connection_kind(py, js.peer_id) == "relayed"
    to_py = [c for c in js.connections() if c["peer"] == py.peer_id]
    assert to_py and all(c["relayed"] and c["limited"] for c in to_py), to_py


CIRCUIT_LIMIT = 30  # seconds the test relay lets a relayed connection live (go-libp2p: 120)
KEEP_MAX = 15  # holepunch.keep_relayed_max of the p2pchat peer when the relay allows an hour


def _carries(text: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate: a js peer's output line of a received chat message of ``text``."""

    def predicate(event: dict[str, Any]) -> bool:
        if "message" not in event:
            return False
        got = decode(bytes.fromhex(event["message"]["data_hex"]), max_text_bytes=4096)
        return isinstance(got, ChatText) and got.text == text

    return predicate


def _chat_round(py: NodeProcess, js: JsPunchPeer, text: str) -> None:
    """``text`` from p2pchat to js and back from js to p2pchat; each must arrive."""
    py.say(f"{text} from p2pchat")
    js.next(_carries(f"{text} from p2pchat"), timeout=WAIT / 2)
    chat = ChatText(
        id=new_message_id(),
        room=ROOM,
        sender_name="js",
        text=f"{text} from js",
        sent_at_ms=int(time.time() * 1000),
    )
    js.send(f"publish {encode(chat).hex()}")
    py.next_event(is_message(f"{text} from js"), timeout=WAIT / 2)


@pytest.mark.parametrize(
    ("js_role", "ended_by"),
    [
        ("js-dialer", "relay-limit"),
        ("js-dialer", "keep-max"),
        ("js-listener-roles-fixed", "relay-limit"),
    ],
)
def test_js_keeps_sending_after_the_upgrade_when_its_pubsub_ran_on_the_relay(
    lab: Lab,
    tmp_path: Path,
    nodes: list[NodeProcess],
    js_peers: list[JsPunchPeer],
    js_role: str,
    ended_by: str,
) -> None:
    # Issue #20, bug 1. js-gossipsub run on limited connections (as js-libp2p 2.10 clients
    # do) opens its one outbound stream on the relayed connection, and opens another only when
    # that one is gone and a new connection or a new inbound stream of ours tells it to. Here js
    # keeps the relayed connection after its DCUtR (--keep-relayed), so p2pchat is the one to
    # end it. p2pchat used to close it 2 s after the punch: from then on every message from js
    # was lost, while /peers showed "direct". Now it keeps the relayed connection while the js
    # stream lives on it, until the relay's limit (30 s here) or its own keep_relayed_max (15 s
    # here, the relay allowing an hour) ends it, then has js reopen its stream on the direct
    # connection. The chat goes on both ways, every message, past that end. Both DCUtR roles:
    # p2pchat initiating (js dialled its circuit address) and serving (it dialled js's).
    limit = CIRCUIT_LIMIT if ended_by == "relay-limit" else KEEP_MAX
    pair = _pair(
        lab,
        tmp_path,
        nodes,
        js_peers,
        js_role,
        "--pubsub-on-limited",
        "--keep-relayed",
        relay_env=(
            {
                "P2PCHAT_RELAY__CIRCUIT_DURATION": str(CIRCUIT_LIMIT),
                "P2PCHAT_RELAY__CIRCUIT_DATA": str(1 << 20),
            }
            if ended_by == "relay-limit"
            else CHAT_FRIENDLY
        ),
        py_env=(
            {"P2PCHAT_HOLEPUNCH__KEEP_RELAYED_MAX": str(KEEP_MAX)} if ended_by == "keep-max" else {}
        ),
    )
    relayed_since = time.monotonic()
    py, js = pair.py, pair.js
    logged(py, "hole punch succeeded", timeout=PUNCH_WAIT, peer=js.peer_id)
    js.next(_connection("open", py.peer_id, relayed=False), timeout=PUNCH_WAIT)
    wait_members(py, 1)

    relay_gone = _connection("close", py.peer_id, relayed=True)
    gone_at: float | None = None
    rounds = 0
    deadline = relayed_since + limit + 3 * WAIT
    # Every message both ways, until well after the relayed connection ended.
    while gone_at is None or time.monotonic() - gone_at < 10:
        assert time.monotonic() < deadline, f"relayed connection never closed ({rounds} rounds)"
        rounds += 1
        try:
            _chat_round(py, js, f"round {rounds}")
        except AssertionError as error:
            told = [line for line in py.raw_stderr if "relayed" in line or "pubsub" in line]
            raise AssertionError(f"round {rounds}: {error}\np2pchat: {''.join(told)}") from None
        if gone_at is None and any(relay_gone(e) for e in js.seen):
            gone_at = time.monotonic()
        time.sleep(1)
    assert time.monotonic() - relayed_since > limit
    kept = logged(py, "relayed connection kept for the peer's pubsub stream", peer=js.peer_id)
    assert kept["seconds"] >= KEEP_MAX - 1 if ended_by == "keep-max" else kept["seconds"] > 0
    assert connection_kind(py, js.peer_id) == "direct"
    assert _open_relayed(py) == 0
    # p2pchat kept the relayed connection for js's stream, then had js reopen it on the direct
    # one; nothing else was retired.
    handovers = "p2pchat_relayed_handover_total"
    assert _total(py, handovers, outcome="resumed") == 1, py.log[-40:]
    assert _total(py, handovers) == 1


def test_js_that_closes_the_relayed_connection_itself_keeps_sending(
    lab: Lab, tmp_path: Path, nodes: list[NodeProcess], js_peers: list[JsPunchPeer]
) -> None:
    # Stock js-libp2p 3: its DCUtR closes the relayed connection as soon as its dial succeeded,
    # and its GossipSub stream (run on limited connections) with it. Nothing to keep: js must
    # be heard on the direct connection again (its stream reopened on a new stream of ours).
    pair = _pair(lab, tmp_path, nodes, js_peers, "js-dialer", "--pubsub-on-limited")
    py, js = pair.py, pair.js
    logged(py, "hole punch succeeded", timeout=PUNCH_WAIT, peer=js.peer_id)
    js.next(_connection("close", py.peer_id, relayed=True), timeout=WAIT)
    wait_members(py, 1)
    for rounds in range(1, 11):
        _chat_round(py, js, f"round {rounds}")
        time.sleep(0.5)
    handovers = "p2pchat_relayed_handover_total"
    deadline = time.monotonic() + WAIT  # counted once its last renewal is answered
    while not _total(py, handovers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _total(py, handovers, outcome="failed") == 0
    assert _total(py, handovers) == 1


def test_a_peer_that_never_reopens_its_stream_is_given_up_on_after_the_renewals(
    lab: Lab, tmp_path: Path, nodes: list[NodeProcess], js_peers: list[JsPunchPeer]
) -> None:
    # The renewals are bounded: a js peer whose GossipSub never opens a second stream
    # (--never-reopen) is renewed at most six times and within the budget of pubsub streams of
    # ours per connection (the move counts), nudged, then the handover ends "failed", counted.
    pair = _pair(
        lab,
        tmp_path,
        nodes,
        js_peers,
        "js-dialer",
        "--pubsub-on-limited",
        "--keep-relayed",
        "--never-reopen",
        py_env={"P2PCHAT_HOLEPUNCH__KEEP_RELAYED_MAX": str(KEEP_MAX)},
    )
    py, js = pair.py, pair.js
    logged(py, "hole punch succeeded", timeout=PUNCH_WAIT, peer=js.peer_id)
    wait_members(py, 1)
    _chat_round(py, js, "before")  # js's stream on the relayed connection, kept
    kept = logged(py, "relayed connection kept for the peer's pubsub stream", timeout=WAIT)
    assert kept["seconds"] >= KEEP_MAX - 1
    unheard = logged(py, "peer not heard after the relayed handover", timeout=WAIT, peer=js.peer_id)
    assert (unheard["reason"], unheard["level"]) == ("renewals", "warning")
    assert 1 <= unheard["renewals"] <= min(len(LOOKS), STREAMS_PER_CONNECTION - 1)
    # The budget is what stopped them: exactly that many streams of ours on the connection.
    assert unheard["streams"] == STREAMS_PER_CONNECTION
    handovers = "p2pchat_relayed_handover_total"
    assert _total(py, handovers, outcome="failed") == 1
    assert _total(py, handovers) == 1
    # We still reach js directly; only js cannot send (its library's choice).
    py.say("still heard by js")
    js.next(_carries("still heard by js"), timeout=WAIT)

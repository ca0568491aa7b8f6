"""Hole punching with rust-libp2p: p2pchat's DCUtR and rust-libp2p's meet through real NAT.

The NAT lab of tests/nat_lab.py (port-preserving NATs that drop unsolicited inbound
connections), a p2pchat relay on its "internet", and a mixed pair: one peer is p2pchat, the
other the rust-libp2p peer of tests/interop/rust (which always runs rust-libp2p's DCUtR), each
behind its own NAT. Both roles:

* ``rust-dialer``: p2pchat reserves a slot on the relay; rust dials p2pchat's circuit address.
  p2pchat received the relayed connection, so it initiates DCUtR (our metric side
  ``initiator``) and rust-libp2p serves it.
* ``rust-listener``: rust reserves; p2pchat dials rust's circuit address. rust-libp2p
  initiates and p2pchat serves (our side ``receiver``).

Each must end with the pair on a direct connection as both sides see it, p2pchat counting one
successful punch and no protocol error, and chat both ways. rust-libp2p's GossipSub keeps its
stream to us on the relayed connection, so p2pchat keeps that connection too
(node/relay_handover.py); what happens once it is retired is the second test, a known bug.
rust-libp2p learns the address its NAT maps it to from the relay's identify (an external
address candidate, which its DCUtR offers) and dials from its listening port, so a
port-preserving NAT maps it to the port the other side is told.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NodeProcess, start_node_in
from tests.nat_lab import Lab
from tests.test_autorelay import CHAT_FRIENDLY, connection_kind, logged
from tests.test_chat import is_message, wait_members
from tests.test_interop_go_dcutr import lab
from tests.test_interop_js_dcutr import PUNCH_WAIT, WAIT, _open_relayed, _total
from tests.test_interop_rust import RustPeer, rust_peers

__all__ = ["lab", "rust_peers"]

# rust-libp2p's GossipSub keeps its stream to us on the connection it opened it on, the
# relayed one: p2pchat keeps that connection while so (node/relay_handover.py), at most this
# long here (300 s by default), then closes it and the rust peer must be heard directly.
KEEP_RELAYED = {"P2PCHAT_HOLEPUNCH__KEEP_RELAYED_MAX": "5"}


def _is_connection(event: str, peer: str, *, relayed: bool) -> Callable[[dict[str, Any]], bool]:
    """A predicate: the rust peer's ``event`` (open, close) of a (non-)relayed connection."""
    return lambda e: (
        e.get("connection", {}).get("event") == event
        and e["connection"]["peer"] == peer
        and e["connection"]["relayed"] == relayed
    )


def _pair(
    lab: Lab,
    tmp_path: Path,
    nodes: list[NodeProcess],
    peers: list[RustPeer],
    rust_role: str,
    keep: dict[str, str] | None = None,
) -> tuple[NodeProcess, RustPeer, str, str]:
    """A p2pchat relay, then the pair: the listener reserves a slot on it, the dialer dials the
    listener's circuit address. Returns (p2pchat, rust, p2pchat's namespace, p2pchat's side)
    once the relayed connection is open. ``keep``: the p2pchat peer's environment."""
    keep = keep or {}
    relay = start_node_in(
        lab.relay_ns, lab.relay_ip, tmp_path / "relay", nodes, "--role", "relay", **CHAT_FRIENDLY
    )
    relay_addr = next(
        a for a in relay.ready["advertised"] if a.startswith(f"/ip4/{lab.relay_ip}/tcp/")
    )
    if rust_role == "rust-listener":
        rust = RustPeer("-listen", f"/ip4/{lab.listener_ip}/tcp/0", netns=lab.listener_ns)
        peers.append(rust)
        circuit = rust.run(f"reserve {relay_addr}", "reserved")["circuit"]
        py = start_node_in(
            lab.dialer_ns,
            lab.dialer_ip,
            tmp_path / "py",
            nodes,
            "--json",
            "--bootstrap",
            circuit,
            **keep,
        )
        py_ns, py_side = lab.dialer_ns, "receiver"
    else:
        py = start_node_in(
            lab.listener_ns,
            lab.listener_ip,
            tmp_path / "py",
            nodes,
            "--json",
            P2PCHAT_AUTORELAY__MODE="on",
            P2PCHAT_AUTORELAY__RELAYS=relay_addr,
            **keep,
        )
        logged(py, "relay reservation", relay=relay.peer_id)
        rust = RustPeer("-listen", f"/ip4/{lab.dialer_ip}/tcp/0", netns=lab.dialer_ns)
        peers.append(rust)
        rust.run(f"dial {relay_addr}/p2p-circuit/p2p/{py.peer_id}", "dialed")
        py_ns, py_side = lab.listener_ns, "initiator"
    # They meet through the relay first: each NAT drops the other's connections.
    rust.next(_is_connection("open", py.peer_id, relayed=True))
    return py, rust, py_ns, py_side


def _chat_both_ways(py: NodeProcess, rust: RustPeer, there: str, back: str) -> None:
    wait_members(py, 1)
    rust.wait_topic_peer(py.peer_id)
    py.say(there)
    assert rust.message(there)["from"] == py.peer_id
    rust.run(f"say {back}", "published")
    got = py.next_event(is_message(back), timeout=WAIT)
    assert (got["sender"], got["sender_name"]) == (rust.peer_id, "rust")


def _punched(py: NodeProcess, rust: RustPeer, py_ns: str, py_side: str, lab: Lab) -> None:
    """The punch succeeded as both sides see it, p2pchat counting one clean success."""
    punched = logged(py, "hole punch succeeded", timeout=PUNCH_WAIT, peer=rust.peer_id)
    assert punched["side"] == py_side
    direct = rust.next(_is_connection("open", py.peer_id, relayed=False), PUNCH_WAIT)
    assert direct["connection"]["addr"].startswith(f"/ip4/{lab.outside_ip(py_ns)}/tcp/")
    assert connection_kind(py, rust.peer_id) == "direct"
    outcomes = "libp2p_holepunch_outcomes_total"
    assert _total(py, outcomes, side=py_side, outcome="success") == 1
    assert _total(py, outcomes) == 1
    assert _total(py, "p2pchat_holepunch_protocol_errors_total") == 0


@pytest.mark.parametrize(
    "rust_role",
    [
        pytest.param("rust-dialer", marks=pytest.mark.interop("rust", "tcp", "dcutr-they-dial")),
        pytest.param("rust-listener", marks=pytest.mark.interop("rust", "tcp", "dcutr-we-dial")),
    ],
)
def test_hole_punch_between_p2pchat_and_rust_libp2p(
    lab: Lab,  # first: built first, torn down after every process is gone
    tmp_path: Path,
    nodes: list[NodeProcess],
    rust_peers: list[RustPeer],
    rust_role: str,
) -> None:
    py, rust, py_ns, py_side = _pair(lab, tmp_path, nodes, rust_peers, rust_role)
    _punched(py, rust, py_ns, py_side, lab)
    _chat_both_ways(py, rust, "hello rust, directly", "hello p2pchat, directly")


# A known bug, kept visible: p2pchat keeps the relayed connection while rust's GossipSub stream
# is on it (node/relay_handover.py), and the pair chat both ways (above); once it is retired
# (keep_relayed_max) the handover ends `failed` (rust not heard on the direct connection after
# six renewals of our stream) and one direction of the chat is lost, both roles, every run
# (3 of 3). Strict: the day it is fixed this fails, and the mark goes. Causes: README,
# rust-libp2p (rust's GossipSub disables itself on a connection at the 5th inbound stream; the
# handover opens up to seven; and rust to p2pchat is lost even with fewer).
@pytest.mark.xfail(
    strict=True, reason="after the relayed connection is retired, chat with rust is lost"
)
@pytest.mark.parametrize("rust_role", ["rust-dialer", "rust-listener"])
def test_after_the_relayed_connection_is_retired_rust_and_p2pchat_still_chat(
    lab: Lab,  # first: built first, torn down after every process is gone
    tmp_path: Path,
    nodes: list[NodeProcess],
    rust_peers: list[RustPeer],
    rust_role: str,
) -> None:
    py, rust, py_ns, py_side = _pair(lab, tmp_path, nodes, rust_peers, rust_role, KEEP_RELAYED)
    _punched(py, rust, py_ns, py_side, lab)
    rust.next(_is_connection("close", py.peer_id, relayed=True))
    deadline = time.monotonic() + WAIT
    while _open_relayed(py) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _open_relayed(py) == 0
    _chat_both_ways(py, rust, "hello rust, only directly", "hello p2pchat, only directly")
    assert _total(py, "p2pchat_relayed_handover_total", outcome="resumed") == 1

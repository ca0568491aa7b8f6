"""A NAT lab of network namespaces, after libp2p's hole-punch-interop test plan.

    dialer (10.77.1.2) -- router D --+                        +-- router L -- listener (10.77.2.2)
                         10.77.1.1   | 10.77.0.2    10.77.0.3 |   10.77.2.1
                                     +------ "internet" ------+
                                     10.77.0.0/24 (by default)
                                     relay 10.77.0.1 (bridge)

Each router masquerades its LAN behind its internet address with iptables and drops unsolicited
inbound connections (a home router's default; a RST instead would kill the simultaneous open).
``MASQUERADE`` keeps a connection's source port when it can: a port-preserving ("cone-like")
NAT, which hole punching can traverse. With ``--random-fully`` every connection gets a random
port: the symmetric NAT hole punching cannot predict. Routers have no route to the other LAN,
so the peers can reach each other only through the relay, or through the holes they punch.

The relay namespace holds the internet's bridge, so the relay is a host on it. Nothing leaves
the namespaces; needs root, iproute2 and iptables (CI installs both), and the test fails
without them. The kernel here has no netem, so links add no delay.

The internet's /24 can be moved (``nat_lab(nat, internet="...")``; the LANs stay 10.77.1.0/24
and 10.77.2.0/24): a peer that refuses private addresses for hole punching, as js-libp2p does,
needs the NATs' outside addresses to look public. No namespace has a route beyond the lab, so
whatever the range, its packets stay inside.

Shared machines: every lab has a random tag of its own in its namespace and interface names
(``$P2PCHAT_LAB_PREFIX-relay<tag>``, ...; the prefix defaults to ``p2pchat``), and a lab
deletes only what it created itself: a name already taken (another run's lab) fails this
one's setup, and its teardown leaves the other alone.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

NATS = ("port-preserving", "symmetric")
DEFAULT_INTERNET = "10.77.0"  # the internet /24 unless a test asks for another one
# First part of the namespaces' names (interface names take a letter instead: 15 bytes at most).
PREFIX = os.environ.get("P2PCHAT_LAB_PREFIX", "p2pchat")


def sh(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")


@dataclass(frozen=True)
class Lab:
    """Namespace names and addresses of one lab."""

    relay_ns: str
    relay_ip: str
    dialer_ns: str
    dialer_ip: str
    listener_ns: str
    listener_ip: str
    routers: dict[str, str]  # router namespace -> its internet address
    router_of: dict[str, str]  # peer namespace (dialer, listener) -> its router's namespace

    def outside_ip(self, peer_ns: str) -> str:
        """The internet address that the NAT in front of ``peer_ns`` (dialer or listener) maps
        its peer's connections to."""
        return self.routers[self.router_of[peer_ns]]


class _Created:
    """What this lab made, so that teardown deletes exactly that and nothing of another's."""

    def __init__(self) -> None:
        self.namespaces: list[str] = []
        self.links: list[str] = []  # veth ends created in the root namespace

    def netns(self, name: str) -> str:
        sh("ip", "netns", "add", name)  # fails if the name is taken: then it is not ours
        self.namespaces.append(name)
        return name

    def veth(self, name: str, peer: str) -> None:
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", peer)
        self.links.append(name)

    def remove(self) -> None:
        # Deleting a namespace deletes the veth ends in it, and so their peers; a veth still in
        # the root namespace (setup failed before moving it) is deleted by its name.
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)


def _router(
    made: _Created, tag: str, side: str, index: int, relay_ns: str, nat: str, internet: str
) -> tuple[str, str, str]:
    """Create a router and its peer's namespace for LAN ``index``; (router ns, peer ns, peer ip)."""
    router, peer = f"{PREFIX}-r{side}{tag}", f"{PREFIX}-{side}{tag}"
    wan, bridge_port, lan, peer_if = (f"{p}{side}{tag}" for p in ("w", "b", "l", "p"))
    wan_ip, lan_net = f"{internet}.{index + 1}", f"10.77.{index}"
    for ns in (router, peer):
        made.netns(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    # the router's internet side: a port of the relay namespace's bridge
    made.veth(wan, bridge_port)
    sh("ip", "link", "set", wan, "netns", router)
    sh("ip", "link", "set", bridge_port, "netns", relay_ns)
    sh("ip", "-n", relay_ns, "link", "set", bridge_port, "master", "br0", "up")
    sh("ip", "-n", router, "addr", "add", f"{wan_ip}/24", "dev", wan)
    sh("ip", "-n", router, "link", "set", wan, "up")
    # the LAN: router and peer
    made.veth(lan, peer_if)
    sh("ip", "link", "set", lan, "netns", router)
    sh("ip", "link", "set", peer_if, "netns", peer)
    sh("ip", "-n", router, "addr", "add", f"{lan_net}.1/24", "dev", lan)
    sh("ip", "-n", router, "link", "set", lan, "up")
    sh("ip", "-n", peer, "addr", "add", f"{lan_net}.2/24", "dev", peer_if)
    sh("ip", "-n", peer, "link", "set", peer_if, "up")
    sh("ip", "-n", peer, "route", "add", "default", "via", f"{lan_net}.1")
    # NAT and firewall
    ns_exec = ("ip", "netns", "exec", router)
    sh(*ns_exec, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    masquerade = ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", wan, "-j", "MASQUERADE"]
    if nat == "symmetric":
        masquerade.append("--random-fully")
    sh(*ns_exec, *masquerade)
    new = ("-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")
    sh(*ns_exec, "iptables", "-A", "INPUT", "-i", wan, *new)
    sh(*ns_exec, "iptables", "-A", "FORWARD", "-i", wan, *new)
    return router, peer, f"{lan_net}.2"


@contextmanager
def nat_lab(nat: str, internet: str = DEFAULT_INTERNET) -> Iterator[Lab]:
    """Build the lab with both routers doing ``nat`` (one of :data:`NATS`); tear it down after.

    ``internet`` is the first three octets of the internet's /24: the relay is ``.1``, router D
    ``.2`` and router L ``.3``. It must not overlap the LANs (10.77.1.0/24, 10.77.2.0/24).
    Names carry a random tag (six hex digits), so labs of several runs can exist side by side;
    teardown removes only this lab's namespaces and links.
    """
    assert nat in NATS
    assert internet.count(".") == 2 and internet not in ("10.77.1", "10.77.2"), internet
    tag = secrets.token_hex(3)
    made = _Created()
    try:
        relay_ns = made.netns(f"{PREFIX}-relay{tag}")
        sh("ip", "-n", relay_ns, "link", "set", "lo", "up")
        sh("ip", "-n", relay_ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", relay_ns, "addr", "add", f"{internet}.1/24", "dev", "br0")
        sh("ip", "-n", relay_ns, "link", "set", "br0", "up")
        routers = {}
        peers = {}
        for side, index in (("d", 1), ("l", 2)):
            router, peer, ip = _router(made, tag, side, index, relay_ns, nat, internet)
            routers[router] = f"{internet}.{index + 1}"
            peers[side] = (peer, ip, router)
        yield Lab(
            relay_ns=relay_ns,
            relay_ip=f"{internet}.1",
            dialer_ns=peers["d"][0],
            dialer_ip=peers["d"][1],
            listener_ns=peers["l"][0],
            listener_ip=peers["l"][1],
            routers=routers,
            router_of={peer: router for peer, _, router in peers.values()},
        )
    finally:
        made.remove()


def block_tcp_between_nats(lab: Lab) -> None:
    """Drop every TCP packet between the two routers' internet addresses (either way), so the
    peers behind them can reach each other directly only over UDP (a QUIC hole punch); the
    relay stays reachable over TCP."""
    routers = list(lab.routers.items())
    for (router, _), (_, other_ip) in zip(routers, reversed(routers), strict=True):
        for direction in ("-s", "-d"):
            sh(
                *("ip", "netns", "exec", router, "iptables", "-I", "FORWARD"),
                *("-p", "tcp", direction, other_ip, "-j", "DROP"),
            )

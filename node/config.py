"""The one typed configuration model of a node, and how it is assembled from its sources.

Precedence, lowest first: the model's defaults < the role presets (``config/<role>.yaml``, in the
order the roles are named) < the YAML file < the environment (``P2PCHAT_SECTION__KEY``, plus the
legacy ``CHAT_TOPIC``) < command-line flags. Every default lives in the model below; a preset or a
file only overrides. Any invalid value becomes a :class:`~p2pchat.node.errors.ConfigError` whose
message is one line naming the key and where the bad value came from.
"""

from __future__ import annotations

import fcntl
import importlib.util
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from p2pchat.node.errors import ConfigError, IdentityError
from p2pchat.node.ids import check_announce_addr, check_listen_addr, check_peer_addr
from p2pchat.node.wire.room_names import validate_room
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

ENV_PREFIX = "P2PCHAT_"
ENV_NESTING = "__"
LEGACY_ROOM_ENV = "CHAT_TOPIC"
# The data dir's passphrase (encryption at rest) and the new one for ``p2pchat passphrase
# change``: read by the CLI, never config keys (a secret is not printed by ``config check``).
PASSPHRASE_ENV = "P2PCHAT_PASSPHRASE"
NEW_PASSPHRASE_ENV = "P2PCHAT_NEW_PASSPHRASE"

RoleName = Literal["peer", "bootstrap", "relay", "archiver"]
ROLE_NAMES: tuple[RoleName, ...] = ("peer", "bootstrap", "relay", "archiver")


# --- value types --------------------------------------------------------------------------------


def _split_commas(value: Any) -> Any:
    """Accept ``"a,b"`` where a list is expected, so lists can be given in env vars and flags."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _check_listen_addr(value: str) -> str:
    check_listen_addr(value)
    return value


def _check_announce_addr(value: str) -> str:
    check_announce_addr(value)
    return value


def _check_peer_addr(value: str) -> str:
    check_peer_addr(value)
    return value


def _check_host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port (port 0-65535)")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"{value!r}: host must be an IP address") from None
    return value


def _check_room(value: str) -> str:
    return validate_room(value)  # plain (1-64 letters, digits, - _ .) or owned (<name>~<PeerId>)


def _check_allow_entry(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
        return value
    except ValueError:
        pass
    # Imported here: it loads py-libp2p (~0.5 s), which `--help` and most config errors
    # should not wait for.
    from p2pchat.node.p2p.identity import peer_id_bytes

    try:
        peer_id_bytes(value)
    except Exception:  # the base58 and multihash decoders raise several types
        raise ValueError(f"{value!r} is neither a PeerId nor a network (CIDR)") from None
    return value


ListenAddr = Annotated[str, AfterValidator(_check_listen_addr)]
AllowEntry = Annotated[str, AfterValidator(_check_allow_entry)]
AnnounceAddr = Annotated[str, AfterValidator(_check_announce_addr)]
PeerAddr = Annotated[str, AfterValidator(_check_peer_addr)]
HostPort = Annotated[str, AfterValidator(_check_host_port)]
RoomName = Annotated[str, AfterValidator(_check_room)]


ListenAddrs = Annotated[list[ListenAddr], BeforeValidator(_split_commas)]
AnnounceAddrs = Annotated[list[AnnounceAddr], BeforeValidator(_split_commas)]
PeerAddrs = Annotated[list[PeerAddr], BeforeValidator(_split_commas)]
MuxerNames = Annotated[list[Literal["yamux", "mplex"]], BeforeValidator(_split_commas)]
RoleNames = Annotated[list[RoleName], BeforeValidator(_split_commas)]


# --- the model ----------------------------------------------------------------------------------


class _Section(BaseModel):
    """Base of every section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class NodeSection(_Section):
    """Identity, storage and networking shared by every role."""

    data_dir: Path | None = Field(
        default=None,
        description="Identity and store live here; default: $XDG_DATA_HOME/p2pchat "
        "(~/.local/share/p2pchat).",
    )
    passphrase_file: Path | None = Field(
        default=None,
        description="File holding the data dir's passphrase (encryption at rest; the first "
        "line, owner-only permissions); also the environment variable P2PCHAT_PASSPHRASE. "
        "Without either, the console peer asks for it on a terminal; `p2pchat passphrase "
        "set|change|remove` turns it on, changes or removes it.",
    )
    listen: ListenAddrs = Field(
        default=["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/tcp/0/ws"],
        description="Listen multiaddrs: TCP, WebSocket (/tcp/<port>/ws) and QUIC "
        "(/udp/<port>/quic-v1, not in the default set); port 0 picks a free port. A TCP and "
        "a /ws address on the same port share one socket. Every transport can be dialled "
        "whatever is listened on.",
    )
    announce: AnnounceAddrs = Field(
        default=[],
        description="Addresses advertised to other peers instead of the listen addresses "
        "(public IP or DNS name behind port forwarding).",
    )
    bootstrap: PeerAddrs = Field(
        default=[],
        description="Peers dialled at start and re-dialled with backoff while disconnected "
        "(multiaddrs ending in /p2p/<peer id>); several direct addresses of one peer are "
        "dialled together, a QUIC and a TCP one raced (quic_head_start).",
    )
    muxers: MuxerNames = Field(
        default=["yamux", "mplex"], min_length=1, description="Stream muxers, preferred first."
    )
    max_connections: int = Field(default=300, ge=1, le=100_000)
    dial_timeout: float = Field(default=10.0, gt=0, le=120, description="Seconds per dial.")
    quic_head_start: float = Field(
        default=0.25,
        ge=0,
        le=5,
        description="Seconds a QUIC dial to a peer runs alone before its TCP and WebSocket "
        "addresses are dialled too (go-libp2p's 250 ms); the first connection wins, the other "
        "dials are cancelled. Each further address of the race starts this much later; 0 "
        "dials all at once.",
    )
    bootstrap_backoff_max: float = Field(
        default=60.0, ge=1, le=3600, description="Longest wait between bootstrap re-dials (s)."
    )


def _check_ip_network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP network (CIDR, e.g. 10.0.0.0/8)") from None


IpNetwork = Annotated[str, AfterValidator(_check_ip_network)]


class ConnectionsSection(_Section):
    """Connection admission: inbound slots per address, per peer and in total, so that no one
    address or peer can take them all; outbound connections and dials in total and per peer;
    relayed inbound connections in total, per relay and per peer (defaults: go-libp2p's
    resource manager's and dial limiter's). The inbound total is ``node.max_connections``."""

    per_ip: int = Field(
        default=8,
        ge=1,
        le=100_000,
        description="Inbound connections (handshaking or established) from one address group: "
        "an IPv4 address, an IPv6 /64 (see ipv4_prefix, ipv6_prefix). go-libp2p: 8.",
    )
    per_peer: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Inbound connections of one PeerId, counted once the security handshake "
        "names it.",
    )
    transient: int = Field(
        default=32,
        ge=1,
        le=100_000,
        description="Inbound connections not yet secured, muxed and identified, at most. When "
        "full, a newcomer takes the slot of the oldest handshake of the address holding the "
        "most, if that address holds more than the newcomer's would.",
    )
    transient_deadline: float = Field(
        default=15.0,
        gt=0,
        le=300,
        description="Seconds an inbound connection has to finish the security handshake, the "
        "muxer negotiation and identify (go-libp2p: 15 s accept timeout); then it is closed.",
    )
    handshake_max_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        le=16 * 2**20,
        description="Bytes an inbound connection may send before its muxer is agreed (a Noise "
        "handshake and two multistream negotiations take under 4 KiB); then it is closed.",
    )
    per_ip_exempt: Annotated[list[IpNetwork], BeforeValidator(_split_commas)] = Field(
        default=["127.0.0.1/32", "::1/128"],
        description="Networks (CIDR) the per_ip limit does not apply to: by default this "
        "machine's own loopback addresses (a local proxy, local tests); go-libp2p exempts "
        "all of loopback.",
    )
    ipv4_prefix: int = Field(
        default=32, ge=8, le=32, description="IPv4 prefix length of an address group."
    )
    ipv6_prefix: int = Field(
        default=64, ge=16, le=128, description="IPv6 prefix length of an address group."
    )
    max_outbound: int = Field(
        default=128,
        ge=1,
        le=100_000,
        description="Outbound connections, dials in flight included, at most (go-libp2p: "
        "128): peers that name addresses (Kad, DCUtR, discovery) cannot make this node fill "
        "node.max_connections with its own dials; the rest stay for inbound peers.",
    )
    outbound_per_peer: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="Outbound connections to one PeerId, dials in flight included (go-libp2p: 8).",
    )
    dials_in_flight: int = Field(
        default=160,
        ge=1,
        le=100_000,
        description="Dials running at once (go-libp2p's dial limiter: 160); a dial over it "
        "fails at once.",
    )
    dials_per_peer: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="Dials to one PeerId running at once (go-libp2p: 8).",
    )
    direct_in_flight: int = Field(
        default=32,
        ge=1,
        le=100_000,
        description="Hole-punch (DCUtR) dials to addresses a relayed peer named, running at "
        "once: strangers reaching this node through relays cannot take every outbound slot.",
    )
    relayed: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="Relayed (circuit v2) inbound connections at most; each must be secured, "
        "muxed and identified within transient_deadline.",
    )
    relayed_per_relay: int = Field(
        default=16,
        ge=0,
        le=10_000,
        description="Relayed inbound connections through one relay (go-libp2p's relay: 16 "
        "circuits per peer).",
    )
    relayed_per_peer: int = Field(
        default=2,
        ge=0,
        le=1000,
        description="Relayed inbound connections from one source PeerId.",
    )


class DiscoverySection(_Section):
    """How peers find each other besides the bootstrap list."""

    mdns: bool = Field(
        default=True, description="Announce and discover peers on the LAN with mDNS."
    )
    max_peers: int = Field(
        default=50, ge=1, le=10_000, description="Discovered peers are connected up to this many."
    )
    max_remembered_peers: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="Discovered peers remembered (how found, when a dial failed); the least "
        "recently seen are forgotten first.",
    )


class DhtSection(_Section):
    """The Kad-DHT: bootstrap nodes serve it; chat peers use it to find the members of their
    rooms (room rendezvous)."""

    enabled: bool = Field(
        default=True, description="Run the DHT (and room rendezvous, for chat peers)."
    )
    mode: Literal["auto", "server", "client"] = Field(
        default="auto",
        description="server answers queries and stores records; client only asks. auto: "
        "server with the bootstrap role, client otherwise.",
    )
    lookup_interval_max: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Seconds between room lookups at most (they start at 1 s and double).",
    )
    reprovide_interval: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="Seconds between re-announcements of this node's rooms.",
    )
    # Bounds against strangers (a server's: what inbound requests may make it hold).
    max_inbound_streams: int = Field(
        default=256,
        ge=1,
        le=10_000,
        description="Inbound DHT streams open at once; when all are taken, the one waiting "
        "longest for a request is reset to admit a new one.",
    )
    max_inbound_streams_per_peer: int = Field(
        default=32,
        ge=1,
        le=1000,
        description="Inbound DHT streams open at once from one peer (py-libp2p opens one per "
        "request: a peer joining many rooms asks for each at once).",
    )
    read_timeout: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Seconds an inbound DHT stream may take to deliver each whole request; an "
        "idle or half-sent one is reset (go-libp2p: 1 min idle).",
    )
    max_message_bytes: int = Field(
        default=65_536,
        ge=1024,
        le=4 * 1024 * 1024,
        description="Largest inbound DHT request, in bytes (go-libp2p: 4 MiB; a request is a "
        "few KiB).",
    )
    requests_per_second: float = Field(
        default=20.0,
        gt=0,
        le=10_000,
        description="DHT requests one peer may make per second, sustained (a room costs a "
        "joining peer about 4, then 2 per lookup).",
    )
    request_burst: int = Field(
        default=200,
        ge=1,
        le=100_000,
        description="DHT requests one peer may make at once (a peer joining 50 rooms at once "
        "makes about 200).",
    )
    max_providers_per_key: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="Providers stored per key (room), as k in go- and rust-libp2p.",
    )
    max_providers_per_peer: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Keys (rooms) one peer may be stored as providing.",
    )
    max_provider_records: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Provider records stored in all; when full, the oldest record of the peer "
        "holding the most makes room.",
    )
    max_addrs_per_provider: int = Field(
        default=8,
        ge=1,
        le=128,
        description="Addresses kept per provider record (the rest are dropped).",
    )
    provider_ttl: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 86_400,
        description="Seconds a provider record lives unless re-announced (go-libp2p: 48 h, "
        "for IPFS's 22 h re-announcement; p2pchat peers re-announce every reprovide_interval). "
        "PUT_VALUE records are never stored: p2pchat uses none.",
    )

    @model_validator(mode="after")
    def _records_outlive_reannouncement(self) -> DhtSection:
        if self.provider_ttl <= self.reprovide_interval:
            raise ValueError(
                "dht.provider_ttl must be longer than dht.reprovide_interval "
                f"({self.provider_ttl:g} <= {self.reprovide_interval:g}): rooms would vanish "
                "between announcements"
            )
        return self

    def server_mode(self, roles: Sequence[str]) -> bool:
        """Whether this node serves the DHT."""
        return self.mode == "server" or (self.mode == "auto" and "bootstrap" in roles)


class AutoNatSection(_Section):
    """AutoNAT v1: servers dial peers back so that peers learn whether they are reachable."""

    service: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Answer dial-back requests. auto: with the bootstrap or relay role.",
    )
    probe: bool = Field(default=True, description="Ask connected AutoNAT servers about us.")
    probe_interval: float = Field(
        default=300.0, gt=0, le=86_400, description="Seconds between reachability probes."
    )
    max_requests_per_peer: int = Field(
        default=3, ge=1, le=10_000, description="Dial-backs per peer per throttle_period."
    )
    max_requests_per_group: int = Field(
        default=8,
        ge=1,
        le=10_000,
        description="Dial-backs per address group (IPv4 address, IPv6 /64: ipv4_prefix, "
        "ipv6_prefix) per throttle_period, so that many PeerIds of one host cannot spend "
        "everyone's max_requests.",
    )
    max_requests: int = Field(
        default=30, ge=1, le=100_000, description="Dial-backs in all per throttle_period."
    )
    throttle_period: float = Field(
        default=60.0, gt=0, le=86_400, description="Seconds of one dial-back counting window."
    )
    ipv4_prefix: int = Field(
        default=32, ge=8, le=32, description="IPv4 prefix length of an address group."
    )
    ipv6_prefix: int = Field(
        default=64, ge=16, le=128, description="IPv6 prefix length of an address group."
    )

    def serves(self, roles: Sequence[str]) -> bool:
        """Whether this node answers dial-back requests."""
        if self.service == "auto":
            return "bootstrap" in roles or "relay" in roles
        return self.service == "on"


class AutoRelaySection(_Section):
    """A peer that is not publicly reachable keeps reservations on relays (Circuit Relay v2)."""

    mode: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Reserve relay slots. auto: while AutoNAT finds this node private.",
    )
    relays: Annotated[list[PeerAddr], BeforeValidator(_split_commas)] = Field(
        default_factory=list,
        description="Relays to use (multiaddrs ending in /p2p/<id>), kept connected.",
    )
    discover: bool = Field(
        default=True,
        description="Also use connected peers that serve the relay protocol, and relays "
        "announced in the DHT.",
    )
    reservations: int = Field(default=2, ge=1, le=16, description="Relays to hold a slot on.")
    renew_circuits_at: float = Field(
        default=0.75,
        ge=0,
        le=0.99,
        description="Share of a relayed circuit's limit (data in either direction, or time, as "
        "the relay announced them) after which the peer that dialled it opens the next circuit "
        "to the same peer and moves the conversation onto it before the relay resets the old "
        "one; a relayed connection we dialled that is lost is replaced at once, through another "
        "relay if one died. 0: off (the keep-alive dials again after a reset).",
    )

    def wanted(self, reachability: str) -> bool:
        """Whether to hold reservations, given AutoNAT's verdict."""
        return self.mode == "on" or (self.mode == "auto" and reachability == "private")


class HolePunchSection(_Section):
    """Direct connections by hole punching (DCUtR) once a peer is reached through a relay."""

    enabled: bool = Field(
        default=True,
        description="Upgrade relayed connections to direct ones (DCUtR), and help peers do it.",
    )
    keep_relayed_max: float = Field(
        default=300.0,
        ge=0,
        le=86_400,
        description="Seconds a relayed connection replaced by a direct one is kept at most while "
        "the peer's pubsub stream to us is on it (its library may not move it: js-gossipsub); "
        "the relay's own limits usually end it first. Then the peer is made to reopen it on "
        "the direct connection.",
    )
    give_up_after: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Hole punches towards a peer that may fail in a row before no more are "
        "tried for retry_after seconds (a peer behind a symmetric NAT cannot be punched, and "
        "every new relay circuit to it would otherwise try again, over the circuit).",
    )
    retry_after: float = Field(
        default=600.0,
        ge=0,
        le=86_400,
        description="Seconds without hole punches towards a peer after give_up_after failed "
        "in a row; then one is tried again.",
    )


class RelaySection(_Section):
    """The relay role's Circuit Relay v2 limits (defaults: go-libp2p's), all enforced."""

    reservation_ttl: float = Field(
        default=3600.0, gt=0, le=86_400, description="Seconds a reservation lasts."
    )
    max_reservations: int = Field(default=128, ge=1, le=100_000, description="Reservations in all.")
    max_reservations_per_ip: int = Field(
        default=8,
        ge=1,
        le=100_000,
        description="Reservations per address group (IPv4 address, IPv6 /64: ipv4_prefix, "
        "ipv6_prefix).",
    )
    max_circuits: int = Field(
        default=16, ge=1, le=10_000, description="Relayed connections per peer at a time."
    )
    max_circuits_per_source: int = Field(
        default=4,
        ge=1,
        le=10_000,
        description="Of the relayed connections to one reserved peer, those one requester "
        "PeerId may hold at a time.",
    )
    max_circuits_per_source_group: int = Field(
        default=8,
        ge=1,
        le=10_000,
        description="Of the relayed connections to one reserved peer, those requesters of one "
        "address group may hold at a time.",
    )
    circuit_duration: int = Field(
        default=120, ge=1, le=86_400, description="Seconds a relayed connection may last."
    )
    circuit_data: int = Field(
        default=128 * 1024,
        ge=1024,
        le=1 << 40,
        description="Bytes a relayed connection may carry in each direction.",
    )
    ipv4_prefix: int = Field(
        default=32, ge=8, le=32, description="IPv4 prefix length of an address group."
    )
    ipv6_prefix: int = Field(
        default=64, ge=16, le=128, description="IPv6 prefix length of an address group."
    )
    allow: Annotated[list[AllowEntry], BeforeValidator(_split_commas)] = Field(
        default_factory=list,
        description="If set, only these PeerIds and networks (CIDR) may reserve or connect.",
    )
    chat_peers: Annotated[list[AllowEntry], BeforeValidator(_split_commas)] = Field(
        default_factory=list,
        max_length=256,
        description="PeerIds and networks (CIDR) served chat-friendly circuits: a circuit "
        "whose two ends are both listed gets chat_circuit_duration and chat_circuit_data "
        "instead of circuit_duration and circuit_data (each entry is a label of "
        "p2pchat_relay_bytes_total).",
    )
    chat_circuit_duration: int = Field(
        default=0,
        ge=0,
        le=7 * 86_400,
        description="Seconds a chat-friendly circuit may last; 0: no limit. With "
        "chat_circuit_data 0 too, the relay sends no limit, so go-libp2p and js-libp2p peers "
        "see a connection that is not limited and use it for GossipSub.",
    )
    chat_circuit_data: int = Field(
        default=0,
        ge=0,
        le=1 << 40,
        description="Bytes a chat-friendly circuit may carry in each direction; 0: no limit.",
    )


LOG_FILE_NAME = Path("logs") / "p2pchat.log"


class LogSection(_Section):
    """Structured logs: on stderr, or in a rotated file while the chat console owns the
    terminal."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="On stderr: auto (console on a TTY, JSON lines otherwise), json, console. "
        "The file is always JSON lines.",
    )
    libp2p_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="critical",
        description="Level for py-libp2p's own loggers, routed into ours. The library logs "
        "routine events (a refused dial) as errors; p2pchat logs those itself, with context.",
    )
    destination: Literal["auto", "stderr", "file"] = Field(
        default="auto",
        description="Where logs go. auto: the file while the chat console front end runs (log "
        "lines never land between chat lines; warnings show as one notice line), stderr "
        "otherwise.",
    )
    file: Path | None = Field(
        default=None, description="The log file; default <data dir>/logs/p2pchat.log."
    )
    max_bytes: int = Field(
        default=5 * 1024 * 1024,
        ge=1024,
        le=1 << 40,
        description="The log file is rotated when it would grow past this many bytes.",
    )
    backups: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Rotated log files kept (p2pchat.log.1 ...); the oldest is deleted.",
    )


class MetricsSection(_Section):
    """The HTTP endpoint serving /metrics, /healthz and /readyz."""

    enabled: bool = True
    listen: HostPort = Field(default="127.0.0.1:9464", description="host:port; port 0 = any free.")


class ChatSection(_Section):
    """The chat peer role."""

    room: RoomName = Field(default="p2p-chat-default", description="Room joined at start.")
    name: str | None = Field(default=None, max_length=32, description="Display name.")
    max_message_bytes: int = Field(
        default=4096, ge=64, le=1 << 20, description="Largest message text (UTF-8 bytes)."
    )
    ui: Literal["auto", "console", "json", "none"] = Field(
        default="auto",
        description="auto: the console on a terminal, none (headless, events logged) otherwise; "
        "json: one JSON object per event on stdout, commands and messages read from stdin.",
    )
    history_max_messages: int = Field(
        default=100_000, ge=1, description="Messages kept per room; the oldest go first."
    )
    history_sender_share: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Share of history_max_messages one sender may hold before the others: "
        "when a room is over its cap, the oldest messages of the senders over this share go "
        "first (a flood cannot push the others' messages out; 1: plain oldest-first).",
    )

    def front_end(self, stdin_is_tty: bool) -> Literal["console", "json", "none"]:
        """The chat front end ``ui`` means: ``auto`` is the console when stdin is a terminal,
        headless (``none``) otherwise."""
        if self.ui == "auto":
            return "console" if stdin_is_tty else "none"
        return self.ui

    max_known_names: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Other peers' names remembered; the least recently heard are forgotten "
        "first (a fresh key per message cannot grow it without bound).",
    )
    dm_history: bool = Field(
        default=True,
        description="Keep direct messages (both directions) in the local store, per "
        "conversation, for /history in a /dm conversation; bounded as a room's history "
        "(history_max_messages, history_max_age_days) and to 1000 conversations.",
    )
    max_name_bindings: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Names bound to the first PeerId seen using them (trust on first use, kept "
        "in the store; a known name from another PeerId is warned about). Past this the least "
        "recently used binding of an unverified peer is forgotten (verified contacts never are).",
    )
    history_max_age_days: float = Field(
        default=365.0, gt=0, description="Messages older than this are deleted."
    )
    missed_inline: int = Field(
        default=20,
        ge=0,
        le=1000,
        description="Messages that arrived while you were away shown in the console after a "
        "catch-up (the newest; the rest: /history). --json shows every one.",
    )
    bell: bool = Field(
        default=True, description="Ring the terminal bell when a message mentions your name."
    )
    max_decisions_per_room: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Moderation decisions kept per owned room, one per target (chat peers and "
        "archivers); when full, those no longer in force make way, else the owner's next one "
        "is passed on but not applied (counted as moderation_full).",
    )
    max_decisions: int = Field(
        default=65_536,
        ge=1,
        le=10_000_000,
        description="Moderation decisions kept in all owned rooms together (about 0.5 KiB "
        "each): an archiver of many strangers' rooms stays bounded.",
    )
    dm_max_message_bytes: int = Field(
        default=16_384,
        ge=1024,
        le=1 << 20,
        description="Largest direct message frame received (/p2pchat/dm/1.0.0: Olm ciphertext "
        "and, on a first message, the sender's signed key bundle); a larger one resets the "
        "stream, counted as p2pchat_dm_dropped_total{reason=oversized}. The text itself is "
        "bounded by max_message_bytes.",
    )
    dm_max_sessions_per_peer: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Olm sessions kept with one peer (about 1.6 KiB each in the store); a new "
        "one pushes out the least recently used.",
    )
    dm_max_peers: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="Peers this peer keeps direct-message sessions with; a new one pushes out "
        "the sessions of the least recently used.",
    )
    dm_new_sessions_rate: float = Field(
        default=5.0,
        gt=0,
        le=10_000,
        description="New direct-message sessions other peers may open here per second, all "
        "together (a PeerId costs nothing to make); over it a first message is refused "
        "(reason=session_rate) and its sender retries later. One peer: a fifth of this.",
    )
    dm_new_sessions_burst: int = Field(
        default=50,
        ge=1,
        le=100_000,
        description="New direct-message sessions opened here at once, all peers together (one "
        "peer: a tenth of it, at least 1).",
    )
    dm_fallback_rotation: float = Field(
        default=14 * 86_400.0,
        ge=1,
        le=366 * 86_400.0,
        description="Seconds between two fallback keys in this peer's published key bundle "
        "(the key first direct messages to it are made with). The previous key is kept one "
        "more period, so a first message sealed for an archiver before a rotation still "
        "opens, then forgotten: a later copy of the keys no longer reads first messages made "
        "with it. At least mailbox.ttl.",
    )
    dm_max_inbound: int = Field(
        default=32,
        ge=1,
        le=10_000,
        description="Direct messages being received at once (each holds a stream until its "
        "frame arrives, 10 s at most); more are reset, counted as reason=busy.",
    )
    dm_max_inbound_per_peer: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Direct messages being received at once from one peer; more are reset "
        "(reason=busy), so one peer holding streams does not take the others' places.",
    )
    private_max_rooms: int = Field(
        default=32,
        ge=1,
        le=1000,
        description="Private rooms (/create-private, invites) this peer is in at once; an "
        "invite past it is refused (p2pchat_private_dropped_total{reason=too_many_rooms}).",
    )
    private_rooms_per_creator: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Private rooms one other peer may have invited this peer to and keep it "
        "in; its next invite is refused (reason=too_many_rooms). Invites from ignored peers "
        "are refused (reason=ignored).",
    )
    private_max_members: int = Field(
        default=64,
        ge=2,
        le=1000,
        description="Members of a private room, creator included (each one's Megolm key is "
        "kept; /invite past it is refused, and so is a room announced with more).",
    )
    private_max_sessions_per_room: int = Field(
        default=256,
        ge=2,
        le=100_000,
        description="Megolm sessions kept per private room (every member's, and a new one at "
        "each rotation, about 0.6 KiB each); past it a member's oldest session goes (its "
        "messages no longer decrypt here).",
    )


class PubsubSection(_Section):
    """Rooms against hostile peers (#18): a message budget per sender per room, GossipSub v1.1
    peer scoring, and bounds on what one peer's control messages make this node do."""

    sender_rate: float = Field(
        default=5.0,
        gt=0,
        le=100_000,
        description="Messages per second one sender may publish in a room, sustained (Slack "
        "allows bots 1/s, Discord 5 per 5 s; a person types far less). Messages over it are "
        "dropped, counted (p2pchat_messages_dropped_total{reason=flood}), not forwarded, not "
        "stored.",
    )
    sender_burst: int = Field(
        default=50,
        ge=1,
        le=1_000_000,
        description="Messages one sender may publish in a room at once (a pasted block of "
        "lines, a bot's digest).",
    )
    new_sender_rate: float = Field(
        default=2.0,
        gt=0,
        le=100_000,
        description="Senders not heard before admitted per second per room through one "
        "forwarding peer (a PeerId costs nothing to make: fresh keys arriving on one connection "
        "share this budget, and spend no other's).",
    )
    new_sender_burst: int = Field(
        default=20,
        ge=1,
        le=1_000_000,
        description="New senders admitted at once per room through one forwarding peer.",
    )
    max_senders_per_room: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Senders (and forwarding peers) whose budget is tracked per room; the least "
        "recently heard is forgotten first (and comes back as a new sender).",
    )
    scoring: bool = Field(
        default=True,
        description="GossipSub v1.1 peer scoring with chat-room parameters (Lotus's message "
        "topic): a peer sending invalid messages or flooding is pruned from meshes and then "
        "graylisted (everything it sends ignored).",
    )
    ip_colocation_threshold: int = Field(
        default=5,
        ge=1,
        le=10_000,
        description="Peers from one IP before the IP-colocation penalty applies (loopback is "
        "exempt).",
    )
    max_subscriptions_per_peer: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="Topics one peer may be known in, and subscription changes it may send per "
        "second.",
    )
    max_topics: int = Field(
        default=5000,
        ge=1,
        le=1_000_000,
        description="Topics other peers are known in, in all (junk topics past it are ignored).",
    )
    max_graft_prune: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="GRAFT and PRUNE entries one peer may send per second (heartbeat).",
    )
    max_ihave_messages: int = Field(
        default=10,
        ge=1,
        le=10_000,
        description="RPCs with IHAVE one peer may send per heartbeat (go-libp2p MaxIHaveMessages).",
    )
    max_ihave_length: int = Field(
        default=5000,
        ge=1,
        le=1_000_000,
        description="Message ids one peer may announce in IHAVEs per heartbeat (go-libp2p "
        "MaxIHaveLength).",
    )
    max_iwant_length: int = Field(
        default=5000,
        ge=1,
        le=1_000_000,
        description="Message ids one peer may ask for in IWANTs per heartbeat.",
    )


class HistorySection(_Section):
    """The history protocol: serving the local store, and catching up after being away."""

    serve: bool = Field(
        default=True,
        description="Chat peers answer history queries from their local store (archivers "
        "always do).",
    )
    rate: float = Field(
        default=20.0, gt=0, le=10_000, description="History queries per second per peer."
    )
    burst: int = Field(
        default=40, ge=1, le=100_000, description="History queries a peer may make at once."
    )
    bytes_rate: int = Field(
        default=1024**2,
        ge=1024,
        le=1 << 40,
        description="Bytes of history served per second per peer (a query is answered while "
        "the peer's budget is positive and its reply is charged to it; past it: "
        "TOO_MANY_REQUESTS with retry_after_ms).",
    )
    bytes_burst: int = Field(
        default=4 * 1024**2,
        ge=2 * 1024**2,
        le=1 << 40,
        description="Bytes of history a peer may take at once (at least one 2 MiB page).",
    )
    group_bytes_rate: int = Field(
        default=2 * 1024**2,
        ge=1024,
        le=1 << 40,
        description="Bytes of history served per second to all peers of one address group "
        "(IPv4 address, IPv6 /64: ipv4_prefix, ipv6_prefix) together.",
    )
    group_bytes_burst: int = Field(
        default=8 * 1024**2,
        ge=2 * 1024**2,
        le=1 << 40,
        description="Bytes of history one address group may take at once.",
    )
    max_streams: int = Field(
        default=256, ge=1, le=100_000, description="History streams served at a time in all."
    )
    max_streams_per_peer: int = Field(
        default=4, ge=1, le=1000, description="History streams served at a time per peer."
    )
    max_streams_per_group: int = Field(
        default=32,
        ge=1,
        le=100_000,
        description="History streams served at a time per address group. When all "
        "max_streams are taken, a newcomer from a group holding fewer takes the slot of the "
        "longest idle stream of the group holding the most.",
    )
    read_timeout: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Seconds a history stream may take to deliver its next whole query (from "
        "its opening or its previous answer); then it is closed.",
    )
    ipv4_prefix: int = Field(
        default=32, ge=8, le=32, description="IPv4 prefix length of an address group."
    )
    ipv6_prefix: int = Field(
        default=64, ge=16, le=128, description="IPv6 prefix length of an address group."
    )
    catchup: bool = Field(
        default=True, description="Fetch missed messages on start and on every reconnect."
    )
    catchup_sources: int = Field(
        default=3,
        ge=1,
        le=16,
        description="Sources asked per room and catch-up (all of them if fewer; the results "
        "are merged, so one source cannot hide messages unnoticed).",
    )
    catchup_max_messages: int = Field(
        default=50_000, ge=1, le=10_000_000, description="Messages per room and source at most."
    )
    catchup_newcomer_share: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Share of chat.history_max_messages that the senders new to a room "
        "(holding none of its messages) may bring in one catch-up together, shared out "
        "equally among them: many sybils served by a hostile source cannot push the honest "
        "history out. Each sender also brings at most its chat.history_sender_share of the "
        "room per catch-up. Into a room holding nothing yet: the whole cap, no sender share.",
    )
    catchup_source_share: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Share of chat.history_max_messages that one source (its PeerId, and "
        "apart from that its address group: IPv4 address, IPv6 /64; every relayed source one "
        "group) may bring into a room from "
        "senders new to it by catch-up, per catchup_source_window_seconds (refilled "
        "gradually): a source that disconnects and reconnects, each time starting a catch-up, "
        "cannot bring another catchup_newcomer_share each time. A first join (a room holding "
        "nothing yet) is not charged.",
    )
    catchup_source_window_seconds: float = Field(
        default=86_400.0,
        gt=0,
        le=30 * 86_400,
        description="The window of catchup_source_share (a day).",
    )
    catchup_lookback_days: float = Field(
        default=7.0, gt=0, description="How far back to fetch a room this node has no history of."
    )
    catchup_overlap_seconds: float = Field(
        default=300.0,
        ge=0,
        description="Fetch from this long before the newest stored message (senders' clocks "
        "differ; duplicates are dropped).",
    )
    discover_archivers: bool = Field(
        default=True,
        description="Chat peers look archivers up in the DHT and keep a few connected to "
        "catch up from (needs dht.enabled and catchup).",
    )

    def serves(self, roles: Sequence[str]) -> bool:
        """Whether this node answers history queries: an archiver always, a chat peer with
        ``serve``."""
        return "archiver" in roles or ("peer" in roles and self.serve)


class RetentionPolicy(_Section):
    """How much of a room an archiver keeps; the oldest messages go first. null: no limit."""

    max_age_days: float | None = Field(default=365.0, gt=0)
    max_messages: int | None = Field(default=10_000_000, ge=1)
    max_bytes: int | None = Field(default=10 * 1024**3, ge=1024)
    sender_share: float | None = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Over max_messages, the senders holding more than this share of it lose "
        "their oldest messages first (null: plain oldest-first).",
    )


class ArchiverSection(_Section):
    """The archiver role: which rooms it keeps, and for how long."""

    rooms: Annotated[list[RoomName], BeforeValidator(_split_commas)] = Field(
        default_factory=lambda: ["p2p-chat-default"], description="Rooms archived from the start."
    )
    all_rooms: bool = Field(
        default=False,
        description="Also archive every room a connected peer is subscribed to.",
    )
    max_rooms: int = Field(default=1000, ge=1, le=100_000, description="Rooms archived at most.")
    admit_senders: int = Field(
        default=2,
        ge=1,
        le=100,
        description="With all_rooms: a room heard of is archived once this many distinct "
        "PeerIds have signed valid messages in it (members heard, not names announced).",
    )
    max_candidate_rooms: int = Field(
        default=32,
        ge=1,
        le=10_000,
        description="With all_rooms: rooms heard of listened to at a time for that evidence "
        "(at most 2 per announcing peer).",
    )
    probation: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="Seconds a room heard of has to show its members; then it is left, and "
        "not listened to again for as long.",
    )
    room_idle: float = Field(
        default=86_400.0,
        gt=0,
        description="With max_rooms reached, a room heard of that has been silent this many "
        "seconds gives its slot to a room with members heard (configured rooms never do).",
    )
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)
    room_retention: dict[RoomName, RetentionPolicy] = Field(
        default_factory=dict, description="Per-room retention, replacing `retention` for them."
    )
    retention_interval: float = Field(
        default=60.0, gt=0, description="Seconds between retention passes."
    )

    def policy(self, room: str) -> RetentionPolicy:
        """The retention policy of ``room``."""
        return self.room_retention.get(room, self.retention)


class MailboxSection(_Section):
    """Sealed offline delivery (issue #19): the mailboxes an archiver keeps for peers that are
    away, and how a chat peer uses them. Every bound is counted when it refuses
    (p2pchat_mailbox_refused_total{reason})."""

    enabled: bool = Field(
        default=True,
        description="Chat peer: deposit direct messages for an unreachable peer with archivers "
        "and fetch this peer's own mail from them. An archiver serves mailboxes either way.",
    )
    deposit_archivers: int = Field(
        default=2,
        ge=1,
        le=8,
        description="Chat peer: archivers a waiting direct message is deposited with (connected "
        "peers serving /p2pchat/mailbox/1.0.0, and the `archivers` below), for redundancy.",
    )
    archivers: PeerAddrs = Field(
        default_factory=list,
        description="Chat peer: archivers (multiaddrs with /p2p/) dialled to deposit and fetch "
        "mail, besides the connected ones.",
    )
    unlinkable: bool = Field(
        default=True,
        description="Chat peer: make every deposit and every mailbox fetch request over a "
        "connection of its own from a fresh throwaway identity (no listeners, closed after), so "
        "an archiver sees neither the sender's nor the recipient's PeerId (it still sees the IP "
        "address and the time). A throwaway dial that fails is counted and retried later, never "
        "made from this peer's own identity instead. false: over this peer's own connection, "
        "and configured archivers are connected to as peers.",
    )
    route_parallel: int = Field(
        default=4,
        ge=1,
        le=32,
        description="Chat peer: throwaway connections (see unlinkable) open at once; more "
        "requests wait. Under an archiver's connections.per_ip (8 by default).",
    )
    fetch_interval: float = Field(
        default=300.0,
        ge=1,
        le=86_400,
        description="Chat peer: seconds between two fetches of its own mail from the archivers "
        "connected (also fetched at start and on each connection to an archiver).",
    )
    max_pair_mailboxes: int = Field(
        default=8,
        ge=0,
        le=64,
        description="Chat peer: per-contact mailboxes fetched besides the published one: half "
        "those of the peers written to last, half the others' in turn from fetch to fetch (a "
        "peer that heard from this one deposits in their pair's mailbox). Each costs a request "
        "per archiver and fetch, within the archivers' fetch_burst (20 by default; 200 per "
        "address group).",
    )
    max_entry_bytes: int = Field(
        default=24_576,
        ge=1024,
        le=1 << 20,
        description="Archiver: largest sealed letter kept (a direct message frame and ~130 "
        "bytes of sealing); larger is refused (reason=too_large).",
    )
    max_entries_per_mailbox: int = Field(
        default=200, ge=1, le=100_000, description="Archiver: letters one mailbox holds."
    )
    max_bytes_per_mailbox: int = Field(
        default=1 << 20, ge=1024, le=1 << 30, description="Archiver: bytes one mailbox holds."
    )
    max_mailboxes: int = Field(
        default=10_000, ge=1, le=10_000_000, description="Archiver: mailboxes held at once."
    )
    max_entries: int = Field(
        default=100_000,
        ge=1,
        le=100_000_000,
        description="Archiver: letters held in all (about 100 bytes of memory each).",
    )
    max_bytes: int = Field(
        default=256 << 20, ge=1024, le=1 << 40, description="Archiver: letter bytes held in all."
    )
    ttl: float = Field(
        default=14 * 86_400.0,
        gt=0,
        le=366 * 86_400.0,
        description="Archiver: seconds a letter is kept unfetched; then it is deleted.",
    )
    max_entries_per_depositor: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="Archiver: letters one depositing PeerId may have held at once (reason=quota).",
    )
    max_bytes_per_depositor: int = Field(
        default=1 << 20,
        ge=1024,
        le=1 << 30,
        description="Archiver: letter bytes one depositing PeerId may have held at once.",
    )
    max_entries_per_group: int = Field(
        default=1000,
        ge=1,
        le=10_000_000,
        description="Archiver: letters the depositors of one address group (IPv4 address, "
        "IPv6 /64; all relayed depositors together) may have held at once (PeerIds are free).",
    )
    max_bytes_per_group: int = Field(
        default=8 << 20,
        ge=1024,
        le=1 << 40,
        description="Archiver: letter bytes one address group's depositors may have held.",
    )
    deposit_rate: float = Field(
        default=1.0,
        gt=0,
        le=10_000,
        description="Archiver: deposits per second one PeerId, and (x10) one address group, "
        "may make sustained (reason=rate).",
    )
    deposit_burst: int = Field(
        default=30, ge=1, le=100_000, description="Archiver: deposits one PeerId makes at once."
    )
    fetch_rate: float = Field(
        default=0.5,
        gt=0,
        le=10_000,
        description="Archiver: fetches per second one PeerId, and (x10) one address group, "
        "may make sustained (reason=rate; unlinkable peers fetch from a new PeerId each time: "
        "the group's binds).",
    )
    fetch_burst: int = Field(
        default=20,
        ge=1,
        le=100_000,
        description="Archiver: fetches one PeerId (x10: one address group) makes at once.",
    )
    max_fetch_bytes: int = Field(
        default=1 << 20,
        ge=64 * 1024,
        le=2 << 20,
        description="Archiver: letter bytes one fetch's answer carries (the rest: next fetch).",
    )
    max_streams: int = Field(
        default=64, ge=1, le=10_000, description="Archiver: mailbox requests served at once."
    )
    sweep_interval: float = Field(
        default=60.0, gt=0, le=86_400, description="Archiver: seconds between two TTL sweeps."
    )


class StreamsSection(_Section):
    """What one remote peer may make this node hold through streams, and how long a stream may
    take to negotiate its protocol. Anchors: go-libp2p's resource manager defaults (256 inbound
    streams per peer, 64 per protocol and peer), go-yamux (a 256 KiB initial window it
    enforces; 1000 streams per connection), go-multistream (1024-byte protocol ids) and
    go-libp2p's 10 s negotiation timeout. A stream over a limit is reset; a Yamux peer that
    sends beyond its window or the connection's buffer bound, or that is refused too often, has
    its connection closed. Each refusal counts in ``p2pchat_stream_limit_exceeded_total``."""

    streams_per_connection: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Live inbound streams per connection (Yamux and Mplex); the next is reset "
        "at once.",
    )
    streams_per_peer: int = Field(
        default=256, ge=1, le=100_000, description="Live inbound streams per peer, all connections."
    )
    streams_per_protocol_per_peer: int = Field(
        default=64, ge=1, le=100_000, description="Live inbound streams per peer on one protocol."
    )
    stream_open_rate: float = Field(
        default=64.0,
        gt=0,
        description="Inbound streams a connection may open per second, sustained (bounds "
        "open-and-reset floods, which no count catches).",
    )
    stream_open_burst: int = Field(default=256, ge=1, le=100_000, description="... and at once.")
    connection_buffer_bytes: int = Field(
        default=32 * 1024**2,
        ge=1024**2,
        description="Received, unread bytes of all streams of one Yamux connection; a peer "
        "that sends past it (or past a stream's window) has the connection closed.",
    )
    ping_rate: float = Field(
        default=2.0, gt=0, description="Yamux pings answered per second and connection."
    )
    ping_burst: int = Field(default=16, ge=1, le=10_000, description="... and at once.")
    refusals_per_connection: int = Field(
        default=1024,
        ge=1,
        description="Refused streams and pings after which a connection is closed.",
    )
    negotiation_timeout: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="Seconds for an inbound stream's protocol negotiation (multistream-select).",
    )
    negotiation_max_bytes: int = Field(
        default=1024,
        ge=64,
        le=65536,
        description="Bytes of one negotiation message (a protocol id).",
    )
    negotiation_max_proposals: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Protocols (or `ls`) a peer may propose on one stream.",
    )
    handler_timeout: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Seconds for library handlers that read one message (identify push).",
    )


class PeerstoreSection(_Section):
    """What the peerstore keeps of the peers others name (Kad answers, peer exchange,
    identify): a bound on the records in all and on each. go-libp2p's peerstore has no count
    bound (its resource manager and address TTLs hold it); its numbers are the anchors per peer
    (128 protocols, 8 KiB identify messages, 2-15 min TTLs). Peers with a connection and
    configured bootstrap and relay peers are never evicted. Each refusal and eviction counts in
    ``p2pchat_peerstore_refused_total``; ``p2pchat_peerstore_peers`` is the number held."""

    max_peers: int = Field(
        default=2048,
        ge=64,
        le=1_000_000,
        description="Peer records held at most. Past it, a new peer takes the place of the one "
        "seen longest ago with no connection (never a configured bootstrap or relay peer); if "
        "every record is connected or configured, the newcomer is not stored. Must exceed "
        "node.max_connections. 2048 records at every per-peer bound take 54 MiB.",
    )
    max_addrs_per_peer: int = Field(
        default=32,
        ge=1,
        le=1000,
        description="Addresses kept per peer; more are dropped (go-libp2p identify keeps 20 for "
        "a peer recently connected, 500 for a connected one).",
    )
    max_addr_bytes: int = Field(
        default=256, ge=32, le=4096, description="Bytes of one address; longer ones are dropped."
    )
    max_protocols_per_peer: int = Field(
        default=128,
        ge=8,
        le=4096,
        description="Distinct protocols kept per peer (go-libp2p's peerstore: 128).",
    )
    max_protocol_chars: int = Field(
        default=128,
        ge=16,
        le=1024,
        description="Characters of one protocol name kept; longer names are dropped (p2pchat's "
        "and libp2p's are under 64; multistream allows 1024).",
    )
    max_metadata_keys: int = Field(
        default=16, ge=4, le=256, description="Metadata entries per peer (agent version, ...)."
    )
    max_metadata_chars: int = Field(
        default=512,
        ge=257,
        le=8192,
        description="Characters of a metadata value (e.g. agent version) kept; the rest is cut "
        "(an agent version over 256 characters is never read for roles).",
    )
    max_record_bytes: int = Field(
        default=8 * 1024,
        ge=512,
        le=1024 * 1024,
        description="Bytes of a signed peer record; a larger one is refused (go-libp2p reads "
        "identify messages of 8 KiB).",
    )
    learned_ttl: float = Field(
        default=600.0,
        gt=0,
        le=7 * 86400,
        description="Seconds the record of a peer never connected (named by a DHT answer, peer "
        "exchange, mDNS) is kept; naming it again does not renew it, a connection does "
        "(go-libp2p: 2 min for DHT closer peers, 30 min for providers).",
    )
    disconnected_ttl: float = Field(
        default=900.0,
        gt=0,
        le=7 * 86400,
        description="Seconds the record of a peer is kept after it was last seen connected "
        "(go-libp2p's RecentlyConnectedAddrTTL: 15 min).",
    )


class UcSection(_Section):
    """universal-connectivity (libp2p's chat demo, issue #20): a chat peer can join its room
    as one of its peers: its chat topic and plain-text payload, its file topic and protocol
    (``/send-file``, ``/get``), its peer-discovery topic. Every bound is counted when it
    refuses (p2pchat_uc_refused_total{reason})."""

    enabled: bool = Field(
        default=False,
        description="Chat peer: join universal-connectivity's room (its chat and file topics, "
        "and its peer discovery); /uc sends to it, /send-file and /get share files there.",
    )
    room: str = Field(
        default="universal-connectivity",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="The universal-connectivity chat topic (its peers' -room flag); the file "
        "topic is this name + `-file`.",
    )
    discovery: bool = Field(
        default=True,
        description="Publish this peer's addresses on universal-connectivity's peer-discovery "
        "topic and dial (a few of) the peers announced there.",
    )
    discovery_interval: float = Field(
        default=10.0,
        ge=1,
        le=3600,
        description="Seconds between two announcements of this peer's addresses (js-libp2p's "
        "pubsub-peer-discovery: 10 s).",
    )
    discovery_dials_per_minute: int = Field(
        default=6,
        ge=0,
        le=600,
        description="Peers announced on the discovery topic dialled per minute at most (one "
        "address each, the first dialable one); more are refused (reason=dial_rate).",
    )
    dial_private_addresses: bool = Field(
        default=False,
        description="Dial announced loopback, private and link-local addresses too (a LAN or a "
        "test); off, an announcement cannot aim this node at its own network.",
    )
    max_text_bytes: int = Field(
        default=4096,
        ge=64,
        le=65_536,
        description="Largest universal-connectivity chat message received or sent (plain UTF-8 "
        "text); larger is dropped (reason=oversized).",
    )
    max_file_bytes: int = Field(
        default=10 << 20,
        ge=1024,
        le=256 << 20,
        description="Largest file shared (/send-file) or fetched (/get); a response announcing "
        "more is refused before anything is buffered (reason=file_too_large).",
    )
    max_shared_files: int = Field(
        default=32,
        ge=1,
        le=1000,
        description="Files this peer serves at once (/send-file); the oldest share ends first.",
    )
    max_announced_files: int = Field(
        default=256,
        ge=1,
        le=10_000,
        description="File announcements remembered for /get (the oldest forgotten first).",
    )
    max_transfers: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Files served and fetched at once; a request past it is reset (reason=busy).",
    )
    requests_per_minute: int = Field(
        default=30,
        ge=1,
        le=6000,
        description="File requests served per remote peer per minute (burst: the same); more "
        "are reset (reason=rate).",
    )
    transfer_timeout: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        description="Seconds a file transfer (request and response) may take, served or "
        "fetched; slower is reset (reason=timeout).",
    )


class Config(_Section):
    """A node's whole configuration."""

    roles: RoleNames = Field(default=["peer"], min_length=1, description="Roles this process runs.")
    node: NodeSection = Field(default_factory=NodeSection)
    connections: ConnectionsSection = Field(default_factory=ConnectionsSection)
    discovery: DiscoverySection = Field(default_factory=DiscoverySection)
    dht: DhtSection = Field(default_factory=DhtSection)
    autonat: AutoNatSection = Field(default_factory=AutoNatSection)
    relay: RelaySection = Field(default_factory=RelaySection)
    autorelay: AutoRelaySection = Field(default_factory=AutoRelaySection)
    holepunch: HolePunchSection = Field(default_factory=HolePunchSection)
    log: LogSection = Field(default_factory=LogSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    chat: ChatSection = Field(default_factory=ChatSection)
    pubsub: PubsubSection = Field(default_factory=PubsubSection)
    history: HistorySection = Field(default_factory=HistorySection)
    archiver: ArchiverSection = Field(default_factory=ArchiverSection)
    mailbox: MailboxSection = Field(default_factory=MailboxSection)
    streams: StreamsSection = Field(default_factory=StreamsSection)
    peerstore: PeerstoreSection = Field(default_factory=PeerstoreSection)
    uc: UcSection = Field(default_factory=UcSection)

    @model_validator(mode="after")
    def _peerstore_holds_every_connection(self) -> Config:
        # A connected peer is never evicted: with fewer records than connections, a newcomer's
        # identify could find no room (refused as "peers").
        if self.peerstore.max_peers <= self.node.max_connections:
            raise ValueError(
                "peerstore.max_peers must be greater than node.max_connections "
                f"({self.peerstore.max_peers} <= {self.node.max_connections}): every connected "
                "peer keeps its record"
            )
        return self

    @model_validator(mode="after")
    def _fallback_key_outlives_letters(self) -> Config:
        # The previous fallback key is kept one rotation period: a letter sealed with it must
        # still open while an archiver may keep it.
        if self.chat.dm_fallback_rotation < self.mailbox.ttl:
            raise ValueError(
                "chat.dm_fallback_rotation must be at least mailbox.ttl "
                f"({self.chat.dm_fallback_rotation:g} < {self.mailbox.ttl:g}): a first message "
                "sealed with the previous fallback key must open while an archiver keeps it"
            )
        return self

    def data_dir(self) -> Path:
        """The effective data directory (the configured one or the XDG default)."""
        if self.node.data_dir is not None:
            return self.node.data_dir.expanduser()
        xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(xdg) / "p2pchat"

    def console_front_end(self, stdin_is_tty: bool) -> bool:
        """Whether this node runs the chat console front end (the peer role, and ``chat.ui``
        meaning the console): then the console owns the terminal."""
        return "peer" in self.roles and self.chat.front_end(stdin_is_tty) == "console"

    def log_file(self, stdin_is_tty: bool) -> Path | None:
        """Where the logs go: a file (``log.destination`` file, or auto with the console front
        end), or None for stderr."""
        wanted = self.log.destination
        if wanted == "stderr" or (wanted == "auto" and not self.console_front_end(stdin_is_tty)):
            return None
        if self.log.file is not None:
            return self.log.file.expanduser()
        return self.data_dir() / LOG_FILE_NAME

    def to_yaml(self) -> str:
        """The effective configuration as YAML (what ``p2pchat config check`` prints)."""
        data = self.model_dump(mode="json")
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


# --- assembling the sources ---------------------------------------------------------------------


@dataclass
class _Layer:
    """One source of settings: its label for error messages and its nested mapping."""

    label: str
    data: dict[str, Any]
    # dotted key path -> more precise label (for env vars and flags, the variable or flag name)
    key_labels: dict[str, str] = field(default_factory=dict)


def _read_yaml(path: Path, label: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{label}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{label}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: the top level must be a mapping of sections")
    return data


def _preset_dirs() -> list[Path]:
    """Where the presets are: ``config/`` ships as the namespace package ``p2pchat.presets``.

    importlib.resources cannot read a namespace package whose path holds an editable-install
    hook entry, so the directories are taken from the package spec instead.
    """
    spec = importlib.util.find_spec("p2pchat.presets")
    locations = spec.submodule_search_locations if spec is not None else None
    return [Path(entry) for entry in locations or [] if Path(entry).is_dir()]


def _preset(role: str) -> dict[str, Any]:
    label = f"preset config/{role}.yaml"
    for directory in _preset_dirs():
        path = directory / f"{role}.yaml"
        if path.is_file():
            break
    else:
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: the top level must be a mapping")
    return data


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        child = target.setdefault(key, {})
        if not isinstance(child, dict):
            child = target[key] = {}
        target = child
    target[path[-1]] = value


def _env_layer(environ: Mapping[str, str]) -> _Layer:
    layer = _Layer("environment", {})
    if (room := environ.get(LEGACY_ROOM_ENV)) is not None:
        _set_path(layer.data, ["chat", "room"], room)
        layer.key_labels["chat.room"] = f"environment {LEGACY_ROOM_ENV}"
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in (PASSPHRASE_ENV, NEW_PASSPHRASE_ENV):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split(ENV_NESTING)]
        if not all(path):
            raise ConfigError(f"environment {name}: malformed name (use P2PCHAT_SECTION__KEY)")
        _set_path(layer.data, path, environ[name])
        layer.key_labels[".".join(path)] = f"environment {name}"
    return layer


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _leaf_paths(data: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
    for key, value in data.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, Mapping):
            yield from _leaf_paths(value, f"{path}.")


def _format_loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _source_of(loc: tuple[int | str, ...], provenance: Mapping[str, str]) -> str:
    keys = [str(part) for part in loc if not isinstance(part, int)]
    for end in range(len(keys), 0, -1):
        label = provenance.get(".".join(keys[:end]))
        if label is not None:
            return label
    return "defaults"


def _explain(exc: ValidationError, provenance: Mapping[str, str]) -> str:
    """Every problem pydantic found, one line each: the key, where its value came from, what is
    wrong. A value refused by several branches of a union is reported once, by the first."""
    lines: list[str] = []
    seen: set[tuple[int | str, ...]] = set()
    for error in exc.errors(include_url=False):
        loc = tuple(
            part
            for part in error["loc"]
            if not (isinstance(part, str) and part.startswith("function-"))
        )
        if loc in seen:
            continue
        seen.add(loc)
        key = _format_loc(loc) or "(top level)"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "literal_error":
            message = f"got {error['input']!r}; {message.lower()}"
        lines.append(f"{key} (from {_source_of(loc, provenance)}): {message}")
    return "\n".join(lines)


def _roles_from(layers: list[_Layer]) -> list[str]:
    """The roles chosen by the highest layer that names them (presets depend on them)."""
    for layer in reversed(layers):
        if "roles" in layer.data:
            value = layer.data["roles"]
            names = _split_commas(value)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                return []  # let the model report the type error with its source
            return names
    return ["peer"]


def load_config(
    *,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Assemble and validate the configuration from every source.

    Args:
        file: a YAML config file, or None.
        environ: where ``P2PCHAT_*`` and ``CHAT_TOPIC`` are read (default: os.environ).
        flags: nested settings from command-line flags (already mapped to config keys).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: one line per problem, each naming the bad key and its source.
    """
    environ = os.environ if environ is None else environ
    upper: list[_Layer] = []
    if file is not None:
        upper.append(_Layer(f"file {file}", _read_yaml(file, f"config file {file}")))
    upper.append(_env_layer(environ))
    if flags:
        upper.append(_Layer("command line", dict(flags)))

    roles = _roles_from(upper)
    presets = [
        _Layer(f"preset config/{role}.yaml", _preset(role)) for role in roles if role in ROLE_NAMES
    ]

    merged: dict[str, Any] = {}
    provenance: dict[str, str] = {}
    for layer in [*presets, *upper]:
        merged = _deep_merge(merged, layer.data)
        for path in _leaf_paths(layer.data):
            provenance[path] = layer.key_labels.get(path, layer.label)
    try:
        config = Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, provenance)) from None
    if "bootstrap" in config.roles and not (
        config.dht.enabled and config.dht.server_mode(config.roles)
    ):
        where = provenance.get("dht.enabled") or provenance.get("dht.mode") or "defaults"
        raise ConfigError(
            f"the bootstrap role serves the DHT: dht.enabled must be true and dht.mode auto "
            f"or server ({where})"
        )
    return config


# --- the data directory -------------------------------------------------------------------------

# The node's store lives in <data dir>/store (node/runtime.py); RocksDB holds an fcntl write lock
# on its LOCK file while a process has it open.
STORE_DIR = "store"
STORE_LOCK = "LOCK"


def data_dir_problems(data_dir: Path) -> list[str]:
    """What would stop a node from using ``data_dir``, one line each (empty: nothing).

    It must exist or be creatable, be a directory, be writable, and hold a readable and valid
    identity if it holds one. Nothing is created or changed (the writability probe is an
    unnamed temporary file). Being in use by a running node is no problem for a check (an
    operator checks the next config of a running node): :func:`data_dir_in_use` tells.
    """
    where = f"data dir {data_dir}"
    if not data_dir.exists():
        ancestor = next((parent for parent in data_dir.parents if parent.exists()), None)
        if ancestor is None:
            return []
        if not ancestor.is_dir():
            return [f"{where}: cannot be created: {ancestor} is not a directory"]
        if not _writable(ancestor):
            return [f"{where}: cannot be created: {ancestor} is not writable"]
        return []
    if not data_dir.is_dir():
        return [f"{where}: not a directory"]
    problems: list[str] = []
    if not _writable(data_dir):
        problems.append(f"{where}: not writable")
    # Imported here: it loads py-libp2p (~0.5 s), which most config errors should not wait for.
    from p2pchat.node.atrest import is_encrypted
    from p2pchat.node.p2p.identity import IDENTITY_FILE, load_or_create_identity

    # A sealed key is checked when the node starts with the passphrase, not by a config check.
    if (data_dir / IDENTITY_FILE).exists() and not is_encrypted(data_dir):
        try:
            load_or_create_identity(data_dir)  # it exists: only read and checked
        except IdentityError as error:
            problems.append(str(error))
    return problems


def data_dir_in_use(data_dir: Path) -> bool:
    """Whether a running node has ``data_dir`` open (its store is locked; the lock probe is
    released at once)."""
    return _locked(data_dir / STORE_DIR / STORE_LOCK)


def _writable(directory: Path) -> bool:
    """Whether a file can be created in ``directory`` (tried: permission bits do not tell for
    root, read-only mounts or full quotas)."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def _locked(lock_file: Path) -> bool:
    """Whether another process holds RocksDB's lock on ``lock_file``."""
    try:
        fd = os.open(lock_file, os.O_RDWR)
    except OSError:  # no store yet, or unreadable: nobody can be holding it through us
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)

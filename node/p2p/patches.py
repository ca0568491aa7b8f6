"""Every change p2pchat makes to py-libp2p's own behaviour, in one table, applied in one call.

Most of the library's traps (shared/notes/py-libp2p-0.8.1.md, the README's trap table) are
handled by subclassing or through the library's injection points (``new_host``'s options, the
pubsub and GossipSub constructors, a replaced AutoConnector instance): those live where the
host and the pubsub are built. What is left can only be changed where the library keeps it, as
a module-level name or a class attribute, and is listed here, in :data:`PATCHES`.

:func:`apply` installs them. The host calls it (:class:`~p2pchat.node.p2p.host.P2PHost`), never
an import: importing p2pchat changes nothing in the library. It is idempotent, and it refuses
to start, with one clear line, when

- the installed py-libp2p is not the version these patches were written for
  (:data:`WRITTEN_FOR`): an upgrade must be re-checked patch by patch, and the tests named in
  the table fail when the library's own behaviour comes back;
- a name it replaces does not exist (or no longer holds what it replaced before):
  the library changed under us.

Either check failing changes nothing.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from libp2p.host import basic_host as basic_host_module
from libp2p.identity.identify import identify as identify_module
from libp2p.identity.identify_push import identify_push as identify_push_module
from libp2p.io.trio import TrioTCPStream
from libp2p.kad_dht import peer_routing as kad_peer_routing_module
from libp2p.kad_dht import provider_store as kad_provider_store_module
from libp2p.kad_dht import value_store as kad_value_store_module
from libp2p.network.swarm import Swarm
from libp2p.pubsub import floodsub as floodsub_module
from libp2p.pubsub import gossipsub as gossipsub_module
from libp2p.pubsub import pubsub as pubsub_module
from libp2p.stream_muxer.yamux import yamux as yamux_module
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from libp2p.transport.quic.connection import QUICConnection
from libp2p.transport.quic.stream import QUICStream
from libp2p.transport.websocket.connection import P2PWebSocketConnection
from p2pchat.node.errors import StartupError
from p2pchat.node.p2p import (
    agent,
    circuit_usage,
    kad_answers,
    pubsub_reader,
    quic_streams,
    records,
    remote_address,
    tcp_reads,
    yamux_unread,
    yamux_window,
)
from p2pchat.node.p2p.rpc_queue import QUEUE_SIZE, CoalescingRpcQueue
from p2pchat.node.p2p.signatures import signature_check_of_caller

LIBRARY = "libp2p"
WRITTEN_FOR = "0.8.1"


class LibraryMismatch(StartupError):
    """The installed py-libp2p is not the one the host layer was written for."""


@dataclass(frozen=True)
class Patch:
    """One replaced name: ``owner.attribute`` becomes ``replace(original)``.

    ``trap`` says what the library does wrong; ``test`` names the test that fails when the
    library's own behaviour comes back (the README's trap table lists the same).
    """

    owner: Any  # a module or a class of the library
    attribute: str
    replace: Callable[[Any], Any]
    trap: str
    test: str

    @property
    def target(self) -> str:
        """The replaced name, dotted: ``libp2p.pubsub.pubsub.RpcQueue``."""
        owner = self.owner
        if isinstance(owner, ModuleType):
            return f"{owner.__name__}.{self.attribute}"
        where = getattr(owner, "__qualname__", type(owner).__name__)
        return f"{getattr(owner, '__module__', '?')}.{where}.{self.attribute}"


def _constant(value: Any) -> Callable[[Any], Any]:
    return lambda original: value


PERF_TESTS = "tests/test_host_perf_traps.py"
# The largest answer a Kad-DHT lookup reads from the peer it asked (the library: 4 MiB, read
# from up to ALPHA = 10 peers at once in each of a node's lookups, one per room). A go-libp2p
# answer (20 providers and 20 closer peers with their addresses) is a few tens of KiB.
KAD_MAX_ANSWER_BYTES = 256 * 1024

PATCHES: tuple[Patch, ...] = (
    Patch(
        TrioTCPStream,
        "read",
        tcp_reads.reading_in_chunks,
        "Noise reads a message as two exact TCP reads, each a recv behind a trio lock",
        f"{PERF_TESTS}::test_a_tcp_stream_serves_small_reads_from_one_receive",
    ),
    Patch(
        TrioTCPStream,
        "get_remote_address",
        remote_address.with_ipv6,
        "an IPv6 connection has no remote address (getpeername's 4-tuple is refused)",
        "tests/test_stream_remote_ip.py::test_a_peer_connected_over_ipv6_is_seen_at_its_address",
    ),
    Patch(
        P2PWebSocketConnection,
        "get_remote_address",
        remote_address.websocket_with_address,
        "a WebSocket connection has no remote address (a placeholder answers None)",
        "tests/test_stream_remote_ip.py::test_a_peer_connected_over_websocket_is_seen_at_its_address",
    ),
    Patch(
        YamuxStream,
        "_auto_tune_and_send_window_update",
        _constant(yamux_window.send_window_update_like_go_yamux),
        "Yamux sends a window update after nearly every read",
        f"{PERF_TESTS}::test_yamux_batches_window_updates_like_go_yamux_and_reads_its_switches_once",
    ),
    Patch(
        yamux_module,
        "_perf_yamux_debug_enabled",
        _constant(yamux_window.never),
        "Yamux reads its PY_YAMUX_* switches from the environment for every frame",
        f"{PERF_TESTS}::test_yamux_batches_window_updates_like_go_yamux_and_reads_its_switches_once",
    ),
    *(
        Patch(
            yamux_module,
            switch,
            yamux_window.read_once,
            "Yamux reads its PY_YAMUX_* switches from the environment for every frame",
            f"{PERF_TESTS}::test_yamux_batches_window_updates_like_go_yamux_and_reads_its_switches_once",
        )
        for switch in yamux_window.SWITCHES
    ),
    Patch(
        pubsub_module,
        "read_varint_prefixed_bytes_limited",
        _constant(pubsub_reader.read_rpc),
        "pubsub reads each RPC's length one byte per stream read",
        f"{PERF_TESTS}::test_pubsub_reads_received_rpcs_through_our_reader",
    ),
    Patch(
        pubsub_module,
        "SUBSCRIPTION_CHANNEL_SIZE",
        _constant(QUEUE_SIZE),
        "a subscription holds 32 messages and drops the rest (trap 3)",
        "tests/test_chat.py::test_a_2000_message_burst_reaches_every_peer_of_a_line",
    ),
    Patch(
        pubsub_module,
        "RpcQueue",
        _constant(CoalescingRpcQueue),
        "a peer's outbound queue holds 32 RPCs (trap 3), one write each",
        f"{PERF_TESTS}::test_rpcs_queued_for_a_peer_leave_merged_in_order_within_the_budget",
    ),
    *(
        Patch(
            module,
            "env_to_send_in_RPC",
            records.cached_record_sender,
            "our signed peer record is rebuilt for every pubsub RPC sent",
            f"{PERF_TESTS}::test_our_signed_peer_record_is_built_once_per_refresh_period",
        )
        for module in (pubsub_module, gossipsub_module, floodsub_module)
    ),
    *(
        Patch(
            module,
            "maybe_consume_signed_record",
            records.remembering_record_consumer,
            "a peer's record is verified for every RPC received; a stale one drops the RPC",
            f"{PERF_TESTS}::test_a_peer_record_is_verified_once_and_a_different_one_again",
        )
        for module in (pubsub_module, gossipsub_module, floodsub_module)
    ),
    Patch(
        pubsub_module,
        "signature_validator",
        signature_check_of_caller,
        "signature failures are dropped silently; our own fresh signatures are verified",
        "tests/test_chat_attacks.py::test_forged_unsigned_and_invalid_messages_are_dropped_and_counted",
    ),
    *(
        Patch(
            module,
            "_mk_identify_protobuf",
            agent.sending_our_agent,
            "every host sends the agent version py-libp2p/<version>: none can say what it is",
            "tests/test_peer_roles.py::test_hosts_learn_each_others_roles_from_identify",
        )
        for module in (identify_module, identify_push_module)
    ),
    *(
        Patch(
            module,
            "update_peerstore_from_identify",
            agent.keeping_their_agent,
            "the agent version a peer sends in identify is dropped, not kept in the peerstore",
            "tests/test_peer_roles.py::test_hosts_learn_each_others_roles_from_identify",
        )
        for module in (basic_host_module, identify_push_module)
    ),
    Patch(
        Yamux,
        "_finalize_stream_locked",
        yamux_unread.dropping_unread,
        "a reset or finished Yamux stream's unread bytes are kept for 60-90 s",
        "tests/hostile/test_yamux_retention.py::test_bytes_nobody_reads_are_dropped_when_their_stream_ends",
    ),
    Patch(
        Swarm,
        "_trim_connections",
        circuit_usage.sparing_relayed,
        "a second connection to a peer closes the older one at once (max_connections_per_peer "
        "1, trap 4): a relayed conversation's next circuit killed the current one before the "
        "conversation had moved to it",
        "tests/test_circuit_renewal.py::test_an_old_circuit_carries_the_conversation_until_it_has_moved",
    ),
    Patch(
        QUICStream,
        "handle_stop_sending",
        quic_streams.stop_sending_ends_our_sending,
        "a QUIC peer's STOP_SENDING closes a stream we opened as a whole: a read made before "
        "its answer arrived fails (go-libp2p's identify answers so; trap 37)",
        "tests/test_quic_host.py::test_stop_sending_leaves_our_read_half_open",
    ),
    Patch(
        QUICConnection,
        "open_stream",
        quic_streams.opening_within_credit,
        "QUIC streams are opened past the peer's MAX_STREAMS credit; one reset before it could "
        "open sends a RESET_STREAM the peer answers by closing the connection (trap 39)",
        "tests/test_quic_host.py::test_a_stream_past_the_peers_credit_waits_for_it",
    ),
    Patch(
        QUICStream,
        "reset",
        quic_streams.resetting_both_halves,
        "a QUIC stream reset ends our sending half only: the peer's stays open, and QUIC never "
        "returns the stream's credit (trap 40)",
        "tests/test_quic_host.py::test_streams_reset_by_the_peer_give_their_credit_back",
    ),
    Patch(
        QUICStream,
        "handle_reset",
        quic_streams.ending_our_half_at_their_reset,
        "a QUIC peer's RESET_STREAM ends the stream for the library, but not our sending half, "
        "so QUIC never returns the stream's credit (trap 40)",
        "tests/test_quic_host.py::test_streams_reset_by_the_peer_give_their_credit_back",
    ),
    Patch(
        QUICStream,
        "read",
        quic_streams.reading_what_arrived,
        "a QUIC read that waits for the stream's state lock while the last bytes and the FIN "
        "arrive reports the end with those bytes unread: go's relay answer to a reservation "
        "was lost so about once in four first reservations under load (trap 46)",
        "tests/test_quic_host.py::test_bytes_that_come_with_the_end_are_read",
    ),
    Patch(
        QUICStream,
        "handle_data_received",
        quic_streams.resetting_an_overflowing_stream,
        "a QUIC stream's bytes past its 2 MiB receive buffer are dropped and the stream goes "
        "on without them: a reader gets a stream with a hole in it (trap 42)",
        "tests/test_quic_host.py::test_a_stream_whose_reader_fell_behind_is_reset_not_cut",
    ),
    # Kad-DHT (#18); the server side is bounded in node/p2p/kad_inbound.py.
    *(
        Patch(
            module,
            "MAX_DHT_MESSAGE_SIZE",
            _constant(KAD_MAX_ANSWER_BYTES),
            "a DHT lookup reads answers of up to 4 MiB from each peer it asks",
            "tests/test_dht_limits.py::test_a_lookup_reads_no_answer_over_its_bound",
        )
        for module in (kad_peer_routing_module, kad_provider_store_module, kad_value_store_module)
    ),
    *(
        Patch(
            module,
            "read_varint_prefixed_bytes_limited",
            kad_answers.reading_trimmed,
            "a DHT lookup walks every peer an answer names with list lookups, quadratic and "
            "without a checkpoint: one answer naming 1,500 peers held the node for seconds",
            "tests/test_dht_limits.py::test_a_lookup_takes_no_more_than_k_peers_of_an_answer",
        )
        for module in (kad_peer_routing_module, kad_provider_store_module, kad_value_store_module)
    ),
)

_installed: dict[tuple[int, str], Any] = {}  # (id(owner), attribute) -> what we put there


def installed_version() -> str:
    """The version of py-libp2p this process imports."""
    return importlib.metadata.version(LIBRARY)


def check_version(installed: str) -> None:
    """Raises:
    LibraryMismatch: ``installed`` is not :data:`WRITTEN_FOR`.
    """
    if installed != WRITTEN_FOR:
        raise LibraryMismatch(
            f"py-libp2p {installed} is installed, but p2pchat's host layer was written for "
            f"{WRITTEN_FOR} and changes its internals (node/p2p/patches.py): "
            f"install {LIBRARY}=={WRITTEN_FOR}"
        )


def check_targets(patches: tuple[Patch, ...]) -> None:
    """Raises:
    LibraryMismatch: a name a patch replaces is missing.
    """
    for patch in patches:
        if not hasattr(patch.owner, patch.attribute):
            raise LibraryMismatch(
                f"py-libp2p has no {patch.target}, which p2pchat replaces ({patch.trap}): "
                f"install {LIBRARY}=={WRITTEN_FOR}"
            )


def apply(patches: tuple[Patch, ...] = PATCHES, *, version: str | None = None) -> None:
    """Install every patch once; later calls change nothing.

    Raises:
        LibraryMismatch: the library is not the version these patches were written for, or a
            replaced name is gone; nothing is changed then.
    """
    check_version(installed_version() if version is None else version)
    check_targets(patches)
    for patch in patches:
        key = (id(patch.owner), patch.attribute)
        if key in _installed:
            continue  # applied before (and what replaced it since, a test's probe, stays)
        replacement = patch.replace(getattr(patch.owner, patch.attribute))
        setattr(patch.owner, patch.attribute, replacement)
        _installed[key] = replacement


def applied(patch: Patch) -> bool:
    """Whether ``patch`` is in place now."""
    key = (id(patch.owner), patch.attribute)
    return key in _installed and getattr(patch.owner, patch.attribute) is _installed[key]

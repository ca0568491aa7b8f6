"""The metrics observe: each group turns the reports of the code it observes into its series.

Protocol code reports through observer protocols of its own (``RendezvousObserver``,
``HopObserver``, ...); these tests feed the metrics classes those reports directly, without a
node, and read the series back from the registry by their exported names and labels.
"""

from __future__ import annotations

from p2pchat.node.metrics import NodeMetrics
from p2pchat.node.p2p.host import ConnectionInfo
from p2pchat.roles.archiver.metrics import ArchiveMetrics
from p2pchat.roles.peer.metrics import ChatMetrics
from p2pchat.roles.relay.metrics import RelayMetrics
from prometheus_client import CollectorRegistry


def _families(registry: CollectorRegistry) -> set[str]:
    return {family.name for family in registry.collect()}


def test_node_groups_turn_reports_into_their_series() -> None:
    metrics = NodeMetrics(["peer"])
    value = metrics.registry.get_sample_value
    info = ConnectionInfo("12D3KooWpeer", "outbound", "tcp", "/noise", "/yamux/1.0.0")
    connection = {
        "dir": "outbound",
        "transport": "tcp",
        "security": "/noise",
        "muxer": "/yamux/1.0.0",
    }
    metrics.swarm.connection_opened(info)
    metrics.swarm.connection_opened(info)
    assert value("libp2p_swarm_connections_opened_total", connection) == 2
    assert value("p2pchat_connected_peers") == 1
    metrics.swarm.connection_closed(info)
    assert value("p2pchat_connected_peers") == 1  # one connection of the peer is still open
    metrics.swarm.connection_closed(info)
    assert value("libp2p_swarm_connections_closed_total", connection) == 2
    assert value("p2pchat_connected_peers") == 0
    metrics.swarm.handler_failed("/p2pchat/x", RuntimeError("boom"))
    assert value("p2pchat_stream_handler_failures_total", {"protocol": "/p2pchat/x"}) == 1
    metrics.swarm.bootstrap_dial(False)
    assert value("p2pchat_bootstrap_dials_total", {"outcome": "failure"}) == 1

    metrics.dht.measure_routing_table(lambda: 7)
    assert value("p2pchat_dht_routing_table_peers") == 7
    metrics.dht.provide_finished("refused")
    metrics.dht.lookup_finished("none")
    assert value("p2pchat_rendezvous_provides_total", {"outcome": "refused"}) == 1
    assert value("p2pchat_rendezvous_lookups_total", {"outcome": "none"}) == 1

    assert value("libp2p_autonat_reachability_status") == 0  # unknown until a verdict
    metrics.autonat.reachability_decided("private")
    assert value("libp2p_autonat_reachability_status") == 2
    metrics.autonat.reachability_decided("public")
    assert value("libp2p_autonat_reachability_status") == 1
    metrics.autonat.probe_answered("bad_response")
    metrics.autonat.dialback_answered("e_dial_refused")
    assert value("p2pchat_autonat_probes_total", {"outcome": "bad_response"}) == 1
    assert value("p2pchat_autonat_dialbacks_total", {"outcome": "e_dial_refused"}) == 1

    metrics.autorelay.reservation_requested("refresh", "reservation_refused")
    metrics.autorelay.reservation_opened()
    metrics.autorelay.reservation_closed()
    metrics.autorelay.reservations_advertised(2, 3)
    assert (
        value(
            "libp2p_autorelay_reservation_requests_outcome_total",
            {"request_type": "refresh", "outcome": "reservation_refused"},
        )
        == 1
    )
    assert value("libp2p_autorelay_reservations_opened_total") == 1
    assert value("libp2p_autorelay_reservations_closed_total") == 1
    assert value("p2pchat_autorelay_reservations") == 2
    assert value("libp2p_autorelay_relay_addresses_count") == 3

    metrics.holepunch.direct_dial_finished(True)
    metrics.holepunch.punch_finished("initiator", 2, "success")
    metrics.holepunch.exchange_dropped("receiver")
    assert value("libp2p_holepunch_direct_dials_total", {"outcome": "success"}) == 1
    punch = {"side": "initiator", "num_attempts": "2", "outcome": "success"}
    assert value("libp2p_holepunch_outcomes_total", punch) == 1
    assert value("p2pchat_holepunch_protocol_errors_total", {"side": "receiver"}) == 1

    assert value("p2pchat_ready") == 0
    metrics.status.node_ready()
    assert value("p2pchat_ready") == 1
    assert b"p2pchat_build_info" in metrics.render()


def test_history_groups_are_registered_once_on_first_use() -> None:
    metrics = NodeMetrics(["relay"])
    value = metrics.registry.get_sample_value
    history_families = {
        "p2pchat_store_queries",
        "p2pchat_archive_query_duration_seconds",
        "p2pchat_store_query_streams",
        "p2pchat_history_rejected",
        "p2pchat_history_fetched",
        "p2pchat_history_queries",
        "p2pchat_history_caught_up",
        "p2pchat_history_source_gaps",
        "p2pchat_history_source_errors",
    }
    assert not history_families & _families(metrics.registry)  # a node that does no history

    server = metrics.history_server
    assert metrics.history_server is server  # used twice, registered once
    server.stream_opened()
    server.query_answered("too_many_requests")
    server.query_read(0.002)
    assert value("p2pchat_store_query_streams") == 1
    server.stream_closed()
    assert value("p2pchat_store_query_streams") == 0
    assert value("p2pchat_store_queries_total", {"status": "too_many_requests"}) == 1
    assert value("p2pchat_archive_query_duration_seconds_count") == 1

    client = metrics.history_client
    client.entry_rejected("mismatch")
    client.entries_fetched(5)
    client.query_finished("error")
    assert value("p2pchat_history_rejected_total", {"reason": "mismatch"}) == 1
    assert value("p2pchat_history_fetched_total") == 5
    assert value("p2pchat_history_queries_total", {"outcome": "error"}) == 1

    catch_up = metrics.catch_up
    catch_up.caught_up(4)
    catch_up.source_lacked(2)
    catch_up.source_failed()
    assert value("p2pchat_history_caught_up_total") == 4
    assert value("p2pchat_history_source_gaps_total") == 2
    assert value("p2pchat_history_source_errors_total") == 1
    assert history_families <= _families(metrics.registry)


def test_the_chat_metrics_observe_the_peer() -> None:
    registry = CollectorRegistry()
    metrics = ChatMetrics(registry, store_size=lambda: 4096)
    value = registry.get_sample_value
    assert value("p2pchat_store_bytes") == 4096  # read when scraped
    metrics.message_dropped("lobby", "wrong_room")  # the room is never a label
    metrics.duplicates_dropped(3)
    metrics.message_received()
    metrics.message_published()
    metrics.rooms_joined(2)
    metrics.room_members(5, 2)
    assert value("p2pchat_messages_dropped_total", {"reason": "wrong_room"}) == 1
    assert value("p2pchat_messages_dropped_total", {"reason": "duplicate"}) == 3
    assert value("p2pchat_messages_received_total") == 1
    assert value("p2pchat_messages_published_total") == 1
    assert value("p2pchat_rooms_joined") == 2
    assert value("p2pchat_room_peers") == 5
    assert value("p2pchat_room_infrastructure_peers") == 2


def test_the_archive_metrics_observe_the_archiver() -> None:
    registry = CollectorRegistry()
    metrics = ArchiveMetrics(registry, store_size=lambda: 10)
    value = registry.get_sample_value
    assert value("p2pchat_archive_store_bytes") == 10
    metrics.batch_written(0.003, 64, 60)
    metrics.messages_held(60)
    metrics.write_failed()
    metrics.retention_failed()
    metrics.messages_deleted(7)
    metrics.rooms_archived(3)
    metrics.message_dropped("lobby", "oversized")
    assert value("p2pchat_archive_insert_duration_seconds_count") == 1
    assert value("p2pchat_archive_insert_batch_messages_sum") == 64
    assert value("p2pchat_archive_inserted_total") == 60
    assert value("p2pchat_archive_messages") == 60
    assert value("p2pchat_archive_errors_total", {"type": "write"}) == 1
    assert value("p2pchat_archive_errors_total", {"type": "retention"}) == 1
    assert value("p2pchat_archive_retention_deleted_total") == 7
    assert value("p2pchat_archive_rooms") == 3
    assert value("p2pchat_archive_dropped_total", {"reason": "oversized"}) == 1


def test_the_relay_metrics_observe_the_hop_server() -> None:
    registry = CollectorRegistry()
    metrics = RelayMetrics(registry)
    value = registry.get_sample_value
    metrics.service_started(128)
    assert value("libp2p_relaysvc_status") == 1
    assert value("p2pchat_relay_max_reservations") == 128
    # Expiry is reported before every reservation request, none expired included: the
    # "closed" series exists from the first request on, as it always did.
    metrics.reservations_closed(0)
    assert value("libp2p_relaysvc_reservations_total", {"type": "closed"}) == 0
    metrics.reservation_granted(renewed=False)
    metrics.reservation_granted(renewed=True)
    metrics.reservations_changed(1)
    metrics.reservation_refused("ip_limit")
    metrics.request_malformed()
    metrics.circuit_refused("no_reservation")
    metrics.circuit_opened()
    metrics.bytes_relayed(100, ("other",))
    metrics.circuit_reset("data")
    metrics.circuit_closed(2.0)
    assert value("libp2p_relaysvc_reservations_total", {"type": "opened"}) == 1
    assert value("libp2p_relaysvc_reservations_total", {"type": "renewed"}) == 1
    assert value("p2pchat_relay_reservations") == 1
    assert value("libp2p_relaysvc_reservation_rejections_total", {"reason": "ip_limit"}) == 1
    rejections = "libp2p_relaysvc_connection_rejections_total"
    assert value(rejections, {"reason": "malformed"}) == 1
    assert value(rejections, {"reason": "no_reservation"}) == 1
    assert value("libp2p_relaysvc_connections_total", {"type": "opened"}) == 1
    assert value("libp2p_relaysvc_connections_total", {"type": "closed"}) == 1
    assert value("libp2p_relaysvc_connection_duration_seconds_sum") == 2.0
    assert value("libp2p_relaysvc_data_transferred_bytes_total") == 100
    assert value("p2pchat_relay_bytes_total", {"entry": "other"}) == 100
    assert value("p2pchat_relay_circuit_resets_total", {"limit": "data"}) == 1

"""The process and the node as a whole: resources, build, readiness."""

from __future__ import annotations

from collections.abc import Sequence

from p2pchat.node import __version__
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector


class StatusMetrics:
    """process_* series, ``p2pchat_build_info`` and ``p2pchat_ready``."""

    def __init__(self, registry: CollectorRegistry, roles: Sequence[str]) -> None:
        # process_* (CPU, resident memory, open and max file descriptors, start time), as every
        # Prometheus client exports them on its default registry, which a node does not use.
        ProcessCollector(registry=registry)
        build_info = Gauge(
            "p2pchat_build_info",
            "Always 1; labels carry the version and the roles this process runs.",
            ("version", "roles"),
            registry=registry,
        )
        build_info.labels(version=__version__, roles=",".join(roles)).set(1)
        self.ready = Gauge(
            "p2pchat_ready",
            "1 once every role has started and the listeners are bound.",
            registry=registry,
        )

    def node_ready(self) -> None:
        """The node serves: every role started and the listeners are bound."""
        self.ready.set(1)

"""Prometheus metrics at ``/metrics`` (prometheus-client, a registry per hub).

Counters and the latency histogram move where things happen (ingest,
dispatch, applies); gauges of the fleet's state are read at scrape time from
the summaries the hub already computes, so a scrape costs no database read.

    edgecollab_nodes{presence}                          joined nodes by presence (online/offline)
    edgecollab_releases{phase}                          releases nodes report, by phase
    edgecollab_assignment_to_deployed_seconds           publish of a revision -> the node reports it Deployed
    edgecollab_status_messages_total{outcome}           node status reports received (stored/dropped/stale)
    edgecollab_mqtt_connections_total                   broker connections the hub made (reconnects: this - 1)
    edgecollab_apply_failures_total{reason}             applies refused (spec/render) and releases turned Failed
    edgecollab_agent_outbox_messages{stat}              events waiting in agents' outboxes: sum and max
    edgecollab_certificate_expiry_timestamp_seconds{certificate}
                                                        when each certificate ends (UNIX seconds): ca, broker,
                                                        hub_mqtt, hub_https, and node_soonest (the soonest
                                                        node certificate: one series, not one per node)
    edgecollab_node_certificates_expiring               node certificates ending within 30 days
    edgecollab_node_certificates_expired                node certificates the store holds that have ended

The certificate gauges are the certificate keeper's (``edgehub.certificates``), as of its last check
(hourly by default; node certificates change as agents renew them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgeprotocol.messages import NodeStatus

from .summaries import PHASES, fleet_topic

if TYPE_CHECKING:
    from .certificates import NodeExpiries

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a node on a good link deploys a small chart in a few seconds; an offline one in hours.
LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 4 * 3600, 24 * 3600)
# Revisions published and not yet reported Deployed that the latency tracker remembers at most.
MAX_PENDING = 200_000


class _FleetState(Collector):
    def __init__(self, summaries: Callable[[], dict[str, dict[str, Any]]], connections: Callable[[], int],
                 outboxes: Callable[[], dict[str, int]]) -> None:
        self._summaries = summaries
        self._connections = connections
        self._outboxes = outboxes

    def collect(self) -> Iterator[Metric]:
        fleet = self._summaries().get(fleet_topic(), {})
        nodes = GaugeMetricFamily("edgecollab_nodes", "Joined nodes by presence", labels=["presence"])
        nodes.add_metric(["online"], fleet.get("nodes_online", 0))
        nodes.add_metric(["offline"], fleet.get("nodes_offline", 0))
        yield nodes
        releases = GaugeMetricFamily("edgecollab_releases", "Releases nodes report, by phase", labels=["phase"])
        for phase in PHASES:
            releases.add_metric([phase], fleet.get(f"releases_{phase.lower()}", 0))
        yield releases
        connections = GaugeMetricFamily("edgecollab_mqtt_connections_total",
                                        "Broker connections the hub made since it started (reconnects: this - 1)")
        connections.add_metric([], self._connections())
        yield connections
        sizes = self._outboxes().values()
        outbox = GaugeMetricFamily("edgecollab_agent_outbox_messages",
                                   "Events waiting in agents' outboxes, as their last status says", labels=["stat"])
        outbox.add_metric(["sum"], sum(sizes))
        outbox.add_metric(["max"], max(sizes, default=0))
        yield outbox


class _CertificateExpiries(Collector):
    def __init__(self, gauges: Callable[[], tuple[dict[str, float], NodeExpiries]]) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        ends, nodes = self._gauges()
        expiry = GaugeMetricFamily("edgecollab_certificate_expiry_timestamp_seconds",
                                   "When each certificate the hub keeps ends, UNIX seconds (node_soonest: the "
                                   "soonest of the node certificates)", labels=["certificate"])
        for name, timestamp in ends.items():
            expiry.add_metric([name], timestamp)
        if nodes.soonest is not None:
            expiry.add_metric(["node_soonest"], nodes.soonest.not_after.timestamp())
        yield expiry
        yield GaugeMetricFamily("edgecollab_node_certificates_expiring",
                                "Node certificates that end within 30 days and have not ended", value=nodes.expiring)
        yield GaugeMetricFamily("edgecollab_node_certificates_expired",
                                "Node certificates the hub holds that have ended", value=nodes.expired)


class HubMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.status_messages = Counter("edgecollab_status_messages", "Node status reports received",
                                       ["outcome"], registry=self.registry)
        self.apply_failures = Counter("edgecollab_apply_failures", "Applies the hub refused (spec or render) and "
                                      "releases nodes reported turning Failed", ["reason"], registry=self.registry)
        self.deploy_latency = Histogram("edgecollab_assignment_to_deployed_seconds",
                                        "From the hub publishing a release revision to a node to the node "
                                        "reporting it Deployed", buckets=LATENCY_BUCKETS, registry=self.registry)
        # (node, namespace, release) -> (revision, monotonic time of its first publish)
        self._published: dict[tuple[str, str, str], tuple[int, float]] = {}
        # (node, namespace, release) -> phase last reported, to count Failed transitions once
        self._phases: dict[tuple[str, str, str], str] = {}
        self._outboxes: dict[str, int] = {}

    def watch(self, summaries: Callable[[], dict[str, dict[str, Any]]], connections: Callable[[], int]) -> None:
        self.registry.register(_FleetState(summaries, connections, lambda: self._outboxes))

    def watch_certificates(self, gauges: Callable[[], tuple[dict[str, float], NodeExpiries]]) -> None:
        """Certificate expiries from ``gauges`` (CertificateKeeper.gauges), read at scrape time."""
        self.registry.register(_CertificateExpiries(gauges))

    def published(self, node: str, namespace: str, release: str, revision: int) -> None:
        key = (node, namespace, release)
        held = self._published.get(key)
        if held is not None and held[0] == revision:
            return  # a re-publish (reconnect, resync): the clock runs from the first one
        if len(self._published) >= MAX_PENDING:
            self._published.pop(next(iter(self._published)))
        self._published[key] = (revision, time.monotonic())

    def status(self, status: NodeStatus, outcome: str) -> None:
        self.status_messages.labels(outcome=outcome).inc()
        if outcome != "stored":
            return
        self._outboxes[status.node] = status.outbox
        for r in status.releases:
            key = (status.node, r.namespace, r.release)
            if self._phases.get(key) != r.phase and r.phase == "Failed":
                self.apply_failures.labels(reason="node").inc()
            self._phases[key] = r.phase
            held = self._published.get(key)
            if held is not None and r.phase == "Deployed" and r.applied_revision >= held[0]:
                self.deploy_latency.observe(time.monotonic() - held[1])
                del self._published[key]

    def apply_refused(self) -> None:
        self.apply_failures.labels(reason="hub").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

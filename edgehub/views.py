"""JSON views of nodes, pools and components, shared by the API and dashboards.

A node's reported status is shown with its presence and the time it was
observed: an offline node's releases keep their last phase but are marked
``stale`` with the time the node was last seen, never shown as live.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

from cryptography import x509

from edgeprotocol.enrollment import renew_after
from edgeprotocol.health import release_failing
from edgeprotocol.messages import ReleaseStatus

from .store.assignments import AssignmentRecord
from .store.components import ComponentRecord
from .store.enrollment import NodeRecord


def certificate_view(pem: str) -> dict[str, str] | None:
    """What a node's certificate says of itself: serial (hex) and validity; None without one (reset, revoked)."""
    fields = _certificate_fields(pem)
    return dict(fields) if fields is not None else None


@functools.lru_cache(maxsize=4096)
def _certificate_fields(pem: str) -> tuple[tuple[str, str], ...] | None:
    if not pem:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None

    def iso(moment: Any) -> str:
        return moment.isoformat().replace("+00:00", "Z")

    return (("serial", format(cert.serial_number, "x")), ("not_before", iso(cert.not_valid_before_utc)),
            ("not_after", iso(cert.not_valid_after_utc)), ("renew_after", iso(renew_after(cert))))


def reported_release(node: NodeRecord, namespace: str, release: str) -> ReleaseStatus | None:
    """The release as the node last reported it; None when it reported none of it."""
    for r in node.status.releases if node.status is not None else ():
        if r.release == release and r.namespace == namespace:
            return r
    return None


def release_view(node: NodeRecord, namespace: str, release: str) -> dict[str, Any] | None:
    r = reported_release(node, namespace, release)
    if r is None:
        return None
    return {
        "desired_revision": r.desired_revision,
        "applied_revision": r.applied_revision,
        "phase": r.phase,
        # The release's health word ("" when healthy, and from agents that report none), its containers'
        # restarts together, and each pod's containers as the node reported them.
        "reason": r.reason,
        "restarts": r.restarts,
        "message": r.message,
        "ready": r.ready,
        "total": r.total,
        "observed_at": r.observed_at,
        "stale": node.presence != "online",
        "pods": [p.to_dict() for p in r.pods],
    }


def node_view(node: NodeRecord) -> dict[str, Any]:
    status = node.status
    return {
        "name": node.name,
        "pool": node.pool,
        "labels": node.labels,
        "presence": node.presence,
        "presence_since": node.presence_at,
        "last_seen": node.last_seen,
        # "joined", "reset" (the name is free for the next join) or "revoked";
        # generation: how many joins of the name were accepted.
        "standing": node.standing,
        "generation": node.generation,
        # "encrypted": its bundles are encrypted to the key it joined with;
        # "plain": it joined without one (an agent older than bundle encryption).
        "bundles": "encrypted" if node.bundle_key else "plain",
        # The certificate the hub last issued the node (at join or renewal); null after a reset or revoke.
        "certificate": certificate_view(node.certificate),
        "agent_version": status.agent_version if status else "",
        "runtime": status.runtime if status else "",
        "status_observed_at": status.observed_at if status else "",
        # The node's own health as it last reported it (RuntimeReady,
        # StorageReady); empty until the agent reports, or for old agents.
        "conditions": [c.to_dict() for c in status.conditions] if status else [],
        "releases": [
            {"namespace": r.namespace, "release": r.release, **(release_view(node, r.namespace, r.release) or {})}
            for r in (status.releases if status else ())
        ],
    }


def pool_views(nodes: list[NodeRecord]) -> list[dict[str, Any]]:
    total = Counter(n.pool for n in nodes)
    online = Counter(n.pool for n in nodes if n.presence == "online")
    return [{"pool": p, "nodes": total[p], "online": online[p]} for p in sorted(total)]


def component_view(
    comp: ComponentRecord, by_name: Mapping[str, NodeRecord], targets: list[AssignmentRecord], *, detail: bool
) -> dict[str, Any]:
    """The component's rollout over ``targets`` (its release assignments, ``release_targets``), each as its
    node (``by_name``) last reported it; ``detail``: with its spec and a row per node."""
    deployed = 0
    phases: Counter[str] = Counter()
    pools: dict[str, dict[str, int]] = {}
    for a in targets:
        # A listing counts every target of every component: no per-node view is made for it.
        node = by_name.get(a.node)
        reported = reported_release(node, comp.namespace, comp.name) if node is not None else None
        phase = reported.phase if reported is not None else "Pending"
        is_deployed = (reported is not None and phase == "Deployed" and reported.applied_revision == comp.revision
                       and not release_failing(phase, reported.reason) and node is not None
                       and node.presence == "online")
        deployed += is_deployed
        phases[phase] += 1
        counts = pools.setdefault(node.pool if node is not None else "", {"targets": 0, "deployed": 0})
        counts["targets"] += 1
        counts["deployed"] += is_deployed
    view: dict[str, Any] = {
        "namespace": comp.namespace,
        "name": comp.name,
        "revision": comp.revision,
        "chart": {"name": comp.chart_name, "version": comp.chart_version},
        "targets": len(targets),
        "deployed": deployed,
        "phases": dict(phases),
        # Per pool ("" for a node the hub no longer knows): how many nodes it targets and has deployed.
        "pools": dict(sorted(pools.items())),
    }
    if detail:
        view["spec"] = comp.spec
        view["nodes"] = sorted((_target_row(a, by_name.get(a.node), comp) for a in targets), key=lambda r: r["node"])
    return view


def _target_row(a: AssignmentRecord, node: NodeRecord | None, comp: ComponentRecord) -> dict[str, Any]:
    reported = release_view(node, comp.namespace, comp.name) if node is not None else None
    return {
        "node": a.node,
        "pool": node.pool if node else "",
        "presence": node.presence if node else "unknown",
        "last_seen": node.last_seen if node else "",
        "assigned_revision": a.revision,
        **(reported or {"phase": "Pending", "applied_revision": 0, "reason": "", "restarts": 0,
                        "message": "not reported yet", "ready": 0, "total": 0, "observed_at": "", "stale": False,
                        "pods": []}),
    }


def release_targets(assignments: list[AssignmentRecord]) -> dict[tuple[str, str], list[AssignmentRecord]]:
    """Release assignments by (namespace, component): each component's targets."""
    targets: dict[tuple[str, str], list[AssignmentRecord]] = defaultdict(list)
    for a in assignments:
        if a.kind == "release":
            targets[(a.namespace, a.release)].append(a)
    return targets

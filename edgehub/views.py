"""JSON views of nodes, pools and components, shared by the API and dashboards.

A node's reported status is shown with its presence and the time it was
observed: an offline node's releases keep their last phase but are marked
``stale`` with the time the node was last seen, never shown as live.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

from cryptography import x509

from edgeprotocol.enrollment import renew_after

from .store import AssignmentRecord, ComponentRecord, NodeRecord


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


def release_view(node: NodeRecord, namespace: str, release: str) -> dict[str, Any] | None:
    if node.status is None:
        return None
    for r in node.status.releases:
        if (r.namespace, r.release) == (namespace, release):
            return {
                "desired_revision": r.desired_revision,
                "applied_revision": r.applied_revision,
                "phase": r.phase,
                "message": r.message,
                "ready": r.ready,
                "total": r.total,
                "observed_at": r.observed_at,
                "stale": node.presence != "online",
            }
    return None


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
    comp: ComponentRecord, nodes: list[NodeRecord], assignments: list[AssignmentRecord], *, detail: bool
) -> dict[str, Any]:
    by_name = {n.name: n for n in nodes}
    targets = [a for a in assignments
               if (a.namespace, a.release) == (comp.namespace, comp.name) and a.kind == "release"]
    rows = []
    for a in targets:
        node = by_name.get(a.node)
        reported = release_view(node, comp.namespace, comp.name) if node else None
        rows.append({
            "node": a.node,
            "pool": node.pool if node else "",
            "presence": node.presence if node else "unknown",
            "last_seen": node.last_seen if node else "",
            "assigned_revision": a.revision,
            **(reported or {"phase": "Pending", "applied_revision": 0, "message": "not reported yet",
                            "ready": 0, "total": 0, "observed_at": "", "stale": False}),
        })
    def is_deployed(r: dict[str, Any]) -> bool:
        return r["phase"] == "Deployed" and r["applied_revision"] == comp.revision and not r["stale"]

    deployed = sum(1 for r in rows if is_deployed(r))
    pools: dict[str, dict[str, int]] = {}
    for r in rows:
        counts = pools.setdefault(r["pool"], {"targets": 0, "deployed": 0})
        counts["targets"] += 1
        counts["deployed"] += is_deployed(r)
    view: dict[str, Any] = {
        "namespace": comp.namespace,
        "name": comp.name,
        "revision": comp.revision,
        "chart": {"name": comp.chart_name, "version": comp.chart_version},
        "targets": len(rows),
        "deployed": deployed,
        "phases": dict(Counter(r["phase"] for r in rows)),
        # Per pool ("" for a node the hub no longer knows): how many nodes it targets and has deployed.
        "pools": dict(sorted(pools.items())),
    }
    if detail:
        view["spec"] = comp.spec
        view["nodes"] = sorted(rows, key=lambda r: r["node"])
    return view

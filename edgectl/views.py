"""The hub's answers as ``edgectl`` shows them: table rows and columns per kind, the watch of a list,
``describe hub``, a release's container troubles, a rollout's lines, events, history.

Pure but for ``ListWatch`` and ``describe_hub``, which print through ``edgectl.output``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from edgectl.output import DATA_OUTPUTS, RowPrinter, one_line, print_data, sanitize, say, show_table, timestamp, to_yaml
from edgeprotocol.errors import ProtocolError
from edgeprotocol.health import describe as describe_container
from edgeprotocol.messages import PodStatus

# A watched row that went away is printed once more with this in one column.
DELETED = "<deleted>"
DELETED_COLUMN = {"nodes": "presence", "pools": "nodes", "components": "ready"}


def notes_section(notes: str) -> str:
    """The chart's rendered NOTES.txt as ``helm install`` prints it: ``NOTES:`` then the text; "" if it has none."""
    notes = notes.strip()
    return f"NOTES:\n{notes}" if notes else ""


NODE_COLUMNS = ["name", "pool", "presence", "conditions", "last_seen", "labels", "releases"]
NODE_WIDE_COLUMNS = ["name", "pool", "presence", "standing", "generation", "conditions", "last_seen",
                     "agent_version", "runtime", "bundles", "labels", "releases"]
COMPONENT_COLUMNS = ["component", "revision", "chart", "ready"]
COMPONENT_WIDE_COLUMNS = ["component", "revision", "chart", "ready", "phases", "pools"]


def _counts(counts: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"


def list_rows(kind: str, data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The hub's list of ``kind`` as table rows (every column of -o wide; -o table shows some)."""
    if kind == "nodes":
        return [{**n,
                 "releases": ", ".join(f"{r['namespace']}/{r['release']}@{r.get('applied_revision', 0)}:"
                                       f"{r.get('phase', '?')}" + (f"({r['reason']})" if r.get("reason") else "")
                                       for r in n["releases"]) or "-",
                 "labels": _counts(n["labels"]),
                 "conditions": conditions_column(n["conditions"]),
                 "agent_version": n.get("agent_version") or "-",
                 "runtime": n.get("runtime") or "-"}
                for n in data]
    if kind == "pools":
        return list(data)
    return [{**c, "component": f"{c['namespace']}/{c['name']}",
             "chart": f"{c['chart']['name']}-{c['chart']['version']}",
             "ready": f"{c['deployed']}/{c['targets']}", "phases": _counts(c.get("phases", {})),
             # Per pool, deployed/targets; a hub older than this edgectl does not say.
             "pools": ",".join(f"{p or '?'}={n['deployed']}/{n['targets']}"
                               for p, n in sorted(c.get("pools", {}).items())) or "-"}
            for c in data]


def list_columns(kind: str, *, wide: bool) -> list[str]:
    if kind == "nodes":
        return NODE_WIDE_COLUMNS if wide else NODE_COLUMNS
    if kind == "pools":
        return ["pool", "nodes", "online"]
    return COMPONENT_WIDE_COLUMNS if wide else COMPONENT_COLUMNS


def list_table(kind: str, data: list[dict[str, Any]], *, wide: bool) -> tuple[list[dict[str, Any]], list[str]]:
    return list_rows(kind, data), list_columns(kind, wide=wide)


def list_key(kind: str, item: Mapping[str, Any]) -> str:
    """What names one row of ``kind`` from one poll to the next."""
    if kind == "nodes":
        return str(item["name"])
    if kind == "pools":
        return str(item["pool"])
    return f"{item['namespace']}/{item['name']}"


class ListWatch:
    """``get -w``: the list, then what changed at each poll. A table prints a row that is new or whose
    cells changed, and a row that went away with ``<deleted>`` in its DELETED_COLUMN; -o json and -o yaml
    print ``{"type": "ADDED"|"MODIFIED"|"DELETED", "object": ...}`` for each item that is new, changed in
    any field, or gone (json: one a line; yaml: one document each)."""

    def __init__(self, kind: str, output: str) -> None:
        self.kind = kind
        self.output = output
        self.table = None if output in DATA_OUTPUTS else RowPrinter(list_columns(kind, wide=output == "wide"))
        # key -> (the item as the hub answered it, its row's cells)
        self.known: dict[str, tuple[dict[str, Any], list[str]]] | None = None

    def show(self, data: list[dict[str, Any]]) -> None:
        first = self.known is None
        known = self.known or {}
        current: dict[str, tuple[dict[str, Any], list[str]]] = {}
        changes: list[tuple[str, dict[str, Any], list[str]]] = []
        for item, row in zip(data, list_rows(self.kind, data), strict=True):
            key = list_key(self.kind, item)
            cells = self.table.cells(row) if self.table else []
            current[key] = (item, cells)
            before = known.get(key)
            if before is None:
                changes.append(("ADDED", item, cells))
            elif (before[1] != cells) if self.table else (before[0] != item):
                changes.append(("MODIFIED", item, cells))
        for key in sorted(known.keys() - current.keys()):
            item, cells = known[key]
            if self.table:
                cells = list(cells)
                cells[self.table.columns.index(DELETED_COLUMN[self.kind])] = DELETED
            changes.append(("DELETED", item, cells))
        self.known = current
        if self.table:
            if first or changes:
                self.table.print([cells for _, _, cells in changes], header=first)
            return
        for change, item, _ in changes:
            event = {"type": change, "object": item}
            if self.output == "yaml":
                say("---\n" + to_yaml(event))
            else:
                say(json.dumps(event, sort_keys=True))


def conditions_column(conditions: list[dict[str, str]]) -> str:
    """``Ready`` when every condition is True, else each other one as ``Type=Status(Reason)``; ``-`` if none."""
    if not conditions:
        return "-"
    unhealthy = [f"{c['type']}={c['status']}({c['reason']})" for c in conditions if c["status"] != "True"]
    return ",".join(unhealthy) or "Ready"


HUB_CERTIFICATE_COLUMNS = ["name", "subject", "not_after", "days_left", "renewed_by"]
HUB_CERTIFICATE_WIDE_COLUMNS = ["name", "subject", "serial", "not_before", "not_after", "days_left", "renewed_by",
                                "source"]
# Node certificates ``describe hub`` lists as text (the soonest first); -o wide, json and yaml list all.
HUB_NODES_SHOWN = 10


def describe_hub(data: Mapping[str, Any], output: str) -> None:
    """``describe hub``: every certificate in the chain with its end and what renews it, then the warnings."""
    if output in DATA_OUTPUTS:
        print_data(data, output)
        return
    wide = output == "wide"
    certificates = data.get("certificates") or []
    nodes = [c for c in certificates if str(c.get("name", "")).startswith("node/")]
    shown = [c for c in certificates if c not in nodes] + (nodes if wide else nodes[:HUB_NODES_SHOWN])
    interval = data.get("check_interval_seconds")
    every = f"{interval:g}" if isinstance(interval, int | float) else one_line(interval)
    say(f"Checked:   {one_line(data.get('checked_at') or '-')} (every {every} s)")
    say("Certificates:")
    show_table(shown, HUB_CERTIFICATE_WIDE_COLUMNS if wide else HUB_CERTIFICATE_COLUMNS)
    rotation = data.get("ca_rotation") or {}
    if rotation.get("phase") not in (None, "steady"):  # a CA rotation under way (edgehub ca status has it all)
        say(f"CA rotation: {one_line(rotation['phase'])}: {one_line(rotation.get('next'))}; "
            f"{one_line(rotation.get('nodes_to_renew', 0))} node(s) hold a certificate of a CA that does not issue")
    summary = data.get("nodes") or {}
    soonest = summary.get("soonest") or {}
    line = f"Nodes:     {one_line(summary.get('certificates', 0))} certificate(s)"
    if soonest:
        line += (f"; the soonest ends {one_line(soonest.get('not_after'))} ({one_line(soonest.get('name'))}, "
                 f"{one_line(soonest.get('days_left'))} days)")
    expiring = next((v for k, v in summary.items() if k.startswith("expiring_within_")), 0)
    line += f"; {one_line(expiring)} end within 30 days, {one_line(summary.get('expired', 0))} ended"
    if not wide and len(nodes) > HUB_NODES_SHOWN:
        line += f" ({len(nodes) - HUB_NODES_SHOWN} more with -o wide)"
    say(line)
    warnings = data.get("warnings") or []
    say("Warnings:" + ("" if warnings else " none"))
    for warning in warnings:
        say(f"  {one_line(warning)}")


def container_troubles(release: Mapping[str, Any]) -> list[str]:
    """A sentence per unhealthy container of a release as the hub shows it (none from a hub or an agent that
    reports no pods)."""
    lines = []
    for pod in release.get("pods") or ():
        try:
            status = PodStatus.from_dict(pod, "pod")
        except ProtocolError:
            continue  # a hub newer than this edgectl may say more: what it cannot read it leaves out
        lines += [text for text in (describe_container(status.name, c) for c in status.containers) if text]
    return lines


HISTORY_COLUMNS = ["revision", "updated", "status", "chart", "origin"]
HISTORY_WIDE_COLUMNS = ["revision", "updated", "status", "chart", "chart_digest", "values", "origin"]


def _short_digest(digest: Any) -> str:
    """A values digest (``{"hmac-sha256": HEX}``) or chart digest (``sha256:HEX``) cut to 12 hex digits."""
    if isinstance(digest, dict):
        digest = next(iter(digest.values()), "")
    if not isinstance(digest, str) or not digest:
        return "-"
    return digest.rpartition(":")[2][:12]


def history_rows(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "updated": timestamp(r.get("created_at")),
             "chart": f"{r['chart']['name']}-{r['chart']['version']}" if r.get("chart") else "-",
             "chart_digest": _short_digest((r.get("chart") or {}).get("digest")),
             "values": _short_digest(r.get("values"))}
            for r in data]


def rollout_lines(data: Mapping[str, Any]) -> list[str]:
    """What ``rollout status`` prints of a rollout: a line per batch, the deferred nodes, its outcome."""
    lines = []
    for batch in data.get("batches", []):
        selector = ", ".join(f"{k} {v if not isinstance(v, list) else ','.join(map(str, v))}"
                             for k, v in batch.get("selector", {}).items())
        line = (f"batch {batch['index']}/{data['batches_total']} ({selector}): {batch['state']}, "
                f"{batch['ready']}/{batch['count']} ready")
        if batch.get("nodes") and batch["state"] != "not started":
            line += f" [{', '.join(batch['nodes'][:10])}{', ...' if len(batch['nodes']) > 10 else ''}]"
        if batch.get("failed"):
            line += f"; failed: {', '.join(batch['failed'])}"
        lines.append(line)
    if data.get("deferred"):
        lines.append(f"deferred (offline, they get the revision the rollout settles on): "
                     f"{', '.join(data['deferred'])}")
    if data.get("skipped"):
        lines.append(f"skipped (offline at their batch's start): {', '.join(data['skipped'])}")
    state = data.get("state")
    head = f"rollout of {data['component']} revision {data['revision']}"
    if state == "complete":
        lines.append(f"{head} complete")
    elif state == "rolled back":
        lines.append(f"{head} rolled back to revision {data['previous_revision']} (as revision "
                     f"{data['rollback_revision']}): {data['reason']}")
    elif state in ("failed", "rolling back", "paused"):
        lines.append(f"{head} {state}" + (f": {data['reason']}" if data.get("reason") else ""))
    return [sanitize(line) for line in lines]


EVENT_COLUMNS = ["at", "node", "reason", "release", "message"]
EVENT_WIDE_COLUMNS = ["at", "node", "seq", "reason", "release", "cursor", "message"]


def event_row(event: Mapping[str, Any]) -> dict[str, Any]:
    release = f"{event.get('namespace')}/{event.get('release')}" if event.get("release") else "-"
    if event.get("release") and event.get("revision"):
        release += f"@{event['revision']}"
    return {**event, "release": release}


def event_identity(event: Mapping[str, Any]) -> tuple[Any, ...]:
    """What tells two events apart: the node and its sequence number, and the content too, since an
    agent that joined afresh counts from 1 again and its new events are new."""
    return tuple(event.get(k) for k in ("node", "seq", "at", "reason", "message", "namespace", "release", "revision"))

"""``edgectl``'s commands: each asks the hub through ``edgeclient`` and prints the answer (``edgectl.output``).

``get -w`` and ``events --follow`` poll through ``edgectl.follow``; ``credentials create`` makes its
key and certificate request here, so the private key never leaves the machine that runs it.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeclient.hub import MAX_EVENTS_PER_REQUEST, HubClient, ListedKind
from edgectl.follow import DEFAULT_INTERVAL, poll_until_stopped
from edgectl.output import (
    DATA_OUTPUTS,
    RowPrinter,
    one_line,
    print_data,
    say,
    show_table,
    timestamp,
    to_yaml,
)
from edgectl.views import (
    EVENT_COLUMNS,
    EVENT_WIDE_COLUMNS,
    HISTORY_COLUMNS,
    HISTORY_WIDE_COLUMNS,
    ListWatch,
    container_troubles,
    describe_hub,
    event_identity,
    event_row,
    history_rows,
    list_table,
    notes_section,
    rollout_lines,
)
from edgekit.files import write_atomic
from edgekit.mqtt import BrokerAddress
from edgeprotocol.errors import EdgeError
from edgeprotocol.topics import check_name

# events --follow remembers this many events it printed, to print none twice.
FOLLOW_MEMORY = 20_000
# get takes a kind singular or plural.
LISTED_KINDS: dict[str, ListedKind] = {"nodes": "nodes", "pools": "pools", "components": "components",
                                       "node": "nodes", "pool": "pools", "component": "components"}


class CommandError(EdgeError):
    """A command that cannot run here; the message says why and what to do."""


def _component_ref(name: str, namespace: str) -> tuple[str, str]:
    if "/" in name:
        ns, _, name = name.partition("/")
        return ns, name
    return namespace, name


def cmd_token(hub: HubClient, args: argparse.Namespace) -> None:
    answer = hub.create_token(args.pool, ttl_seconds=args.ttl, uses=args.uses)
    if args.output in DATA_OUTPUTS:
        print_data(answer, args.output)
    else:
        say(one_line(answer["token"]))


def cmd_apply(hub: HubClient, args: argparse.Namespace) -> None:
    # Only apply needs the Helm engine (to package a local chart), so only apply imports it. A chart from a
    # repository or a registry is the hub's to fetch: nothing is sent but the spec.
    try:
        from deployer_plugin import load_component_file
    except ImportError as exc:
        raise CommandError(
            f"apply packages the chart with the Helm engine, which cannot be imported here ({exc}); "
            "install it with: pip install 'edgecollab[hub]'") from exc

    component, archive = load_component_file(args.filename)
    # Without an archive spec.chart names a chart repository or an OCI reference: the hub fetches the chart itself.
    answer = hub.apply(component.to_document(), client="edgectl", chart_archive=archive)
    if args.output in DATA_OUTPUTS:
        print_data(answer, args.output)
        return
    verb = "configured" if answer["changed"] else "unchanged"
    say(f"component/{one_line(answer['component'])} {verb} (revision {one_line(answer['revision'])}"
        + (f", {one_line(answer['targets'])} node(s))" if "targets" in answer else ")"))
    for warning in answer.get("warnings", []):
        say(f"warning: {one_line(warning)}", err=True)
    notes = notes_section(answer.get("notes") or "")
    if notes:
        say(notes)


def cmd_get(hub: HubClient, args: argparse.Namespace) -> None:
    kind = LISTED_KINDS[args.kind]
    data = hub.list(kind)
    watch = ListWatch(kind, args.output) if args.watch else None
    if watch is not None:
        watch.show(data)
    elif args.output in DATA_OUTPUTS:
        print_data(data, args.output)
    else:
        show_table(*list_table(kind, data, wide=args.output == "wide"))
    if kind == "nodes":
        # What the operator should know about how the hub runs (an anonymous broker): on stderr, so
        # -o json stays parseable.
        for warning in hub.health().get("warnings", []):
            say(f"warning: {one_line(warning)}", err=True)
    if watch is not None:
        poll_until_stopped(hub, lambda resumed: watch.show(hub.list(kind)),
                           interval=args.interval or DEFAULT_INTERVAL, timeout=args.timeout,
                           note=lambda text: say(text, err=True))


def cmd_describe(hub: HubClient, args: argparse.Namespace) -> None:
    wide = args.output == "wide"
    if args.kind == "hub":
        describe_hub(hub.certificates(), args.output)
        return
    if args.kind == "node":
        data = hub.node(args.name)
        if args.output in DATA_OUTPUTS:
            print_data(data, args.output)
            return
        d = {key: one_line(value) for key, value in data.items()}
        say(f"Node:      {d['name']}\nPool:      {d['pool']}\nPresence:  {d['presence']} since {d['presence_since']}"
            f"\nLast seen: {d['last_seen']}\nRuntime:   {d['runtime']} (agent {d['agent_version']})")
        cert = data.get("certificate")
        if isinstance(cert, dict):
            c = {key: one_line(value) for key, value in cert.items()}
            say(f"Cert:      serial {c.get('serial')}, valid until {c.get('not_after')} "
                f"(renewed by the node from {c.get('renew_after')})")
        elif "certificate" in data:
            say(f"Cert:      none ({one_line(data.get('standing', ''))})")
        say("Conditions:")
        if data["conditions"]:
            show_table(data["conditions"], ["type", "status", "reason", "since", "message"])
        else:
            say("  none reported yet")
        say("Releases:")
        show_table(data["releases"], ["namespace", "release", "desired_revision", "applied_revision", "phase", "reason",
                                      "restarts", "ready", "total", "observed_at", "stale", "message"] if wide else
                   ["namespace", "release", "applied_revision", "phase", "reason", "restarts", "ready", "total",
                    "message"], under=[container_troubles(r) for r in data["releases"]])
        return
    namespace, name = _component_ref(args.name, args.namespace)
    data = hub.component(namespace, name)
    if args.output in DATA_OUTPUTS:
        print_data(data, args.output)
        return
    d, chart = {key: one_line(value) for key, value in data.items()}, {k: one_line(v) for k, v in data["chart"].items()}
    say(f"Component: {d['namespace']}/{d['name']}\nRevision:  {d['revision']}\n"
        f"Chart:     {chart['name']}-{chart['version']}\nReady:     {d['deployed']}/{d['targets']} node(s)")
    rows = [{**r, "ready": f"{r['ready']}/{r['total']}",
             "presence": r["presence"] + (" (stale)" if r.get("stale") else "")}
            for r in data["nodes"]]
    show_table(rows, ["node", "pool", "presence", "last_seen", "assigned_revision", "applied_revision", "phase",
                      "reason", "restarts", "ready", "observed_at", "message"] if wide else
               ["node", "pool", "presence", "assigned_revision", "applied_revision", "phase", "reason", "ready",
                "message"])


def cmd_delete(hub: HubClient, args: argparse.Namespace) -> None:
    namespace, name = _component_ref(args.name, args.namespace)
    answer = hub.delete_component(namespace, name)
    if args.output in DATA_OUTPUTS:
        print_data(answer, args.output)
    else:
        say(f"component/{one_line(answer['component'])} deleted (revision {one_line(answer['revision'])})")


def cmd_history(hub: HubClient, args: argparse.Namespace) -> None:
    namespace, name = _component_ref(args.name, args.namespace)
    data = hub.history(namespace, name)
    if args.output in DATA_OUTPUTS:
        print_data(data, args.output)
    else:
        show_table(history_rows(data), HISTORY_WIDE_COLUMNS if args.output == "wide" else HISTORY_COLUMNS)


def cmd_rollback(hub: HubClient, args: argparse.Namespace) -> None:
    namespace, name = _component_ref(args.name, args.namespace)
    answer = hub.rollback(namespace, name, to_revision=args.to_revision)
    if args.output in DATA_OUTPUTS:
        print_data(answer, args.output)
        return
    say(f"component/{one_line(answer['component'])} rolled back to revision {one_line(answer['rolled_back_to'])} "
        f"(now revision {one_line(answer['revision'])}, {one_line(answer['targets'])} node(s))")
    for warning in answer.get("warnings", []):
        say(f"warning: {one_line(warning)}", err=True)


class _Settled(Exception):
    """The followed rollout settled (or gave up): ends the polling."""


def cmd_rollout(hub: HubClient, args: argparse.Namespace) -> None:
    namespace, name = _component_ref(args.name, args.namespace)
    if args.action in ("pause", "resume"):
        data = hub.steer_rollout(namespace, name, args.action)
        if args.output in DATA_OUTPUTS:
            print_data(data, args.output)
        else:
            say(f"rollout of {one_line(data['component'])} revision {one_line(data['revision'])} "
                f"{'paused' if args.action == 'pause' else 'resumed'} at batch {one_line(data['batch'])}/"
                f"{one_line(data['batches_total'])}")
        return
    printed: set[str] = set()
    final: dict[str, Any] = {}

    def show(data: dict[str, Any]) -> None:
        final.update(data)
        if args.output in DATA_OUTPUTS:
            return
        for line in rollout_lines(data):
            if line not in printed:
                printed.add(line)
                say(line)
        sys.stdout.flush()

    def poll(resumed: bool) -> None:
        data = hub.rollout(namespace, name)
        show(data)
        if data.get("state") in ("complete", "rolled back", "failed"):
            raise _Settled

    try:
        poll(False)
        poll_until_stopped(hub, poll, interval=args.interval or 1.0, timeout=args.timeout,
                           note=lambda text: say(text, err=True))
    except _Settled:
        pass
    if args.output in DATA_OUTPUTS:
        print_data(final, args.output)
    state = final.get("state")
    if state == "complete":
        return
    if state in ("rolled back", "failed"):
        raise CommandError(f"rollout of {namespace}/{name} revision {final.get('revision')} {state}: "
                           f"{final.get('reason', '')}")
    raise CommandError(f"rollout of {namespace}/{name} revision {final.get('revision')} is still {state} after "
                       f"--timeout")


def cmd_events(hub: HubClient, args: argparse.Namespace) -> None:
    def fetch(*, limit: int, after: int | None = None) -> list[dict[str, Any]]:
        return hub.events(node=args.node or None, limit=limit, after=after)

    events = fetch(limit=args.limit)
    if not args.follow:
        if args.output in DATA_OUTPUTS:
            print_data(events, args.output)
        else:
            show_table([event_row(e) for e in events], EVENT_WIDE_COLUMNS if args.output == "wide" else EVENT_COLUMNS)
        return

    table = None if args.output in DATA_OUTPUTS else RowPrinter(
        EVENT_WIDE_COLUMNS if args.output == "wide" else EVENT_COLUMNS)
    printed: OrderedDict[tuple[Any, ...], None] = OrderedDict()
    # Every event after this cursor is new: with no event yet, all that come.
    cursor = max((e["cursor"] for e in events), default=0)

    def show(batch: list[dict[str, Any]], *, first: bool = False) -> None:
        fresh = []
        for event in batch:
            identity = event_identity(event)
            if identity in printed:
                continue
            printed[identity] = None
            fresh.append(event)
        while len(printed) > FOLLOW_MEMORY:
            printed.popitem(last=False)
        if table is not None:
            if fresh or first:
                table.print([table.cells(event_row(e)) for e in fresh], header=first)
            return
        for event in fresh:
            say("---\n" + to_yaml(event) if args.output == "yaml" else json.dumps(event, sort_keys=True))

    def poll(resumed: bool) -> None:
        nonlocal cursor
        if resumed:
            # After an outage the hub may be another (restored, restarted): take its latest and
            # print what was not printed, rather than trust a cursor it may not share.
            batch = fetch(limit=MAX_EVENTS_PER_REQUEST)
            show(batch)
            cursor = max((e["cursor"] for e in batch), default=cursor)
            return
        while True:
            batch = fetch(limit=MAX_EVENTS_PER_REQUEST, after=cursor)
            show(batch)
            cursor = max((e["cursor"] for e in batch), default=cursor)
            if len(batch) < MAX_EVENTS_PER_REQUEST:
                return

    show(events, first=True)
    poll_until_stopped(hub, poll, interval=args.interval or DEFAULT_INTERVAL, timeout=args.timeout,
                       note=lambda text: say(text, err=True))


def cmd_node(hub: HubClient, args: argparse.Namespace) -> None:
    try:
        check_name(args.name, "node name")
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    answer = hub.act_on_node(args.name, args.action)
    if args.output in DATA_OUTPUTS:
        print_data(answer, args.output)
        return
    name = one_line(answer["node"])
    if args.action == "reset":
        say(f"node/{name} reset: its name is free, and the next join with it is accepted (as join generation "
            f"{one_line(answer['next_generation'])}); its {one_line(answer['assignments_kept'])} assignment(s) are "
            "kept for that node, and assignments sealed for an earlier join are refused by it")
    else:
        say(f"node/{name} revoked: its messages are ignored, its {one_line(answer['assignments_withheld'])} "
            f"assignment(s) are no longer published to it, and its name cannot join; free the name with: "
            f"edgectl node reset {name}")
    if answer.get("broker_refuses"):
        say(f"node/{name}: the broker has disconnected it and refuses it every topic until it joins again")


def cmd_credentials(hub: HubClient, args: argparse.Namespace) -> None:
    if args.action == "list":
        data = hub.credentials()
        if args.output in DATA_OUTPUTS:
            print_data(data, args.output)
        elif args.output == "wide":
            show_table([{**c, "created_at": timestamp(c.get("created_at"))} for c in data],
                       ["name", "role", "username", "created_at"])
        else:
            show_table(data, ["name", "role", "username"])
        return
    if args.action == "revoke":
        answer = hub.revoke_credential(args.name)
        if args.output in DATA_OUTPUTS:
            print_data(answer, args.output)
        else:
            say(f"credential/{one_line(answer['name'])} revoked: the broker disconnects and refuses it")
        return
    name = args.name or f"dashboard-{secrets.token_hex(3)}"
    try:
        check_name(name, "credential name")
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    out = (args.out or Path(name)).resolve()
    if out.exists() and any(out.iterdir()):
        raise CommandError(f"{out} exists and is not empty; name another with --out")
    key, csr = client_key_and_csr(f"dashboard.{name}")
    answer = hub.create_credential(role=args.role, name=name, csr=csr)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(out / "client.key", key)
    (out / "client.crt").write_text(answer["certificate"])
    (out / "ca.crt").write_text(answer["ca_certificate"])
    if args.output in DATA_OUTPUTS:
        print_data({k: v for k, v in answer.items() if k not in ("certificate", "ca_certificate")}
                   | {"directory": str(out)}, args.output)
        return
    say(f"credential/{one_line(answer['name'])} created: MQTT user {one_line(answer['username'])}, "
        f"role {one_line(answer['role'])}, may read {', '.join(one_line(t) for t in answer['topics'])}")
    say(f"files: {out}/client.key (keep it private), {out}/client.crt, {out}/ca.crt")
    address = BrokerAddress.parse(answer["mqtt_url"])
    say(f"try: mosquitto_sub -h {address.host} -p {address.port} --cafile {out}/ca.crt --cert {out}/client.crt "
        f"--key {out}/client.key -t '{one_line(answer['topics'][0])}' -v")


def client_key_and_csr(common_name: str) -> tuple[bytes, str]:
    """A new ECDSA P-256 key (every MQTT client library takes it) and a CSR for ``common_name``."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, csr.public_bytes(serialization.Encoding.PEM).decode()


COMMANDS: dict[str, Callable[[HubClient, argparse.Namespace], None]] = {
    "token": cmd_token, "apply": cmd_apply, "get": cmd_get, "events": cmd_events, "describe": cmd_describe,
    "delete": cmd_delete, "history": cmd_history, "rollback": cmd_rollback, "rollout": cmd_rollout,
    "node": cmd_node, "credentials": cmd_credentials}


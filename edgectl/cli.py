"""``edgectl``: tokens, components, nodes and pools, from the command line.

``edgectl node reset NAME`` frees a node's name for the next join (its
assignments are kept for the node that joins); ``edgectl node revoke NAME``
refuses the node until it is reset.

The hub URL comes from ``--hub`` or the ``EDGECOLLAB_HUB`` environment variable.
A hub served over HTTPS (the default off loopback) has a certificate from its
own CA: ``--ca-file`` or ``EDGECOLLAB_CA_FILE`` names that CA's certificate
(``STATE/hub-ca.crt`` on the hub), and nothing else is trusted for it.
The operator token comes from ``--token``, else ``EDGECOLLAB_TOKEN``, else the
file ``EDGECOLLAB_TOKEN_FILE`` names (the hub writes it to ``STATE/admin-token``);
prefer the file: a flag's value shows in the process list.
Every ``get`` and ``describe`` takes ``-o json`` for scripts.

Whatever came from the hub (names, status messages, events, notes) can hold
what a node or chart author wrote: everything printed goes through ``say``,
which strips terminal control characters and escape sequences, and table
cells are kept to one line, so no answer can rewrite the operator's terminal
or forge rows.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgekit.files import write_atomic
from edgekit.http import HttpError, JsonHttpClient, tls_context
from edgekit.mqtt import BrokerAddress
from edgekit.table import format_table
from edgeprotocol.errors import EdgeError
from edgeprotocol.topics import check_name

DEFAULT_HUB = "http://127.0.0.1:8470"
TOKEN_ENV = "EDGECOLLAB_TOKEN"
TOKEN_FILE_ENV = "EDGECOLLAB_TOKEN_FILE"
CA_FILE_ENV = "EDGECOLLAB_CA_FILE"
NO_TOKEN = ("the hub wants an operator token: pass --token, or set EDGECOLLAB_TOKEN or EDGECOLLAB_TOKEN_FILE "
            "(the hub writes it to STATE/admin-token)")
# Terminal escape sequences: CSI (ESC [ or C1 CSI), OSC (ESC ] or C1 OSC, up
# to BEL or ST), DCS/SOS/PM/APC strings up to ST, and any other ESC sequence.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|(?:\x1b[PX^_]|[\x90\x98\x9e\x9f])[^\x1b\x9c]*(?:\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
# C0 but newline and tab, DEL, and C1.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class CommandError(EdgeError):
    """A command that cannot run here; the message says why and what to do."""


def duration(text: str) -> float:
    """Parse ``90s``, ``15m``, ``1h`` or ``2d`` (plain numbers are seconds)."""
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must look like 90s, 15m, 1h or 2d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _component_ref(name: str, namespace: str) -> tuple[str, str]:
    if "/" in name:
        ns, _, name = name.partition("/")
        return ns, name
    return namespace, name


def sanitize(text: Any) -> str:
    """``text`` as a string fit for a terminal: escape sequences and control characters but newline and tab removed."""
    return _CONTROLS.sub("", _ESCAPES.sub("", str(text)))


def one_line(value: Any) -> str:
    """``value`` sanitized for a table cell or a one-line field: newlines and tabs become spaces."""
    return sanitize("" if value is None else value).replace("\n", " ").replace("\t", " ")


def say(text: Any, *, err: bool = False) -> None:
    """Print ``text`` sanitized: every line edgectl prints goes through here."""
    print(sanitize(text), file=sys.stderr if err else sys.stdout)


def show_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    say(format_table([{c: one_line(row.get(c)) for c in columns} for row in rows], columns))


def operator_token(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The operator token and where it came from: ``--token``, else $EDGECOLLAB_TOKEN, else the file
    $EDGECOLLAB_TOKEN_FILE names; (None, "") when none is set."""
    if args.token:
        return args.token.strip(), "--token"
    if environ.get(TOKEN_ENV, "").strip():
        return environ[TOKEN_ENV].strip(), TOKEN_ENV
    if environ.get(TOKEN_FILE_ENV):
        path = Path(environ[TOKEN_FILE_ENV]).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"{TOKEN_FILE_ENV} names {path}, which cannot be read: {exc}") from exc
        if not token:
            raise CommandError(f"{TOKEN_FILE_ENV} names {path}, which is empty")
        return token, f"the file {path} ({TOKEN_FILE_ENV})"
    return None, ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgectl", description="Command line for an edgecollab hub.")
    parser.add_argument("--hub", default=os.environ.get("EDGECOLLAB_HUB", DEFAULT_HUB),
                        help="hub URL (default: $EDGECOLLAB_HUB or %(default)s)")
    parser.add_argument("--token", help=f"operator token (default: ${TOKEN_ENV}, else the file ${TOKEN_FILE_ENV} "
                                        "names; the hub writes it to STATE/admin-token)")
    parser.add_argument("--ca-file", type=Path, default=os.environ.get(CA_FILE_ENV) or None,
                        help=f"the hub CA's certificate, trusted for an https:// hub (default: ${CA_FILE_ENV}; "
                             "the hub writes it to STATE/hub-ca.crt)")
    sub = parser.add_subparsers(dest="command", required=True)

    token = sub.add_parser("token", help="bootstrap tokens").add_subparsers(dest="action", required=True)
    create = token.add_parser("create", help="create a join token for a pool and print it")
    create.add_argument("--pool", required=True)
    create.add_argument("--ttl", type=duration, help="lifetime, e.g. 15m or 1h (hub default: 1h)")
    create.add_argument("--uses", type=int, help="how many nodes may join with it (hub default: 1)")
    create.add_argument("-o", "--output", choices=["text", "json"], default="text")

    apply = sub.add_parser("apply", help="apply a component spec")
    apply.add_argument("-f", "--filename", type=Path, required=True)
    apply.add_argument("-o", "--output", choices=["text", "json"], default="text")

    get = sub.add_parser("get", help="list nodes, pools or components")
    get.add_argument("kind", choices=["nodes", "pools", "components", "node", "pool", "component"])
    get.add_argument("-o", "--output", choices=["table", "json"], default="table")

    describe = sub.add_parser("describe", help="show one component with its per-node status")
    describe.add_argument("kind", choices=["component", "node"])
    describe.add_argument("name", help="NAME or NAMESPACE/NAME")
    describe.add_argument("-n", "--namespace", default="default")
    describe.add_argument("-o", "--output", choices=["text", "json"], default="text")

    delete = sub.add_parser("delete", help="delete a component from every node")
    delete.add_argument("kind", choices=["component"])
    delete.add_argument("name", help="NAME or NAMESPACE/NAME")
    delete.add_argument("-n", "--namespace", default="default")
    delete.add_argument("-o", "--output", choices=["text", "json"], default="text")

    node = sub.add_parser("node", help="a node's identity: free its name, or refuse it").add_subparsers(
        dest="action", required=True)
    reset = node.add_parser("reset", help="free the node's name: the next join with it is accepted and gets "
                                          "the node's releases")
    revoke = node.add_parser("revoke", help="refuse the node (its messages, its re-join) until it is reset")
    for action in (reset, revoke):
        action.add_argument("name", help="the node's name")
        action.add_argument("-o", "--output", choices=["text", "json"], default="text")

    credentials = sub.add_parser("credentials", help="broker credentials for MQTT dashboards").add_subparsers(
        dest="action", required=True)
    cred_create = credentials.add_parser(
        "create", help="make a key here and get it a certificate the broker takes (role dashboard: read-only "
                       "summaries)")
    cred_create.add_argument("--role", required=True, choices=["dashboard"])
    cred_create.add_argument("--name", help="a name for it, e.g. grafana (default: dashboard-<random>)")
    cred_create.add_argument("--out", type=Path, help="directory for client.key, client.crt and ca.crt "
                                                      "(default: ./NAME)")
    cred_create.add_argument("-o", "--output", choices=["text", "json"], default="text")
    cred_list = credentials.add_parser("list", help="credentials the hub issued")
    cred_list.add_argument("-o", "--output", choices=["table", "json"], default="table")
    cred_revoke = credentials.add_parser("revoke", help="revoke one: the broker disconnects and refuses it")
    cred_revoke.add_argument("name")
    cred_revoke.add_argument("-o", "--output", choices=["text", "json"], default="text")
    return parser


def _print_json(data: Any) -> None:
    # json.dumps escapes control characters already; say() keeps the one path.
    say(json.dumps(data, indent=2, sort_keys=True))


def cmd_token(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"pool": args.pool}
    if args.ttl is not None:
        body["ttl_seconds"] = args.ttl
    if args.uses is not None:
        body["uses"] = args.uses
    answer = hub.post("/api/v1/tokens", body)
    if args.output == "json":
        _print_json(answer)
    else:
        say(one_line(answer["token"]))


def cmd_apply(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    # Only apply needs the Helm engine (to package a local chart), so only apply imports it.
    try:
        from deployer_plugin import load_component_file  # noqa: PLC0415
    except ImportError as exc:
        raise CommandError(
            f"apply packages the chart with the Helm engine, which cannot be imported here ({exc}); "
            "install it with: pip install 'edgecollab[hub]'") from exc

    component, archive = load_component_file(args.filename)
    answer = hub.post(
        "/api/v1/components",
        {"component": component.to_document(), "chart_archive": base64.b64encode(archive).decode()},
    )
    if args.output == "json":
        _print_json(answer)
        return
    verb = "configured" if answer["changed"] else "unchanged"
    say(f"component/{one_line(answer['component'])} {verb} (revision {one_line(answer['revision'])}"
        + (f", {one_line(answer['targets'])} node(s))" if "targets" in answer else ")"))
    for warning in answer.get("warnings", []):
        say(f"warning: {one_line(warning)}", err=True)
    notes = notes_section(answer.get("notes") or "")
    if notes:
        say(notes)


def notes_section(notes: str) -> str:
    """The chart's rendered NOTES.txt as ``helm install`` prints it: ``NOTES:`` then the text; "" if it has none."""
    notes = notes.strip()
    return f"NOTES:\n{notes}" if notes else ""


def cmd_get(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    kind = args.kind.rstrip("s") + "s"
    data = hub.get(f"/api/v1/{kind}")
    if args.output == "json":
        _print_json(data)
    elif kind == "nodes":
        rows = [{**n, "releases": ", ".join(f"{r['namespace']}/{r['release']}@{r.get('applied_revision', 0)}:{r.get('phase', '?')}"
                                           for r in n["releases"]) or "-",
                 "labels": ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items())) or "-"}
                for n in data]
        rows = [{**r, "conditions": conditions_column(r["conditions"])} for r in rows]
        show_table(rows, ["name", "pool", "presence", "conditions", "last_seen", "labels", "releases"])
    elif kind == "pools":
        show_table(data, ["pool", "nodes", "online"])
    else:
        rows = [{**c, "component": f"{c['namespace']}/{c['name']}", "chart": f"{c['chart']['name']}-{c['chart']['version']}",
                 "ready": f"{c['deployed']}/{c['targets']}"} for c in data]
        show_table(rows, ["component", "revision", "chart", "ready"])
    if kind == "nodes":
        # What the operator should know about how the hub runs (an anonymous broker): on stderr, so
        # -o json stays parseable.
        for warning in hub.get("/healthz").get("warnings", []):
            say(f"warning: {one_line(warning)}", err=True)


def conditions_column(conditions: list[dict[str, str]]) -> str:
    """``Ready`` when every condition is True, else each other one as ``Type=Status(Reason)``; ``-`` if none."""
    if not conditions:
        return "-"
    unhealthy = [f"{c['type']}={c['status']}({c['reason']})" for c in conditions if c["status"] != "True"]
    return ",".join(unhealthy) or "Ready"


def cmd_describe(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    if args.kind == "node":
        data = hub.get(f"/api/v1/nodes/{args.name}")
        if args.output == "json":
            _print_json(data)
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
        show_table(data["releases"], ["namespace", "release", "applied_revision", "phase", "ready", "total", "message"])
        return
    namespace, name = _component_ref(args.name, args.namespace)
    data = hub.get(f"/api/v1/components/{namespace}/{name}")
    if args.output == "json":
        _print_json(data)
        return
    d, chart = {key: one_line(value) for key, value in data.items()}, {k: one_line(v) for k, v in data["chart"].items()}
    say(f"Component: {d['namespace']}/{d['name']}\nRevision:  {d['revision']}\n"
        f"Chart:     {chart['name']}-{chart['version']}\nReady:     {d['deployed']}/{d['targets']} node(s)")
    rows = [{**r, "ready": f"{r['ready']}/{r['total']}", "presence": r["presence"] + (" (stale)" if r.get("stale") else "")}
            for r in data["nodes"]]
    show_table(rows, ["node", "pool", "presence", "assigned_revision", "applied_revision", "phase", "ready", "message"])


def cmd_delete(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    namespace, name = _component_ref(args.name, args.namespace)
    answer = hub.delete(f"/api/v1/components/{namespace}/{name}")
    if args.output == "json":
        _print_json(answer)
    else:
        say(f"component/{one_line(answer['component'])} deleted (revision {one_line(answer['revision'])})")


def cmd_node(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    try:
        check_name(args.name, "node name")
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    answer = hub.post(f"/api/v1/nodes/{args.name}/{args.action}", {})
    if args.output == "json":
        _print_json(answer)
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


def cmd_credentials(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    if args.action == "list":
        data = hub.get("/api/v1/credentials")
        if args.output == "json":
            _print_json(data)
        else:
            show_table(data, ["name", "role", "username"])
        return
    if args.action == "revoke":
        answer = hub.delete(f"/api/v1/credentials/{args.name}")
        if args.output == "json":
            _print_json(answer)
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
    answer = hub.post("/api/v1/credentials", {"role": args.role, "name": name, "csr": csr})
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(out / "client.key", key)
    (out / "client.crt").write_text(answer["certificate"])
    (out / "ca.crt").write_text(answer["ca_certificate"])
    if args.output == "json":
        _print_json({k: v for k, v in answer.items() if k not in ("certificate", "ca_certificate")}
                    | {"directory": str(out)})
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



COMMANDS = {"token": cmd_token, "apply": cmd_apply, "get": cmd_get, "describe": cmd_describe, "delete": cmd_delete,
            "node": cmd_node, "credentials": cmd_credentials}


def hub_client(args: argparse.Namespace, token: str | None) -> JsonHttpClient:
    """The client of the hub ``--hub`` names: for https://, trusting the CA ``--ca-file`` names (else the system's)."""
    context = None
    if args.ca_file is not None:
        path = Path(args.ca_file).expanduser()
        try:
            context = tls_context(ca_file=path)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise CommandError(f"the CA file {path} (--ca-file or {CA_FILE_ENV}) cannot be used: {exc}") from exc
    return JsonHttpClient(args.hub, token=token, ssl_context=context)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        token, source = operator_token(args, os.environ)
        try:
            COMMANDS[args.command](hub_client(args, token), args)
        except HttpError as exc:
            if exc.certificate_error:
                hint = ("is --ca-file the hub's STATE/hub-ca.crt?" if args.ca_file is not None
                        else f"pass --ca-file or set {CA_FILE_ENV} to the hub's CA certificate (STATE/hub-ca.crt)")
                raise CommandError(f"{exc}; {hint}") from exc
            if exc.status != 401:
                raise
            if token is None:
                raise CommandError(NO_TOKEN) from exc
            raise CommandError(f"the hub refused the operator token from {source}: {exc}") from exc
    except (EdgeError, HttpError) as exc:
        say(f"edgectl: {exc}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

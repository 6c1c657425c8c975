"""``edgectl``: tokens, components, nodes and pools, from the command line.

``edgectl history NAMESPACE/NAME`` lists a component's kept revisions (status,
chart, origin); ``edgectl rollback NAMESPACE/NAME [--to-revision N]`` makes a
new revision from an earlier one, as ``helm rollback`` does.

``edgectl node reset NAME`` frees a node's name for the next join (its
assignments are kept for the node that joins); ``edgectl node revoke NAME``
refuses the node until it is reset.

``edgectl describe hub`` lists every certificate in the chain (the hub's CA,
the broker's, the hub's own, each node's) with its end, days left and what
renews it, then the hub's warnings.

The hub URL comes from ``--hub`` or the ``EDGECOLLAB_HUB`` environment variable.
A hub served over HTTPS (the default off loopback) has a certificate from its
own CA: ``--ca-file`` or ``EDGECOLLAB_CA_FILE`` names that CA's certificate
(``STATE/hub-ca.crt`` on the hub), and nothing else is trusted for it.
The operator token comes from ``--token``, else ``EDGECOLLAB_TOKEN``, else the
file ``EDGECOLLAB_TOKEN_FILE`` names (the hub writes it to ``STATE/admin-token``);
prefer the file: a flag's value shows in the process list.

Output (``-o``): ``get``, ``events`` and ``credentials list`` print a table
(``-o table``, the default), ``-o wide`` (more columns), ``-o json`` or
``-o yaml``; ``describe`` prints text (``-o wide``: its tables with more
columns), ``-o json`` or ``-o yaml``; the commands that change something print
a line of text, ``-o json`` or ``-o yaml``.

``edgectl get nodes|pools|components -w`` prints the list, then polls the hub
(``--interval``, default 2 s) and prints only rows that changed: a new or
changed row again, a row that went away with ``<deleted>`` in its PRESENCE
(nodes), NODES (pools) or READY (components) column; with ``-o json`` one JSON
object a line, ``{"type": "ADDED"|"MODIFIED"|"DELETED", "object": {...}}``
(the list first, as ADDED), with ``-o yaml`` one such document each. ``edgectl
events [--node N] [--limit N]`` lists nodes' events in the order they reached
the hub; ``--follow`` then prints new ones as they arrive (``-o json``: one
event a line). A watch or follow runs until Ctrl-C or ``--timeout`` (both
exit 0); a hub that cannot be reached meanwhile is said once on stderr and
polled on until it answers, which is said too (one that cannot be reached at
the start ends it at once with 3, as any command). Any other error the hub
answers ends it with that error's code.

Exit codes (scripts can rely on them; ``edgectl --help`` lists them):

    0    success; a watch or follow ended by Ctrl-C or --timeout
    1    the hub answered with an error or refused the request (4xx but 404, 5xx),
         or edgectl could not do what was asked here (no operator token, a file it cannot read)
    2    usage: an unknown command, flag or value (argparse says which)
    3    the hub could not be reached: connection refused, no answer in time, a name that does not resolve
    4    not found: the hub answered 404 (no such node, component or credential)
       rollout status: 0 the rollout completed; 1 it failed, was rolled back, or --timeout passed first
    130  interrupted by Ctrl-C (but a watch or follow, which ends with 0)

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
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgectl.follow import DEFAULT_INTERVAL, MAX_INTERVAL, MIN_INTERVAL, poll_until_stopped
from edgekit.files import write_atomic
from edgekit.http import HttpError, JsonHttpClient, Unreachable, tls_context
from edgekit.mqtt import BrokerAddress
from edgekit.table import format_table
from edgeprotocol.errors import EdgeError, ProtocolError
from edgeprotocol.health import describe as describe_container
from edgeprotocol.messages import PodStatus
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

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_CODES = """exit codes:
  0    success; a watch (get -w) or follow (events --follow) ended by Ctrl-C or --timeout
  1    the hub answered with an error or refused the request (4xx but 404, 5xx), or edgectl
       could not do what was asked here (no operator token, a file it cannot read)
  2    usage: an unknown command, flag or value
  3    the hub could not be reached: connection refused, no answer in time, a name that does not resolve
  4    not found: the hub answered 404 (no such node, component or credential)
  130  interrupted by Ctrl-C (but a watch or follow, which ends with 0)
"""
# -o: lists print a table, single objects text; json and yaml print the hub's answer as it is.
LIST_OUTPUTS = ["table", "wide", "json", "yaml"]
TEXT_OUTPUTS = ["text", "json", "yaml"]
DESCRIBE_OUTPUTS = ["text", "wide", "json", "yaml"]
DATA_OUTPUTS = ("json", "yaml")
# A watched row that went away is printed once more with this in one column.
DELETED = "<deleted>"
DELETED_COLUMN = {"nodes": "presence", "pools": "nodes", "components": "ready"}
# events --limit: the hub answers at most this many a request.
MAX_EVENTS = 1000
# events --follow remembers this many events it printed, to print none twice.
FOLLOW_MEMORY = 20_000


class CommandError(EdgeError):
    """A command that cannot run here; the message says why and what to do."""


def duration(text: str) -> float:
    """Parse ``90s``, ``15m``, ``1h`` or ``2d`` (plain numbers are seconds)."""
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must look like 90s, 15m, 1h or 2d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def interval(text: str) -> float:
    """A polling interval: a duration from MIN_INTERVAL to MAX_INTERVAL seconds."""
    seconds = duration(text)
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        raise argparse.ArgumentTypeError(f"interval {text!r} must be from {MIN_INTERVAL:g} s to {MAX_INTERVAL:g} s")
    return seconds


def _whole_number(text: str, what: str, *, low: int, high: int | None = None) -> int:
    """``text`` as an integer from ``low`` (to ``high``); a usage error naming ``what`` otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        bound = f"an integer from {low} to {high}" if high is not None else f"a whole number from {low}"
        raise argparse.ArgumentTypeError(f"{what} {text!r} must be {bound}")
    return value


def events_limit(text: str) -> int:
    return _whole_number(text, "limit", low=1, high=MAX_EVENTS)


def revision_number(text: str) -> int:
    return _whole_number(text, "revision", low=1)


def hub_url(text: str) -> str:
    """The hub's base URL: http:// or https:// and a host (a typo fails as usage, not as a traceback)."""
    try:
        parts = urllib.parse.urlsplit(text.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"hub URL {text!r} is not a URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"hub URL {text!r} must look like http://HOST:PORT")
    return text.strip()


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
    """Print ``text`` sanitized: every line edgectl prints goes through here. Flushed, so a watch
    piped to another command shows each change when it happens."""
    print(sanitize(text), file=sys.stderr if err else sys.stdout, flush=True)


def show_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
               under: Sequence[Sequence[str]] = ()) -> None:
    """A table of ``rows``; ``under``: for each row, lines printed indented below it (each one line)."""
    header, *lines = format_table([{c: one_line(row.get(c)) for c in columns} for row in rows], columns).split("\n")
    for i, line in enumerate(lines):
        header += "\n" + line + "".join(f"\n    {one_line(text)}" for text in (under[i] if i < len(under) else ()))
    say(header)


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


def _add_polling(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--interval", type=interval, metavar="SECONDS",
                        help=f"seconds between two polls of {what}, e.g. 2 or 0.5 ({MIN_INTERVAL:g} to "
                             f"{MAX_INTERVAL:g}; default: {DEFAULT_INTERVAL:g})")
    parser.add_argument("--timeout", type=duration, metavar="SECONDS",
                        help=f"end {what} after this long, with exit code 0, e.g. 30s or 5m (default: until Ctrl-C)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgectl", description="Command line for an edgecollab hub.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hub", type=hub_url, default=os.environ.get("EDGECOLLAB_HUB", DEFAULT_HUB),
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
    create.add_argument("-o", "--output", choices=TEXT_OUTPUTS, default="text")

    apply = sub.add_parser("apply", help="apply a component spec")
    apply.add_argument("-f", "--filename", type=Path, required=True)
    apply.add_argument("-o", "--output", choices=TEXT_OUTPUTS, default="text")

    get = sub.add_parser("get", help="list nodes, pools or components (-w: and watch them)",
                         epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    get.add_argument("kind", choices=["nodes", "pools", "components", "node", "pool", "component"])
    get.add_argument("-o", "--output", choices=LIST_OUTPUTS, default="table",
                     help="table (default), wide (more columns), json or yaml; with -w, json prints one "
                          'object a line: {"type": "ADDED"|"MODIFIED"|"DELETED", "object": ...}')
    get.add_argument("-w", "--watch", action="store_true",
                     help="after the list, poll the hub and print each row that changes, appears or goes away")
    _add_polling(get, "-w")
    get.set_defaults(polling_parser=get)

    events = sub.add_parser("events", help="nodes' events, in the order they reached the hub (-f: and follow)",
                            epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    events.add_argument("--node", help="one node's events only (default: every node's)")
    events.add_argument("--limit", type=events_limit, default=100,
                        help=f"show at most this many of the latest (1 to {MAX_EVENTS}, default: %(default)s)")
    events.add_argument("-f", "--follow", action="store_true", help="then print new events as they arrive")
    events.add_argument("-o", "--output", choices=LIST_OUTPUTS, default="table",
                        help="table (default), wide (more columns), json or yaml; with --follow, json prints "
                             "one event a line")
    _add_polling(events, "--follow")
    events.set_defaults(polling_parser=events)

    describe = sub.add_parser("describe", help="show one component or node, or the hub (its certificates and "
                                                "when each ends)")
    describe.add_argument("kind", choices=["component", "node", "hub"])
    describe.add_argument("name", nargs="?", help="NAME or NAMESPACE/NAME (none for the hub)")
    describe.add_argument("-n", "--namespace", default="default")
    describe.add_argument("-o", "--output", choices=DESCRIBE_OUTPUTS, default="text",
                          help="text (default), wide (more columns in its tables), json or yaml")
    describe.set_defaults(describe_parser=describe)

    delete = sub.add_parser("delete", help="delete a component from every node")
    delete.add_argument("kind", choices=["component"])
    delete.add_argument("name", help="NAME or NAMESPACE/NAME")
    delete.add_argument("-n", "--namespace", default="default")
    delete.add_argument("-o", "--output", choices=TEXT_OUTPUTS, default="text")

    history = sub.add_parser("history", help="a component's revisions, newest first, with their status",
                             epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    history.add_argument("name", help="NAME or NAMESPACE/NAME")
    history.add_argument("-n", "--namespace", default="default")
    history.add_argument("-o", "--output", choices=LIST_OUTPUTS, default="table",
                         help="table (default), wide (the chart's digest and the values' digests too), json or yaml")

    rollback = sub.add_parser("rollback", help="make a new revision from an earlier one (as helm rollback)",
                              epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    rollback.add_argument("name", help="NAME or NAMESPACE/NAME")
    rollback.add_argument("-n", "--namespace", default="default")
    rollback.add_argument("--to-revision", type=revision_number, metavar="N",
                          help="the revision to go back to (default: the one before the current)")
    rollback.add_argument("-o", "--output", choices=TEXT_OUTPUTS, default="text")

    rollout = sub.add_parser("rollout", help="a component's staged rollout: follow it, pause it, resume it",
                             epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    rollout_actions = rollout.add_subparsers(dest="action", required=True)
    status = rollout_actions.add_parser(
        "status", help="follow the rollout until it settles: exit 0 when complete, 1 when it failed or was "
                       "rolled back", epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    pause = rollout_actions.add_parser("pause", help="start no new batch; what is assigned stays")
    resume = rollout_actions.add_parser("resume", help="a paused rollout goes on")
    for action in (status, pause, resume):
        action.add_argument("name", help="NAME or NAMESPACE/NAME")
        action.add_argument("-n", "--namespace", default="default")
    status.add_argument("-o", "--output", choices=TEXT_OUTPUTS, default="text",
                        help="text (default): a line per change; json or yaml: the final state")
    status.add_argument("--interval", type=interval, metavar="SECONDS",
                        help=f"seconds between two polls ({MIN_INTERVAL:g} to {MAX_INTERVAL:g}; default: 1)")
    status.add_argument("--timeout", type=duration, metavar="SECONDS",
                        help="give up after this long, with exit code 1, e.g. 5m (default: wait until it settles)")
    for action in (pause, resume):
        action.add_argument("-o", "--output", choices=TEXT_OUTPUTS, default="text")

    node = sub.add_parser("node", help="a node's identity: free its name, or refuse it").add_subparsers(
        dest="action", required=True)
    reset = node.add_parser("reset", help="free the node's name: the next join with it is accepted and gets "
                                          "the node's releases")
    revoke = node.add_parser("revoke", help="refuse the node (its messages, its re-join) until it is reset")
    for action in (reset, revoke):
        action.add_argument("name", help="the node's name")
        action.add_argument("-o", "--output", choices=TEXT_OUTPUTS, default="text")

    credentials = sub.add_parser("credentials", help="broker credentials for MQTT dashboards").add_subparsers(
        dest="action", required=True)
    cred_create = credentials.add_parser(
        "create", help="make a key here and get it a certificate the broker takes (role dashboard: read-only "
                       "summaries)")
    cred_create.add_argument("--role", required=True, choices=["dashboard"])
    cred_create.add_argument("--name", help="a name for it, e.g. grafana (default: dashboard-<random>)")
    cred_create.add_argument("--out", type=Path, help="directory for client.key, client.crt and ca.crt "
                                                      "(default: ./NAME)")
    cred_create.add_argument("-o", "--output", choices=TEXT_OUTPUTS, default="text")
    cred_list = credentials.add_parser("list", help="credentials the hub issued")
    cred_list.add_argument("-o", "--output", choices=LIST_OUTPUTS, default="table")
    cred_revoke = credentials.add_parser("revoke", help="revoke one: the broker disconnects and refuses it")
    cred_revoke.add_argument("name")
    cred_revoke.add_argument("-o", "--output", choices=TEXT_OUTPUTS, default="text")
    return parser


def streaming(args: argparse.Namespace) -> bool:
    """Whether the command watches or follows (Ctrl-C then ends it with exit code 0)."""
    return bool(getattr(args, "watch", False) or getattr(args, "follow", False))


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse cannot say: a component or node to describe needs its name; --interval and --timeout
    mean something only with -w or --follow."""
    if args.command == "describe" and args.kind != "hub" and not args.name:
        args.describe_parser.error(f"describe {args.kind} needs the {args.kind}'s name")
    if args.command == "rollout" or (getattr(args, "interval", None) is None
                                     and getattr(args, "timeout", None) is None):
        return
    if not streaming(args):
        flag = "-w/--watch" if args.command == "get" else "-f/--follow"
        getattr(args, "polling_parser", parser).error(f"--interval and --timeout apply only with {flag}")


def _print_json(data: Any) -> None:
    # json.dumps escapes control characters already; say() keeps the one path.
    say(json.dumps(data, indent=2, sort_keys=True))


def to_yaml(data: Any) -> str:
    """``data`` as block-style YAML that ``yaml.safe_load`` reads back as the same data. Without
    allow_unicode every character that is not printable ASCII is escaped (as json.dumps does)."""
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=True).rstrip("\n")


def print_data(data: Any, output: str) -> None:
    """The hub's answer as it is, for -o json or -o yaml."""
    if output == "yaml":
        say(to_yaml(data))
    else:
        _print_json(data)


class RowPrinter:
    """A table printed a few rows at a time (a watch): columns stay as wide as the widest cell so far,
    so later rows line up under the header. The first print is what ``show_table`` prints."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self.header = [c.upper().replace("_", " ") for c in columns]
        self.widths = [len(h) for h in self.header]

    def cells(self, row: Mapping[str, Any]) -> list[str]:
        return [one_line(row.get(c)) for c in self.columns]

    def print(self, rows: Sequence[list[str]], *, header: bool = False) -> None:
        for cells in rows:
            self.widths = [max(w, len(c)) for w, c in zip(self.widths, cells, strict=True)]
        lines = ([self.header] if header else []) + list(rows)
        for cells in lines:
            say("  ".join(c.ljust(w) for c, w in zip(cells, self.widths, strict=True)).rstrip())


def cmd_token(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"pool": args.pool}
    if args.ttl is not None:
        body["ttl_seconds"] = args.ttl
    if args.uses is not None:
        body["uses"] = args.uses
    answer = hub.post("/api/v1/tokens", body)
    if args.output in DATA_OUTPUTS:
        print_data(answer, args.output)
    else:
        say(one_line(answer["token"]))


def cmd_apply(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    # Only apply needs the Helm engine (to package a local chart), so only apply imports it. A chart from a
    # repository or a registry is the hub's to fetch: nothing is sent but the spec.
    try:
        from deployer_plugin import load_component_file
    except ImportError as exc:
        raise CommandError(
            f"apply packages the chart with the Helm engine, which cannot be imported here ({exc}); "
            "install it with: pip install 'edgecollab[hub]'") from exc

    component, archive = load_component_file(args.filename)
    body: dict[str, Any] = {"component": component.to_document(), "client": "edgectl"}
    if archive is not None:
        body["chart_archive"] = base64.b64encode(archive).decode()
    # else spec.chart names a chart repository or an OCI reference: the hub fetches the chart itself.
    answer = hub.post("/api/v1/components", body)
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


def notes_section(notes: str) -> str:
    """The chart's rendered NOTES.txt as ``helm install`` prints it: ``NOTES:`` then the text; "" if it has none."""
    notes = notes.strip()
    return f"NOTES:\n{notes}" if notes else ""


def cmd_get(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    kind = args.kind.rstrip("s") + "s"
    data = hub.get(f"/api/v1/{kind}")
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
        for warning in hub.get("/healthz").get("warnings", []):
            say(f"warning: {one_line(warning)}", err=True)
    if watch is not None:
        poll_until_stopped(hub, lambda resumed: watch.show(hub.get(f"/api/v1/{kind}")),
                           interval=args.interval or DEFAULT_INTERVAL, timeout=args.timeout,
                           note=lambda text: say(text, err=True))


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


def cmd_describe(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    wide = args.output == "wide"
    if args.kind == "hub":
        describe_hub(hub.get("/api/v1/hub"), args.output)
        return
    if args.kind == "node":
        data = hub.get(f"/api/v1/nodes/{args.name}")
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
    data = hub.get(f"/api/v1/components/{namespace}/{name}")
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


def cmd_delete(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    namespace, name = _component_ref(args.name, args.namespace)
    answer = hub.delete(f"/api/v1/components/{namespace}/{name}")
    if args.output in DATA_OUTPUTS:
        print_data(answer, args.output)
    else:
        say(f"component/{one_line(answer['component'])} deleted (revision {one_line(answer['revision'])})")


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


def cmd_history(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    namespace, name = _component_ref(args.name, args.namespace)
    data = hub.get(f"/api/v1/components/{namespace}/{name}/history")
    if args.output in DATA_OUTPUTS:
        print_data(data, args.output)
    else:
        show_table(history_rows(data), HISTORY_WIDE_COLUMNS if args.output == "wide" else HISTORY_COLUMNS)


def cmd_rollback(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    namespace, name = _component_ref(args.name, args.namespace)
    body = {} if args.to_revision is None else {"to_revision": args.to_revision}
    answer = hub.post(f"/api/v1/components/{namespace}/{name}/rollback", body)
    if args.output in DATA_OUTPUTS:
        print_data(answer, args.output)
        return
    say(f"component/{one_line(answer['component'])} rolled back to revision {one_line(answer['rolled_back_to'])} "
        f"(now revision {one_line(answer['revision'])}, {one_line(answer['targets'])} node(s))")
    for warning in answer.get("warnings", []):
        say(f"warning: {one_line(warning)}", err=True)


class _Settled(Exception):
    """The followed rollout settled (or gave up): ends the polling."""


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


def cmd_rollout(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    namespace, name = _component_ref(args.name, args.namespace)
    path = f"/api/v1/components/{namespace}/{name}/rollout"
    if args.action in ("pause", "resume"):
        data = hub.post(f"{path}/{args.action}", {})
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
        data = hub.get(path)
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


def timestamp(seconds: Any) -> str:
    """A Unix time from the hub as UTC ISO 8601; ``-`` if there is none."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "-"
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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


def cmd_events(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    where = {"node": args.node} if args.node else {}

    def fetch(**query: Any) -> list[dict[str, Any]]:
        return hub.get("/api/v1/events?" + urllib.parse.urlencode({**where, **query}))

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
            batch = fetch(limit=MAX_EVENTS)
            show(batch)
            cursor = max((e["cursor"] for e in batch), default=cursor)
            return
        while True:
            batch = fetch(limit=MAX_EVENTS, after=cursor)
            show(batch)
            cursor = max((e["cursor"] for e in batch), default=cursor)
            if len(batch) < MAX_EVENTS:
                return

    show(events, first=True)
    poll_until_stopped(hub, poll, interval=args.interval or DEFAULT_INTERVAL, timeout=args.timeout,
                       note=lambda text: say(text, err=True))


def cmd_node(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    try:
        check_name(args.name, "node name")
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    answer = hub.post(f"/api/v1/nodes/{args.name}/{args.action}", {})
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


def cmd_credentials(hub: JsonHttpClient, args: argparse.Namespace) -> None:
    if args.action == "list":
        data = hub.get("/api/v1/credentials")
        if args.output in DATA_OUTPUTS:
            print_data(data, args.output)
        elif args.output == "wide":
            show_table([{**c, "created_at": timestamp(c.get("created_at"))} for c in data],
                       ["name", "role", "username", "created_at"])
        else:
            show_table(data, ["name", "role", "username"])
        return
    if args.action == "revoke":
        answer = hub.delete(f"/api/v1/credentials/{args.name}")
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
    answer = hub.post("/api/v1/credentials", {"role": args.role, "name": name, "csr": csr})
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



COMMANDS = {"token": cmd_token, "apply": cmd_apply, "get": cmd_get, "events": cmd_events, "describe": cmd_describe,
            "delete": cmd_delete, "history": cmd_history, "rollback": cmd_rollback, "rollout": cmd_rollout,
            "node": cmd_node,
            "credentials": cmd_credentials}


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
    """Run one command; the exit code is one of EXIT_CODES (argparse exits with 2 itself)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags(parser, args)
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
    except KeyboardInterrupt:
        return EXIT_OK if streaming(args) else EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (edgectl get nodes -w | head): nothing more to print, and nothing wrong.
        _quiet_stdout()
        return EXIT_OK
    except Unreachable as exc:
        say(f"edgectl: {exc}", err=True)
        return EXIT_UNREACHABLE
    except HttpError as exc:
        say(f"edgectl: {exc}", err=True)
        return EXIT_NOT_FOUND if exc.status == 404 else EXIT_FAILED
    except EdgeError as exc:
        say(f"edgectl: {exc}", err=True)
        return EXIT_FAILED
    return EXIT_OK


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail on the closed pipe too."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())

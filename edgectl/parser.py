"""``edgectl``'s command line: every command, flag and value, and what argparse cannot check itself.

A value that cannot be right (a duration, an interval, a hub URL, a limit) fails here as a usage
error (exit code 2) before the hub is asked anything.
"""

from __future__ import annotations

import argparse
import os
import re
import urllib.parse
from pathlib import Path

from edgeclient.hub import MAX_EVENTS_PER_REQUEST
from edgeclient.settings import CA_FILE_ENV, DEFAULT_HUB, HUB_ENV, TOKEN_ENV, TOKEN_FILE_ENV
from edgectl.follow import DEFAULT_INTERVAL, MAX_INTERVAL, MIN_INTERVAL
from edgectl.output import DESCRIBE_OUTPUTS, EXIT_CODES, LIST_OUTPUTS, TEXT_OUTPUTS

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


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
    return _whole_number(text, "limit", low=1, high=MAX_EVENTS_PER_REQUEST)


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



def _add_polling(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--interval", type=interval, metavar="SECONDS",
                        help=f"seconds between two polls of {what}, e.g. 2 or 0.5 ({MIN_INTERVAL:g} to "
                             f"{MAX_INTERVAL:g}; default: {DEFAULT_INTERVAL:g})")
    parser.add_argument("--timeout", type=duration, metavar="SECONDS",
                        help=f"end {what} after this long, with exit code 0, e.g. 30s or 5m (default: until Ctrl-C)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgectl", description="Command line for an edgecollab hub.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hub", type=hub_url, default=os.environ.get(HUB_ENV, DEFAULT_HUB),
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
                        help=f"show at most this many of the latest (1 to {MAX_EVENTS_PER_REQUEST}, "
                             "default: %(default)s)")
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

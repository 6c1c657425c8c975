"""``edgehub ca status`` and ``edgehub ca rotate begin|switch|finish``: the CA rotation, from the hub's machine.

Both ask the hub running on ``--state`` (``edgehub.ca_rotation`` says why the
running hub takes the steps): they find it through ``STATE/hub-api.json``,
which ``edgehub serve`` writes when it starts listening, and use its operator
token (``STATE/admin-token``) and, over HTTPS, its CAs (``STATE/hub-ca.crt``),
as ``edgectl`` would with ``EDGECOLLAB_TOKEN_FILE`` and ``--ca-file``.
``--hub URL`` names another address of it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgekit.files import write_atomic
from edgekit.http import HttpError, JsonHttpClient, tls_context
from edgekit.table import format_table

# In the state directory: where the running hub answers (written by ``edgehub serve``).
HUB_API_FILE = "hub-api.json"
# A step writes files, signals the broker and tells every node: a minute is plenty even for a large fleet.
STEP_TIMEOUT_SECONDS = 120.0


def add_parser(sub: Any) -> None:
    """``edgehub ca ...`` in the command's parser."""
    ca = sub.add_parser("ca", help="the hub's CAs: status, and rolling the CA over (edgehub ca rotate)")
    steps = ca.add_subparsers(dest="ca_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", type=Path, required=True, help="the state directory of the running hub")
    common.add_argument("--hub", metavar="URL", help="the hub's API (default: where the hub running on --state "
                                                     f"said it listens, STATE/{HUB_API_FILE})")
    common.add_argument("-o", "--output", choices=("text", "json"), default="text")
    steps.add_parser("status", parents=[common],
                     help="the CAs, which one issues, and how many nodes hold a certificate of each")
    rotate = steps.add_parser(
        "rotate", parents=[common],
        help="roll the CA over, one step at a time: begin (a new CA is trusted beside the old one), switch (the "
             "new one issues; nodes renew by themselves), finish (the old one is retired)")
    rotate.add_argument("step", nargs="?", choices=("begin", "switch", "finish"),
                        help="the step to take (none: the status, and which step is next)")
    rotate.add_argument("--force", action="store_true",
                        help="finish even while joined nodes hold certificates of the old CA: the broker refuses "
                             "them until they renew (agents of this version renew by themselves; older ones must "
                             "join again)")


def write_hub_api(state_dir: Path, url: str) -> None:
    """Say where this hub answers, for ``edgehub ca`` (owner-only, like the rest of the state directory)."""
    write_atomic(state_dir / HUB_API_FILE, json.dumps({"url": url, "pid": os.getpid()}) + "\n")


def local_url(scheme: str, host: str, port: int) -> str:
    """The URL a command on the hub's machine reaches it by: a wildcard listen address by loopback (the
    server certificate and the allowed hosts hold loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


class CaCommandError(Exception):
    """The command cannot reach or use the hub; the message says why and what to do."""


def _client(args: argparse.Namespace, timeout: float) -> JsonHttpClient:
    state: Path = args.state
    url = args.hub
    if url is None:
        path = state / HUB_API_FILE
        try:
            url = json.loads(path.read_text())["url"]
        except FileNotFoundError:
            raise CaCommandError(f"{path} is missing: is 'edgehub serve --state {state}' running? (or give --hub "
                                 "URL)") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CaCommandError(f"{path} cannot be read ({exc}); give --hub URL") from exc
    token_file = state / "admin-token"
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise CaCommandError(f"the hub's operator token {token_file} cannot be read ({exc.strerror or exc}): run "
                             "this as the hub's account, on its machine") from exc
    context = None
    if urlsplit(url).scheme == "https":
        context = tls_context(ca_file=state / "hub-ca.crt")
    return JsonHttpClient(url, timeout=timeout, token=token, ssl_context=context)


def run(args: argparse.Namespace) -> int:
    try:
        if args.ca_command == "status" or args.step is None:
            answer = _client(args, timeout=60.0).get("/api/v1/ca/rotation")
        else:
            answer = _client(args, timeout=STEP_TIMEOUT_SECONDS).post(
                "/api/v1/ca/rotation", {"step": args.step, "force": args.force})
    except CaCommandError as exc:
        print(f"edgehub: {exc}", file=sys.stderr)
        return 2
    except HttpError as exc:
        if exc.status:
            print(f"edgehub: the hub refused: {exc}", file=sys.stderr)
            return 1
        print(f"edgehub: {exc}; a CA rotation needs the hub running (is 'edgehub serve --state {args.state}' up?)",
              file=sys.stderr)
        return 3
    if args.ca_command == "rotate" and args.step is None:
        # A step is never taken unnamed: each changes what the whole fleet trusts.
        print(status_text(answer))
        print("edgehub: name the step to take: edgehub ca rotate begin|switch|finish --state "
              f"{args.state} ({answer['next']})", file=sys.stderr)
        return 2
    if args.output == "json":
        print(json.dumps(answer, indent=2))
        return 0
    for index, line in enumerate(answer.get("did", [])):
        print(line if index == 0 else f"  - {line}")
    print(status_text(answer))
    return 0


def status_text(status: dict[str, Any]) -> str:
    """The status as ``edgehub ca status`` prints it."""
    rows = [{"ca": ca["name"], "sha256": ca["sha256"][:16], "state": ca["state"],
             "issues": "yes" if ca.get("issuing") else "no",
             "not_after": ca.get("not_after") or f"(retired {ca.get('retired_at', '')[:10]})",
             "nodes": ca.get("nodes")} for ca in status["cas"]]
    lines = [f"phase {status['phase']} (CA set generation {status['generation']}): {status['next']}",
             format_table(rows, ["ca", "sha256", "state", "issues", "not_after", "nodes"])]
    if status.get("nodes_to_renew"):
        named = ", ".join(status.get("nodes_to_renew_named", []))
        more = status["nodes_to_renew"] - len(status.get("nodes_to_renew_named", []))
        lines.append(f"{status['nodes_to_renew']} joined node(s) hold a certificate of a CA that does not issue: "
                     f"{named}{f' and {more} more' if more > 0 else ''}")
    if status.get("dashboards_to_renew"):
        lines.append(f"dashboard credential(s) of a CA that does not issue: {', '.join(status['dashboards_to_renew'])}"
                     " (edgectl credentials revoke NAME, then create)")
    return "\n".join(lines)

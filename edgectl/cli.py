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

Exit codes: ``edgectl.output.EXIT_CODE_MEANINGS`` (``edgectl --help`` and docs/cli.md list them).

The parts: ``edgectl.parser`` (commands, flags, values), ``edgectl.commands`` (what each does),
``edgectl.views`` (answers as rows and lines), ``edgectl.output`` (printing, exit codes),
``edgectl.follow`` (watch and follow), and the hub's API through ``edgeclient``.
"""


from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from edgeclient.hub import HubClient
from edgeclient.settings import CA_FILE_ENV, operator_token_from
from edgectl.commands import COMMANDS, CommandError
from edgectl.output import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNREACHABLE,
    say,
)
from edgectl.parser import build_parser, check_flags, streaming
from edgekit.http import HttpError, Unreachable
from edgeprotocol.errors import EdgeError

NO_TOKEN = ("the hub wants an operator token: pass --token, or set EDGECOLLAB_TOKEN or EDGECOLLAB_TOKEN_FILE "
            "(the hub writes it to STATE/admin-token)")


def operator_token(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The operator token and where it came from: ``--token``, else $EDGECOLLAB_TOKEN, else the file
    $EDGECOLLAB_TOKEN_FILE names; (None, "") when none is set."""
    if args.token:
        return args.token.strip(), "--token"
    return operator_token_from(environ)


def hub_client(args: argparse.Namespace, token: str | None) -> HubClient:
    """The client of the hub ``--hub`` names: for https://, trusting the CA ``--ca-file`` names (else the system's)."""
    path = None if args.ca_file is None else Path(args.ca_file).expanduser()
    try:
        return HubClient.at(args.hub, token=token, ca_file=path)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise CommandError(f"the CA file {path} (--ca-file or {CA_FILE_ENV}) cannot be used: {exc}") from exc



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

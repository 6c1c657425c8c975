"""``edgehub serve``: run the hub."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from pathlib import Path

from edgekit.sql import DriverMissing, StoreUnavailable, require_driver

from . import ca_cli
from .settings import TLS_MODES, HubSettings, chart_source_network

# Seconds a thread may hold the GIL while another waits for it (Python's default is 0.005); see main().
STORE_SWITCH_INTERVAL = 0.0005

# The hub's application (aiohttp and everything it serves) is imported where it is used: the hub's render
# workers are spawned processes, which import this module again, and a render should not wait for it.


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} must look like HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _chart_source(text: str) -> str:
    try:
        return str(chart_source_network(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("chart_sources.allow: ")) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgehub",
                                     description="edgecollab hub: pushes Helm releases to edge nodes over MQTT.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the hub (HTTP API and MQTT dispatcher)")
    serve.add_argument("--config", type=Path, help="settings file (YAML or JSON); flags override it")
    serve.add_argument("--listen", type=_host_port, help="HTTP address HOST:PORT (default 127.0.0.1:8470)")
    serve.add_argument("--mqtt", help="broker URL mqtt://HOST:PORT the hub connects to")
    serve.add_argument("--mqtt-advertise", help="broker URL handed to agents at join (default: --mqtt)")
    serve.add_argument("--state", type=Path, help="state directory (SQLite store, hub key, operator token)")
    serve.add_argument("--store", metavar="URL",
                       help="where the store lives: postgresql://USER@HOST:PORT/DATABASE (the postgres extra) or "
                            "sqlite:///ABSOLUTE/PATH (default: hub.db in the state directory); docs/store.md")
    serve.add_argument("--allowed-host", action="append", metavar="NAME",
                       help="a host name the API answers to besides loopback and the listen host "
                            "(the name nodes and operators reach it by); repeat for more")
    serve.add_argument("--allow-chart-source", action="append", type=_chart_source, metavar="CIDR",
                       help="a network (10.1.0.0/16, 127.0.0.0/8, ::1/128) or address the hub may fetch charts "
                            "from besides public addresses, added to the settings' chart_sources.allow; "
                            "repeat for more (a chart repository on loopback or a private network needs it)")
    serve.add_argument("--ha-discovery", metavar="PREFIX",
                       help="publish Home Assistant MQTT discovery documents under PREFIX (usually homeassistant)")
    serve.add_argument("--tls", choices=TLS_MODES,
                       help="serve the API over HTTPS with a certificate from the hub's CA: auto (the default) "
                            "unless --listen is a loopback address; off elsewhere sends tokens in clear")
    serve.add_argument("--log-level", default="INFO")
    broker = sub.add_parser("mosquitto-config",
                            help="write a Mosquitto configuration for the broker with identities (TLS, client "
                                 "certificates of the hub CA, per-node permissions)")
    broker.add_argument("--state", type=Path, required=True,
                        help="the hub's state directory (its CA is created there if the hub never ran)")
    broker.add_argument("--listen", type=_host_port, required=True, help="the broker's address HOST:PORT")
    broker.add_argument("--out", type=Path, required=True, help="directory for mosquitto.conf, certificates and "
                                                                "identities")
    broker.add_argument("--name", action="append", default=[], metavar="NAME",
                        help="another host name or address nodes reach the broker by (goes into its "
                             "certificate); repeat for more")
    broker.add_argument("--plugin", type=Path, help="path of mosquitto_dynamic_security.so (found by default)")
    broker.add_argument("--user", help="the account the broker runs as when started as root (default: mosquitto, "
                                       "if it can reach --out)")
    ca_cli.add_parser(sub)
    return parser


def mosquitto_config(args: argparse.Namespace) -> int:
    from .broker_config import BrokerConfigError, write_mosquitto_config

    host, port = args.listen
    try:
        config = write_mosquitto_config(args.state.resolve(), host, port, args.out, names=tuple(args.name),
                                        plugin=args.plugin, user=args.user)
    except (BrokerConfigError, OSError) as exc:
        print(f"edgehub: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {config.config_file} and the broker's certificate and identities in {config.out_dir}")
    if config.warning:
        print(f"warning: {config.warning}", file=sys.stderr)
    print(f"start the broker:  mosquitto -c {config.config_file}")
    print(f"start the hub:     edgehub serve --mqtt {config.url} --state {args.state}")
    return 0


def settings_from_args(args: argparse.Namespace) -> HubSettings | None:
    """The settings ``edgehub serve`` runs with: the settings file's, if any, with the flags over them.
    None when neither --config nor --state says where the state is (said on stderr).

    Raises:
        ValueError, TypeError, OSError: a setting or the settings file, named in the message.
    """
    overrides = {
        "listen_host": args.listen[0] if args.listen else None,
        "listen_port": args.listen[1] if args.listen else None,
        "mqtt_url": args.mqtt,
        "mqtt_advertise_url": args.mqtt_advertise,
        "state_dir": args.state.resolve() if args.state else None,
        "allowed_hosts": tuple(args.allowed_host) if args.allowed_host else None,
        "ha_discovery_prefix": args.ha_discovery,
        "tls": args.tls,
        "store_url": args.store,
    }
    if args.config:
        settings = HubSettings.from_file(args.config, **overrides)
    elif args.state is None:
        print("edgehub: --state (or --config with state_dir) is required", file=sys.stderr)
        return None
    else:
        settings = HubSettings(**{k: v for k, v in overrides.items() if v is not None})
    if args.allow_chart_source:  # added to the file's list, unlike the flags above, which replace
        settings = dataclasses.replace(settings, chart_sources=settings.chart_sources.adding(
            tuple(args.allow_chart_source)))
    return settings


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "mosquitto-config":
        return mosquitto_config(args)
    if args.command == "ca":
        return ca_cli.run(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
        if settings is None:
            return 2
        require_driver(settings.store_location)
    except (ValueError, TypeError, OSError, DriverMissing) as exc:
        print(f"edgehub: {exc}", file=sys.stderr)
        return 2
    from .auth import OperatorTokenError

    # The store's thread gives up the GIL for every SQL statement and needs it back to go on; while the
    # event loop is busy (a rollout), it waits up to a whole switch interval each time (5 ms by default),
    # so a batch of reports took seconds to store. A shorter interval hands the GIL back sooner.
    sys.setswitchinterval(STORE_SWITCH_INTERVAL)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings))
    except (OperatorTokenError, StoreUnavailable) as exc:
        print(f"edgehub: {exc}", file=sys.stderr)
        return 2
    return 0


async def serve(settings: HubSettings) -> None:
    """Serve until SIGINT or SIGTERM. Port 0 binds a free port; the line printed names the real one.

    The first line says ``edgehub listening on http://HOST:PORT``, or ``https://`` when the API is
    served over TLS (``edgesim.fleet.listening_ports`` reads it).
    """
    from aiohttp import web

    from .app import create_app
    from .auth import VIEWER_TOKEN_FILE
    from .keys import IDENTITY
    from .tls import TLS

    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        context = app.get(TLS)
        await web.TCPSite(runner, settings.listen_host, settings.listen_port, ssl_context=context).start()
        host, port = runner.addresses[0][:2]
        url = f"{'https' if context else 'http'}://{_url_host(host)}:{port}"
        print(f"edgehub listening on {url}", flush=True)
        # Where 'edgehub ca' on this machine finds the hub (a file write: off the loop).
        await asyncio.to_thread(ca_cli.write_hub_api, settings.state_dir,
                                ca_cli.local_url("https" if context else "http", settings.listen_host, port))
        print(f"edgehub operator token in {settings.admin_token_path} (edgectl reads it with "
              f"EDGECOLLAB_TOKEN_FILE={settings.admin_token_path})", flush=True)
        # The token goes in the URL's fragment, which the browser keeps to itself: never in a request or a log.
        print(f"edgehub web dashboard at {url}/ with the read-only viewer token: open "
              f"{url}/#token=$(cat {settings.state_dir / VIEWER_TOKEN_FILE})", flush=True)
        if context is not None:
            print(f"edgehub CA in {settings.ca_certificate_path}, SHA-256 {app[IDENTITY].ca_fingerprint} "
                  f"(edgectl trusts it with EDGECOLLAB_CA_FILE={settings.ca_certificate_path}; join tokens "
                  "carry its SHA-256)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


if __name__ == "__main__":
    sys.exit(main())

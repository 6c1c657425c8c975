"""``edgeagent join | run | doctor | status``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.files import write_atomic
from edgekit.mqtt import BrokerAddress
from edgekit.table import print_table
from edgeprotocol.enrollment import renew_after

from . import certificate as node_certificate
from .agent import Agent, AgentSettings
from .clock import HubClock
from .identity import CERT_FILE, JoinError, NodeIdentity, join, make_private_dir
from .memory import ProcessMemory
from .policy import POLICY_FILE, NodePolicy, PolicyError
from .renewal import last_note
from .runtime import PodmanRuntime, PodmanSettings, PreflightCheck
from .store import AgentStore

if TYPE_CHECKING:
    from .runtime import DryRunRuntime, KubernetesRuntime

# The runtime chosen at join (``join --runtime``): what ``run`` and ``doctor`` use unless told otherwise.
RUNTIME_FILE = "runtime.json"
# dry-run validates and records releases (STATE/dry-run) without running them: a rehearsal (docs/runtimes.md).
RUNTIMES = ("podman", "kubernetes", "dry-run")


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label {text!r} must look like KEY=VALUE")
    return key, value


def _setting_default(name: str) -> object:
    """The default of an ``AgentSettings`` field, so the flags and the settings share one number."""
    return next(f.default for f in dataclasses.fields(AgentSettings) if f.name == name)


def _add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """The flags that say how to reach the broker and the runtime: shared by run and doctor."""
    parser.add_argument("--runtime", choices=RUNTIMES,
                        help="the node's runtime (default: the one chosen at join, else podman)")
    parser.add_argument("--kubeconfig", type=Path,
                        help="kubeconfig for --runtime kubernetes (default: the one chosen at join; in a pod the "
                             "in-cluster configuration; else $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--mqtt", help="broker URL mqtt://HOST:PORT to use instead of the one the hub gave at join")
    parser.add_argument("--podman-root", type=Path, help="podman --root (storage) for this node")
    parser.add_argument("--podman-runroot", type=Path, help="podman --runroot for this node")
    parser.add_argument("--podman-tmpdir", type=Path,
                        help="podman --tmpdir for this node (simulated nodes sharing a machine)")
    parser.add_argument("--podman-network", help="network for played pods (podman kube play --network)")
    parser.add_argument("--containers-conf", type=Path, help="containers.conf for podman (sets CONTAINERS_CONF)")
    parser.add_argument("--policy", type=Path, help="node policy file to use instead of STATE/policy.yaml "
                                                    "(default: that file if present, else the safe default)")


class UsageError(Exception):
    """A flag's value is unusable; the message names the flag."""


def policy_from_args(args: argparse.Namespace, state_dir: Path) -> NodePolicy:
    """The node policy in force: ``--policy FILE``, else ``STATE/policy.yaml``, else the default (safe) one.

    Raises PolicyError naming the file and the key at fault.
    """
    if args.policy is not None:
        return NodePolicy.load(args.policy.resolve())
    stored = state_dir / POLICY_FILE
    if stored.is_file():
        return NodePolicy.load(stored)
    return NodePolicy(path=str(stored))


def stored_runtime(state_dir: Path) -> dict[str, str]:
    """The runtime chosen at join (``{"runtime": ..., "kubeconfig": ...}``); empty when none was."""
    try:
        data = json.loads((state_dir / RUNTIME_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{state_dir / RUNTIME_FILE}: unreadable ({exc}); run join again or pass --runtime") from exc
    if not isinstance(data, dict) or data.get("runtime") not in RUNTIMES:
        raise UsageError(f"{state_dir / RUNTIME_FILE}: no runtime of {', '.join(RUNTIMES)} recorded")
    return {k: str(v) for k, v in data.items() if v is not None}


def save_runtime(state_dir: Path, runtime: str, kubeconfig: Path | None) -> None:
    """Record the node's runtime (``join --runtime``) so ``run`` and ``doctor`` default to it."""
    make_private_dir(state_dir)
    data = {"runtime": runtime, "kubeconfig": str(kubeconfig.resolve()) if kubeconfig else None}
    write_atomic(state_dir / RUNTIME_FILE, json.dumps(data) + "\n")


def runtime_from_args(args: argparse.Namespace, state_dir: Path) -> PodmanRuntime | KubernetesRuntime | DryRunRuntime:
    """The runtime the flags describe (else the one chosen at join, else podman).

    Paths are made absolute: podman's helpers run from other directories.
    """
    stored = stored_runtime(state_dir)
    name = args.runtime or stored.get("runtime") or "podman"
    if name == "kubernetes":
        from .runtime import KubernetesRuntime, KubernetesSettings  # only here: podman nodes never load it

        kubeconfig = args.kubeconfig or (Path(stored["kubeconfig"]) if stored.get("kubeconfig") else None)
        if kubeconfig is not None and not kubeconfig.is_file():
            raise UsageError(f"--kubeconfig {kubeconfig}: no such file")
        return KubernetesRuntime(KubernetesSettings(work_dir=state_dir / "kubernetes", kubeconfig=kubeconfig,
                                                    policy=policy_from_args(args, state_dir)))
    if args.kubeconfig is not None:
        raise UsageError("--kubeconfig is for --runtime kubernetes")
    if name == "dry-run":
        from .runtime import DryRunRuntime, DryRunSettings  # only here, like the kubernetes runtime

        return DryRunRuntime(DryRunSettings(work_dir=state_dir / "dry-run", policy=policy_from_args(args, state_dir)))
    absolute = {name: path.resolve() if path else None for name, path in (
        ("root", args.podman_root), ("runroot", args.podman_runroot), ("tmpdir", args.podman_tmpdir),
        ("containers_conf", args.containers_conf))}
    if absolute["containers_conf"] and not absolute["containers_conf"].is_file():
        raise UsageError(f"--containers-conf {args.containers_conf}: no such file")
    protected = (state_dir.absolute(), *((args.policy.resolve(),) if args.policy is not None else ()))
    return PodmanRuntime(PodmanSettings(work_dir=state_dir / "podman", network=args.podman_network,
                                        policy=policy_from_args(args, state_dir), protected_paths=protected,
                                        root=absolute["root"], runroot=absolute["runroot"],
                                        tmpdir=absolute["tmpdir"], containers_conf=absolute["containers_conf"]))


def install_policy(source: Path, state_dir: Path) -> NodePolicy:
    """Check the policy file ``source`` and copy it to ``STATE/policy.yaml`` (mode 0600); raises PolicyError."""
    target = state_dir / POLICY_FILE
    NodePolicy.load(source)  # refused before anything is written
    make_private_dir(state_dir)
    tmp = target.with_name(f".{POLICY_FILE}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(source.read_bytes())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return NodePolicy.load(target)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeagent", description="edgecollab agent for an edge node.")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    j = sub.add_parser("join", help="register this node with a hub using a bootstrap token")
    j.add_argument("--hub", required=True,
                   help="hub URL: https://HOST:PORT (the hub is checked against the CA fingerprint the token "
                        "carries), or http://127.0.0.1:PORT on the hub's own machine")
    j.add_argument("--token", required=True, help="bootstrap token from 'edgectl token create'")
    j.add_argument("--ca-file", type=Path, help="the hub's CA certificate (STATE/hub-ca.crt on the hub): needed "
                                                "over HTTPS only with a token that carries no CA fingerprint")
    j.add_argument("--name", help="node name (default: the host name)")
    j.add_argument("--pool", help="expected pool; the join fails if the token is for another")
    j.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE")
    j.add_argument("--state-dir", type=Path, required=True)
    j.add_argument("--policy", type=Path, help="node policy file (YAML): copied to STATE/policy.yaml; what this node "
                                               "lets releases do (default: refuse root, privileged and host access)")
    j.add_argument("--runtime", choices=RUNTIMES, help="the node's runtime, recorded for run and doctor "
                                                      "(default: podman; dry-run validates and records releases "
                                                      "without running them)")
    j.add_argument("--kubeconfig", type=Path, help="kubeconfig for --runtime kubernetes, recorded for run and doctor")

    r = sub.add_parser("run", help="run the agent")
    r.add_argument("--state-dir", type=Path, required=True)
    _add_runtime_args(r)
    r.add_argument("--keepalive", type=int, default=_setting_default("keepalive"),
                   help="MQTT keepalive in seconds; a cut link shows as offline after about 1.5x this "
                        "(default: %(default)s)")
    r.add_argument("--reconcile-interval", type=float, default=_setting_default("reconcile_interval"),
                   help="seconds between reconcile passes; bounds self-heal time (default: %(default)s)")

    d = sub.add_parser("doctor", help="check that this node can run the agent: one line per check, "
                                      "exit 0 only when all pass")
    d.add_argument("--state-dir", type=Path, required=True)
    _add_runtime_args(d)

    s = sub.add_parser("status", help="show what this node holds and runs, without the hub")
    s.add_argument("--state-dir", type=Path, required=True)
    s.add_argument("-o", "--output", choices=["table", "json"], default="table")
    return parser


async def _run(args: argparse.Namespace) -> int:
    state_dir = args.state_dir.resolve()
    identity = NodeIdentity.load(state_dir)
    if args.mqtt:
        identity = dataclasses.replace(identity, mqtt_url=args.mqtt)
    try:
        BrokerAddress.parse(identity.mqtt_url).require_identities()
    except ValueError as exc:
        print(f"edgeagent: {exc}", file=sys.stderr)
        return 2
    settings = AgentSettings(state_dir=state_dir, reconcile_interval=args.reconcile_interval, keepalive=args.keepalive)
    runtime = runtime_from_args(args, state_dir)
    logging.getLogger("edgeagent").info("Node policy: %s", runtime.settings.policy.summary())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # ProcessMemory first: it caps malloc arenas before the agent starts threads.
    async with ProcessMemory(), Agent(settings, identity, runtime):
        logging.getLogger("edgeagent").info("Agent %s (pool %s) running", identity.node, identity.pool)
        await stop.wait()
    return 0


async def _doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose, report  # only here: run does not need it

    state_dir = args.state_dir.resolve()
    runtime = runtime_from_args(args, state_dir)
    checks = await diagnose(state_dir, runtime, mqtt_url=args.mqtt)
    checks = (*checks, PreflightCheck("policy", True, runtime.settings.policy.summary()))
    print(report(checks))
    failed = [c.name for c in checks if not c.ok]
    warned = [c.name for c in checks if c.ok and c.warning]
    print(f"\n{len(checks) - len(failed)} of {len(checks)} checks passed"
          + (f"; failed: {', '.join(failed)}" if failed else "")
          + (f"; warnings: {', '.join(warned)}" if warned else ""))
    return 1 if failed else 0


async def _status(args: argparse.Namespace) -> int:
    identity = NodeIdentity.load(args.state_dir)
    if not (args.state_dir / "agent.db").is_file():
        raise UsageError(f"no local store in {args.state_dir}: 'edgeagent run --state-dir {args.state_dir}' "
                         "has not started here yet")
    async with AgentStore(args.state_dir / "agent.db", readonly=True) as store:
        releases = await store.releases()
        outbox = await store.outbox_size()
        counters = await store.counters()
    certificate = certificate_summary(args.state_dir)
    clock = clock_summary(args.state_dir)
    renewal = last_note(args.state_dir)
    last_sync = counters.pop("last_sync", 0)
    last_sync_text = datetime.fromtimestamp(last_sync, UTC).isoformat().replace("+00:00", "Z") if last_sync else "never"
    rows = [
        {"namespace": r.namespace, "release": r.release, "desired_revision": r.desired_revision,
         "desired": r.desired_kind, "applied_revision": r.applied_revision, "phase": r.phase,
         "ready": f"{r.ready}/{r.total}", "observed_at": r.observed_at, "message": r.message}
        for r in releases
    ]
    if args.output == "json":
        print(json.dumps({"node": identity.node, "pool": identity.pool, "outbox": outbox, "last_sync": last_sync_text,
                          "counters": counters, "certificate": certificate, "clock": clock,
                          "last_renewal": renewal, "releases": rows}, indent=2))
        return 0
    print(f"node {identity.node}  pool {identity.pool}  last sync {last_sync_text}  outbox {outbox} event(s)  "
          + "  ".join(f"{name} {value}" for name, value in counters.items()))
    if certificate:
        print(f"certificate serial {certificate['serial']}  {certificate['state']} {certificate['not_after']}  "
              f"renewal from {certificate['renew_after']}")
    else:
        print(f"certificate: none readable in {args.state_dir / CERT_FILE}")
    if renewal:
        print(f"last renewal ({renewal['at']}): {renewal['message']}")
    if clock:
        print(f"clock: {clock['message']}")
    print_table(rows, ["namespace", "release", "desired_revision", "applied_revision", "phase", "ready",
                       "observed_at", "message"])
    return 0


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def certificate_summary(state_dir: Path) -> dict[str, str] | None:
    """The node certificate's serial (hex), expiry and renewal time, and whether it has expired by the hub's time
    (``state``: ``expires`` or ``expired``); None when it cannot be read."""
    try:
        cert = node_certificate.validity(state_dir, save=False)  # status only looks: it writes nothing
    except (OSError, ValueError):
        return None
    expired = HubClock(state_dir).now_utc() >= cert.not_valid_after_utc
    return {"serial": format(cert.serial_number, "x"), "not_before": _iso(cert.not_valid_before_utc),
            "not_after": _iso(cert.not_valid_after_utc), "renew_after": _iso(renew_after(cert)),
            "state": "expired" if expired else "expires"}


def clock_summary(state_dir: Path) -> dict[str, object] | None:
    """The clock's offset from the hub as last measured (``STATE/clock.json``); None before a measurement."""
    clock = HubClock(state_dir)
    record = clock.record
    if record is None:
        return None
    measured = datetime.fromtimestamp(record.hub_time, UTC)
    if clock.conditions:
        message = clock.conditions[0].message
    else:
        message = (f"within {clock.threshold:.0f} s of the hub's (offset {record.offset_seconds:+.1f} s, "
                   f"measured {_iso(measured)})")
    return {"offset_seconds": round(record.offset_seconds, 3), "measured_at": _iso(measured), "message": message}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "join":
            # Checked before the hub is asked: a node joins with the policy it was meant to have, or not at all.
            if args.policy is not None:
                NodePolicy.load(args.policy)
            if args.kubeconfig is not None and args.runtime != "kubernetes":
                raise UsageError("--kubeconfig is for --runtime kubernetes")
            if args.kubeconfig is not None and not args.kubeconfig.is_file():
                raise UsageError(f"--kubeconfig {args.kubeconfig}: no such file")
            identity = join(hub_url=args.hub, token=args.token, state_dir=args.state_dir, node=args.name,
                            pool=args.pool, labels=dict(args.label), ca_file=args.ca_file)
            print(f"joined as node {identity.node} in pool {identity.pool}; state in {args.state_dir}")
            if args.policy is not None:
                policy = install_policy(args.policy, args.state_dir.resolve())
                print(f"node policy: {policy.summary()}")
            if args.runtime is not None:
                save_runtime(args.state_dir.resolve(), args.runtime, args.kubeconfig)
                print(f"runtime: {args.runtime}")
            return 0
        if args.command == "run":
            with contextlib.suppress(KeyboardInterrupt):
                return asyncio.run(_run(args))
            return 0
        if args.command == "doctor":
            return asyncio.run(_doctor(args))
        return asyncio.run(_status(args))
    except (UsageError, PolicyError) as exc:
        print(f"edgeagent: {exc}", file=sys.stderr)
        return 2
    except JoinError as exc:
        print(f"edgeagent: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

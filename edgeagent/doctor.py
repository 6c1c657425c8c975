"""``edgeagent doctor``: is this node able to run the agent? One line per check.

The checks: the identity files from join are readable and the node's keys are
private; the broker the agent would use accepts connections; then the
runtime's own preflight (for podman: podman answers, its storage root is
writable, its OCI runtime is there, and a pod can be created, started and
removed). The runtime part is exactly what the agent runs at start and after a
failed apply, and what the test suite runs once before any podman test.
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from .identity import BUNDLE_KEY_FILE, CERT_FILE, IDENTITY_FILE, KEY_FILE, JoinError, NodeIdentity
from .runtime import PreflightCheck, Runtime

# A broker that does not accept a TCP connection in this time is unreachable
# for the agent too (its MQTT connect waits no longer).
CONNECT_TIMEOUT_SECONDS = 5.0
_DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}


def identity_checks(state_dir: Path) -> tuple[tuple[PreflightCheck, ...], NodeIdentity | None]:
    """Checks of the files join wrote, and the identity when it loads."""
    checks: list[PreflightCheck] = []
    identity: NodeIdentity | None = None
    try:
        identity = NodeIdentity.load(state_dir)
        checks.append(PreflightCheck("identity", True, f"node {identity.node} in pool {identity.pool} "
                                                       f"({state_dir / IDENTITY_FILE})"))
    except (JoinError, TypeError, OSError) as exc:
        checks.append(PreflightCheck("identity", False, f"{exc}" if isinstance(exc, JoinError)
                                     else f"{state_dir / IDENTITY_FILE} is unreadable: {exc}"))
    checks.append(_private_key_check("node-key", state_dir / KEY_FILE, "node's private key"))
    bundle_key = state_dir / BUNDLE_KEY_FILE
    if bundle_key.exists():
        checks.append(_private_key_check("bundle-key", bundle_key, "key the node's bundles are encrypted to"))
    else:
        # Not a failure: the node works, and its hub sends its bundles plain.
        checks.append(PreflightCheck("bundle-key", True, f"none ({bundle_key}): the node joined before bundles were "
                                                         "encrypted, so they arrive unencrypted; join again to "
                                                         "encrypt them"))
    cert = state_dir / CERT_FILE
    if not cert.is_file():
        checks.append(PreflightCheck("node-cert", False, f"{cert} not found: join again"))
    return tuple(checks), identity


def _private_key_check(name: str, key: Path, what: str) -> PreflightCheck:
    try:
        mode = stat.S_IMODE(key.stat().st_mode)
        with key.open("rb"):
            pass
    except OSError as exc:
        return PreflightCheck(name, False, f"{key} is unreadable: {exc.strerror or exc}")
    if mode & 0o077:
        return PreflightCheck(name, False, f"{key} has mode {mode:04o}: others may read the {what}; "
                                           f"run: chmod 600 {key}")
    return PreflightCheck(name, True, f"{key} is private (mode {mode:04o})")


async def broker_check(mqtt_url: str) -> PreflightCheck:
    """Whether the broker at ``mqtt_url`` accepts a TCP connection now."""
    parts = urlsplit(mqtt_url)
    host = parts.hostname
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
    except ValueError:
        port = 0
    if not host or not port:
        return PreflightCheck("mqtt", False, f"broker URL {mqtt_url!r} names no host and port")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_SECONDS)
    except TimeoutError:
        return PreflightCheck("mqtt", False, f"broker {host}:{port} did not answer within "
                                             f"{CONNECT_TIMEOUT_SECONDS:.0f} s ({mqtt_url})")
    except OSError as exc:
        return PreflightCheck("mqtt", False, f"broker {host}:{port} is unreachable: {exc.strerror or exc} "
                                             f"({mqtt_url})")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return PreflightCheck("mqtt", True, f"broker {host}:{port} accepts connections ({mqtt_url})")


async def diagnose(state_dir: Path, runtime: Runtime, *, mqtt_url: str | None = None) -> tuple[PreflightCheck, ...]:
    """Every check, in order: identity files, broker, then the runtime's preflight."""
    checks, identity = identity_checks(state_dir)
    url = mqtt_url or (identity.mqtt_url if identity else None)
    broker = (await broker_check(url) if url
              else PreflightCheck("mqtt", False, "no broker URL: join first, or pass --mqtt"))
    return (*checks, broker, *await runtime.preflight())


def report(checks: Sequence[PreflightCheck]) -> str:
    """One line per check: ``ok`` or ``FAILED``, its name, what was found or why it failed."""
    width = max((len(c.name) for c in checks), default=0)
    return "\n".join(f"{'ok' if c.ok else 'FAILED':6}  {c.name:{width}}  {c.detail}" for c in checks)

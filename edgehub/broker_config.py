"""``edgehub mosquitto-config``: a Mosquitto configuration for the broker with identities.

Writes into one directory everything a Mosquitto 2 needs to serve the fleet:

- ``mosquitto.conf``: one TLS listener that requires a client certificate of the
  hub's CA, takes the certificate's common name as user name and client ID, and
  leaves permissions to the dynamic security plugin and, for the clients the
  plugin does not know (joined nodes), to ``nodes.acl``;
- ``ca.crt`` (the hub's CAs: its trust bundle), ``broker.crt`` and ``broker.key`` (the broker's server
  certificate, issued by the hub CA for the listen address and the given names; the running
  hub issues them again once less than a third of their life is left, keeping the files' owner
  and mode, and signals the broker: ``edgehub.certificates``);
- ``dynamic-security.json``: the hub and the fixed roles. The hub adds and removes
  refused nodes and dashboards at run time over the plugin's control topic, and the
  broker keeps that file current, so an existing one is left alone;
- ``nodes.acl``: patterns that give every node its own topics (``broker_roles``);
- ``revoked.crl``: the node certificates the hub no longer stands behind (replaced by a
  renewal, or voided by a reset or revoke) until they expire. The hub rewrites it and
  signals the broker (``pid_file``) to read it again: ``edgehub.broker_revocations``,
  which finds both files (and ``edgehub.certificates`` the certificate and key) through
  ``STATE/broker-files.json``, written here.

The broker refuses MQTT packets larger than ``MAX_PACKET_BYTES`` (see there).
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgekit.files import write_atomic
from edgeprotocol.messages import MAX_ASSIGNMENT_BYTES

from .broker_revocations import (
    BROKER_CERT_FILE,
    BROKER_KEY_FILE,
    CA_FILE,
    CRL_FILE,
    PID_FILE,
    BrokerFiles,
    ensure_crl,
    write_trust,
)
from .broker_roles import initial_document, node_acl_patterns
from .identity import HubIdentity

CONFIG_FILE = "mosquitto.conf"
BROKER_COMMON_NAME = "edgecollab broker"
DYNSEC_FILE = "dynamic-security.json"
NODE_ACL_FILE = "nodes.acl"
# Where Debian, Fedora and source builds put the plugin (Mosquitto 2.0 and later).
PLUGIN_GLOBS = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/lib64/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/*/mosquitto_dynamic_security.so",
)
# The account Mosquitto switches to when started as root (Debian's package creates it).
BROKER_ACCOUNT = "mosquitto"
# Mosquitto's max_packet_size: a client that sends a larger packet is disconnected before the broker
# reads it, so nothing of it is delivered or retained (without it a node could retain 30 MB on its own
# status topic). Mosquitto 2.0 has one such limit for every client and listener (message_size_limit is
# global too, and 2.0 recommends max_packet_size instead), so nodes cannot be held to a tighter one than
# the hub: it must pass the largest assignment the hub sends, MAX_ASSIGNMENT_BYTES, derived from the
# protocol's bundle bound. An eighth more covers the MQTT header and topic (under 64 KiB) and some
# growth of the envelope: a hub whose publish were refused would be disconnected, and would republish
# it on every reconnect.
MAX_PACKET_BYTES = MAX_ASSIGNMENT_BYTES + MAX_ASSIGNMENT_BYTES // 8


class BrokerConfigError(ValueError):
    """The configuration cannot be written; the message says what to change."""


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    out_dir: Path
    url: str  # what the hub and agents dial, mqtts://HOST:PORT
    warning: str = ""  # something the operator should know, printed by the command

    @property
    def config_file(self) -> Path:
        return self.out_dir / CONFIG_FILE


def find_plugin() -> Path:
    for pattern in PLUGIN_GLOBS:
        for match in sorted(glob.glob(pattern)):
            return Path(match)
    raise BrokerConfigError(
        "Mosquitto's dynamic security plugin (mosquitto_dynamic_security.so) was not found; install Mosquitto 2.0 "
        "or later (Debian: apt-get install mosquitto) or name it with --plugin PATH")


def server_names(listen_host: str, extra: tuple[str, ...]) -> list[str]:
    """Names the broker's certificate is valid for: what clients dial. A wildcard listen address is not one."""
    names = ["127.0.0.1", "::1", "localhost"]
    try:
        wildcard = ipaddress.ip_address(listen_host).is_unspecified
    except ValueError:
        wildcard = False
    for name in (() if wildcard else (listen_host,)) + extra:
        if name not in names:
            names.append(name)
    return names


def write_mosquitto_config(state_dir: Path, listen_host: str, listen_port: int, out_dir: Path, *,
                           names: tuple[str, ...] = (), plugin: Path | None = None,
                           user: str | None = None) -> BrokerConfig:
    """Write the broker's configuration, certificate and identities for the hub in ``state_dir``
    (creating the hub's CA there if the hub has not started yet)."""
    if not 0 < listen_port < 65536:
        raise BrokerConfigError(f"listen port {listen_port} is out of range (1-65535)")
    plugin = plugin or find_plugin()
    if not plugin.is_file():
        raise BrokerConfigError(f"--plugin {plugin} is not a file")
    identity = HubIdentity.load_or_create(state_dir)
    out_dir = out_dir.resolve()
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    out_dir.chmod(0o700)
    # Every CA the hub trusts (two during a CA rotation: edgehub.ca_rotation), so clients of either connect.
    write_trust(identity, out_dir / CA_FILE)
    identity.ensure_certificate(out_dir / BROKER_KEY_FILE, out_dir / BROKER_CERT_FILE, BROKER_COMMON_NAME,
                                usage="server", names=server_names(listen_host, names))
    write_atomic(out_dir / NODE_ACL_FILE, node_acl_patterns().encode())
    dynsec = out_dir / DYNSEC_FILE
    if not dynsec.exists():
        write_atomic(dynsec, json.dumps(initial_document(), indent=2).encode())
    # The broker refuses every client without a CRL it can read: one is there before it starts (the
    # hub's, kept if this CA signed it; the hub rewrites it on every start anyway).
    ensure_crl(identity, out_dir / CRL_FILE)
    config = out_dir / CONFIG_FILE
    config.write_text("")  # owned with the rest before the text is known
    account, warning = _broker_account(out_dir, user)
    config.write_text(_config_text(listen_host, listen_port, out_dir, plugin, account))
    # Where the hub finds the broker's CRL, process and certificate: it writes the list, renews the
    # certificate (edgehub.certificates) and signals the broker to read both.
    BrokerFiles(crl_file=out_dir / CRL_FILE, pid_file=out_dir / PID_FILE, cert_file=out_dir / BROKER_CERT_FILE,
                key_file=out_dir / BROKER_KEY_FILE).save(state_dir)
    dial_host = "127.0.0.1" if listen_host in ("0.0.0.0", "::") else listen_host
    host = f"[{dial_host}]" if ":" in dial_host else dial_host
    return BrokerConfig(out_dir=out_dir, url=f"mqtts://{host}:{listen_port}", warning=warning)


def _config_text(host: str, port: int, out: Path, plugin: Path, account: str | None) -> str:
    user = f"user {account}\n" if account else ""
    return f"""# Written by 'edgehub mosquitto-config'. Run: mosquitto -c {out / CONFIG_FILE}
# Every client shows a certificate of the hub CA; its common name is its user
# name and client ID, and the dynamic security plugin decides what it may do.
per_listener_settings false
allow_anonymous false
{user}
listener {port} {host}
# The hub's trust bundle: every CA it trusts (two during a CA rotation), written
# again by the hub at each rotation step before it sends SIGHUP.
cafile {out / CA_FILE}
# The hub issues these again once less than a third of their life is left (or
# another CA issues: a CA rotation), keeping the key's owner and mode, and sends
# SIGHUP, on which Mosquitto reads them again for new connections
# (edgehub.certificates).
certfile {out / BROKER_CERT_FILE}
keyfile {out / BROKER_KEY_FILE}
require_certificate true
use_identity_as_username true
use_username_as_clientid true
# Node certificates replaced by a renewal (or voided by a reset or revoke) that
# have not expired yet. The hub rewrites this file and sends the broker SIGHUP
# (found by pid_file), on which Mosquitto reads it again; a connection made
# before stays until the node reconnects with its new certificate (same client
# ID), which the agent does right after a renewal.
crlfile {out / CRL_FILE}

plugin {plugin}
plugin_opt_config_file {out / DYNSEC_FILE}
# Edge nodes are not in the plugin (it answers first for the clients it knows):
# these patterns give each node its own topics by its name.
acl_file {out / NODE_ACL_FILE}

# The hub acknowledges a node's report once it has taken it, and while it
# catches up the broker holds the rest for it: Mosquitto's defaults (20
# messages in flight, 1,000 queued per client) would drop reports of a fleet
# of thousands that reports at once. Nodes are sent a few messages each.
max_inflight_messages 1000
max_queued_messages 200000
# Small packets answered one by one (a PUBLISH and its PUBACK, an identity
# command and its answer): without this, Nagle's algorithm and the client's
# delayed ACK hold each answer back about 40 ms.
set_tcp_nodelay true

# Larger packets disconnect their sender, unread: above the largest assignment
# the hub sends (a 16 MiB bundle, compressed, encrypted and signed), the one
# limit Mosquitto 2.0 has for every client.
max_packet_size {MAX_PACKET_BYTES}

pid_file {out / PID_FILE}

# Retained assignments and status survive a broker restart (the hub also
# publishes everything again whenever it reconnects).
persistence true
persistence_location {out}/
"""


def _broker_account(out_dir: Path, requested: str | None) -> tuple[str | None, str]:
    """The account the broker runs as (None: whoever starts it; written as Mosquitto's ``user``) and a
    warning for the operator ("" if none).

    Mosquitto started as root switches to the ``mosquitto`` account before it reads its files, and saves
    identities and retained messages as that account: it gets the directory when it can reach it."""
    if os.geteuid() != 0:
        return None, ""
    name = requested or BROKER_ACCOUNT
    if name == "root":
        return "root", ""
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        if requested:
            raise BrokerConfigError(f"--user {name}: no such account") from None
        return "root", (f"there is no '{BROKER_ACCOUNT}' account, so the broker will run as root; create one, or "
                        "name another with --user")
    blocked = next((p for p in out_dir.parents if not _enterable(p, account)), None)
    if blocked is not None:
        if requested:
            raise BrokerConfigError(f"--user {name} cannot enter {blocked}, above {out_dir}; choose an --out it can "
                                    "reach (e.g. under /etc/mosquitto)")
        return "root", (f"the '{name}' account cannot enter {blocked}, so the broker will run as root; put --out "
                        "where it can reach (e.g. under /etc/mosquitto) to run it unprivileged")
    for path in (out_dir, *out_dir.iterdir()):
        shutil.chown(path, account.pw_uid, account.pw_gid)
    return name, ""


def _enterable(directory: Path, account: pwd.struct_passwd) -> bool:
    info = directory.stat()
    if info.st_uid == account.pw_uid:
        return bool(info.st_mode & 0o100)
    if info.st_gid == account.pw_gid:
        return bool(info.st_mode & 0o010)
    return bool(info.st_mode & 0o001)

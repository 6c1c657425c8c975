"""A joined node's MQTT side without an agent (so without podman): what the dashboard test's nodes run.

    python tests/e2e/node_stand_in.py --state-dir NODE_STATE --port BROKER_PORT [--release demo/web:1:Deployed]
        [--release demo/web:1:Degraded:CrashLoopBackOff:MESSAGE]   (an unhealthy release: its reason and message)

It connects to the broker with identities as the node (the certificate and key ``edgeagent join``
wrote), with the agent's last will (presence offline, retained), says it is online, reports a status
(both conditions healthy, the releases given) and an event, prints ``online``, and stays connected
until killed. Killed with SIGKILL, its link dies as a crashed agent's or a cut cable's does: the
broker publishes the last will and the hub marks the node offline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import aiomqtt

from edgekit.mqtt import TlsIdentity
from edgeprotocol import topics
from edgeprotocol.messages import Condition, Event, NodeStatus, Presence, ReleaseStatus, now


def release(text: str) -> ReleaseStatus:
    ref, revision, phase, *health = text.split(":", 4)
    reason, message = (*health, "", "")[:2]
    namespace, name = ref.split("/")
    return ReleaseStatus(namespace=namespace, release=name, desired_revision=int(revision),
                         applied_revision=int(revision), phase=phase, ready=0 if reason else 1, total=1,  # type: ignore[arg-type]  # a phase the calling test names
                         observed_at=now(), reason=reason, restarts=4 if reason else 0, message=message)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--release", type=release, action="append", default=[])
    args = parser.parse_args()
    identity = json.loads((args.state_dir / "identity.json").read_text())
    node = identity["node"]
    tls = TlsIdentity(ca_pem=identity["ca_certificate"], cert_file=args.state_dir / "node.crt",
                      key_file=args.state_dir / "node.key")
    will = aiomqtt.Will(topics.presence(node), Presence(node=node, state="offline").encode(), qos=1, retain=True)
    async with aiomqtt.Client("127.0.0.1", args.port, identifier=node, tls_context=tls.context(), will=will,
                              keepalive=5, timeout=10) as mqtt:
        await mqtt.publish(topics.presence(node), Presence(node=node, state="online", at=now()).encode(), qos=1,
                           retain=True)
        at = now()
        conditions = tuple(Condition(type=kind, status="True", reason="Checked", message="", since=at)
                           for kind in ("RuntimeReady", "StorageReady"))
        status = NodeStatus(node=node, seq=1, observed_at=at, releases=tuple(args.release),
                            agent_version="stand-in", runtime="none", conditions=conditions)
        await mqtt.publish(topics.status(node), status.encode(), qos=1, retain=True)
        await mqtt.publish(topics.events(node), Event(node=node, seq=1, at=at, reason="NodeReady",
                                                      message=f"{node} stands in for an agent").encode(), qos=1)
        print("online", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)

"""How long the agent's event loop is blocked while it receives, applies and watches a 1 MB release.

    .venv/bin/python bench/agent_loop_latency.py [--mb 1.0] [--watch 20]

Runs one real agent (the ``Agent`` class ``edgeagent run`` uses) in this
process against a real Mosquitto and real podman (a private storage root under
/tmp), publishes one hub-signed assignment whose manifests are about ``--mb``
MB of YAML (ConfigMaps and a two-replica Deployment of the demo image), and
meanwhile samples the loop: a task sleeps 5 ms at a time and records how late
it wakes. A late wake-up is time the loop could not serve anything else (MQTT
keepalives included). Prints the lag while applying (assignment published to
Deployed) and while watching (``--watch`` seconds of reconcile passes after
that): max, p99 and the count of stalls over 100 ms. Bounded: one node, one
release, loopback only; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from edgeagent.agent import Agent, AgentSettings  # noqa: E402
from edgeagent.identity import NodeIdentity  # noqa: E402
from edgeagent.runtime import PodmanRuntime, PodmanSettings  # noqa: E402
from edgekit.tasks import OwnedTask  # noqa: E402
from edgeprotocol import topics  # noqa: E402
from edgeprotocol.messages import Assignment, Bundle, now  # noqa: E402
from edgeprotocol.signing import public_key_pem, seal  # noqa: E402
from edgesim.fleet import Mosquitto  # noqa: E402
from edgesim.podman_setup import (  # noqa: E402
    DEMO_IMAGE,
    MachineSetup,
    import_image,
    prepare_machine,
    remove_node_storage,
)

SAMPLE_SECONDS = 0.005


def manifests_of_size(megabytes: float) -> str:
    """ConfigMaps of 20 keys of ~120 characters each, until the YAML is ``megabytes`` MB, plus a Deployment."""
    docs = ["""apiVersion: apps/v1
kind: Deployment
metadata: {name: bulk}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: bulk}}
    spec:
      securityContext: {runAsUser: 65534}
      containers:
        - name: main
          image: localhost/edgecollab-busybox:1
          command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
"""]
    size, index = len(docs[0]), 0
    while size < megabytes * 1_000_000:
        data = "\n".join(f"  key-{k}: \"{'x' * 110}-{index}-{k}\"" for k in range(20))
        doc = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bulk-{index}}}\ndata:\n{data}\n"
        docs.append(doc)
        size += len(doc)
        index += 1
    return "---\n".join(docs)


class LoopLag:
    """Samples how late a 5 ms sleep wakes up, tagged with the phase it fell in."""

    def __init__(self) -> None:
        self.phase = "idle"
        self.samples: dict[str, list[float]] = {}
        self._sampler = OwnedTask("loop-lag-probe")

    async def _sample(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(SAMPLE_SECONDS)
            self.samples.setdefault(self.phase, []).append(time.perf_counter() - start - SAMPLE_SECONDS)

    async def __aenter__(self) -> LoopLag:
        self._sampler.start(self._sample())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._sampler.stop()

    def line(self, phase: str) -> str:
        lags = sorted(self.samples.get(phase, [0.0]))
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        stalls = sum(1 for lag in lags if lag > 0.1)
        return (f"{phase:9} max {max(lags) * 1000:7.1f} ms  p99 {p99 * 1000:6.1f} ms  "
                f"median {statistics.median(lags) * 1000:5.1f} ms  stalls>100ms {stalls}")


async def run(megabytes: float, watch: float, workdir: Path, broker: Mosquitto, machine: MachineSetup) -> None:
    key = Ed25519PrivateKey.generate()
    identity = NodeIdentity(node="bench-1", pool="bench", labels={}, hub_url="", mqtt_url=broker.url,
                            hub_public_key=public_key_pem(key.public_key()), ca_certificate="")
    base = Path(tempfile.mkdtemp(prefix="ec-bench-", dir="/tmp"))
    podman = PodmanSettings(work_dir=workdir / "state" / "podman", root=base / "root", runroot=base / "run",
                            tmpdir=base / "tmp", containers_conf=machine.containers_conf, network="none")
    manifests = manifests_of_size(megabytes)
    assignment = Assignment(node="bench-1", namespace="bench", release="bulk", revision=1, kind="release",
                            issued_at=now(), bundle=Bundle.of(manifests))
    payload = seal(assignment, key)
    print(f"release: {len(manifests) / 1e6:.2f} MB of YAML, {manifests.count('kind: ')} objects; "
          f"assignment {len(payload) / 1e3:.0f} kB on the wire")
    try:
        runtime = PodmanRuntime(podman)
        await import_image(podman, machine.image_tar, DEMO_IMAGE)
        settings = AgentSettings(state_dir=workdir / "state")
        async with LoopLag() as lag, Agent(settings, identity, runtime) as agent:
            await asyncio.wait_for(agent.session.connected.wait(), 10)
            lag.phase = "apply"
            started = time.perf_counter()
            await agent.session.publish(topics.assignment("bench-1", "bench", "bulk"), payload, retain=True)
            while True:
                rec = await agent.store.get("bench", "bulk")
                if rec is not None and rec.phase == "Deployed":
                    break
                if time.perf_counter() - started > 180:
                    raise TimeoutError(f"not Deployed after 180 s: {rec and (rec.phase, rec.message)}")
                await asyncio.sleep(0.2)
            applied = time.perf_counter() - started
            lag.phase = "watch"
            await asyncio.sleep(watch)
            passes = agent.passes
        print(f"applied and Deployed in {applied:.1f} s; {passes} reconcile passes in all")
        print(lag.line("apply"))
        print(lag.line("watch"))
    finally:
        remove_node_storage(podman, base)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1.0, help="size of the release's YAML in MB")
    parser.add_argument("--watch", type=float, default=20.0, help="seconds of reconcile passes to sample after")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ec-bench-loop-"))
    broker = Mosquitto(workdir / "broker").start()
    try:
        asyncio.run(run(args.mb, args.watch, workdir, broker, prepare_machine(REPO / ".build")))
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The memory footprint of one ``edgeagent run`` with the podman runtime: idle, then after a deploy.

    .venv/bin/python bench/footprint.py [--settle 20] [--after 30] [--env NAME=VALUE ...]

Starts a real Mosquitto with TLS identities and a real ``edgehub serve``
(``edgesim.fleet``, as the demo and the end-to-end tests do), joins one node
with the real ``edgeagent join`` and starts the real ``edgeagent run`` with the
podman runtime (its own podman storage root, runroot and tmpdir under /tmp, as
for any simulated node). Once the hub shows the node online with its health
checked, it waits ``--settle`` seconds and samples the agent process's memory:
VmRSS and VmHWM (peak RSS) from /proc/PID/status, USS (private pages) and PSS
from /proc/PID/smaps_rollup, and its thread count. Then it applies the web
component of examples/web (the demo's) to the node's pool, samples again once
the hub says Deployed, and again ``--after`` seconds later (reconcile passes
and probes running).

Prints a table, then one JSON line: ``idle_rss_mib``, ``deployed_rss_mib``,
``later_rss_mib``, ``peak_rss_mib``, ``idle_uss_mib``, ... Bounded: every wait
has a timeout; the pods, the node's podman storage and every process are
removed at the end. ``--env`` sets variables in the agent's environment only
(e.g. ``--env MALLOC_ARENA_MAX=4`` to compare).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgesim.fleet import Fleet, Hub, Node, NodeOptions, wait_until  # noqa: E402
from edgesim.podman_setup import RuntimeNotReady, prepare_machine  # noqa: E402

POOL = "footprint"
NODE = "fp-1"
CHART = REPO / "examples" / "web" / "chart"
MIB = 1024 * 1024
# How long the node gets to come online with its health checked, and the component to be Deployed.
ONLINE_TIMEOUT = 60.0
DEPLOY_TIMEOUT = 120.0


@dataclass(frozen=True)
class Sample:
    """One look at a process's memory, in bytes."""

    phase: str
    rss: int
    hwm: int
    uss: int
    pss: int
    threads: int

    @classmethod
    def of(cls, pid: int, phase: str) -> Sample:
        status = Path(f"/proc/{pid}/status").read_text()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()

        def kib(text: str, key: str) -> int:
            match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
            if match is None:
                raise RuntimeError(f"no {key} in /proc/{pid}")
            return int(match.group(1)) * 1024

        uss = kib(rollup, "Private_Clean") + kib(rollup, "Private_Dirty")
        threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]  # the kernel always writes Threads:
        return cls(phase=phase, rss=kib(status, "VmRSS"), hwm=kib(status, "VmHWM"), uss=uss,
                   pss=kib(rollup, "Pss"), threads=threads)

    def row(self) -> str:
        return (f"{self.phase:10} {self.rss / MIB:8.1f} {self.hwm / MIB:8.1f} {self.uss / MIB:8.1f} "
                f"{self.pss / MIB:8.1f} {self.threads:8d}")


def web_component(path: Path) -> Path:
    """The demo's web component, targeting this benchmark's pool."""
    doc = {
        "apiVersion": "edgecollab.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": "web", "namespace": "bench"},
        "spec": {"chart": str(CHART), "values": {"message": "footprint"}, "edge": {"nodePools": [POOL]}},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def node_ready(hub: Hub) -> bool:
    nodes = hub.ctl_json("get", "nodes")
    return any(n["name"] == NODE and n["presence"] == "online" and n["conditions"] for n in nodes)


def deployed(hub: Hub) -> bool:
    view = hub.ctl_json("describe", "component", "bench/web")
    return view["deployed"] == 1 == view["targets"]


def sample_steady(pid: int, phase: str, count: int = 5, interval: float = 1.0) -> Sample:
    """``count`` samples ``interval`` apart; the one with the largest RSS (a reconcile pass may fall in between)."""
    samples = []
    for index in range(count):
        if index:
            time.sleep(interval)
        samples.append(Sample.of(pid, phase))
    return max(samples, key=lambda s: s.rss)


def measure(fleet: Fleet, options: NodeOptions, settle: float, after: float, workdir: Path) -> list[Sample]:
    assert fleet.hub is not None
    hub = fleet.hub
    node: Node = fleet.add_node(NODE, POOL, options=options)
    assert node.proc is not None
    pid = node.proc.pid
    started = time.monotonic()
    wait_until(lambda: node_ready(hub), timeout=ONLINE_TIMEOUT, what=f"{NODE} online with its health checked")
    print(f"agent pid {pid} online after {time.monotonic() - started:.1f} s; settling {settle:.0f} s", flush=True)
    time.sleep(settle)
    samples = [sample_steady(pid, "idle")]

    hub.ctl("apply", "-f", str(web_component(workdir / "web.yaml")))
    started = time.monotonic()
    wait_until(lambda: deployed(hub), timeout=DEPLOY_TIMEOUT, what="bench/web Deployed on the node")
    print(f"Deployed after {time.monotonic() - started:.1f} s; running pods: {len(node.running_pods())}", flush=True)
    samples.append(sample_steady(pid, "deployed"))
    time.sleep(after)
    samples.append(sample_steady(pid, "later"))
    if not node.running:
        raise RuntimeError(f"the agent exited:\n{node.log_tail()}")
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=20.0, help="seconds idle after online before sampling")
    parser.add_argument("--after", type=float, default=30.0, help="seconds after Deployed before the last sample")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set in the agent's environment (repeatable)")
    args = parser.parse_args()
    env = tuple(tuple(item.split("=", 1)) for item in args.env)
    if any(len(pair) != 2 for pair in env):
        parser.error("--env takes NAME=VALUE")
    try:
        machine = prepare_machine(REPO / ".build")
    except RuntimeNotReady as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="ec-bench-footprint-"))
    options = NodeOptions(containers_conf=machine.containers_conf, image_tar=machine.image_tar,
                          env=env)
    try:
        with Fleet(workdir=workdir, node_options=options) as fleet:
            try:
                samples = measure(fleet, options, args.settle, args.after, workdir)
            except BaseException:
                for proc in [fleet.broker, fleet.hub, *fleet.nodes.values()]:
                    if proc is not None:
                        print(f"----- {proc.name} log (tail) -----\n{proc.log_tail(30)}", file=sys.stderr)
                raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{'phase':10} {'RSS':>8} {'peak':>8} {'USS':>8} {'PSS':>8} {'threads':>8}   (MiB)")
    for sample in samples:
        print(sample.row())
    by_phase = {s.phase: s for s in samples}
    result = {
        "idle_rss_mib": round(by_phase["idle"].rss / MIB, 1),
        "deployed_rss_mib": round(by_phase["deployed"].rss / MIB, 1),
        "later_rss_mib": round(by_phase["later"].rss / MIB, 1),
        "peak_rss_mib": round(max(s.hwm for s in samples) / MIB, 1),
        "idle_uss_mib": round(by_phase["idle"].uss / MIB, 1),
        "idle_pss_mib": round(by_phase["idle"].pss / MIB, 1),
        "deployed_uss_mib": round(by_phase["deployed"].uss / MIB, 1),
        "idle_threads": by_phase["idle"].threads,
        "deployed_threads": by_phase["deployed"].threads,
        "env": dict(env),
        "python": sys.version.split()[0],
        "nproc": os.cpu_count(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

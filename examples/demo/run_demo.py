"""The end-to-end demo on the embedded default: Mosquitto, hub (SQLite), agents, and podman or Kubernetes.

    make demo                          # or: .venv/bin/python examples/demo/run_demo.py
    make demo ARGS=--keep-running      # then leave the fleet up, with the web dashboard, until Ctrl-C
    make demo RUNTIME=kubernetes       # the same path on a Kubernetes control plane started on this machine

On podman, two nodes join pool ``shanghai`` and one pool ``beijing``; the
example web component targets ``shanghai``. The demo prints the hub's web
dashboard URL (with the read-only viewer token in its fragment), shows the
component running on exactly those two nodes (as podman sees them), upgrades its
values to revision 2, deletes it, and stops and removes everything it started
(set EDGECOLLAB_KEEP_DEMO=1 to keep the state directories and logs).

With ``--runtime kubernetes`` the same steps run against a real API server: the
demo starts the control plane of :mod:`edgesim.control_plane` (building it once
per machine first, with progress), joins one node with docs/edge-nodes.md's commands for
a k3s node (``edgeagent join --runtime kubernetes --kubeconfig FILE``, ``doctor``,
``run``), and shows what the API server holds for the component (its Deployment's
ready replicas and revision, its pods, its ConfigMap) next to what the hub says.
One node only, for the reason :mod:`kube_demo` gives (and the demo prints).

With ``--keep-running`` it applies the component once more after those steps
and leaves broker, hub and agents (and the control plane) running, so the
dashboard has a fleet and a rollout to show, until Ctrl-C (SIGINT) or SIGTERM;
then it stops everything.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edgesim.fleet import Fleet, Node, NodeOptions, wait_until  # noqa: E402
from edgesim.podman_setup import RuntimeNotReady, prepare_machine  # noqa: E402

if TYPE_CHECKING:
    from kube_demo import ClusterView

    from edgesim.control_plane import ControlPlane

SPEC = REPO / "examples" / "web" / "component.yaml"
BUILD = REPO / ".build"
RUNTIMES = ("podman", "kubernetes")


class DemoNotReady(RuntimeError):
    """The machine cannot run this demo (podman cannot run a pod, the control plane does not build or start)."""


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def show(fleet: Fleet, *args: str) -> None:
    assert fleet.hub is not None
    print(f"$ edgectl {' '.join(args)}")
    print(fleet.hub.ctl(*args).stdout.rstrip(), flush=True)


def deployed(fleet: Fleet, revision: int, count: int) -> bool:
    assert fleet.hub is not None
    view = fleet.hub.ctl_json("describe", "component", "demo/web")
    return view["revision"] == revision and view["deployed"] == count == view["targets"]


def all_online(fleet: Fleet, count: int) -> bool:
    assert fleet.hub is not None
    nodes = fleet.hub.ctl_json("get", "nodes")
    return len(nodes) == count and all(n["presence"] == "online" and n["conditions"] for n in nodes)


def dashboard_url(fleet: Fleet) -> str:
    """The hub's web dashboard with the read-only viewer token in the fragment (never sent to the server)."""
    assert fleet.hub is not None
    viewer = (fleet.hub.state_dir / "viewer-token").read_text().strip()
    return f"{fleet.hub.url}/#token={viewer}"


def wait_for_stop() -> None:
    """Block until SIGINT (Ctrl-C) or SIGTERM. Another one while everything stops is only acknowledged:
    an interrupted stop would leave processes and pods behind."""
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        if stop.is_set():
            print("already stopping everything; a moment", flush=True)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    while not stop.wait(1.0):
        pass


class PodmanNodes:
    """Three nodes, each with its own podman storage: sh-1 and sh-2 in pool shanghai, bj-1 in pool beijing."""

    targeted = 2

    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def prepare(self, workdir: Path, stack: contextlib.ExitStack) -> NodeOptions:
        step("Preparing: demo image (from busybox-static), podman settings for this machine, a pod proven to run")
        try:
            machine = prepare_machine(BUILD)
        except RuntimeNotReady as exc:
            raise DemoNotReady(str(exc)) from exc
        print(f"image tar {machine.image_tar}; containers.conf: {machine.containers_conf or 'podman defaults'}")
        return NodeOptions(containers_conf=machine.containers_conf, image_tar=machine.image_tar)

    def join(self, fleet: Fleet, stack: contextlib.ExitStack) -> None:
        assert fleet.hub is not None
        step("Joining three agents: sh-1, sh-2 (pool shanghai) and bj-1 (pool beijing)")
        shanghai_token = fleet.hub.token("shanghai", uses=2)
        print(f"$ edgectl token create --pool shanghai --uses 2\n{shanghai_token}")
        # The fleet stops these and removes their pods and storage when it closes.
        self.nodes = [fleet.add_node("sh-1", "shanghai", token=shanghai_token),
                      fleet.add_node("sh-2", "shanghai", token=shanghai_token),
                      fleet.add_node("bj-1", "beijing")]
        wait_until(lambda: all_online(fleet, 3), timeout=60, what="three nodes online, each with its health checked")

    def podman_view(self) -> None:
        for node in self.nodes:
            pods = [f"{p['Name']} ({p['Status']})" for p in node.pods()]
            print(f"  podman on {node.name:5}: {', '.join(pods) or 'no pods'}", flush=True)

    def show_running(self, revision: int) -> None:
        self.podman_view()
        for node in self.nodes[:self.targeted]:
            print(f"  page served on {node.name}: {node.served_page('demo.web')!r}", flush=True)

    def wait_removed(self) -> None:
        wait_until(lambda: all(n.pods() == [] for n in self.nodes), timeout=120, what="pods removed on every node")
        self.podman_view()

    def keep_running_hint(self) -> None:
        pass


class KubernetesNodes:
    """One node whose runtime is the Kubernetes control plane this demo starts (kube_demo says why one)."""

    targeted = 1

    def __init__(self) -> None:
        self.plane: ControlPlane | None = None
        self.view: ClusterView | None = None

    def prepare(self, workdir: Path, stack: contextlib.ExitStack) -> NodeOptions:
        from edgesim.control_plane import ControlPlane, ControlPlaneError
        from edgesim.k8s_build import BuildError, Toolset

        step("Preparing: a Kubernetes control plane on this machine (etcd, kube-apiserver, kube-controller-manager, "
             "kube-scheduler, kwok)")
        toolset = Toolset.default()
        if toolset.is_built():
            print(f"binaries built before, in {toolset.bin_dir}")
        else:
            print(f"not built on this machine yet: building them from their Go modules into {toolset.root}, once "
                  "(a while on a small machine; later runs reuse them)", flush=True)
        plane = ControlPlane(workdir / "control-plane")
        try:
            plane.start()
        except (BuildError, ControlPlaneError) as exc:
            raise DemoNotReady(f"the Kubernetes control plane did not start: {exc}") from exc
        stack.callback(plane.stop)
        self.plane = plane
        print(f"API server {plane.server}; administrator's kubeconfig {plane.kubeconfig}")
        return NodeOptions()

    def join(self, fleet: Fleet, stack: contextlib.ExitStack) -> None:
        from kube_demo import WHY_ONE_NODE, ClusterView, join_and_check

        assert self.plane is not None
        step("Joining one agent as a k3s node: sh-1 (pool shanghai), runtime kubernetes")
        print(f"({WHY_ONE_NODE})")
        join_and_check(fleet, "sh-1", "shanghai", self.plane.kubeconfig).start()
        self.view = ClusterView(self.plane, "demo", "web")
        wait_until(lambda: all_online(fleet, 1), timeout=60, what="sh-1 online, with its health checked")

    def show_running(self, revision: int) -> None:
        assert self.view is not None
        self.view.wait_rolled_out(revision)
        self.view.show()

    def wait_removed(self) -> None:
        assert self.view is not None
        self.view.wait_removed()
        self.view.show()

    def keep_running_hint(self) -> None:
        assert self.plane is not None
        print(f"kubeconfig:     {self.plane.kubeconfig}   (API server {self.plane.server})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="edgecollab's end-to-end demo: Mosquitto, hub, agents, and "
                                                 "podman or a Kubernetes control plane.")
    parser.add_argument("--runtime", choices=RUNTIMES, default="podman",
                        help="the nodes' runtime: podman (three nodes, the default) or kubernetes (one node on a "
                             "control plane this demo starts, built once per machine)")
    parser.add_argument("--keep-running", action="store_true",
                        help="after the demo, apply the component again and leave the fleet and the web "
                             "dashboard up until Ctrl-C (SIGINT) or SIGTERM")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, workdir: Path) -> None:
    runtime = KubernetesNodes() if args.runtime == "kubernetes" else PodmanNodes()
    with contextlib.ExitStack() as stack:
        options = runtime.prepare(workdir, stack)
        fleet = stack.enter_context(Fleet(workdir=workdir, node_options=options))
        assert fleet.hub is not None and fleet.broker is not None
        step(f"Mosquitto with identities on {fleet.broker.url}, hub on {fleet.hub.url} (state in {workdir})")
        print(f"broker configured by: edgehub mosquitto-config --state {fleet.hub.state_dir} "
              f"--listen 127.0.0.1:{fleet.broker.port} --out {fleet.broker.config_dir}")
        print("TLS; each client shows a certificate of the hub's CA; each node may read only its own assignments")
        print(f"edgectl gets the hub's operator token with EDGECOLLAB_TOKEN_FILE={fleet.hub.admin_token_path}")
        print(f"web dashboard (live; the read-only viewer token is in the URL's fragment, which the browser "
              f"never sends):\n  {dashboard_url(fleet)}", flush=True)

        runtime.join(fleet, stack)
        show(fleet, "get", "nodes")
        show(fleet, "get", "pools")

        targeted = runtime.targeted
        step(f"Applying {SPEC.relative_to(REPO)} (targets pool shanghai)")
        show(fleet, "apply", "-f", str(SPEC))
        wait_until(lambda: deployed(fleet, 1, targeted), timeout=120,
                   what=f"revision 1 deployed on {targeted} node(s)")
        show(fleet, "describe", "component", "demo/web")
        runtime.show_running(1)

        step("Upgrading the values: revision 2")
        doc = yaml.safe_load(SPEC.read_text())
        doc["spec"]["chart"] = str((SPEC.parent / doc["spec"]["chart"]).resolve())
        doc["spec"]["values"]["message"] = "hello again, revision 2"
        upgraded = workdir / "component-v2.yaml"
        upgraded.write_text(yaml.safe_dump(doc))
        show(fleet, "apply", "-f", str(upgraded))
        wait_until(lambda: deployed(fleet, 2, targeted), timeout=120,
                   what=f"revision 2 deployed on {targeted} node(s)")
        show(fleet, "get", "components")
        show(fleet, "describe", "component", "demo/web")
        runtime.show_running(2)

        step("Deleting the component")
        show(fleet, "delete", "component", "demo/web")
        runtime.wait_removed()
        wait_until(lambda: all(n["releases"] == [] for n in fleet.hub.ctl_json("get", "nodes")), timeout=60,
                   what="every node to report the release gone")
        show(fleet, "get", "nodes")

        if args.keep_running:
            step("Keeping the fleet up (--keep-running): the component applied again for the dashboard to show")
            show(fleet, "apply", "-f", str(SPEC))
            print(f"\nweb dashboard:  {dashboard_url(fleet)}")
            edgectl = Path(sys.executable).parent / "edgectl"
            print(f"edgectl:        EDGECOLLAB_HUB={fleet.hub.url} EDGECOLLAB_TOKEN_FILE={fleet.hub.admin_token_path} "
                  f"{edgectl if edgectl.exists() else 'edgectl'} get nodes")
            runtime.keep_running_hint()
            print(f"logs and state: {workdir}")
            print("Press Ctrl-C to stop everything.", flush=True)
            wait_for_stop()
            print()

        step("Stopping everything the demo started")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="edgecollab-demo-"))
    try:
        run(args, workdir)
    except DemoNotReady as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BaseException:
        # Everything started is stopped by now; what it logged is what tells why a step failed.
        print(f"\nthe demo stopped early; state and logs kept in {workdir}", file=sys.stderr, flush=True)
        raise
    if os.environ.get("EDGECOLLAB_KEEP_DEMO"):
        print(f"state and logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nDemo finished in {time.monotonic() - started:.0f} s; nothing left running.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The demo's Kubernetes node: a real control plane on this machine and one agent joined to it as a k3s node.

``run_demo.py --runtime kubernetes`` (``make demo RUNTIME=kubernetes``) uses it. The control plane is
:class:`edgesim.control_plane.ControlPlane` (etcd, kube-apiserver, kube-controller-manager, kube-scheduler
and a kwok node, built from Kubernetes' Go modules once per machine). The agent is joined and run with the
commands of docs/edge-nodes.md for a k3s node: ``edgeagent join --runtime kubernetes --kubeconfig FILE``, ``edgeagent
doctor``, ``edgeagent run``. What runs is read back from the API server with the ``kubernetes`` client, not
taken from the hub's word.

One node only: a node's releases live in its cluster under the component's namespace, and an agent counts
every object labelled as edgecollab's in its cluster as one of its releases. A second node on this one
cluster would apply ``demo/web`` into the same namespace ``demo`` and remove the other's objects as not its
own; each edge node has a cluster of its own (``examples/k3d/run.sh`` makes two where Docker runs).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from edgesim.control_plane import NODE_NAME, ControlPlane
from edgesim.fleet import Fleet, FleetError, Node, NodeOptions, wait_until

# The kubernetes client is imported where it is used: `make demo` on podman never needs it.

WHY_ONE_NODE = ("one Kubernetes node: this machine has one cluster, and a node's releases live in it under the "
                "component's namespace (demo), so a second node here would apply demo/web into the same namespace "
                "and take the other's objects for its own; each real edge node has its own k3s")
ROLLOUT_SECONDS = 60


def join_and_check(fleet: Fleet, name: str, pool: str, kubeconfig: Path) -> Node:
    """Join ``name`` with the kubernetes runtime and run ``edgeagent doctor`` on it, printing both commands as a
    user types them; the agent is left to start (the fleet stops it with its other nodes)."""
    assert fleet.hub is not None
    token = fleet.hub.token(pool)
    print(f"$ edgectl token create --pool {pool}\n{token}")
    node = fleet.add_node(name, pool, token=token, start=False,
                          options=NodeOptions(runtime="kubernetes", kubeconfig=kubeconfig))
    print(f"$ edgeagent join --hub {fleet.hub.url} --token {token} --name {name} --runtime kubernetes "
          f"--kubeconfig {kubeconfig} --state-dir {node.state_dir}")
    print(node.join_output.rstrip())
    print(f"$ edgeagent doctor --state-dir {node.state_dir}", flush=True)
    done = subprocess.run([sys.executable, "-m", "edgeagent.cli", "doctor", "--state-dir", str(node.state_dir)],
                          capture_output=True, text=True, timeout=60)
    print(done.stdout.rstrip(), flush=True)
    if done.returncode != 0:
        raise FleetError(f"edgeagent doctor on {name} failed ({done.returncode}): {done.stderr.strip()}")
    print(f"$ edgeagent run --state-dir {node.state_dir}   (in the background; log {node.log_path})", flush=True)
    return node


class ClusterView:
    """What the API server holds for one release, read with the official ``kubernetes`` client."""

    def __init__(self, plane: ControlPlane, namespace: str, release: str) -> None:
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        self.apps, self.core = client.AppsV1Api(api), client.CoreV1Api(api)
        self.server = plane.server
        self.namespace, self.release = namespace, release
        self.selector = f"edgecollab.io/release={release},edgecollab.io/release-namespace={namespace}"
        # The pod selectors of the Deployments seen: their pods outlive the Deployment until the garbage
        # collector has removed them, and are not labelled as the release's themselves.
        self.pod_selectors: set[str] = set()

    def deployments(self) -> list[Any]:
        return self.apps.list_namespaced_deployment(self.namespace, label_selector=self.selector,
                                                    _request_timeout=10).items

    def config_maps(self) -> list[Any]:
        return self.core.list_namespaced_config_map(self.namespace, label_selector=self.selector,
                                                    _request_timeout=10).items

    def _pods(self, selector: str) -> list[Any]:
        return self.core.list_namespaced_pod(self.namespace, label_selector=selector, _request_timeout=10).items

    def pods(self, deployment: Any) -> list[Any]:
        selector = ",".join(f"{k}={v}" for k, v in sorted((deployment.spec.selector.match_labels or {}).items()))
        self.pod_selectors.add(selector)
        return self._pods(selector)

    def objects(self) -> list[str]:
        return ([f"Deployment {d.metadata.name}" for d in self.deployments()]
                + [f"ConfigMap {c.metadata.name}" for c in self.config_maps()]
                + [f"Pod {p.metadata.name}" for selector in sorted(self.pod_selectors) for p in self._pods(selector)])

    @staticmethod
    def rolled_out(deployment: Any) -> bool:
        """As ``kubectl rollout status`` decides: the controller saw this spec, and every replica is new and ready."""
        status, wanted = deployment.status, deployment.spec.replicas or 0
        return ((status.observed_generation or 0) >= deployment.metadata.generation
                and (status.updated_replicas or 0) == wanted == (status.ready_replicas or 0)
                and (status.replicas or 0) == wanted)

    def wait_rolled_out(self, revision: int) -> None:
        def done() -> bool:
            deployments = self.deployments()
            return bool(deployments) and all(
                self.rolled_out(d) and d.metadata.labels.get("edgecollab.io/revision") == str(revision)
                for d in deployments)

        wait_until(done, timeout=ROLLOUT_SECONDS,
                   what=f"the Deployment of {self.namespace}/{self.release} at revision {revision} rolled out")

    def show(self) -> None:
        print(f"  API server {self.server}, namespace {self.namespace}, objects of release {self.release}:")
        for deployment in self.deployments():
            labels, status = deployment.metadata.labels, deployment.status
            print(f"    Deployment {deployment.metadata.name}: {status.ready_replicas or 0}/{deployment.spec.replicas} "
                  f"ready, edgecollab.io/revision={labels.get('edgecollab.io/revision')}, "
                  f"managed by {labels.get('app.kubernetes.io/managed-by')}")
            for pod in self.pods(deployment):
                if pod.metadata.deletion_timestamp:  # an old revision's pod on its way out
                    continue
                ready = all(c.ready for c in pod.status.container_statuses or ())
                print(f"      Pod {pod.metadata.name} on {pod.spec.node_name}: {pod.status.phase}"
                      f"{', ready' if ready else ''}")
        for config_map in self.config_maps():
            print(f"    ConfigMap {config_map.metadata.name}: index.html = {config_map.data.get('index.html')!r}")
        if self.objects():
            print(f"  (pods run on {NODE_NAME}, a kwok node: the control plane schedules them and kwok reports them "
                  "Running and ready; no container runs and no image is pulled)", flush=True)
        else:
            print("    none: no Deployment, ConfigMap or pod left", flush=True)

    def wait_removed(self) -> None:
        wait_until(lambda: self.objects() == [], timeout=ROLLOUT_SECONDS,
                   what=f"every object of {self.namespace}/{self.release} deleted from the API server")

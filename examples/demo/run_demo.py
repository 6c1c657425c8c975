"""The end-to-end demo on the embedded default: Mosquitto, hub (SQLite), three agents, podman.

    make demo

Two nodes join pool ``shanghai`` and one pool ``beijing``; the example web
component targets ``shanghai``. The demo shows it running on exactly those two
nodes (as podman sees them), upgrades its values to revision 2, deletes it, and
stops and removes everything it started (set EDGECOLLAB_KEEP_DEMO=1 to keep the
state directories and logs).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edgesim.fleet import Fleet, Node, NodeOptions, wait_until  # noqa: E402
from edgesim.podman_setup import RuntimeNotReady, prepare_machine  # noqa: E402

SPEC = REPO / "examples" / "web" / "component.yaml"
BUILD = REPO / ".build"


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def show(fleet: Fleet, *args: str) -> None:
    assert fleet.hub is not None
    print(f"$ edgectl {' '.join(args)}")
    print(fleet.hub.ctl(*args).stdout.rstrip(), flush=True)


def podman_view(nodes: list[Node]) -> None:
    for node in nodes:
        pods = [f"{p['Name']} ({p['Status']})" for p in node.pods()]
        print(f"  podman on {node.name:5}: {', '.join(pods) or 'no pods'}")


def deployed(fleet: Fleet, revision: int, count: int) -> bool:
    assert fleet.hub is not None
    view = fleet.hub.ctl_json("describe", "component", "demo/web")
    return view["revision"] == revision and view["deployed"] == count == view["targets"]


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    step("Preparing: demo image (from busybox-static), podman settings for this machine, a pod proven to run")
    try:
        machine = prepare_machine(BUILD)
    except RuntimeNotReady as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"image tar {machine.image_tar}; containers.conf: {machine.containers_conf or 'podman defaults'}")

    workdir = Path(tempfile.mkdtemp(prefix="edgecollab-demo-"))
    options = NodeOptions(containers_conf=machine.containers_conf, image_tar=machine.image_tar)
    with Fleet(workdir=workdir, node_options=options) as fleet:
        assert fleet.hub is not None and fleet.broker is not None
        step(f"Mosquitto with identities on {fleet.broker.url}, hub on {fleet.hub.url} (state in {workdir})")
        print(f"broker configured by: edgehub mosquitto-config --state {fleet.hub.state_dir} "
              f"--listen 127.0.0.1:{fleet.broker.port} --out {fleet.broker.config_dir}")
        print("TLS; each client shows a certificate of the hub's CA; each node may read only its own assignments")
        print(f"edgectl gets the hub's operator token with EDGECOLLAB_TOKEN_FILE={fleet.hub.admin_token_path}")

        step("Joining three agents: sh-1, sh-2 (pool shanghai) and bj-1 (pool beijing)")
        shanghai_token = fleet.hub.token("shanghai", uses=2)
        print(f"$ edgectl token create --pool shanghai --uses 2\n{shanghai_token}")
        nodes = [fleet.add_node("sh-1", "shanghai", token=shanghai_token),
                 fleet.add_node("sh-2", "shanghai", token=shanghai_token),
                 fleet.add_node("bj-1", "beijing")]
        wait_until(lambda: all(n["presence"] == "online" and n["conditions"] for n in fleet.hub.ctl_json("get", "nodes")),
                   timeout=60, what="three nodes online, each with its health checked")
        show(fleet, "get", "nodes")
        show(fleet, "get", "pools")

        step(f"Applying {SPEC.relative_to(REPO)} (targets pool shanghai)")
        show(fleet, "apply", "-f", str(SPEC))
        wait_until(lambda: deployed(fleet, 1, 2), timeout=120, what="revision 1 deployed on 2 nodes")
        show(fleet, "describe", "component", "demo/web")
        podman_view(nodes)
        print(f"  page served on sh-1: {nodes[0].served_page('demo.web')!r}")

        step("Upgrading the values: revision 2")
        doc = yaml.safe_load(SPEC.read_text())
        doc["spec"]["chart"] = str((SPEC.parent / doc["spec"]["chart"]).resolve())
        doc["spec"]["values"]["message"] = "hello again, revision 2"
        upgraded = workdir / "component-v2.yaml"
        upgraded.write_text(yaml.safe_dump(doc))
        show(fleet, "apply", "-f", str(upgraded))
        wait_until(lambda: deployed(fleet, 2, 2), timeout=120, what="revision 2 deployed on 2 nodes")
        show(fleet, "get", "components")
        show(fleet, "describe", "component", "demo/web")
        print(f"  page served on sh-2: {nodes[1].served_page('demo.web')!r}")

        step("Deleting the component")
        show(fleet, "delete", "component", "demo/web")
        wait_until(lambda: all(n.pods() == [] for n in nodes), timeout=120, what="pods removed on every node")
        podman_view(nodes)
        show(fleet, "get", "nodes")

        step("Stopping everything the demo started")
    if os.environ.get("EDGECOLLAB_KEEP_DEMO"):
        print(f"state and logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nDemo finished in {time.monotonic() - started:.0f} s; nothing left running.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

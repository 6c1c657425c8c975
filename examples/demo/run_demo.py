"""The end-to-end demo on the embedded default: Mosquitto, hub (SQLite), three agents, podman.

    make demo                          # or: .venv/bin/python examples/demo/run_demo.py
    make demo ARGS=--keep-running      # then leave the fleet up, with the web dashboard, until Ctrl-C

Two nodes join pool ``shanghai`` and one pool ``beijing``; the example web
component targets ``shanghai``. The demo prints the hub's web dashboard URL
(with the read-only viewer token in its fragment), shows the component running
on exactly those two nodes (as podman sees them), upgrades its values to
revision 2, deletes it, and stops and removes everything it started (set
EDGECOLLAB_KEEP_DEMO=1 to keep the state directories and logs).

With ``--keep-running`` it applies the component once more after those steps
and leaves broker, hub and agents running, so the dashboard has a fleet and a
rollout to show, until Ctrl-C (SIGINT) or SIGTERM; then it stops everything.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="edgecollab's end-to-end demo: Mosquitto, hub, three agents, podman.")
    parser.add_argument("--keep-running", action="store_true",
                        help="after the demo, apply the component again and leave the fleet and the web "
                             "dashboard up until Ctrl-C (SIGINT) or SIGTERM")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
        print(f"web dashboard (live; the read-only viewer token is in the URL's fragment, which the browser "
              f"never sends):\n  {dashboard_url(fleet)}", flush=True)

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

        if args.keep_running:
            step("Keeping the fleet up (--keep-running): the component applied again for the dashboard to show")
            show(fleet, "apply", "-f", str(SPEC))
            print(f"\nweb dashboard:  {dashboard_url(fleet)}")
            edgectl = Path(sys.executable).parent / "edgectl"
            print(f"edgectl:        EDGECOLLAB_HUB={fleet.hub.url} EDGECOLLAB_TOKEN_FILE={fleet.hub.admin_token_path} "
                  f"{edgectl if edgectl.exists() else 'edgectl'} get nodes")
            print(f"logs and state: {workdir}")
            print("Press Ctrl-C to stop everything.", flush=True)
            wait_for_stop()
            print()

        step("Stopping everything the demo started")
    if os.environ.get("EDGECOLLAB_KEEP_DEMO"):
        print(f"state and logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nDemo finished in {time.monotonic() - started:.0f} s; nothing left running.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

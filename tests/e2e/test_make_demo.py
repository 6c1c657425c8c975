"""`make demo`, as the README's "Try it" block shows it, on podman and on Kubernetes.

The commands run as a user types them, from the checkout (``make`` installs what is missing, proves podman
can run a pod, then runs ``examples/demo/run_demo.py``). What is checked is what the demo shows a user, and
that it leaves nothing running: no process whose command line names its state directory, and no directory.
The Kubernetes variant starts a control plane of its own (``edgesim.control_plane``: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok) beside any the session runs; the binaries are built once per
machine (``make test`` builds them before the tests).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from fleet_checks import REPO

# make runs the package check and podman's proof first; the Kubernetes demo also starts a control plane.
DEMO_SECONDS = 300
pytestmark = [pytest.mark.fleet, pytest.mark.timeout(DEMO_SECONDS + 30)]


def try_it_commands() -> list[str]:
    """The command lines of the README's "Try it" block, comments dropped."""
    block = (REPO / "README.md").read_text().split("## Try it", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def run_demo(command: str) -> str:
    assert command in try_it_commands(), f"{command!r} is not in the README's Try it block"
    # A user's shell: not inside another make (make test), not keeping the demo's state.
    env = {k: v for k, v in os.environ.items() if k not in ("EDGECOLLAB_KEEP_DEMO", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    done = subprocess.run(command.split(), cwd=REPO, env=env, capture_output=True, text=True, timeout=DEMO_SECONDS)
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stdout[-6000:]}\n{done.stderr[-4000:]}"
    assert re.search(r"Demo finished in \d+ s; nothing left running", done.stdout), done.stdout[-3000:]
    return done.stdout


def state_dir(output: str) -> Path:
    found = re.search(r"hub on \S+ \(state in (/\S+)\)", output)
    assert found, output[-3000:]
    return Path(found.group(1))


def processes_naming(path: Path) -> list[str]:
    """Command lines of running processes that name ``path`` (every process the demo starts does)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in argv:
            found.append(f"{proc.name}: {argv[:200]}")
    return found


def describe_rows(output: str, step: str) -> str:
    """The output of one of the demo's steps (from its ``=== `` title to the next)."""
    return output.split(f"=== {step}", 1)[1].split("\n=== ", 1)[0]


def test_make_demo_on_podman_runs_the_component_on_its_two_nodes_upgrades_deletes_and_stops_everything():
    output = run_demo("make demo")

    applied = describe_rows(output, "Applying")
    assert "Ready:     2/2 node(s)" in applied
    assert re.search(r"podman on sh-1 : demo\.web-pod-0 \(Running\)", applied)
    assert "podman on bj-1 : no pods" in applied
    assert "page served on sh-2: 'hello from edgecollab\\n'" in applied
    upgraded = describe_rows(output, "Upgrading")
    assert "Revision:  2" in upgraded and "Ready:     2/2 node(s)" in upgraded
    assert "page served on sh-1: 'hello again, revision 2\\n'" in upgraded
    deleted = describe_rows(output, "Deleting")
    assert "deleted" in deleted and "demo.web-pod" not in deleted and "demo/web@" not in deleted

    work = state_dir(output)
    assert not work.exists()
    assert processes_naming(work) == []


def test_make_demo_on_kubernetes_shows_the_release_in_the_api_server_and_stops_everything():
    output = run_demo("make demo RUNTIME=kubernetes")

    assert re.search(r"\[control plane\] ready in [\d.]+ s: https://127\.0\.0\.1:\d+", output)
    joined = describe_rows(output, "Joining")
    assert "one Kubernetes node" in joined  # and why
    assert "--runtime kubernetes --kubeconfig" in joined and "runtime: kubernetes" in joined
    assert re.search(r"ok +kubernetes +Kubernetes v1\.36\.\d+ at https://127\.0\.0\.1:\d+", joined)
    assert re.search(r"sh-1 +shanghai +online +Ready", joined)

    # The hub's word and the API server's, after the install and after the upgrade.
    applied = describe_rows(output, "Applying")
    assert re.search(r"sh-1 +shanghai +online +1 +1 +Deployed", applied)
    assert "Deployment web: 1/1 ready, edgecollab.io/revision=1, managed by edgecollab" in applied
    assert re.search(r"Pod web-\S+ on kwok-node-0: Running, ready", applied)
    assert "ConfigMap web-page: index.html = 'hello from edgecollab\\n'" in applied
    upgraded = describe_rows(output, "Upgrading")
    assert re.search(r"sh-1 +shanghai +online +2 +2 +Deployed", upgraded)
    assert "Deployment web: 1/1 ready, edgecollab.io/revision=2" in upgraded
    assert "ConfigMap web-page: index.html = 'hello again, revision 2\\n'" in upgraded
    assert len(re.findall(r"Pod web-\S+ on kwok-node-0", upgraded)) == 1  # the first revision's pod is gone
    deleted = describe_rows(output, "Deleting")
    assert "none: no Deployment, ConfigMap or pod left" in deleted and "demo/web@" not in deleted

    work = state_dir(output)
    assert not work.exists()
    assert processes_naming(work) == []  # etcd, the API server, kwok, broker, hub and agent all stopped

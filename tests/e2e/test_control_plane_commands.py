"""The control plane's commands as the README shows them: ``make control-plane`` (a built machine builds
nothing and names its binaries), ``python -m edgesim.control_plane start --dir DIR`` (a kubeconfig a client
uses, a kwok node that runs pods) and ``stop --dir DIR`` (nothing left running)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fleet_checks import REPO

from edgesim.k8s_build import ETCD_VERSION, KUBERNETES_VERSION, KWOK_VERSION, Toolset, staging_replacements

pytestmark = pytest.mark.timeout(240)


def processes_naming(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in command:
                found.append(f"{entry.name}: {command[:160]}")
    return found


def test_the_readme_names_the_commands_tested_here() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for command in ("make control-plane", "python -m edgesim.k8s_build",
                    "python -m edgesim.control_plane start|stop --dir DIR", "TEST_WORKERS=0"):
        assert command in readme, command


def test_make_control_plane_on_a_built_machine_builds_nothing_and_names_the_binaries(control_plane) -> None:
    done = subprocess.run(["make", "-s", "control-plane"], cwd=REPO, capture_output=True, text=True, timeout=200,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    toolset = Toolset.default()
    assert done.stdout.strip().splitlines()[-1] == str(toolset.bin_dir)
    assert "building" not in done.stdout
    versions = json.loads((toolset.bin_dir / "versions.json").read_text(encoding="utf-8"))
    assert versions["etcd"] == f"etcd Version: {ETCD_VERSION[1:]}"
    assert versions["kube-apiserver"] == f"Kubernetes {KUBERNETES_VERSION}"
    assert versions["kwok"].startswith(f"kwok version {KWOK_VERSION}")


def test_start_gives_a_kubeconfig_whose_cluster_runs_a_pod_and_stop_leaves_nothing(tmp_path: Path) -> None:
    kubernetes = pytest.importorskip("kubernetes")
    work = tmp_path / "cluster"
    command = [sys.executable, "-m", "edgesim.control_plane"]
    started = subprocess.run([*command, "start", "--dir", str(work)], capture_output=True, text=True, timeout=180,
                             check=False)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert started.stdout.strip().splitlines()[-1] == f"export KUBECONFIG={work / 'kubeconfig'}"
        # The processes outlive the command that started them, and a second start on the directory is refused.
        again = subprocess.run([*command, "start", "--dir", str(work)], capture_output=True, text=True, timeout=60,
                               check=False)
        assert again.returncode == 1 and "has a running control plane" in again.stderr

        client = kubernetes.config.new_client_from_config(str(work / "kubeconfig"))
        core = kubernetes.client.CoreV1Api(client)
        (node,) = core.list_node().items
        assert node.metadata.name == "kwok-node-0"
        assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
        core.create_namespaced_pod("default", {"metadata": {"name": "hello"}, "spec": {
            "containers": [{"name": "c", "image": "localhost/edgecollab-busybox:1"}]}})
        deadline = time.monotonic() + 30
        while (pod := core.read_namespaced_pod("hello", "default")).status.phase != "Running":
            assert time.monotonic() < deadline, pod.status
            time.sleep(0.25)
        assert pod.spec.node_name == "kwok-node-0"
        client.close()
    finally:
        stopped = subprocess.run([*command, "stop", "--dir", str(work)], capture_output=True, text=True,
                                 timeout=120, check=False)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == "stopped: kwok, kube-scheduler, kube-controller-manager, kube-apiserver, etcd"
    assert processes_naming(str(work)) == []
    assert not (work / "pids.json").exists()


def test_the_build_replaces_every_staging_module_with_its_published_version() -> None:
    go_mod = ("module k8s.io/kubernetes\n\nrequire (\n\tk8s.io/api v0.0.0\n)\n\nreplace (\n"
              "\tk8s.io/api => ./staging/src/k8s.io/api\n"
              "\tk8s.io/sample-cli-plugin => ./staging/src/k8s.io/sample-cli-plugin\n"
              "\tk8s.io/client-go => ./staging/src/k8s.io/client-go\n)\n")
    assert staging_replacements(go_mod, "v1.36.3") == ["k8s.io/api => k8s.io/api v0.36.3",
                                                       "k8s.io/client-go => k8s.io/client-go v0.36.3"]


def test_a_go_mod_without_staging_replacements_is_refused_by_name() -> None:
    from edgesim.k8s_build import BuildError

    with pytest.raises(BuildError, match="no staging replacements in k8s.io/kubernetes's go.mod"):
        staging_replacements("module k8s.io/kubernetes\n", "v1.36.3")


def test_where_names_the_binaries_of_a_built_machine(control_plane) -> None:
    done = subprocess.run([sys.executable, "-m", "edgesim.k8s_build", "--where"], capture_output=True, text=True,
                          timeout=30, check=False, env={**os.environ})
    assert (done.returncode, done.stdout.strip()) == (0, str(Toolset.default().bin_dir))


def test_a_port_taken_before_its_server_binds_it_is_given_up_for_another(tmp_path: Path, monkeypatch,
                                                                         capsys) -> None:
    import socket

    from edgesim import control_plane as module

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1]])  # etcd's client port, the first one picked, is someone else's
    real = module.free_port
    monkeypatch.setattr(module, "free_port", lambda: next(ports, None) or real())
    plane = module.ControlPlane(tmp_path / "cluster")
    try:
        plane.start()
        assert plane.ports["etcd"] != taken.getsockname()[1]
        assert plane._api_ready() is True
    finally:
        plane.stop()
        taken.close()
    assert "a port was taken meanwhile (attempt 1/3); starting again on other ports" in capsys.readouterr().out

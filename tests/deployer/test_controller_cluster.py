"""The Component controller against a real cluster (k3d): the CRD created, a Component applied, its
status written, its deletion released by the finalizer.

Runs only when ``KUBECONFIG`` points at a reachable cluster; skipped with the reason otherwise. The
deployer is the in-memory one of test_controller_decisions.py, so this checks the cluster half
(CRD, CEL rules, finalizer, status subresource, watch); the hub half is tests/hub/test_edge_deployer.py.

    k3d cluster create edgecollab && KUBECONFIG=$(k3d kubeconfig write edgecollab) \\
        pytest tests/deployer/test_controller_cluster.py
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_controller_decisions import MemoryDeployer

from deployer_plugin.controller import FINALIZER, GROUP, PLURAL, VERSION, Controller

CRD_FILE = Path(__file__).resolve().parents[2] / "charts" / "edgehub" / "crds" / "components.edgecollab.io.yaml"
NO_CLUSTER = "no cluster: set KUBECONFIG to a k3d cluster's kubeconfig to run this"


@pytest.fixture(scope="module")
def kube() -> Any:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip(NO_CLUSTER)
    kubernetes = pytest.importorskip("kubernetes", reason="the kubernetes client is not installed")
    try:
        kubernetes.config.load_kube_config()
        kubernetes.client.VersionApi().get_code(_request_timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable cluster here
        pytest.skip(f"{NO_CLUSTER} (KUBECONFIG is set, but the cluster is unreachable: {exc})")
    return kubernetes


def wait_for(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout} s")


@pytest.fixture(scope="module")
def crd(kube: Any) -> None:
    extensions = kube.client.ApiextensionsV1Api()
    body = yaml.safe_load(CRD_FILE.read_text(encoding="utf-8"))
    try:
        extensions.create_custom_resource_definition(body)
    except kube.client.exceptions.ApiException as exc:
        if exc.status != 409:
            raise
        existing = extensions.read_custom_resource_definition(body["metadata"]["name"])
        body["metadata"]["resourceVersion"] = existing.metadata.resource_version
        extensions.replace_custom_resource_definition(body["metadata"]["name"], body)

    def established() -> bool:
        status = extensions.read_custom_resource_definition(body["metadata"]["name"]).status
        return any(c.type == "Established" and c.status == "True" for c in status.conditions or [])

    wait_for(established)


def test_a_component_gets_its_status_and_its_deletion_waits_for_the_hub(kube: Any, crd: None) -> None:
    api = kube.client.CustomObjectsApi()
    core = kube.client.CoreV1Api()
    namespace = f"edgecollab-test-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": namespace}})
    deployer = MemoryDeployer()
    controller = Controller(deployer, api, namespace=namespace, resync_seconds=5)
    runner = threading.Thread(target=controller.run, kwargs={"stop_after": 60}, daemon=True)
    try:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Component",
                "metadata": {"name": "web", "namespace": namespace},
                "spec": {"chart": {"repo": "https://charts.example.com", "name": "web", "version": "1.2.3"},
                         "values": {"message": "hi"}, "edge": {"nodePools": ["shanghai"]}}}
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        # The API server refuses what the parser refuses (a CEL rule here).
        broken = {**body, "metadata": {"name": "broken", "namespace": namespace},
                  "spec": {**body["spec"], "edge": {"nodePools": ["shanghai"], "poolValues": {"beijing": {}}}}}
        with pytest.raises(kube.client.exceptions.ApiException) as refused:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, broken)
        assert refused.value.status == 422 and "poolValues" in refused.value.body

        runner.start()

        def status() -> dict[str, Any] | None:
            written = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "web").get("status") or {}
            return written if written.get("targetRevision") else None

        written = wait_for(status)
        assert written["observedGeneration"] == 1 and written["targetRevision"] == 1
        assert {c["type"] for c in written["conditions"]} == {"Progressing", "Available", "RolledBack"}
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "web")
        assert FINALIZER in obj["metadata"]["finalizers"]

        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "web")

        def gone() -> bool:
            try:
                api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "web")
            except kube.client.exceptions.ApiException as exc:
                return exc.status == 404
            return False

        wait_for(gone)
        assert deployer.releases == {}
    finally:
        core.delete_namespace(namespace)

"""The Component CRD and namespaces in the session's real API server (``control_plane`` fixture).

Shared by the CRD test (tests/deployer/test_crd_schema.py) and the controller test
(tests/deployer/test_controller_cluster.py). The kubernetes client is given an ``ApiClient`` of its
own (``config.new_client_from_config``), never the process-wide default configuration.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from deployer_plugin.controller import FINALIZER, GROUP, PLURAL, VERSION
from edgesim.fleet import wait_until

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "charts" / "edgehub" / "crds" / "components.edgecollab.io.yaml"
# What `kubectl get` asks for: the API server's Table with the CRD's printer columns.
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def api_client(kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


def crd_document() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text(encoding="utf-8"))


def install_crd(api: client.ApiClient) -> dict[str, Any]:
    """Create the Component CRD from the chart's crds/ (or replace the one there, as ``kubectl apply``
    would) and wait until it is Established; returns it as the server holds it."""
    extensions = client.ApiextensionsV1Api(api)
    body = crd_document()
    name = body["metadata"]["name"]
    try:
        extensions.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        body["metadata"]["resourceVersion"] = extensions.read_custom_resource_definition(name).metadata.resource_version
        extensions.replace_custom_resource_definition(name, body)

    def established() -> dict[str, Any] | None:
        held = api.sanitize_for_serialization(extensions.read_custom_resource_definition(name))
        conditions = {c["type"]: c["status"] for c in held.get("status", {}).get("conditions") or []}
        return held if conditions.get("Established") == "True" else None

    return wait_until(established, timeout=30, what=f"the CRD {name} Established")


def create_namespace(api: client.ApiClient, prefix: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


def delete_namespace(api: client.ApiClient, name: str) -> None:
    """Delete namespace ``name``, dropping the controller's finalizer from Components left in it (the
    controller may be gone), so the namespace does not stay Terminating."""
    objects = client.CustomObjectsApi(api)
    with _absent_ok():
        for obj in objects.list_namespaced_custom_object(GROUP, VERSION, name, PLURAL)["items"]:
            finalizers = [f for f in obj["metadata"].get("finalizers") or [] if f != FINALIZER]
            with _absent_ok():
                objects.patch_namespaced_custom_object(GROUP, VERSION, name, PLURAL, obj["metadata"]["name"],
                                                       {"metadata": {"finalizers": finalizers}})
    with _absent_ok():
        client.CoreV1Api(api).delete_namespace(name)


class _absent_ok:  # noqa: N801 - used as a context manager
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        return isinstance(exc, ApiException) and exc.status == 404


def table(api: client.ApiClient, path: str) -> dict[str, Any]:
    """GET ``path`` as the Table ``kubectl get`` prints: columnDefinitions and rows of cells."""
    method, url, headers, body, _ = api.param_serialize("GET", path, header_params={"Accept": TABLE},
                                                        auth_settings=["BearerToken"])
    response = api.call_api(method, url, header_params=headers, body=body, _request_timeout=(5, 30))
    response.read()
    assert response.status == 200, response.data
    return json.loads(response.data)


def refusal(exc: ApiException) -> tuple[int, str]:
    """(HTTP status, the Status message) of a refused request."""
    try:
        return exc.status, json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return exc.status, str(exc.body)

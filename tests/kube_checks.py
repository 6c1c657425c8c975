"""Checks shared by the tests that run against the session's Kubernetes control plane (``control_plane``): what the
API server holds, what it was asked to change and in which order, and a chart rendered as the hub renders it.

The tests look at the cluster as a user does with kubectl: through the API server, with the administrator's
kubeconfig. Every test works in namespaces (and CustomResourceDefinition groups) of its own and removes them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet_checks import REPO

WIDGETS_CHART = REPO / "tests" / "charts" / "widgets"
# Seconds a request of the tests' own client may take.
REQUEST_TIMEOUT = 15


def unique_name(prefix: str) -> str:
    """A namespace (or release) name no other test of the session uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def widget_group(namespace: str) -> str:
    """The API group of the widgets chart's CustomResourceDefinition for a test working in ``namespace``: a CRD is
    cluster-wide and belongs to one release."""
    return f"{namespace}.edgecollab.test"


@functools.cache
def client(kubeconfig: Path) -> Any:
    """A dynamic client with the administrator's kubeconfig (what ``kubectl`` would use)."""
    from kubernetes import client as k8s
    from kubernetes import config
    from kubernetes.dynamic import DynamicClient

    configuration = k8s.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return DynamicClient(k8s.ApiClient(configuration))


def resource(kubeconfig: Path, api_version: str, kind: str) -> Any:
    return client(kubeconfig).resources.get(api_version=api_version, kind=kind)


def live(kubeconfig: Path, api_version: str, kind: str, name: str,
         namespace: str | None = None) -> dict[str, Any] | None:
    """The object as the API server holds it now; None when it does not exist (or its kind is not served)."""
    from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

    try:
        found = resource(kubeconfig, api_version, kind).get(name=name, namespace=namespace,
                                                            _request_timeout=REQUEST_TIMEOUT)
    except (NotFoundError, ResourceNotFoundError):
        return None
    return found.to_dict()


def deleted(obj: dict[str, Any] | None) -> bool:
    """Gone, or being deleted: a CustomResourceDefinition, say, stays until its custom resources are gone."""
    return obj is None or bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def labels(obj: dict[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("labels") or {})


def delete(kubeconfig: Path, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
    """Delete an object if it exists (background propagation, as ``kubectl delete`` does)."""
    from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

    with contextlib.suppress(NotFoundError, ResourceNotFoundError):
        resource(kubeconfig, api_version, kind).delete(name=name, namespace=namespace,
                                                       body={"propagationPolicy": "Background"},
                                                       _request_timeout=REQUEST_TIMEOUT)


def remove_test_objects(kubeconfig: Path, namespace: str) -> None:
    """What a test made: its namespace (and everything in it) and its widgets CustomResourceDefinition."""
    delete(kubeconfig, "apiextensions.k8s.io/v1", "CustomResourceDefinition", f"widgets.{widget_group(namespace)}")
    delete(kubeconfig, "v1", "Namespace", namespace)


def render_chart(chart: Path, *, name: str, namespace: str, values: dict[str, Any] | None = None,
                 revision: int = 1) -> str:
    """The manifests the hub sends for ``chart`` with ``values`` at ``revision`` (the Helm engine, as the hub
    renders a component)."""
    from deployer_plugin import package_chart, parse_component
    from deployer_plugin.render import render_release

    component = parse_component({
        "apiVersion": "edgecollab.io/v1alpha1", "kind": "Component", "metadata": {"name": name, "namespace": namespace},
        "spec": {"chart": str(chart), "values": values or {}, "edge": {"nodePools": ["any"]}},
    })
    return render_release(component, package_chart(chart), revision=revision).bundles[""].manifests


@dataclass(frozen=True)
class Write:
    """One change the API server made for a client: ``verb`` (create, patch, update, delete), the resource (plural),
    the object's namespace ("" when cluster-scoped) and name, and the client's field manager ("" for a delete)."""

    verb: str
    resource: str
    namespace: str
    name: str
    field_manager: str

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}/{self.name}"


class AuditLog:
    """The API server's audit log (``ControlPlane.audit_log``), read from a mark on: what clients changed, in order.

    Requests the server refused and dry runs change nothing and are left out.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def writes(self, since: int, *, namespace: str | None = None, names: frozenset[str] = frozenset()) -> list[Write]:
        """The changes made since ``since``: in ``namespace`` (when given) or to the cluster-scoped objects
        ``names``."""
        from urllib.parse import parse_qs, urlsplit

        with self.path.open("rb") as log:
            log.seek(since)
            lines = log.read().decode().splitlines()
        found = []
        for line in lines:
            event = json.loads(line)
            ref = event.get("objectRef") or {}
            query = parse_qs(urlsplit(event.get("requestURI", "")).query)
            if "dryRun" in query or (event.get("responseStatus") or {}).get("code", 500) >= 300:
                continue
            ns = ref.get("namespace") or ""
            if namespace is not None and ns != namespace and not (not ns and ref.get("name") in names):
                continue
            found.append(Write(event["verb"], ref.get("resource", ""), ns, ref.get("name", ""),
                               (query.get("fieldManager") or [""])[0]))
        return found

"""The base Component document the deployer tests start from (the ``doc`` fixture hands out copies)."""

from __future__ import annotations

from typing import Any

BASE_DOC: dict[str, Any] = {
    "apiVersion": "edgecollab.io/v1alpha1",
    "kind": "Component",
    "metadata": {"name": "web", "namespace": "demo"},
    "spec": {
        "chart": "./chart",
        "values": {"message": "hi"},
        "edge": {
            "nodePools": ["shanghai", "beijing"],
            "poolValues": {"shanghai": {"greeting": "ni hao"}},
        },
    },
}

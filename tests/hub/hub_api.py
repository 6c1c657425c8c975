"""Helpers for the in-process hub tests: a running hub with an operator's client, and the answer checks.

The hub is the real application (``create_app``) on aiohttp's test server;
its client sends the operator token the hub created, as ``edgectl`` does.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent.identity import make_csr
from edgehub.app import create_app
from edgehub.auth import OPERATOR_TOKEN
from edgehub.keys import MQTT
from edgehub.settings import HubSettings

JSON = {"Content-Type": "application/json"}


@asynccontextmanager
async def running_hub(settings: HubSettings) -> AsyncIterator[TestClient]:
    """The hub on a free loopback port, connected to its broker; the client carries the operator token."""
    app = create_app(settings)
    server = TestServer(app)
    await server.start_server()
    client = TestClient(server, headers={"Authorization": f"Bearer {app[OPERATOR_TOKEN]}"})
    try:
        await client.start_server()
        await app[MQTT].wait_connected(10)
        yield client
    finally:
        await client.close()  # closes the server too


def operator_token(hub: TestClient) -> str:
    return hub.app[OPERATOR_TOKEN]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


async def answer(response: Any, status: int) -> Any:
    """The JSON body of ``response``, after checking its status and that it is JSON."""
    body = await response.text()
    assert response.status == status, body
    assert response.content_type == "application/json", body
    return json.loads(body)


async def refused(response: Any, status: int, field: str | None = None) -> str:
    body = await answer(response, status)
    assert set(body) <= {"error", "field"} and body["error"], body
    if field is not None:
        assert body.get("field") == field and field in body["error"], body
    return body["error"]


async def create_token(hub: TestClient, pool: str = "shanghai", **fields: Any) -> str:
    return (await answer(await hub.post("/api/v1/tokens", json={"pool": pool, **fields}), 201))["token"]


async def join(hub: Any, token: str, node: str, **fields: Any) -> Any:
    body = {"token": token, "node": node, "csr": make_csr(Ed25519PrivateKey.generate(), node), **fields}
    return await hub.post("/api/v1/join", json=body)

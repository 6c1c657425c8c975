"""What someone who reaches the hub without the operator token, or through a browser, gets: nothing.

Each attack is refused with its status and a JSON error, and the hub's state
is the same afterwards. The hub is the real application on aiohttp's test
server with a real Mosquitto (fixtures in ``conftest.py``); ``stranger`` is a
client without the operator token, ``hub`` the operator's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import os
import re
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from hub_api import answer, create_token, join, operator_token, refused, running_hub

from edgehub.app import create_app
from edgehub.auth import OPEN_ROUTES, OperatorTokenError, load_or_create_operator_token
from edgehub.keys import SETTINGS
from edgehub.settings import HubSettings, RateLimit
from edgesim.fleet import Mosquitto

# Values for the path parameters of the route table.
PATH_VALUES = {"name": "web", "namespace": "demo"}
SECRET = "s3cr3t-hunter2-value"
POOL_SECRET = "pool-only-api-key-42"


def protected_routes() -> list[tuple[str, str]]:
    """(method, path) of every route of the real application but the open ones, path parameters filled in."""
    app = create_app(HubSettings(state_dir=Path("/nonexistent")))  # nothing is created before startup
    routes = sorted({(route.method, route.resource.canonical) for route in app.router.routes()
                     if route.resource is not None and route.method != "HEAD"
                     and (route.method, route.resource.canonical) not in OPEN_ROUTES})
    return [(method, path.format(**PATH_VALUES)) for method, path in routes]


PROTECTED = protected_routes()


def stored_tokens(hub: TestClient) -> int:
    """How many join tokens the hub's store holds (read from its SQLite file, read-only)."""
    db = hub.app[SETTINGS].db_path
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        return connection.execute("SELECT COUNT(*) FROM tokens").fetchone()[0]


async def state_of(hub: TestClient) -> tuple[Any, Any, int]:
    """What an attack must not change: components (with revisions), nodes, and how many join tokens exist."""
    components = await answer(await hub.get("/api/v1/components"), 200)
    nodes = await answer(await hub.get("/api/v1/nodes"), 200)
    return components, [n["name"] for n in nodes], stored_tokens(hub)


def test_the_route_table_has_every_endpoint_the_api_documents():
    assert len(PROTECTED) == 25
    assert ("GET", "/api/v1/ca/rotation") in PROTECTED and ("POST", "/api/v1/ca/rotation") in PROTECTED
    assert ("GET", "/api/v1/hub") in PROTECTED  # its certificates' paths and the warnings: the operator's
    assert ("GET", "/api/v1/components/demo/web/rollout") in PROTECTED
    assert ("POST", "/api/v1/components/demo/web/rollout/pause") in PROTECTED
    assert ("POST", "/api/v1/components/demo/web/rollout/resume") in PROTECTED
    assert ("GET", "/api/v1/components/demo/web/history") in PROTECTED
    assert ("POST", "/api/v1/components/demo/web/rollback") in PROTECTED
    assert ("GET", "/metrics") in PROTECTED and ("GET", "/api/v1/events") in PROTECTED
    assert ("POST", "/api/v1/credentials") in PROTECTED and ("DELETE", "/api/v1/credentials/web") in PROTECTED
    assert ("POST", "/api/v1/tokens") in PROTECTED and ("DELETE", "/api/v1/components/demo/web") in PROTECTED
    assert ("POST", "/api/v1/nodes/web/reset") in PROTECTED and ("POST", "/api/v1/nodes/web/revoke") in PROTECTED


# --- the operator token ------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_every_protected_endpoint_refuses_a_request_without_the_operator_token_with_401(
    hub: TestClient, stranger: aiohttp.ClientSession, example: dict[str, Any], method: str, path: str
):
    await answer(await hub.post("/api/v1/components", json=example), 201)
    before = await state_of(hub)
    body = example if path == "/api/v1/components" else {"pool": "shanghai", "ttl_seconds": 10**9}
    response = await stranger.request(method, path, json=body if method in ("POST", "DELETE") else None)
    assert "operator token" in await refused(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert await state_of(hub) == before


def wrong_authorizations(token: str) -> list[str]:
    return ["Bearer wrong", f"Bearer {token}x", f"Bearer {token[:-1]}", f"Basic {token}", token, "Bearer ",
            f"Bearer{token}", "Bearer " + "A" * len(token)]


@pytest.mark.parametrize("case", range(8))
async def test_a_wrong_operator_token_is_refused_with_401_and_changes_nothing(
    hub: TestClient, stranger: aiohttp.ClientSession, case: int
):
    authorization = wrong_authorizations(operator_token(hub))[case]
    before = await state_of(hub)
    await refused(await stranger.post("/api/v1/tokens", json={"pool": "shanghai"},
                                      headers={"Authorization": authorization}), 401)
    await refused(await stranger.get("/api/v1/nodes", headers={"Authorization": authorization}), 401)
    assert await state_of(hub) == before


async def test_the_bearer_scheme_is_matched_regardless_of_case(hub: TestClient, stranger: aiohttp.ClientSession):
    headers = {"Authorization": f"bearer {operator_token(hub)}"}
    assert await answer(await stranger.get("/api/v1/pools", headers=headers), 200) == []


async def test_join_and_healthz_stay_open_without_the_operator_token(hub: TestClient, stranger: aiohttp.ClientSession):
    health = await answer(await stranger.get("/healthz"), 200)
    assert health["ok"] is True and "anonymous" in health["warnings"][0]  # these tests run an anonymous broker
    assert (await stranger.head("/healthz")).status == 200
    joined = await answer(await join(stranger, await create_token(hub), "sh-1"), 201)
    assert joined["node"] == "sh-1"
    assert "unknown" in await refused(await join(stranger, "ec1.000000000000.not-a-real-secret", "sh-2"), 403)


# --- browsers: content type, Host, Origin ------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain; charset=utf-8",
                                          "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                          None])
@pytest.mark.parametrize("path", ["/api/v1/tokens", "/api/v1/join", "/api/v1/components"])
async def test_a_body_that_is_not_application_json_is_refused_with_415_and_nothing_is_stored(
    hub: TestClient, example: dict[str, Any], path: str, content_type: str | None
):
    token = await create_token(hub, uses=5)
    before = await state_of(hub)
    body = {"/api/v1/tokens": {"pool": "shanghai"}, "/api/v1/components": example,
            "/api/v1/join": {"token": token, "node": "sh-1", "csr": "x"}}[path]
    headers = {"Content-Type": content_type} if content_type else {}
    skip = () if content_type else ("Content-Type",)
    response = await hub.post(path, data=json.dumps(body).encode(), headers=headers,
                              skip_auto_headers=skip)
    error = await refused(response, 415)
    assert "application/json" in error
    if content_type:
        assert content_type.split(";")[0] in error
    assert await state_of(hub) == before


async def test_a_delete_with_a_text_body_is_refused_with_415_and_the_component_stays(
    hub: TestClient, example: dict[str, Any]
):
    await answer(await hub.post("/api/v1/components", json=example), 201)
    response = await hub.delete("/api/v1/components/demo/web", data="{}", headers={"Content-Type": "text/plain"})
    assert "'text/plain'" in await refused(response, 415)
    assert (await answer(await hub.get("/api/v1/components/demo/web"), 200))["revision"] == 1


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8470", "127.0.0.1.nip.io", "localhost.evil.example",
                                  "10.0.0.5", "[::ffff:8.8.8.8]:80", "bad host", "127.0.0.1:x"])
async def test_a_request_for_a_host_the_hub_does_not_answer_to_is_refused_with_421_naming_it(
    hub: TestClient, stranger: aiohttp.ClientSession, host: str
):
    join_body = {"token": await create_token(hub), "node": "sh-1", "csr": "x"}
    before = await state_of(hub)
    error = await refused(await hub.post("/api/v1/tokens", json={"pool": "shanghai"}, headers={"Host": host}), 421)
    assert repr(host) in error and "allowed_hosts" in error
    await refused(await stranger.get("/healthz", headers={"Host": host}), 421)
    await refused(await stranger.post("/api/v1/join", json=join_body, headers={"Host": host}), 421)
    assert await state_of(hub) == before


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8470", "localhost.", "127.0.0.1", "127.0.0.2:1", "[::1]:8470",
                                  "[::1]"])
async def test_loopback_names_and_addresses_are_answered(hub: TestClient, host: str):
    assert await answer(await hub.get("/api/v1/pools", headers={"Host": host}), 200) == []


async def test_the_listen_host_and_the_allowed_hosts_are_answered_and_nothing_else(tmp_path: Path, broker: Mosquitto):
    settings = HubSettings(state_dir=tmp_path / "state", mqtt_url=broker.url, listen_host="hub.lan",
                           allowed_hosts=("Hub.Example.", "192.0.2.7"))
    async with running_hub(settings) as hub:
        for host in ("hub.lan:8470", "hub.example", "HUB.EXAMPLE:8470", "192.0.2.7:8470", "localhost"):
            assert await answer(await hub.get("/api/v1/pools", headers={"Host": host}), 200) == [], host
        for host in ("other.example", "hub.example.evil", "192.0.2.8"):
            await refused(await hub.get("/api/v1/pools", headers={"Host": host}), 421)


def hub_origin(hub: TestClient) -> str:
    return f"http://127.0.0.1:{hub.port}"


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "https://127.0.0.1:{port}",
                                    "http://127.0.0.1:{other}", "http://localhost:{port}", "file://", "not a url"])
async def test_a_request_from_a_foreign_web_origin_is_refused_with_403_and_changes_nothing(
    hub: TestClient, example: dict[str, Any], origin: str
):
    origin = origin.format(port=hub.port, other=hub.port + 1)
    await answer(await hub.post("/api/v1/components", json=example), 201)
    before = await state_of(hub)
    headers = {"Origin": origin}
    assert "web origin" in await refused(await hub.post("/api/v1/tokens", json={"pool": "p"}, headers=headers), 403)
    await refused(await hub.delete("/api/v1/components/demo/web", headers=headers), 403)
    await refused(await hub.get("/api/v1/components/demo/web", headers=headers), 403)
    assert await state_of(hub) == before


async def test_a_request_from_the_hubs_own_origin_is_answered(hub: TestClient):
    headers = {"Origin": hub_origin(hub)}
    assert (await answer(await hub.post("/api/v1/tokens", json={"pool": "p"}, headers=headers), 201))["pool"] == "p"


# --- secret values -------------------------------------------------------------------


def with_secrets(example: dict[str, Any], password: str = SECRET) -> dict[str, Any]:
    body = copy.deepcopy(example)
    spec = body["component"]["spec"]
    spec["values"] = {**spec["values"], "password": password, "nested": {"token": password}}
    spec["edge"] = {"nodePools": ["shanghai", "beijing"],
                    "poolValues": {"shanghai": {"apiKey": POOL_SECRET}, "beijing": {"greeting": "ni hao"}}}
    return body


async def test_a_component_read_answers_digests_of_its_values_never_the_values(hub: TestClient,
                                                                             example: dict[str, Any]):
    await answer(await hub.post("/api/v1/components", json=with_secrets(example)), 201)

    response = await hub.get("/api/v1/components/demo/web")
    text = await response.text()
    for secret in (SECRET, POOL_SECRET, base64.b64encode(SECRET.encode()).decode(), "ni hao"):
        assert secret not in text
    spec = (await answer(response, 200))["spec"]["spec"]
    assert set(spec["values"]) == {"hmac-sha256"} and re.fullmatch(r"[0-9a-f]{64}", spec["values"]["hmac-sha256"])
    assert set(spec["edge"]["poolValues"]) == {"shanghai", "beijing"}
    assert spec["edge"]["nodePools"] == ["shanghai", "beijing"] and spec["chart"]  # the rest of the spec as applied
    for path in ("/api/v1/components", "/api/v1/nodes", "/api/v1/pools"):
        assert SECRET not in await (await hub.get(path)).text()

    # A change of the values shows as a change of the digest; the pool left alone keeps its digest.
    await answer(await hub.post("/api/v1/components", json=with_secrets(example, password="another")), 200)
    changed = (await answer(await hub.get("/api/v1/components/demo/web"), 200))["spec"]["spec"]
    assert changed["values"] != spec["values"] and changed["edge"]["poolValues"] == spec["edge"]["poolValues"]


# --- rate limits ---------------------------------------------------------------------


@pytest.fixture
async def limited(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[TestClient]:
    """A hub with small buckets that refill fast, so a test sees both the refusal and the recovery."""
    settings = HubSettings(state_dir=tmp_path / "state", mqtt_url=broker.url,
                           join_rate_limit=RateLimit(per_second=5.0, burst=3),
                           token_rate_limit=RateLimit(per_second=5.0, burst=2))
    async with running_hub(settings) as hub:
        yield hub


async def test_token_creation_over_the_rate_limit_is_refused_with_429_then_recovers(limited: TestClient):
    for _ in range(2):
        await create_token(limited)
    response = await limited.post("/api/v1/tokens", json={"pool": "shanghai"})
    assert "too many" in await refused(response, 429)
    assert response.headers["Retry-After"] == "1"
    assert stored_tokens(limited) == 2

    await asyncio.sleep(0.25)  # a token refilled at 5/s
    await create_token(limited)
    assert stored_tokens(limited) == 3


async def test_joins_over_the_rate_limit_are_refused_with_429_then_recover(limited: TestClient):
    token = await create_token(limited, uses=2)
    async with aiohttp.ClientSession(base_url=limited.make_url("")) as stranger:
        for _ in range(3):
            await refused(await join(stranger, "ec1.000000000000.guessing", "sh-1"), 403)
        response = await join(stranger, token, "sh-1")
        await refused(response, 429)
        assert int(response.headers["Retry-After"]) >= 1
        assert await answer(await limited.get("/api/v1/nodes"), 200) == []

        # Another source address has a bucket of its own.
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(base_url=limited.make_url(""), connector=connector) as elsewhere:
            assert (await answer(await join(elsewhere, token, "sh-2"), 201))["node"] == "sh-2"

        await asyncio.sleep(0.25)
        assert (await answer(await join(stranger, token, "sh-1"), 201))["node"] == "sh-1"


# --- the operator token file ---------------------------------------------------------


async def test_the_operator_token_is_created_owner_only_and_kept_across_restarts(tmp_path: Path, broker: Mosquitto):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    settings = HubSettings(state_dir=state, mqtt_url=broker.url)
    async with running_hub(settings) as hub:
        first = operator_token(hub)
        await answer(await hub.get("/api/v1/pools"), 200)
    path = settings.admin_token_path
    assert path.read_text() == first + "\n"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", first)  # 32 random bytes or more, URL-safe
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    written = path.stat()

    async with running_hub(settings) as hub:
        assert operator_token(hub) == first
        await answer(await hub.get("/api/v1/pools"), 200)
    again = path.stat()
    assert (again.st_ino, again.st_mtime_ns, again.st_size) == (written.st_ino, written.st_mtime_ns, written.st_size)
    assert [p.name for p in state.iterdir() if p.name.startswith(".admin-token")] == []  # no temporary left


def test_a_token_the_operator_wrote_is_kept_and_one_too_short_stops_the_hub(tmp_path: Path):
    own = "operator-chosen-token-of-forty-characters"
    (tmp_path / "admin-token").write_text(own + "\n")
    assert load_or_create_operator_token(tmp_path) == own
    assert (tmp_path / "admin-token").read_text() == own + "\n"

    (tmp_path / "admin-token").write_text("short\n")
    with pytest.raises(OperatorTokenError, match="at least 32"):
        load_or_create_operator_token(tmp_path)

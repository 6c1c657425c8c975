"""The hub's enrollment store: tokens are hashed at rest and single-purpose; state survives a restart.

On both backends: a SQLite file, and a real PostgreSQL server (skipped where it is not installed).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from raw_store import dump

from edgehub.errors import JoinRefused
from edgehub.store import HubStores
from edgehub.tokens import new_token, parse_token


def sign(node: str) -> str:
    return f"cert-for-{node}"


async def test_a_token_secret_is_not_stored_in_the_clear(store_location: Path | str):
    token = new_token()
    async with HubStores(store_location) as stores:
        await stores.enrollment.create_token(token, pool="shanghai", ttl_seconds=60, uses=1)
    stored = dump(store_location)
    assert token.token_id in stored and token.secret not in stored


async def test_a_token_joins_into_its_pool_only_as_often_as_allowed(store_location: Path | str):
    token = new_token()
    async with HubStores(store_location) as stores:
        enrollment = stores.enrollment
        await enrollment.create_token(token, pool="shanghai", ttl_seconds=60, uses=1)
        joined = await enrollment.register_node(token, node="n1", requested_pool=None, labels={}, sign=sign)
        assert (joined.pool, joined.certificate, joined.generation, joined.rejoined) == (
            "shanghai", "cert-for-n1", 1, False)
        with pytest.raises(JoinRefused, match="no uses left"):
            await enrollment.register_node(token, node="n2", requested_pool=None, labels={}, sign=sign)
        assert [n.name for n in await enrollment.list_nodes()] == ["n1"]


async def test_a_refused_join_spends_no_use_and_registers_nothing(store_location: Path | str):
    token = new_token()
    async with HubStores(store_location) as stores:
        enrollment = stores.enrollment
        await enrollment.create_token(token, pool="shanghai", ttl_seconds=60, uses=1)
        with pytest.raises(JoinRefused, match="token is for pool 'shanghai', not 'beijing'"):
            await enrollment.register_node(token, node="n1", requested_pool="beijing", labels={}, sign=sign)
        wrong = parse_token(f"ec1.{token.token_id}.wrong-secret")
        with pytest.raises(JoinRefused, match="unknown"):
            await enrollment.register_node(wrong, node="n1", requested_pool=None, labels={}, sign=sign)
        assert await enrollment.list_nodes() == []
        await enrollment.register_node(token, node="n1", requested_pool="shanghai", labels={}, sign=sign)


async def test_an_expired_token_is_refused(store_location: Path | str):
    token = new_token()
    async with HubStores(store_location) as stores:
        enrollment = stores.enrollment
        await enrollment.create_token(token, pool="p", ttl_seconds=-1, uses=5)
        with pytest.raises(JoinRefused, match="expired"):
            await enrollment.register_node(token, node="n1", requested_pool=None, labels={}, sign=sign)


async def test_the_store_can_be_reopened_and_refuses_a_second_concurrent_open(store_location: Path | str):
    stores = HubStores(store_location)
    async with stores:
        with pytest.raises(RuntimeError, match="already open"):
            await stores.__aenter__()
    async with HubStores(store_location) as again:
        assert await again.components.list_components() == []

"""The fleet's listings read only the nodes written since the last one (edgehub.store.listed), and still
show exactly what the database holds: after every kind of write, a listing equals what stores opened afresh
on the same database list. On both backends; on PostgreSQL a listing also shows another hub's writes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from test_store_on_both_backends import join

from edgehub.store import HubStores
from edgehub.store.assignments import AssignmentRecord
from edgeprotocol.messages import NodeStatus, ReleaseStatus


async def listing(stores: HubStores) -> tuple[list[Any], list[AssignmentRecord]]:
    return await stores.reports.list_nodes(with_certificate=False), await stores.assignments.list_assignments()


async def afresh(location: Path | str) -> tuple[list[Any], list[AssignmentRecord]]:
    """What stores that never listed before list: every row read from the database."""
    async with HubStores(location) as fresh:
        return await listing(fresh)


def report(node: str, seq: int, phase: str = "Deployed") -> NodeStatus:
    return NodeStatus(node=node, seq=seq, observed_at="2024-01-01T00:00:00Z", releases=(
        ReleaseStatus(namespace="default", release="web", desired_revision=1, applied_revision=1, phase=phase,
                      ready=1, total=1),))


async def save(stores: HubStores, status: NodeStatus) -> str:
    return await stores.reports.save_status(status, encoded=status.encode(), received_at=f"t{status.seq}",
                                            max_seq_jump=100)


def release(node: str, revision: int) -> AssignmentRecord:
    return AssignmentRecord(node=node, namespace="default", release="web", revision=revision, kind="release")


async def test_a_listing_shows_every_kind_of_write(store_location: Path | str):
    async with HubStores(store_location) as stores:
        names = [f"n{i}" for i in range(1, 9)]
        for name in names:
            await join(stores.enrollment, name)
        assert [n.name for n in (await listing(stores))[0]] == names

        steps = [
            lambda: save(stores, report("n2", 1)),
            lambda: stores.reports.set_presence("n1", "online", "2024-01-01T00:00:01Z"),
            lambda: stores.reports.set_presence("n1", "offline", "2024-01-01T00:00:02Z"),
            lambda: stores.assignments.update_assignments([release(n, 1) for n in names]),
            lambda: stores.assignments.update_assignments([release("n3", 2)], deletes=[("n4", "default", "web")]),
            lambda: save(stores, report("n2", 2, phase="Failed")),
            lambda: stores.enrollment.reset_node("n5"),
            lambda: stores.enrollment.revoke_node("n6"),
            lambda: join(stores.enrollment, "n5"),
            lambda: join(stores.enrollment, "n0"),  # a new name, listed first
            lambda: stores.enrollment.renew_certificate("n1", nonce="x", at=1.0, forget_before=0.0,
                                                        renew=lambda c: c + "!"),
            # Most of the fleet at once: read as a whole rather than by name.
            lambda: asyncio.gather(*(save(stores, report(n, 5)) for n in names)),
            lambda: stores.assignments.update_assignments([], deletes=[(n, "default", "web") for n in names]),
        ]
        for number, step in enumerate(steps):
            await step()
            assert await listing(stores) == await afresh(store_location), f"after step {number}"
        nodes, assignments = await listing(stores)
        assert nodes[0].name == "n0" and assignments == []
        # The revoked node's report was refused; every other one's is listed.
        assert {n.name: n.status.releases[0].phase for n in nodes if n.status} == {
            n: "Deployed" for n in names if n != "n6"}


async def test_a_write_whose_caller_gave_up_is_listed_once_it_commits(store_location: Path | str):
    async with HubStores(store_location) as stores:
        await join(stores.enrollment, "n1")
        await listing(stores)
        writes = [asyncio.ensure_future(save(stores, report("n1", seq))) for seq in range(1, 4)]
        await asyncio.sleep(0)
        writes[-1].cancel()  # the caller stops waiting; its write may still commit with the others
        await asyncio.gather(*writes, return_exceptions=True)
        await asyncio.sleep(0.2)  # whatever was going to commit has
        assert await listing(stores) == await afresh(store_location)


async def test_an_unchanged_node_is_the_same_record_in_the_next_listing(store_location: Path | str):
    async with HubStores(store_location) as stores:
        for name in ("n1", "n2"):
            await join(stores.enrollment, name)
        first = {n.name: n for n in await stores.reports.list_nodes(with_certificate=False)}
        await save(stores, report("n2", 1))
        second = {n.name: n for n in await stores.reports.list_nodes(with_certificate=False)}
        assert second["n1"] is first["n1"] and second["n2"] is not first["n2"]
        # Writes to most of the fleet make the next listing read every row: rows whose listed columns did not
        # change (a renewal changes only the certificate, which this listing leaves out) keep their records.
        listings = []
        for nonce in ("a", "b"):
            for name in ("n1", "n2"):
                await stores.enrollment.renew_certificate(name, nonce=nonce, at=1.0, forget_before=0.0,
                                                          renew=lambda c: c + "!")
            listings.append({n.name: n for n in await stores.reports.list_nodes(with_certificate=False)})
        third, fourth = listings
        assert fourth["n1"] is third["n1"] is first["n1"] and fourth["n2"] is third["n2"]


async def test_on_postgresql_a_listing_shows_what_another_hub_wrote(postgres_url: str):
    async with HubStores(postgres_url) as one, HubStores(postgres_url) as two:
        await join(one.enrollment, "n1")
        assert [n.name for n in await two.reports.list_nodes(with_certificate=False)] == ["n1"]
        await save(one, report("n1", 1))
        await one.assignments.update_assignments([release("n1", 1)])
        nodes, assignments = await listing(two)
        assert nodes[0].status == report("n1", 1) and assignments == [release("n1", 1)]

"""The agent's local store keeps revisions monotonic and survives a restart."""

from __future__ import annotations

from pathlib import Path

from edgeagent.store import AgentStore
from edgeprotocol import Assignment, Bundle
from edgeprotocol.messages import now


def release(revision: int, text: str = "a") -> Assignment:
    return Assignment(node="n1", namespace="demo", release="web", revision=revision, kind="release",
                      issued_at=now(), bundle=Bundle.of(f"kind: ConfigMap\n# {text}\n"))


async def test_older_and_repeated_revisions_never_replace_the_held_one(tmp_path: Path):
    async with AgentStore(tmp_path / "agent.db") as store:
        assert await store.accept(release(3, "three"))
        assert not await store.accept(release(2, "two"))
        assert not await store.accept(release(3, "three again"))
        (rec,) = await store.releases()
        assert rec.desired_revision == 3 and "three" in rec.manifests


async def test_what_the_node_holds_survives_a_restart(tmp_path: Path):
    async with AgentStore(tmp_path / "agent.db") as store:
        await store.accept(release(1))
        rec = (await store.releases())[0]
        await store.begin_apply(rec)
        await store.finish_apply(rec, warnings="")
    async with AgentStore(tmp_path / "agent.db") as store:
        (rec,) = await store.releases()
        assert (rec.applied_revision, rec.applied_digest, rec.converged) == (1, rec.digest, True)


async def test_an_outcome_for_an_older_revision_does_not_overwrite_a_newer_assignment(tmp_path: Path):
    async with AgentStore(tmp_path / "agent.db") as store:
        await store.accept(release(1))
        old = (await store.releases())[0]
        await store.begin_apply(old)
        await store.accept(release(2, "newer"))
        await store.finish_apply(old, warnings="")
        (rec,) = await store.releases()
        assert rec.desired_revision == 2 and rec.applied_revision == 0


async def test_sequence_numbers_keep_growing_across_restarts(tmp_path: Path):
    async with AgentStore(tmp_path / "agent.db") as store:
        assert [await store.next_seq("status") for _ in range(3)] == [1, 2, 3]
    async with AgentStore(tmp_path / "agent.db") as store:
        assert await store.next_seq("status") == 4


async def test_the_outbox_drops_the_oldest_past_its_bound(tmp_path: Path):
    async with AgentStore(tmp_path / "agent.db", outbox_limit=3) as store:
        dropped = [await store.enqueue("t", str(i).encode()) for i in range(5)]
        assert dropped == [0, 0, 0, 1, 1]
        assert [item.payload for item in await store.pending()] == [b"2", b"3", b"4"]


async def test_a_store_written_by_an_older_agent_opens_with_the_new_columns_and_keeps_its_releases(tmp_path: Path):
    import sqlite3

    from edgeagent.store import ADDED_COLUMNS, SCHEMA

    old_schema = SCHEMA
    for _, column, declaration in ADDED_COLUMNS:
        old_schema = old_schema.replace(f"    {column} {declaration},\n", "")
    assert "rejected_digest" not in old_schema and "warnings" not in old_schema
    with sqlite3.connect(tmp_path / "agent.db") as db:
        db.executescript(old_schema)
        db.execute("INSERT INTO releases (namespace, release, desired_revision, desired_kind, phase) "
                   "VALUES ('demo', 'web', 4, 'release', 'Deployed')")

    async with AgentStore(tmp_path / "agent.db") as store:
        (rec,) = await store.releases()
    assert (rec.desired_revision, rec.phase, rec.rejected_digest, rec.warnings) == (4, "Deployed", "", "")

"""The reconciler's decisions, with the in-memory runtime and a real local store (no broker, no podman).

The same behaviour runs end to end against real podman in tests/e2e and
tests/autonomy; these tests pin the rules themselves, fast.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fakes import HEALTHY, FakeRuntime

from edgeagent.health import NodeHealth
from edgeagent.reconciler import Reconciler
from edgeagent.runtime import NodeContext, PreflightCheck
from edgeagent.settings import AgentSettings
from edgeagent.store import AgentStore, ReleaseRecord
from edgeprotocol.messages import Assignment, Bundle, now

pytestmark = pytest.mark.timeout(30)


@dataclass
class RecordingReporter:
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (reason, release, message)
    statuses: int = 0

    async def record_event(self, reason: str, message: str, rec: ReleaseRecord | None = None) -> None:
        self.events.append((reason, rec.release if rec else "", message))

    async def publish_status(self, *, force: bool = False) -> None:
        self.statuses += 1

    def reasons(self, release: str | None = None) -> list[str]:
        return [reason for reason, rel, _ in self.events if release is None or rel == release]


@dataclass
class Node:
    store: AgentStore
    runtime: FakeRuntime
    reporter: RecordingReporter
    reconciler: Reconciler

    async def assign(self, release: str, revision: int, manifests: str) -> None:
        await self.store.accept(Assignment(node="n1", namespace="demo", release=release, revision=revision,
                                           kind="release", issued_at=now(), bundle=Bundle.of(manifests)))

    async def phase(self, release: str) -> tuple[str, int, str]:
        rec = await self.store.get("demo", release)
        assert rec is not None
        return rec.phase, rec.applied_revision, rec.message


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    # Short intervals: these tests are about decisions, not timing.
    settings = AgentSettings(state_dir=tmp_path, reconcile_interval=0.5, retry_initial=0.2, retry_max=0.4,
                             heal_after=0.1)
    runtime, reporter = FakeRuntime(), RecordingReporter()
    async with AgentStore(settings.db_path) as store:
        reconciler = Reconciler(settings, store, runtime, NodeContext(node="n1", pool="p"), reporter=reporter,
                                health=NodeHealth(runtime), wake=asyncio.Event())
        yield Node(store, runtime, reporter, reconciler)
        await reconciler.__aexit__(None, None, None)


async def test_a_release_whose_runtime_call_hangs_does_not_hold_up_another(node: Node):
    node.runtime.blocked["stuck"] = asyncio.Event()
    await node.assign("stuck", 1, "kind: Pod # stuck")
    await node.reconciler.reconcile_once()  # the stuck apply starts and hangs
    await node.assign("web", 1, "kind: Pod # web")

    await node.reconciler.reconcile_once()
    assert await node.phase("web") == ("Deployed", 1, "")
    assert (await node.phase("stuck"))[0] == "Applying"
    assert [release for release, _ in node.runtime.applies].count("stuck") == 1  # not started twice

    node.runtime.blocked["stuck"].set()
    for _ in range(20):
        await node.reconciler.reconcile_once()
        if (await node.phase("stuck"))[0] == "Deployed":
            break
    assert await node.phase("stuck") == ("Deployed", 1, "")


async def test_manifests_the_runtime_rejects_fail_once_and_wait_for_a_new_revision(node: Node):
    node.runtime.failing["web"] = "rejected"
    await node.assign("web", 1, "kind: Pod # no containers")
    for _ in range(4):
        await node.reconciler.reconcile_once()
        await asyncio.sleep(0.3)  # past the retry backoff: a retry would happen now

    phase, applied, message = await node.phase("web")
    assert (phase, applied) == ("Failed", 0)
    assert message.startswith("rejected: Pod/web: spec.containers") and "waiting for a new revision" in message
    assert len(node.runtime.applies) == 1
    assert node.reporter.reasons("web") == ["ApplyRejected"]

    del node.runtime.failing["web"]
    await node.assign("web", 2, "kind: Pod # fixed")
    await node.reconciler.reconcile_once()
    assert await node.phase("web") == ("Deployed", 2, "")


async def test_a_failure_that_may_pass_is_retried_with_backoff(node: Node):
    node.runtime.failing["web"] = "transient"
    await node.assign("web", 1, "kind: Pod")
    await node.reconciler.reconcile_once()
    await node.reconciler.reconcile_once()  # within the backoff: not tried again
    assert len(node.runtime.applies) == 1

    del node.runtime.failing["web"]
    await asyncio.sleep(0.25)
    await node.reconciler.reconcile_once()
    assert await node.phase("web") == ("Deployed", 1, "")
    assert node.reporter.reasons("web") == ["ApplyFailed", "Applied"]


async def test_a_node_that_cannot_run_pods_applies_nothing_and_says_so_once(node: Node):
    node.runtime.checks = (*HEALTHY, PreflightCheck("pod", False, "catatonit not found", "RuntimeReady",
                                                    "PodCreateFailed"))
    await node.assign("web", 1, "kind: Pod")
    for _ in range(5):
        await node.reconciler.reconcile_once()
        await asyncio.sleep(0.1)
    assert node.runtime.applies == []
    assert node.reporter.reasons() == ["NodeNotReady"]
    runtime_ready = next(c for c in node.reconciler.health.conditions if c.type == "RuntimeReady")
    assert (runtime_ready.status, runtime_ready.reason) == ("False", "PodCreateFailed")

    node.runtime.checks = HEALTHY
    for _ in range(20):
        await node.reconciler.reconcile_once()
        if (await node.phase("web"))[0] == "Deployed":
            break
        await asyncio.sleep(0.1)
    assert await node.phase("web") == ("Deployed", 1, "")
    assert node.reporter.reasons() == ["NodeNotReady", "NodeReady", "Applied"]


async def test_a_dead_pod_is_healed_and_a_repeated_revision_changes_nothing(node: Node):
    await node.assign("web", 1, "kind: Pod")
    await node.reconciler.reconcile_once()
    node.runtime.running.clear()  # the pod died
    await asyncio.sleep(0.15)  # past heal_after
    await node.reconciler.reconcile_once()
    assert node.reporter.reasons("web") == ["Applied", "SelfHealed"]

    await node.assign("web", 2, "kind: Pod")  # same manifests, new revision: adopted, not replayed
    await node.reconciler.reconcile_once()
    assert len(node.runtime.applies) == 2
    assert node.reporter.reasons("web")[-1] == "Adopted"
    assert await node.phase("web") == ("Deployed", 2, "")


async def test_an_assignment_that_arrives_during_a_pass_is_applied_at_once_not_after_the_interval(tmp_path: Path):
    settings = AgentSettings(state_dir=tmp_path, reconcile_interval=20.0)  # far longer than this test waits
    runtime, reporter, wake = FakeRuntime(), RecordingReporter(), asyncio.Event()
    runtime.blocked["web"] = asyncio.Event()
    async with AgentStore(settings.db_path) as store:
        node = Node(store, runtime, reporter, Reconciler(settings, store, runtime, NodeContext(node="n1", pool="p"),
                                                         reporter=reporter, health=NodeHealth(runtime), wake=wake))
        await node.assign("web", 1, "kind: Pod # web")
        async with node.reconciler:
            async with asyncio.timeout(5):
                while ("web", "kind: Pod # web") not in runtime.applies:  # the first pass is applying web
                    await asyncio.sleep(0.01)
            await node.assign("api", 1, "kind: Pod # api")
            node.reconciler.wake()  # as the uplink does for a new assignment
            runtime.blocked["web"].set()  # the pass ends

            async with asyncio.timeout(5):
                while await node.phase("api") != ("Deployed", 1, ""):
                    await asyncio.sleep(0.05)

"""The dry-run runtime: the same checks as the other runtimes, a record of what would run, nothing started."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeagent.policy import NodePolicy
from edgeagent.runtime import DryRunRuntime, DryRunSettings, ManifestRejected, NodeContext, ReleaseRef, Runtime
from edgeagent.runtime.podman_plan import build_plan

from .helpers import render_web

NODE = NodeContext(node="edge-1", pool="shanghai")
REF = ReleaseRef("demo", "web")
PRIVILEGED = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  template:
    spec:
      containers: [{name: y, image: img, securityContext: {runAsUser: 65534, privileged: true}}]
"""


def runtime(tmp_path: Path, policy: NodePolicy | None = None) -> DryRunRuntime:
    return DryRunRuntime(DryRunSettings(work_dir=tmp_path / "dry-run", policy=policy or NodePolicy()))


def test_it_is_a_runtime_called_dry_run(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    assert isinstance(rt, Runtime)
    assert rt.name == "dry-run"


async def test_an_applied_release_is_recorded_verbatim_and_observed_ready(tmp_path: Path) -> None:
    manifests = render_web()
    async with runtime(tmp_path) as rt:
        await rt.apply(REF, manifests, NODE)

        recorded = tmp_path / "dry-run" / "demo" / "web" / "revision-1.yaml"
        assert recorded.read_text() == manifests
        assert recorded.stat().st_mode & 0o077 == 0  # Secrets may be in it
        observation = await rt.observe(REF)
        assert observation.total >= 1
        assert observation.ready == observation.total
        assert {p.phase for p in observation.pods} == {"Recorded"}
        assert await rt.releases() == {REF}
        record = await rt.recorded(REF)
        assert record is not None and record["revision"] == 1
        assert any(o.startswith("Deployment/") for o in record["workloads"])


async def test_the_same_manifests_keep_their_revision_and_new_ones_count_up(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        await rt.apply(REF, render_web(), NODE)
        await rt.apply(REF, render_web(), NODE)
        assert (await rt.recorded(REF) or {})["revision"] == 1
        await rt.apply(REF, render_web({"message": "upgraded"}), NODE)

        folder = tmp_path / "dry-run" / "demo" / "web"
        assert (await rt.recorded(REF) or {})["revision"] == 2
        assert "upgraded" in (folder / "revision-2.yaml").read_text()
        assert "upgraded" not in (folder / "revision-1.yaml").read_text()
        assert rt.applies == 3


async def test_only_the_newest_revisions_are_kept(tmp_path: Path) -> None:
    rt = DryRunRuntime(DryRunSettings(work_dir=tmp_path / "dry-run", history=2))
    for i in range(4):
        await rt.apply(REF, render_web({"message": f"m{i}"}), NODE)
    kept = sorted(p.name for p in (tmp_path / "dry-run" / "demo" / "web").glob("revision-*.yaml"))
    assert kept == ["revision-3.yaml", "revision-4.yaml"]


async def test_a_privileged_pod_is_refused_with_the_message_podman_gives(tmp_path: Path) -> None:
    with pytest.raises(ManifestRejected) as podman_refusal:
        build_plan(REF, PRIVILEGED, NODE)
    rt = runtime(tmp_path)

    with pytest.raises(ManifestRejected) as refused:
        await rt.apply(REF, PRIVILEGED, NODE)

    assert str(refused.value) == str(podman_refusal.value)
    assert "is refused by this node's policy" in str(refused.value)
    assert await rt.releases() == set()
    assert not (tmp_path / "dry-run" / "demo" / "web").exists()


async def test_a_namespace_the_policy_does_not_allow_and_bad_yaml_are_refused(tmp_path: Path) -> None:
    rt = runtime(tmp_path, NodePolicy(namespaces=frozenset({"other"})))
    with pytest.raises(ManifestRejected, match="namespace demo is not allowed"):
        await rt.apply(REF, render_web(), NODE)
    with pytest.raises(ManifestRejected, match="invalid YAML"):
        await runtime(tmp_path).apply(REF, "kind: [unclosed", NODE)
    with pytest.raises(ManifestRejected, match="no kind"):
        await runtime(tmp_path).apply(REF, "apiVersion: v1\nmetadata: {name: x}\n", NODE)


async def test_remove_deletes_the_record_and_an_unknown_release_is_fine(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        await rt.apply(REF, render_web(), NODE)
        await rt.remove(REF, NODE)
        await rt.remove(ReleaseRef("demo", "never"), NODE)

        assert await rt.releases() == set()
        assert not (tmp_path / "dry-run" / "demo" / "web").exists()
        observation = await rt.observe(REF)
        assert (observation.ready, observation.total) == (0, 0)


async def test_preflight_checks_the_record_directory(tmp_path: Path) -> None:
    checks = await runtime(tmp_path).preflight()
    assert all(c.ok for c in checks)
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    failing = await DryRunRuntime(DryRunSettings(work_dir=blocked / "dry-run")).preflight()
    storage = next(c for c in failing if c.name == "storage")
    assert not storage.ok and storage.reason == "StorageNotWritable"


async def test_a_corrupt_record_is_reported_not_guessed(tmp_path: Path) -> None:
    from edgeagent.runtime import EdgeRuntimeError

    rt = runtime(tmp_path)
    await rt.apply(REF, render_web(), NODE)
    (tmp_path / "dry-run" / "demo" / "web" / "release.json").write_text("{not json")
    with pytest.raises(EdgeRuntimeError, match="unreadable"):
        await rt.observe(REF)

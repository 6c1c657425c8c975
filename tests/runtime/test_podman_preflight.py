"""The runtime's preflight (what ``edgeagent doctor`` and the agent run) on a working and a broken node."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from edgeagent.runtime import PodmanRuntime, PodmanSettings

from .helpers import PodmanNode

pytestmark = pytest.mark.timeout(60)


async def test_a_working_node_passes_every_check_and_leaves_no_pod_behind(node: PodmanNode) -> None:
    checks = await node.runtime.preflight()

    assert [(c.name, c.ok) for c in checks] == [("podman", True), ("storage", True), ("oci-runtime", True),
                                                ("pod", True)]
    assert checks[0].detail.startswith("podman 4.") and str(node.settings.root) in checks[1].detail
    assert json.loads(await node.podman("pod", "ps", "--format", "json") or "[]") == []


async def test_a_storage_root_that_cannot_be_written_fails_storage_with_the_reason(
    node: PodmanNode, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    settings = dataclasses.replace(node.settings, root=blocker / "storage")
    checks = {c.name: c for c in await PodmanRuntime(settings).preflight()}

    assert not checks["storage"].ok and checks["storage"].condition == "StorageReady"
    assert str(blocker) in checks["storage"].detail


async def test_a_missing_podman_fails_with_podman_missing_and_checks_nothing_else(tmp_path: Path) -> None:
    checks = await PodmanRuntime(PodmanSettings(work_dir=tmp_path, binary="/nonexistent/podman")).preflight()

    assert [(c.name, c.ok) for c in checks] == [("podman", False), ("storage", False), ("oci-runtime", False),
                                                ("pod", False)]
    assert checks[0].reason == "PodmanMissing" and "install podman" in checks[0].detail
    assert all(c.detail.startswith("not checked") and c.condition is None for c in checks[1:])

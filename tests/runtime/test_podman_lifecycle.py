"""The runtime as a long-lived object: entering, leaving, and podman misbehaving."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edgeagent.runtime import EdgeRuntimeError, NodeContext, PodmanRuntime, PodmanSettings, ReleaseRef
from edgesim.podman_setup import import_image

from .helpers import DEMO_IMAGE, PodmanNode

pytestmark = pytest.mark.timeout(30)


async def test_leaving_a_runtime_that_was_never_entered_is_safe(tmp_path: Path) -> None:
    runtime = PodmanRuntime(PodmanSettings(work_dir=tmp_path))

    await runtime.__aexit__(None, None, None)


async def test_entering_a_runtime_twice_at_once_is_refused(node_dir: Path, containers_conf: Path | None) -> None:
    from .helpers import podman_test_settings

    runtime = PodmanRuntime(podman_test_settings(node_dir, containers_conf))
    async with runtime:
        with pytest.raises(RuntimeError, match="already entered"):
            async with runtime:
                pass
    async with runtime:  # after leaving, entering again is fine
        pass


async def test_a_runtime_whose_podman_is_missing_still_enters_and_reports_it_through_preflight(
    tmp_path: Path,
) -> None:
    runtime = PodmanRuntime(PodmanSettings(work_dir=tmp_path, binary=str(tmp_path / "no-podman")))

    async with runtime:
        checks = await runtime.preflight()
        assert (checks[0].name, checks[0].ok, checks[0].reason) == ("podman", False, "PodmanMissing")
        with pytest.raises(EdgeRuntimeError, match="cannot run"):
            await runtime.observe(ReleaseRef("demo", "web"))
    async with runtime:  # left cleanly: entering again is fine
        pass


async def test_leaving_the_runtime_stops_its_probe_loop(node_dir: Path, containers_conf: Path | None) -> None:
    from .helpers import podman_test_settings

    runtime = PodmanRuntime(podman_test_settings(node_dir, containers_conf))
    async with runtime:
        task = runtime._probes._task
        assert runtime._probes.running and task is not None
    assert task.done() and task.cancelled()
    assert not runtime._probes.running


async def test_a_podman_call_that_hangs_is_killed_after_the_command_timeout(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    fake = tmp_path / "podman"
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 30\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    runtime = PodmanRuntime(PodmanSettings(work_dir=tmp_path / "work", binary=str(fake), command_timeout=0.5))

    with pytest.raises(EdgeRuntimeError, match="no answer within"):
        await runtime.observe(ReleaseRef("demo", "web"))

    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_release_and_node_names_must_be_dns_labels() -> None:
    with pytest.raises(ValueError, match="namespace"):
        ReleaseRef("Demo", "web")
    with pytest.raises(ValueError, match="release"):
        ReleaseRef("demo", "web.v2")
    with pytest.raises(ValueError, match="pool"):
        NodeContext(node="edge-1", pool="shang hai")
    assert str(ReleaseRef("demo", "web")) == "demo/web"


def test_settings_refuse_a_timeout_that_is_not_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="command_timeout"):
        PodmanSettings(work_dir=tmp_path, command_timeout=0)
    assert PodmanSettings(work_dir=str(tmp_path)).work_dir == tmp_path  # type: ignore[arg-type]  # a str on purpose: the settings make it a Path


async def test_importing_an_image_the_node_already_has_changes_nothing(node: PodmanNode, demo_rootfs_tar: Path) -> None:
    before = await node.podman("images", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}")

    await import_image(node.settings, demo_rootfs_tar, DEMO_IMAGE)

    assert await node.podman("images", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}") == before
    assert before.split()[1] == DEMO_IMAGE

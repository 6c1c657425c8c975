"""Fixtures of the podman runtime tests: the demo image, and one simulated edge
node per test (its own podman storage, run state and work dir under /tmp,
removed with everything in it when the test ends). See helpers.py for the
podman settings this machine needs.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edgeagent.runtime import NodeContext, PodmanRuntime

from .helpers import (
    BUILD_SCRIPT,
    DEMO_IMAGE,
    PodmanNode,
    cleanup_podman_node,
    podman_test_settings,
)

__all__ = ["podman_test_settings"]


@pytest.fixture(scope="session")
def demo_rootfs_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo image's root filesystem tar, built once per session by the script."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    out = tmp_path_factory.mktemp("image") / "edgecollab-busybox.tar"
    subprocess.run(["bash", str(BUILD_SCRIPT), str(out)], check=True, capture_output=True, timeout=60)
    return out


@pytest.fixture
def node_dir() -> Iterator[Path]:
    """A short, unique directory for one node's state (podman's paths have length limits)."""
    path = Path(tempfile.mkdtemp(prefix="ec-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def node(node_dir: Path, demo_rootfs_tar: Path) -> AsyncIterator[PodmanNode]:
    """A simulated edge node with the demo image loaded; everything removed afterwards."""
    settings = podman_test_settings(node_dir)
    runtime = PodmanRuntime(settings)
    try:
        async with runtime:
            await runtime.import_image(demo_rootfs_tar, DEMO_IMAGE)
            yield PodmanNode(settings, runtime, NodeContext(node="edge-1", pool="shanghai"))
    finally:
        # Blocking on purpose: teardown has nothing else to run meanwhile.
        cleanup_podman_node(settings)

"""Fixtures of the podman runtime tests: the demo image, and one simulated edge
node per test (its own podman storage, run state and work dir under /tmp,
removed with everything in it when the test ends). See helpers.py for the
podman settings this machine needs.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edgeagent.runtime import NodeContext, PodmanRuntime
from edgesim.podman_setup import import_image, remove_node_storage

from .helpers import DEMO_IMAGE, PodmanNode, podman_test_settings


@pytest.fixture(scope="session")
def demo_rootfs_tar(demo_image_tar: Path) -> Path:
    """The demo image's root filesystem tar (built once per session by the top-level fixture)."""
    return demo_image_tar


@pytest.fixture
def node_dir() -> Iterator[Path]:
    """A short, unique directory for one node's state (podman's paths have length limits)."""
    path = Path(tempfile.mkdtemp(prefix="ec-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def node(node_dir: Path, demo_rootfs_tar: Path, containers_conf: Path | None) -> AsyncIterator[PodmanNode]:
    """A simulated edge node with the demo image loaded; everything removed afterwards."""
    settings = podman_test_settings(node_dir, containers_conf)
    runtime = PodmanRuntime(settings)
    try:
        async with runtime:
            await import_image(settings, demo_rootfs_tar, DEMO_IMAGE)
            yield PodmanNode(settings, runtime, NodeContext(node="edge-1", pool="shanghai"))
    finally:
        # Blocking on purpose: teardown has nothing else to run meanwhile.
        remove_node_storage(settings, node_dir)

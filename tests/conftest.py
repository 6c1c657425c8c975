"""Fixtures shared by every test: the demo image, podman settings for this machine, a fleet.

Everything is real: a Mosquitto started here on a free loopback port, the hub
and agents as the same processes a user runs, podman with a storage root per
simulated node, and the Helm engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / ".build"


@pytest.fixture(scope="session")
def demo_image_tar() -> Path:
    from edgesim.podman_setup import build_demo_image

    return build_demo_image(BUILD / "edgecollab-busybox.tar")


@pytest.fixture(scope="session")
def containers_conf(demo_image_tar: Path) -> Path | None:
    from edgesim.podman_setup import containers_conf_for_this_machine

    return containers_conf_for_this_machine(BUILD / "podman", demo_image_tar)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def fleet(request: pytest.FixtureRequest, tmp_path: Path, demo_image_tar: Path, containers_conf: Path | None):
    """A running broker and hub; tests add nodes with ``fleet.add_node``. All is stopped and removed after."""
    from edgesim.fleet import Fleet, NodeOptions

    with Fleet(workdir=tmp_path, node_options=NodeOptions(containers_conf=containers_conf, image_tar=demo_image_tar)) as f:
        yield f
        if request.node.stash.get(FAILED, False):
            for proc in [f.broker, f.hub, *f.nodes.values()]:
                if proc is not None:
                    print(f"\n----- {proc.name} log (tail) -----\n{proc.log_tail(60)}")

"""Fixtures shared by every test: the machine's podman preflight, the demo image, a fleet.

Everything is real: a Mosquitto started here on a free loopback port, the hub
and agents as the same processes a user runs, podman with a storage root per
simulated node, and the Helm engine.

Tests that need podman get the ``fleet`` mark (by their fixtures, see
``pytest_collection_modifyitems``): ``pytest -m "not fleet"`` runs the rest.
When podman cannot run a pod here, the session's preflight (the agent's own
``doctor`` checks) fails every one of them at once, with the reason.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / ".build"
# Fixtures that mean a test runs pods on podman.
PODMAN_FIXTURES = frozenset({"machine", "demo_image_tar", "containers_conf", "demo_rootfs_tar", "fleet", "node"})


def pytest_configure(config: pytest.Config) -> None:
    # A shell starts a background job (`make test &`) with SIGINT ignored, and every process the tests
    # start would inherit that: Ctrl-C tests (edgectl -w, edgehub serve) would find their process deaf to it.
    # With Python's own handler here, what is started gets the default again, as from a terminal.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PODMAN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.fleet)


@pytest.fixture
def victim() -> Iterator[Path]:
    """A host directory anyone may write to, that an attack test asserts stays empty (``host_reach``)."""
    from host_reach import victim_directory

    with victim_directory() as path:
        yield path


@pytest.fixture(scope="session")
def machine():
    """The demo image and podman settings for this machine, after proving a pod runs here.

    Fails (once, and so every test that needs podman) with the preflight's
    report when podman cannot run pods.
    """
    from edgesim.podman_setup import RuntimeNotReady, prepare_machine

    try:
        return prepare_machine(BUILD)
    except RuntimeNotReady as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def demo_image_tar(machine) -> Path:
    return machine.image_tar


@pytest.fixture(scope="session")
def containers_conf(machine) -> Path | None:
    return machine.containers_conf


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def hub_flags() -> tuple[str, ...]:
    """More flags of the fleet's ``edgehub serve``; a test module overrides this fixture to give some."""
    return ()


@pytest.fixture
def fleet(request: pytest.FixtureRequest, tmp_path: Path, demo_image_tar: Path, containers_conf: Path | None,
          hub_flags: tuple[str, ...]):
    """A running broker and hub; tests add nodes with ``fleet.add_node``. All is stopped and removed after."""
    from edgesim.fleet import Fleet, NodeOptions

    with Fleet(workdir=tmp_path, node_options=NodeOptions(containers_conf=containers_conf, image_tar=demo_image_tar),
               hub_flags=hub_flags) as f:
        yield f
        if request.node.stash.get(FAILED, False):
            for proc in [f.broker, f.hub, *f.nodes.values()]:
                if proc is not None:
                    print(f"\n----- {proc.name} log (tail) -----\n{proc.log_tail(60)}")


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (Debian's postgresql package), on a free loopback port.

    Skipped, with that reason, where the package is not installed; a server that is installed but does
    not start fails the tests that need it, with its log.
    """
    from edgesim.postgres import PostgresNotInstalled, PostgresServer

    try:
        server = PostgresServer()
    except PostgresNotInstalled as exc:
        pytest.skip(str(exc))
    pytest.importorskip("psycopg", reason="psycopg not installed (the postgres extra; make test installs it)")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> Iterator[str]:
    """The URL of a new, empty database of this test alone on the session's PostgreSQL server."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory):
    """A real Kubernetes control plane for the session (etcd, kube-apiserver, kube-controller-manager,
    kube-scheduler and a kwok node, all on loopback): ``.kubeconfig`` is an administrator's kubeconfig.

    Built from Kubernetes' Go modules once per machine (``make test`` builds it first, with progress);
    a control plane that does not start fails the tests that need it, with the components' logs.
    """
    from edgesim.control_plane import ControlPlane, ControlPlaneError
    from edgesim.k8s_build import BuildError

    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"))
    try:
        plane.start()
    except (BuildError, ControlPlaneError) as exc:
        pytest.fail(f"the Kubernetes control plane did not start: {exc}", pytrace=False)
    yield plane
    plane.stop()


@pytest.fixture
def kubeconfig(control_plane) -> Path:
    """The administrator's kubeconfig of the session's control plane."""
    return control_plane.kubeconfig

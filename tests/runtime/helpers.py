"""Helpers of the podman runtime tests (fixtures are in conftest.py).

Podman settings come from the session's ``containers_conf`` fixture, which
uses podman's defaults where they work and a runc containers.conf where not.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from edgeagent.policy import PRIVILEGES, NodePolicy
from edgeagent.runtime import NodeContext, PodmanRuntime, PodmanSettings

REPO = Path(__file__).resolve().parents[2]
WEB_CHART = REPO / "examples" / "web" / "chart"
DEMO_IMAGE = "localhost/edgecollab-busybox:1"
T = TypeVar("T")
# The policy of the ``node`` fixture: every privilege allowed, so tests about
# other behaviour can play plain busybox pods (root) and host paths. Tests of
# the policy itself give the runtime ``NodePolicy()``, the default every real
# node starts with.
ALLOW_ALL = NodePolicy(allow={"*": frozenset(PRIVILEGES)}, path="(test node: everything allowed)")


async def eventually(probe: Callable[[], Awaitable[T | None]], *, within: float, what: str, every: float = 0.1) -> T:
    """Await ``probe`` until it returns something other than None; fail naming ``what`` after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await probe()
        if value is not None:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"not true within {within} s: {what}")
        await asyncio.sleep(every)


def podman_test_settings(
    tmpdir: str | os.PathLike[str], containers_conf: Path | None, *, network: str | None = "none",
    policy: NodePolicy = ALLOW_ALL,
) -> PodmanSettings:
    """Settings for a simulated node whose whole state lives under ``tmpdir``.

    ``tmpdir`` should be short (podman's socket paths have length limits):
    ``tempfile.mkdtemp(prefix="ec-", dir="/tmp")``. ``containers_conf`` is what
    the session's ``containers_conf`` fixture found this machine needs.
    ``network="none"`` keeps the pods off the shared bridge: tests reach them
    with ``podman exec`` only.
    """
    base = Path(tmpdir)
    return PodmanSettings(
        work_dir=base / "work",
        root=base / "root",
        runroot=base / "run",
        tmpdir=base / "tmp",
        containers_conf=containers_conf,
        network=network,
        command_timeout=60.0,
        policy=policy,
    )


@dataclass
class PodmanNode:
    """One simulated edge node: its runtime, identity, and a podman for assertions."""

    settings: PodmanSettings
    runtime: PodmanRuntime
    context: NodeContext

    async def podman(self, *args: str, check: bool = True) -> str:
        """Run podman against this node's storage, as a test's own eyes."""
        env = dict(os.environ)
        if self.settings.containers_conf is not None:
            env["CONTAINERS_CONF"] = str(self.settings.containers_conf)
        proc = await asyncio.create_subprocess_exec(
            self.settings.binary,
            *self.settings.global_args(),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}: {err.decode()}")
        return out.decode()

    async def fetch(self, container: str, port: int = 8080, *, within: float = 5.0) -> str:
        """GET http://127.0.0.1:PORT/ from inside the pod of ``container``, retrying until ``within``."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            out = await self.podman(
                "exec", container, "wget", "-q", "-O-", f"http://127.0.0.1:{port}/", check=False
            )
            if out or asyncio.get_running_loop().time() > deadline:
                return out
            await asyncio.sleep(0.2)


def render_web(values: dict | None = None, *, name: str = "web", namespace: str = "demo") -> str:
    """The example chart rendered by the real Helm engine, as one multi-document YAML."""
    import helm_python

    rendered = helm_python.Chart.load(str(WEB_CHART)).render(values or {}, name=name, namespace=namespace)
    return "\n---\n".join(text for _, text in sorted(rendered.items()) if text.strip())

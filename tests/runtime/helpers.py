"""Helpers of the podman runtime tests (fixtures are in conftest.py).

This machine needs runc and lower ulimits (crun fails on hybrid cgroups), so the
tests pass podman the containers.conf below; set EDGECOLLAB_PODMAN_DEFAULTS=1 to
run them with podman's own defaults on a machine where those work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from edgeagent.runtime import NodeContext, PodmanRuntime, PodmanSettings

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-demo-image.sh"
WEB_CHART = REPO / "examples" / "web" / "chart"
DEMO_IMAGE = "localhost/edgecollab-busybox:1"

RUNC_CONTAINERS_CONF = """\
[engine]
runtime = "runc"
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
"""


def podman_test_settings(tmpdir: str | os.PathLike[str], *, network: str | None = "none") -> PodmanSettings:
    """Settings for a simulated node whose whole state lives under ``tmpdir``.

    ``tmpdir`` should be short (podman's socket paths have length limits):
    ``tempfile.mkdtemp(prefix="ec-", dir="/tmp")``. ``network="none"`` keeps the
    pods off the shared bridge: tests reach them with ``podman exec`` only.
    """
    base = Path(tmpdir)
    conf: Path | None = None
    if os.environ.get("EDGECOLLAB_PODMAN_DEFAULTS") != "1":
        conf = base / "containers.conf"
        if not conf.exists():
            conf.write_text(RUNC_CONTAINERS_CONF)
    return PodmanSettings(
        work_dir=base / "work",
        root=base / "root",
        runroot=base / "run",
        tmpdir=base / "tmp",
        containers_conf=conf,
        network=network,
        command_timeout=60.0,
    )


def cleanup_podman_node(settings: PodmanSettings) -> None:
    """Remove everything a test node holds: pods, containers, volumes, mounts, files.

    Not ``podman system reset``: it also deletes the machine's shared network
    definitions, which other nodes use. podman 4.3 on hybrid cgroups also leaves
    an empty cgroup behind for some removed pods; those of this node's pods go too.
    """
    env = dict(os.environ)
    if settings.containers_conf is not None:
        env["CONTAINERS_CONF"] = str(settings.containers_conf)
    podman = [settings.binary, *settings.global_args()]

    def run(*args: str) -> str:
        done = subprocess.run(
            [*podman, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        return done.stdout

    if settings.root is not None and settings.root.exists():
        pod_ids = run("events", "--stream=false", "--filter", "type=pod", "--filter", "event=create",
                      "--format", "{{.ID}}").split()
        # Stop, then remove a moment later: see PodmanRuntime._remove_pods.
        run("pod", "stop", "--all", "--time", "0")
        time.sleep(0.2)
        run("pod", "rm", "--all", "--force", "--time", "0")
        run("rm", "--all", "--force", "--time", "0")
        run("volume", "rm", "--all", "--force")
        for pod_id in pod_ids:
            for cgroup in Path("/sys/fs/cgroup").glob(f"*/libpod_parent/{pod_id}"):
                with contextlib.suppress(OSError):
                    cgroup.rmdir()
    base = settings.work_dir.parent
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(f"{base}/")
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        if subprocess.run(["umount", mount], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    shutil.rmtree(base, ignore_errors=True)


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

"""What a machine needs before simulated nodes can run pods: the demo image, and podman settings that work.

Podman's defaults are right on ordinary machines. Some (these CI machines among
them) run crun on cgroups in hybrid mode, which crun refuses, and forbid
raising container ulimits. ``containers_conf_for_this_machine`` tries the
defaults once with a throwaway storage and, only if they fail, writes a
containers.conf that selects runc and keeps ulimits at the host's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from edgeagent.runtime import PodmanRuntime, PodmanSettings

DEMO_IMAGE = "localhost/edgecollab-busybox:1"
REPO = Path(__file__).resolve().parent.parent

logger = logging.getLogger(__name__)

RUNC_CONF = """\
# Written by edgesim: this machine's podman cannot run pods with its defaults
# (crun on hybrid cgroups, or ulimits above the host's are refused).
[engine]
runtime = "runc"

[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
"""


def build_demo_image(out: Path) -> Path:
    """Build the busybox root filesystem tar (nothing is downloaded)."""
    if not out.exists():
        subprocess.run(["bash", str(REPO / "scripts" / "build-demo-image.sh"), str(out)], check=True, timeout=120)
    return out


def _pod_runs(image_tar: Path, conf: Path | None) -> bool:
    base = Path(tempfile.mkdtemp(prefix="ec-probe-", dir="/tmp"))
    settings = PodmanSettings(work_dir=base / "work", root=base / "root", runroot=base / "run", tmpdir=base / "tmp",
                              containers_conf=conf)
    env = {**os.environ, **({"CONTAINERS_CONF": str(conf)} if conf else {})}
    podman = ["podman", *settings.global_args()]
    try:
        asyncio.run(PodmanRuntime(settings).import_image(image_tar, DEMO_IMAGE))
        result = subprocess.run([*podman, "run", "--rm", "--network", "none", DEMO_IMAGE, "true"],
                                capture_output=True, text=True, env=env, timeout=120)
        if result.returncode != 0:
            logger.info("podman with %s cannot run a container: %s", conf or "its defaults", result.stderr.strip())
        return result.returncode == 0
    finally:
        remove_node_storage(settings, base)


def containers_conf_for_this_machine(workdir: Path, image_tar: Path) -> Path | None:
    """None when podman's defaults work here, else the path of a runc containers.conf that does."""
    conf = workdir / "containers.conf"
    marker = workdir / "containers.conf.not-needed"
    if conf.exists():
        return conf
    if marker.exists():
        return None
    workdir.mkdir(parents=True, exist_ok=True)
    if _pod_runs(image_tar, None):
        marker.write_text("podman's defaults run pods on this machine\n")
        return None
    conf.write_text(RUNC_CONF)
    if not _pod_runs(image_tar, conf):
        raise RuntimeError(f"podman cannot run a container here, not even with {conf}; see the log above")
    return conf


def remove_node_storage(settings: PodmanSettings, base: Path) -> None:
    """Remove everything a test node holds: pods, containers, volumes, then unmount and delete ``base``.

    ``base`` is the directory that holds all of the node's podman state (its
    root, runroot and tmpdir).

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
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(f"{base}/")
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        if subprocess.run(["umount", mount], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    shutil.rmtree(base, ignore_errors=True)

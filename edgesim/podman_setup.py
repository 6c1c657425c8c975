"""What a machine needs before simulated nodes can run pods: the demo image, and podman settings that work.

Podman's defaults are right on ordinary machines. Some (these CI machines among
them) run crun on cgroups in hybrid mode, which crun refuses, and forbid
raising container ulimits. ``containers_conf_for_this_machine`` tries the
defaults once with a throwaway storage and, only if they fail, writes a
containers.conf that selects runc and keeps ulimits at the host's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgeagent.runtime import PodmanRuntime, PodmanSettings

from .fleet import DEMO_IMAGE, REPO

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
        subprocess.run([*podman, "system", "reset", "-f"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


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

"""What a machine needs before simulated nodes can run pods: the demo image, and podman settings that work.

Podman's defaults are right on ordinary machines. Some (these CI machines among
them) run crun on cgroups in hybrid mode, which crun refuses, and forbid
raising container ulimits. scripts/prove-runtime.sh plays a pod with the
defaults once under a throwaway storage and, only if they fail, writes a
containers.conf that selects runc and keeps ulimits at the host's;
``containers_conf_for_this_machine`` reads its answer.
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeagent.doctor import report
from edgeagent.runtime import EdgeRuntimeError, PodmanRuntime, PodmanSettings
from edgeagent.runtime.podman_cli import PodmanCli, PodmanFailed

DEMO_IMAGE = "localhost/edgecollab-busybox:1"
# What `podman import` needs to make the busybox root filesystem of
# scripts/build-demo-image.sh a usable image: without PATH, `podman exec NAME sh`
# finds no shell.
DEMO_IMAGE_CHANGES: tuple[str, ...] = ("ENV=PATH=/bin", 'CMD ["/bin/sh"]')
REPO = Path(__file__).resolve().parent.parent

logger = logging.getLogger(__name__)


class RuntimeNotReady(RuntimeError):
    """podman cannot run pods on this machine; the message has every check, one per line."""


@dataclass(frozen=True, slots=True)
class MachineSetup:
    """What simulated nodes on this machine need: the demo image tar and podman's containers.conf."""

    image_tar: Path
    containers_conf: Path | None


def prepare_machine(build_dir: Path) -> MachineSetup:
    """Build the demo image, choose podman's settings, and prove a pod runs: the demo's and tests' preflight.

    The proof is the agent's own preflight (``edgeagent doctor``'s runtime
    checks) on a throwaway storage root. Raises RuntimeNotReady naming every
    failed check with podman's error.
    """
    image_tar = build_demo_image(build_dir / "edgecollab-busybox.tar")
    try:
        conf = containers_conf_for_this_machine(build_dir)
    except RuntimeError as exc:
        raise RuntimeNotReady(str(exc)) from exc
    base = Path(tempfile.mkdtemp(prefix="ec-preflight-", dir="/tmp"))
    settings = PodmanSettings(work_dir=base / "work", root=base / "root", runroot=base / "run", tmpdir=base / "tmp",
                              containers_conf=conf, network="none")
    try:
        checks = asyncio.run(PodmanRuntime(settings).preflight())
    finally:
        remove_node_storage(settings, base)
    if not all(check.ok for check in checks):
        raise RuntimeNotReady("podman cannot run pods on this machine (the agent's preflight, as "
                              "'edgeagent doctor' prints it):\n" + report(checks))
    return MachineSetup(image_tar=image_tar, containers_conf=conf)


def build_demo_image(out: Path) -> Path:
    """Build the busybox root filesystem tar (nothing is downloaded)."""
    if not out.exists():
        subprocess.run(["bash", str(REPO / "scripts" / "build-demo-image.sh"), str(out)], check=True, timeout=120)
    return out


async def import_image(
    settings: PodmanSettings,
    tar_path: str | os.PathLike[str],
    reference: str,
    *,
    changes: Sequence[str] = DEMO_IMAGE_CHANGES,
) -> None:
    """Side-load a root filesystem tar as image ``reference`` into a node's storage; nothing if it exists.

    Simulated nodes have no registry to pull from. ``changes`` are passed as
    ``podman import --change``; the default suits the busybox tar of
    scripts/build-demo-image.sh. Raises EdgeRuntimeError with podman's error.
    """
    podman = PodmanCli(settings)
    exists = await podman.run("image", "exists", reference, check=False)
    if exists.returncode == 0:
        return
    if exists.returncode != 1:
        raise EdgeRuntimeError(f"podman could not check image {reference}: {exists.stderr.strip()}")
    args = ["import", "--quiet"]
    for change in changes:
        args += ["--change", change]
    try:
        await podman.run(*args, os.fspath(tar_path), reference)
    except PodmanFailed as exc:
        raise EdgeRuntimeError(f"podman could not import {tar_path} as {reference}: {exc.stderr}") from exc
    logger.info("Imported %s as %s", tar_path, reference)


def containers_conf_for_this_machine(build_dir: Path) -> Path | None:
    """None when podman's defaults run pods here, else the runc containers.conf that does.

    scripts/prove-runtime.sh decides (the install step runs it too) and leaves
    its answer under ``build_dir/podman``; it runs here only when no answer is
    there yet. Raises RuntimeError with podman's own error when no pod can run.
    """
    conf = build_dir / "podman" / "containers.conf"
    marker = build_dir / "podman" / "containers.conf.not-needed"
    if not conf.exists() and not marker.exists():
        proof = subprocess.run(["bash", str(REPO / "scripts" / "prove-runtime.sh"), str(build_dir)],
                               capture_output=True, text=True, timeout=300, check=False)
        if proof.returncode != 0:
            raise RuntimeError(proof.stderr.strip() or proof.stdout.strip())
    return conf if conf.exists() else None


def second_node(name: str, work_dir: Path, machine: MachineSetup) -> tuple[PodmanSettings, Path, list[str]]:
    """What one more node on this machine needs of podman, as a user gives it to ``edgeagent run``/``doctor``:
    its own storage (root, runroot, tmpdir) under a new short directory in /tmp (podman's socket paths have a
    length limit), no pod network, and the machine's containers.conf. Returns the settings, that directory
    (``remove_node_storage`` takes both) and the flags."""
    base = Path(tempfile.mkdtemp(prefix=f"ec-{name}-", dir="/tmp"))
    settings = PodmanSettings(work_dir=work_dir, root=base / "root", runroot=base / "run", tmpdir=base / "tmp",
                              containers_conf=machine.containers_conf, network="none")
    flags = ["--podman-root", str(settings.root), "--podman-runroot", str(settings.runroot),
             "--podman-tmpdir", str(settings.tmpdir), "--podman-network", "none"]
    if machine.containers_conf:
        flags += ["--containers-conf", str(machine.containers_conf)]
    return settings, base, flags


def remove_node_storage(settings: PodmanSettings, base: Path) -> None:
    """Remove everything a test node holds: pods, containers, volumes, then unmount and delete ``base``.

    ``base`` is the directory that holds all of the node's podman state (its
    root, runroot and tmpdir). The runtime's subPath binds under its work dir
    (``settings.work_dir``, which may lie elsewhere) are unmounted too, so none
    is left in the machine's mount table.

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
        if line.split()[4].startswith((f"{base}/", f"{settings.work_dir}/"))
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        if subprocess.run(["umount", mount], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    shutil.rmtree(base, ignore_errors=True)

"""What the tests of attacks on a node's host share: the victim directory, the paths aimed at it, the pods.

A victim directory is a host directory anyone may write to: an attack that reaches the host leaves a
file there, so a test asserts it stays empty. ``climb_to`` is the relative path an attacker writes to
leave a volume for a host path.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgesim.podman_setup import DEMO_IMAGE


@contextmanager
def victim_directory() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ec-victim-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        for child in sorted(path.rglob("*"), reverse=True):
            child.unlink() if not child.is_dir() or child.is_symlink() else child.rmdir()
        path.rmdir()


def climb_to(target: Path) -> str:
    """A relative path that leads from deep inside podman's volume directory to ``target``."""
    return "../" * 24 + str(target).lstrip("/")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def nobody_pod(name: str, command: str, mounts: list[dict[str, Any]], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    """A Pod of one container ``c`` running ``command`` as nobody (what the default policy lets run)."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"securityContext": {"runAsUser": 65534},
                     "containers": [{"name": "c", "image": DEMO_IMAGE, "command": ["sh", "-c", command],
                                     "volumeMounts": mounts}],
                     "volumes": volumes}}


CLAIM = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
# A pod that leaves x/y -> / in its claim: what the next revision's subPath x/y must never follow.
PLANT_LINK = "mkdir -p /data/x && ln -s / /data/x/y; sleep 3600"

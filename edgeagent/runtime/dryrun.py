"""The dry-run runtime: validates and records a release's manifests instead of running them.

What it is for: rehearsing a rollout on a node (``edgeagent join --runtime
dry-run``) before it runs anything, and benchmarks that run thousands of
agents on one machine (``bench/rollout.py``). Everything up to the point where
another runtime would start containers is the same:

- the manifests go through the same checks as on the other runtimes: the
  node policy's release check and the bounded YAML load
  (``manifests.release_documents``), then every object against the node
  policy (``NodePolicy.object_refusal``), each object's kind, apiVersion and
  name, through the Kubernetes runtime's pure plan (``build_kube_plan``). A
  refused release is refused with the same ``ManifestRejected`` message;
- what would be applied is recorded under ``WORK_DIR`` (``STATE/dry-run``)::

      WORK_DIR/NAMESPACE/RELEASE/revision-N.yaml   the rendered manifests, as the hub sent them
      WORK_DIR/NAMESPACE/RELEASE/release.json      the record: revision, digest, objects, workloads

  each written atomically (``edgekit.files.write_atomic``). ``N`` is the
  node's count of distinct manifests applied for the release (applying the
  same manifests again keeps it), not the hub's revision (which the
  Kubernetes runtime labels its objects with). The newest ``history``
  revisions are kept.

``observe`` reports every workload recorded (Deployment, StatefulSet,
DaemonSet, Job, Pod) as ready with the phase ``Recorded``, so the agent
reports the release ``Deployed``; ``remove`` deletes the release's directory;
``releases`` lists what is recorded. Nothing runs, so nothing can drift or die:
self-heal never triggers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.files import write_atomic

from ..policy import NodePolicy
from .base import (
    ApplyResult,
    EdgeRuntimeError,
    NodeContext,
    Observation,
    PodState,
    PreflightCheck,
    ReleaseRef,
    writable_work_dir,
)
from .kubernetes_plan import WORKLOAD_KINDS, build_kube_plan, manifests_digest

__all__ = ["DryRunRuntime", "DryRunSettings"]

logger = logging.getLogger(__name__)

RECORD_FILE = "release.json"
# The phase every recorded workload reports: nothing runs, nothing is missing.
RECORDED = "Recorded"
_REVISION_FILE = re.compile(r"^revision-(\d+)\.yaml$")


@dataclass(frozen=True, slots=True, kw_only=True)
class DryRunSettings:
    """Where the dry-run runtime records releases, and what it checks them against."""

    # STATE/dry-run: one directory per release under its namespace.
    work_dir: Path
    policy: NodePolicy = field(default_factory=NodePolicy)
    # Recorded revisions kept per release (the newest); older revision-N.yaml files are deleted. Helm keeps 10.
    history: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "work_dir", Path(self.work_dir).absolute())
        if self.history < 1:
            raise ValueError("DryRunSettings.history must be at least 1")


@dataclass(frozen=True, slots=True)
class _Record:
    revision: int = 0
    digest: str = ""
    # "Kind/name" of every object (hooks included), in Helm's install order.
    objects: tuple[str, ...] = ()
    # "Kind/name" of the workloads among them: what observe reports as pods.
    workloads: tuple[str, ...] = ()
    applied_at: str = ""

    @classmethod
    def read(cls, path: Path) -> _Record:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise EdgeRuntimeError(f"the dry-run record {path} is unreadable ({exc}); remove the release's "
                                   "directory to start it afresh") from exc
        return cls(revision=int(data.get("revision", 0)), digest=str(data.get("digest", "")),
                   objects=tuple(data.get("objects", ())), workloads=tuple(data.get("workloads", ())),
                   applied_at=str(data.get("applied_at", "")))


class DryRunRuntime:
    """The ``Runtime`` that validates and records manifests and runs nothing (see the module docstring)."""

    name = "dry-run"

    def __init__(self, settings: DryRunSettings) -> None:
        self.settings = settings
        self._locks: dict[ReleaseRef, asyncio.Lock] = {}
        # Applies that reached the record (for benchmarks: a reconnect must re-apply nothing).
        self.applies = 0

    def __repr__(self) -> str:
        return f"DryRunRuntime(work_dir={self.settings.work_dir})"

    async def __aenter__(self) -> DryRunRuntime:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def release_dir(self, ref: ReleaseRef) -> Path:
        return self.settings.work_dir / ref.namespace / ref.release

    def manifest_file(self, ref: ReleaseRef, revision: int) -> Path:
        """Where revision ``revision`` (the node's count, see the module docstring) of ``ref`` is recorded."""
        return self.release_dir(ref) / f"revision-{revision}.yaml"

    def _lock(self, ref: ReleaseRef) -> asyncio.Lock:
        return self._locks.setdefault(ref, asyncio.Lock())

    async def apply(self, ref: ReleaseRef, manifests: str, node: NodeContext, *,
                    revision: int | None = None) -> ApplyResult:
        """Record ``manifests`` for ``ref`` (at the node's own count: see the module docstring; ``revision``, the
        hub's, is not used)."""
        async with self._lock(ref):
            # Parsing, planning and the synced writes block: a thread, as the other runtimes plan in one.
            revision, warnings = await asyncio.to_thread(self._record, ref, manifests, node)
            self.applies += 1
        logger.info("Release %s recorded at revision %d (dry run: nothing started)", ref, revision)
        return ApplyResult(warnings=warnings)

    def _record(self, ref: ReleaseRef, manifests: str, node: NodeContext) -> tuple[int, tuple[str, ...]]:
        folder = self.release_dir(ref)
        record = _Record.read(folder / RECORD_FILE)
        digest = manifests_digest(manifests, node)
        revision = record.revision if record.digest == digest and record.revision else record.revision + 1
        # Raises ManifestRejected exactly as the Kubernetes runtime's plan does (and as podman's, for policy).
        plan = build_kube_plan(ref, manifests, node, revision=revision, policy=self.settings.policy)
        objects = [*plan.objects, *plan.hooks]
        workloads = tuple(f"{o.kind}/{o.name}" for o in plan.objects if o.kind in WORKLOAD_KINDS)
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(self.manifest_file(ref, revision), manifests)
            done = {"revision": revision, "digest": digest, "objects": [f"{o.kind}/{o.name}" for o in objects],
                    "workloads": list(workloads),
                    "applied_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            write_atomic(folder / RECORD_FILE, json.dumps(done, indent=2) + "\n")
            self._prune(folder, revision)
        except OSError as exc:
            raise EdgeRuntimeError(f"cannot record release {ref} in {folder}: {exc.strerror or exc}") from exc
        return revision, tuple(plan.warnings)

    def _prune(self, folder: Path, newest: int) -> None:
        for path in folder.iterdir():
            match = _REVISION_FILE.match(path.name)
            if match and int(match.group(1)) <= newest - self.settings.history:
                path.unlink(missing_ok=True)

    async def remove(self, ref: ReleaseRef, node: NodeContext | None = None) -> None:
        async with self._lock(ref):
            folder = self.release_dir(ref)
            await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
            if folder.exists():
                raise EdgeRuntimeError(f"cannot remove the dry-run record {folder}")
        logger.info("Release %s removed (dry run: its record deleted)", ref)

    async def observe(self, ref: ReleaseRef) -> Observation:
        record = await asyncio.to_thread(_Record.read, self.release_dir(ref) / RECORD_FILE)
        if not record.revision:
            return Observation(ready=0, total=0, pods=(), message="")
        pods = tuple(PodState(name=name, phase=RECORDED, ready=True, container_ids=(), started_at=record.applied_at)
                     for name in record.workloads)
        return Observation(ready=len(pods), total=len(pods), pods=pods)

    async def releases(self) -> set[ReleaseRef]:
        return await asyncio.to_thread(_recorded, self.settings.work_dir)

    async def recorded(self, ref: ReleaseRef) -> dict[str, Any] | None:
        """The release's record (``release.json``) as a mapping; None when nothing is recorded."""
        record = await asyncio.to_thread(_Record.read, self.release_dir(ref) / RECORD_FILE)
        if not record.revision:
            return None
        return {"revision": record.revision, "digest": record.digest, "objects": list(record.objects),
                "workloads": list(record.workloads), "applied_at": record.applied_at}

    async def preflight(self) -> tuple[PreflightCheck, ...]:
        problem = await asyncio.to_thread(writable_work_dir, self.settings.work_dir)
        return (
            PreflightCheck("dry-run", True, "releases are validated and recorded, never started", "RuntimeReady"),
            PreflightCheck("storage", not problem, problem or f"{self.settings.work_dir} writable",
                           "StorageReady", "StorageNotWritable" if problem else ""),
        )


def _recorded(work_dir: Path) -> set[ReleaseRef]:
    refs: set[ReleaseRef] = set()
    if not work_dir.is_dir():
        return refs
    for record in work_dir.glob(f"*/*/{RECORD_FILE}"):
        try:
            refs.add(ReleaseRef(record.parent.parent.name, record.parent.name))
        except ValueError:
            logger.warning("Ignoring %s: not a release's directory", record.parent)
    return refs

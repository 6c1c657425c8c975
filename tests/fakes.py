"""An in-memory runtime for tests of decision logic (the reconciler, the outbox).

Only for pure logic: everything a user sees is also covered against real podman
(tests/runtime, tests/e2e, tests/autonomy).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from edgeagent.runtime import (
    ApplyResult,
    EdgeRuntimeError,
    ManifestRejected,
    NodeContext,
    Observation,
    PodState,
    PreflightCheck,
    ReleaseRef,
)

HEALTHY = (PreflightCheck("podman", True, "fake", "RuntimeReady"),
           PreflightCheck("storage", True, "fake", "StorageReady"))


@dataclass
class FakeRuntime:
    """Runs every release as one ready pod. A test can make releases hang, fail or be rejected."""

    name: str = "fake"
    checks: tuple[PreflightCheck, ...] = HEALTHY
    # release name -> an event the apply waits for (a hanging runtime call)
    blocked: dict[str, asyncio.Event] = field(default_factory=dict)
    # release name -> how applies of it fail: "transient" or "rejected"
    failing: dict[str, str] = field(default_factory=dict)
    applies: list[tuple[str, str]] = field(default_factory=list)  # (release, manifests) in call order
    running: dict[ReleaseRef, str] = field(default_factory=dict)

    async def __aenter__(self) -> FakeRuntime:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def apply(self, ref: ReleaseRef, manifests: str, node: NodeContext, *,
                    revision: int | None = None) -> ApplyResult:
        self.applies.append((ref.release, manifests))
        if ref.release in self.blocked:
            await self.blocked[ref.release].wait()
        how = self.failing.get(ref.release)
        if how == "rejected":
            raise ManifestRejected(f"Pod/{ref.release}: spec.containers must list at least one container")
        if how == "transient":
            raise EdgeRuntimeError("podman kube play timed out")
        self.running[ref] = manifests
        return ApplyResult()

    async def remove(self, ref: ReleaseRef, node: NodeContext | None = None) -> None:
        self.running.pop(ref, None)

    async def observe(self, ref: ReleaseRef) -> Observation:
        if ref in self.running:
            return Observation(ready=1, total=1, pods=(PodState(f"{ref.release}-pod", "Running", True, ("c1",), "t"),))
        return Observation(ready=0, total=1, pods=(PodState(f"{ref.release}-pod", "Missing", False, (), ""),))

    async def releases(self) -> set[ReleaseRef]:
        return set(self.running)

    async def preflight(self) -> tuple[PreflightCheck, ...]:
        return self.checks

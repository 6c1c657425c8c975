"""The node's own health: runtime preflight checks turned into node conditions.

``NodeHealth`` runs the runtime's preflight (the same checks as ``edgeagent
doctor``) and keeps the resulting conditions, ``RuntimeReady`` and
``StorageReady``, with the time each last changed. The agent checks when it
starts, whenever an apply fails (to tell a broken node from a broken release),
and, while the node is not ready, again with backoff until it is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from edgeprotocol.messages import READINESS_CONDITIONS, Condition, ConditionStatus, now

from .runtime import PreflightCheck, Runtime

logger = logging.getLogger(__name__)

# The reason a condition carries when every check behind it passed.
READY_REASONS = {"RuntimeReady": "RuntimeWorks", "StorageReady": "StorageWritable"}


def conditions_from(checks: Iterable[PreflightCheck], previous: Iterable[Condition] = (), *,
                    at: str | None = None) -> tuple[Condition, ...]:
    """One condition per type from ``checks``; ``since`` moves only when a status changes.

    A type no check feeds is ``Unknown``. A failing condition takes the reason
    of its first failing check and the details of all of them.
    """
    checks = tuple(checks)
    before = {c.type: c for c in previous}
    stamp = at or now()
    out: list[Condition] = []
    for kind in READINESS_CONDITIONS:  # the runtime's; the clock's come from edgeagent.clock
        relevant = [c for c in checks if c.condition == kind]
        failing = [c for c in relevant if not c.ok]
        status: ConditionStatus
        if not relevant:
            status, reason, message = "Unknown", "NotChecked", "no check reported on this"
        elif failing:
            status, reason = "False", failing[0].reason or "CheckFailed"
            message = "; ".join(f"{c.name}: {c.detail}" for c in failing)
        else:
            status, reason = "True", READY_REASONS[kind]
            message = "; ".join(f"{c.name}: {c.detail}" for c in relevant)
        old = before.get(kind)
        since = old.since if old is not None and old.status == status and old.since else stamp
        out.append(Condition(type=kind, status=status, reason=reason, message=message, since=since))
    return tuple(out)


def summary(conditions: Iterable[Condition]) -> str:
    """``RuntimeReady=False (PodCreateFailed): why`` for each unhealthy condition; empty when all are True."""
    return "; ".join(f"{c.type}={c.status} ({c.reason}): {c.message}" for c in conditions if not c.ok)


class NodeHealth:
    """The node's conditions as last checked; ``ready`` is None until the first check."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.conditions: tuple[Condition, ...] = ()
        self.checks: tuple[PreflightCheck, ...] = ()

    @property
    def ready(self) -> bool | None:
        if not self.conditions:
            return None
        return all(c.ok for c in self.conditions)

    async def check(self) -> bool:
        """Run the runtime's preflight and update the conditions; True when the node can run pods."""
        self.checks = await self._runtime.preflight()
        self.conditions = conditions_from(self.checks, self.conditions)
        return bool(self.ready)

"""The hub's driver of staged rollouts: runs the planner (``edgehub.rollout``) on the store's state.

``RolloutDriver`` is entered for the hub's life (``rollouts_ctx`` in
``edgehub.app``). It re-evaluates every unsettled rollout after each store
change (a node's status, presence, an apply) and on a timer (``tick``: the
``readyWithin`` deadlines and ``minReadyTime`` pass without any change),
stores each new state (only if no apply replaced the row meanwhile), and
dispatches when a batch started or the rollout settled. A failed batch with
``onFailure: Rollback`` becomes a rollback revision (``Components.rollback``
to the previous good revision), which the dispatcher sends only to the nodes
that took the bad one. Everything the driver needs is in the store, so a
restarted hub goes on where it stopped. Store access is async (SQLite on its
own thread) and planning is pure and small: nothing blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from edgekit.tasks import OwnedTask

from .components import Components
from .dispatch import Dispatcher
from .errors import ConcurrentChange, HubError, NotFound
from .rollout import SETTLED, Report, RolloutState, Target, pause, resume, step, summary, view
from .store.assignments import AssignmentStore
from .store.components import ComponentStore, RolloutRow
from .store.enrollment import NodeRecord
from .store.reports import ReportStore

logger = logging.getLogger(__name__)


class RolloutDriver:
    def __init__(self, reports: ReportStore, component_store: ComponentStore, assignments: AssignmentStore,
                 dispatcher: Dispatcher, components: Components, *, tick: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._reports = reports
        self._component_store = component_store
        self._assignments = assignments
        self._dispatcher = dispatcher
        self._components = components
        self._tick = tick
        self._clock = clock
        self._wake = asyncio.Event()
        self._loop = OwnedTask("rollout-driver")
        self._lock = asyncio.Lock()
        # Short words per component for its summary on the bus ("batch 2/3", "rolled back").
        self.summaries: dict[tuple[str, str], str] = {}

    async def __aenter__(self) -> RolloutDriver:
        self._loop.start(self._run())
        self._wake.set()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._loop.stop()

    def changed(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._tick)
            self._wake.clear()
            try:
                await self.evaluate()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Evaluating rollouts failed; trying again shortly")
            # Coalesce bursts of status reports into one evaluation.
            await asyncio.sleep(min(0.2, self._tick))

    async def _observe(self, state: RolloutState) -> tuple[dict[str, Target], dict[str, Report]]:
        """The component's targets (the nodes assigned a release of it) and what each reported of it."""
        listed = await self._reports.list_nodes(with_certificate=False)
        nodes: dict[str, NodeRecord] = {n.name: n for n in listed if n.standing == "joined"}
        targets: dict[str, Target] = {}
        reports: dict[str, Report] = {}
        for a in await self._assignments.list_assignments():
            if (a.namespace, a.release) != (state.namespace, state.name) or a.kind != "release":
                continue
            node = nodes.get(a.node)
            if node is None:
                continue
            targets[a.node] = Target(pool=node.pool, online=node.presence == "online")
            for r in node.status.releases if node.status else ():
                if (r.namespace, r.release) == (state.namespace, state.name):
                    reports[a.node] = Report.of(r)
        return targets, reports

    async def evaluate(self) -> None:
        """Move every unsettled rollout on; dispatch when one started a batch or settled."""
        async with self._lock:
            rows = await self._component_store.list_rollouts()
            for row in rows:
                if row.state in SETTLED:
                    self.summaries[(row.namespace, row.name)] = row.state
            active = [r for r in rows if r.state not in SETTLED]
            if not active:
                return
            components = {(c.namespace, c.name): c
                          for c in await self._component_store.list_components(with_spec=False)}
            dispatch = False
            for row in active:
                state = RolloutState.from_row(row)
                comp = components.get((row.namespace, row.name))
                if comp is None or comp.revision != state.revision:
                    continue  # replaced (an apply stores its own row in the same transaction)
                targets, reports = await self._observe(state)
                new = step(state, targets, reports, self._clock())
                self.summaries[(row.namespace, row.name)] = summary(new)
                if new is not state:
                    if not await self._component_store.save_rollout(new.to_row(), expect=row):
                        continue
                    row = new.to_row()
                    if new.batches != state.batches or new.state != state.state:
                        dispatch = True
                        self._log(new, state)
                if new.state == "rolling back":  # just failed, or the hub stopped before the rollback was made
                    await self._roll_back(new, row)
            if dispatch:
                await self._dispatcher.sync()

    def _log(self, new: RolloutState, old: RolloutState) -> None:
        ident = f"{new.namespace}/{new.name}"
        if new.state != old.state:
            logger.log(logging.WARNING if new.reason else logging.INFO, "Rollout of %s revision %d: %s%s", ident,
                       new.revision, new.state, f" ({new.reason})" if new.reason else "")
        if new.batches != old.batches and new.batch >= 0:
            logger.info("Rollout of %s revision %d: batch %d/%d started with %d node(s)", ident, new.revision,
                        new.batch + 1, len(new.policy.batches), len(new.batches[new.batch]))

    async def _roll_back(self, state: RolloutState, row: RolloutRow) -> None:
        """The failed rollout's nodes go back: a new revision from the previous good one (history marks the
        bad one ``rolled back``), sent to the nodes that took the bad one."""
        try:
            outcome = await self._components.rollback(
                state.namespace, state.name, state.previous, rollout=state,
                origin=f"rollback to {state.previous} (rollout of {state.revision} failed)")
            logger.warning("Rollout of %s/%s revision %d rolled back to revision %d (now revision %d)",
                           state.namespace, state.name, state.revision, state.previous, outcome.revision)
        except ConcurrentChange as exc:
            if "changed meanwhile" in str(exc):
                return  # an apply got there first; its row replaced this one
            await self._fail(state, row, exc)
        except HubError as exc:
            await self._fail(state, row, exc)

    async def _fail(self, state: RolloutState, row: RolloutRow, exc: Exception) -> None:
        failed = state.copy()
        failed.state = "failed"
        failed.reason = f"{state.reason}; the rollback to revision {state.previous} failed: {exc}"
        logger.error("Rollout of %s/%s: %s", state.namespace, state.name, failed.reason)
        await self._component_store.save_rollout(failed.to_row(), expect=row)

    async def _state(self, namespace: str, name: str) -> tuple[RolloutState, RolloutRow]:
        row = await self._component_store.get_rollout(namespace, name)
        comp = await self._component_store.get_component(namespace, name)
        if row is None or comp is None or comp.deleted:
            what = "not found" if comp is None or comp.deleted else "has no staged rollout (no spec.edge.rollout " \
                "in the revision that changed it last)"
            raise NotFound(f"component {namespace}/{name} {what}")
        return RolloutState.from_row(row), row

    async def describe(self, namespace: str, name: str) -> dict[str, Any]:
        state, _ = await self._state(namespace, name)
        targets, reports = await self._observe(state)
        answer = view(state, targets, reports)
        answer["targets"] = len(targets)
        answer["offline"] = sorted(n for n, t in targets.items() if not t.online)
        return answer

    async def pause(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._change(namespace, name, "pause")

    async def resume(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._change(namespace, name, "resume")

    async def _change(self, namespace: str, name: str, what: str) -> dict[str, Any]:
        async with self._lock:
            state, row = await self._state(namespace, name)
            wanted = "progressing" if what == "pause" else "paused"
            if state.state != wanted:
                raise ConcurrentChange(f"the rollout of {namespace}/{name} revision {state.revision} is "
                                       f"{state.state}; only a {wanted} rollout can {what}")
            new = pause(state, self._clock()) if what == "pause" else resume(state, self._clock())
            if not await self._component_store.save_rollout(new.to_row(), expect=row):
                raise ConcurrentChange(f"the rollout of {namespace}/{name} changed meanwhile; try again")
            logger.info("Rollout of %s/%s revision %d: %s by an operator", namespace, name, new.revision,
                        "paused" if what == "pause" else "resumed")
        self._wake.set()
        return await self.describe(namespace, name)

"""Staged, health-gated rollouts (``spec.edge.rollout``): the pure planner and its state.

A component whose spec has ``spec.edge.rollout`` does not send a new
revision to every target at once. The hub keeps a ``RolloutState`` per
component (stored as JSON in the store's ``rollouts`` table, so it survives a
restart) and ``step`` moves it on from what the nodes report and the time:

- batches start in order; each selects targets not in an earlier batch (a
  list of pools, a percent of the remaining targets, rounded up, or a count);
- a batch passes when each of its nodes reports the new revision Deployed
  and ready within ``readyWithin`` of the batch's start and has stayed so,
  with no container restart, for ``minReadyTime`` (a restart, or leaving
  Deployed, starts that clock again); a node fails as soon as it reports
  the new revision failing (``edgeprotocol.health.release_failing``: phase
  Failed, or a crash loop, an image it cannot pull, an OOM kill) or misses
  the deadline; more failures than ``maxFailures`` fail the batch;
- a failed batch pauses the rollout (``onFailure: Pause``) or makes it roll
  back (``rolling back``: the driver makes a rollback revision, then the
  state is ``rolled back``);
- offline nodes: ``Defer`` leaves them out of a batch while offline (they
  may join a later one when back) and gives them the revision the rollout
  settles on; ``Skip`` leaves them out of the batches for good (they get the
  new revision when the rollout completes, unchecked); ``Block`` puts them in
  batches like any node, so one that does not come back fails the gate.

``desired_revision`` says which revision a node is assigned: the new one
once its batch started (or the rollout completed), the rollback revision for
a node that took the bad one after a rollback, else what it holds (or the
previous good revision for a node holding nothing). Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from deployer_plugin import RolloutPolicy, parse_rollout_policy
from edgeprotocol.health import release_failing
from edgeprotocol.messages import ReleaseStatus

from .store.components import RolloutRow

State = Literal["progressing", "paused", "rolling back", "rolled back", "complete", "failed"]
# States in which the driver has nothing more to do.
SETTLED: tuple[str, ...] = ("complete", "rolled back", "failed")


@dataclass(frozen=True, slots=True)
class Target:
    """A node the component targets: its pool and whether it is online."""

    pool: str
    online: bool


@dataclass(frozen=True, slots=True)
class Report:
    """What a node last reported of the component's release."""

    desired_revision: int
    applied_revision: int
    phase: str
    message: str = ""
    reason: str = ""  # the release's health word ("" when healthy, and from agents that send none)
    restarts: int = 0  # its containers' restarts together

    @classmethod
    def of(cls, release: ReleaseStatus) -> Report:
        """What the gate needs of the release as the node's stored status has it."""
        return cls(desired_revision=release.desired_revision, applied_revision=release.applied_revision,
                   phase=release.phase, message=release.message, reason=release.reason, restarts=release.restarts)


@dataclass(slots=True)
class RolloutState:
    namespace: str
    name: str
    revision: int  # the revision being rolled out
    previous: int  # the previous good revision (what a rollback goes back to)
    policy: RolloutPolicy
    state: State = "progressing"
    batch: int = -1  # index of the last started batch; -1 before the first
    batches: list[list[str]] = field(default_factory=list)  # the nodes of each started batch
    batch_started_at: float = 0.0
    ready_since: dict[str, float] = field(default_factory=dict)
    # Each ready node's restarts when its ready clock started: a restart since starts the clock again. (A row
    # stored before restarts were reported has none: the node's next report fills it in.)
    ready_restarts: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # node -> why, in the current batch
    deferred: list[str] = field(default_factory=list)  # offline nodes waited for out of band (Defer)
    skipped: list[str] = field(default_factory=list)  # offline nodes left out for good (Skip)
    reason: str = ""  # why it failed, paused or rolled back
    failed_node: str = ""
    rollback_revision: int = 0  # the revision the automatic rollback made
    started_at: float = 0.0
    updated_at: float = 0.0

    @property
    def started(self) -> set[str]:
        return {n for nodes in self.batches for n in nodes}

    def to_row(self) -> RolloutRow:
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "policy"}
        body["policy"] = self.policy.to_document()
        return RolloutRow(namespace=self.namespace, name=self.name, revision=self.revision, previous=self.previous,
                          state=self.state, body=json.dumps(body, sort_keys=True))

    @classmethod
    def from_row(cls, row: RolloutRow) -> RolloutState:
        body = json.loads(row.body)
        body["policy"] = parse_rollout_policy(body["policy"])
        return cls(**body)

    def copy(self) -> RolloutState:
        return dataclasses.replace(self, batches=[list(b) for b in self.batches], ready_since=dict(self.ready_since),
                                   ready_restarts=dict(self.ready_restarts), failed=dict(self.failed),
                                   deferred=list(self.deferred), skipped=list(self.skipped))

    def not_ready(self, node: str) -> None:
        """``node``'s ready clock stops: it starts afresh when the node is ready again."""
        self.ready_since.pop(node, None)
        self.ready_restarts.pop(node, None)

    def ready_clock(self, node: str, restarts: int, now: float) -> float:
        """Since when ``node`` has been ready without a restart, its clock started now if it was not running or
        its containers' ``restarts`` changed since it started (a container that restarts is not healthy,
        however soon it runs again)."""
        if node not in self.ready_since or self.ready_restarts.setdefault(node, restarts) != restarts:
            self.ready_since[node], self.ready_restarts[node] = now, restarts
        return self.ready_since[node]


def begin(namespace: str, name: str, revision: int, policy: RolloutPolicy, *, live_revision: int,
          prior: RolloutState | None, now: float) -> RolloutState:
    """The rollout of a new ``revision`` that replaces ``live_revision``. The previous good revision is
    the live one, unless the live one is itself being rolled out (then the one that rollout would go
    back to) or was rolled back (then the rollback's)."""
    previous = live_revision
    if prior is not None and prior.revision == live_revision and prior.state not in ("complete",):
        previous = prior.previous
    if prior is not None and prior.rollback_revision == live_revision:
        previous = live_revision
    return RolloutState(namespace=namespace, name=name, revision=revision, previous=previous, policy=policy,
                        started_at=now, updated_at=now)


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


def _select(policy: RolloutPolicy, index: int, eligible: list[str], targets: Mapping[str, Target]) -> list[str]:
    batch = policy.batches[index]
    if batch.pools:
        return [n for n in eligible if targets[n].pool in batch.pools]
    if batch.percent is not None:
        return eligible[:math.ceil(len(eligible) * batch.percent / 100.0 - 1e-9)]
    return eligible[:batch.count or 0]


def _start_next(s: RolloutState, targets: Mapping[str, Target], now: float) -> None:
    policy = s.policy
    index = s.batch + 1
    if index >= len(policy.batches):
        s.state, s.reason = "complete", ""
        return
    started = s.started
    remaining = sorted(n for n in targets if n not in started and n not in s.skipped)
    if policy.offline_nodes == "Skip":
        s.skipped += [n for n in remaining if not targets[n].online]
    eligible = [n for n in remaining if policy.offline_nodes == "Block" or targets[n].online]
    s.batches.append(_select(policy, index, eligible, targets))
    s.batch = index
    s.batch_started_at = now
    s.failed = {}


def _failure(report: Report | None, revision: int) -> str:
    """Why ``report`` fails a node of the rollout of ``revision`` at once ("" when it does not): the apply of the
    revision Failed, or the revision's containers are in a ``FAILING_REASONS`` state. A reason counts only once
    the node applied the revision: the containers it describes before that are the previous revision's (a
    rollout that fixes a crash loop must not fail on the crash loop it fixes)."""
    if report is None or not release_failing(report.phase, report.reason):
        return ""
    if report.phase == "Failed" and report.desired_revision >= revision:
        what = report.phase if report.reason in ("", report.phase) else f"{report.reason} (phase Failed)"
    elif report.phase != "Failed" and report.applied_revision >= revision:
        what = f"{report.reason} (phase {report.phase})"
    else:
        return ""
    return f"reported {what} for revision {revision}" + (f": {report.message}" if report.message else "")


def _ready(report: Report | None, target: Target | None, revision: int) -> bool:
    """Whether a node counts as ready at ``revision`` now: online, the revision applied and Deployed, and not
    failing (a release that runs again after an OOM kill is Deployed, not healthy)."""
    return (report is not None and target is not None and target.online and report.applied_revision >= revision
            and report.phase == "Deployed" and not release_failing(report.phase, report.reason))


def _gate(s: RolloutState, targets: Mapping[str, Target], reports: Mapping[str, Report], now: float) -> bool:
    """Check the current batch: True when it passed. Sets ``state`` when it failed."""
    policy = s.policy
    nodes = [n for n in s.batches[s.batch] if n in targets]
    deadline = s.batch_started_at + policy.ready_within
    waiting = False
    checked = 0
    for node in nodes:
        report = reports.get(node)
        if not targets[node].online and policy.offline_nodes != "Block":
            s.not_ready(node)
            continue  # deferred, not a failure: it gets the revision the rollout settles on
        checked += 1
        if node in s.failed:
            continue
        failure = _failure(report, s.revision)
        if failure:
            s.failed[node] = failure
            s.not_ready(node)
            continue
        if report is not None and _ready(report, targets[node], s.revision):
            if now - s.ready_clock(node, report.restarts, now) < policy.min_ready_time:
                waiting = True
            continue
        s.not_ready(node)
        if now >= deadline:
            phase = "offline" if not targets[node].online else (
                f"phase {report.phase} at revision {report.applied_revision}" if report else "no report")
            s.failed[node] = f"not Deployed and ready within {_duration(policy.ready_within)} ({phase})"
        else:
            waiting = True
    if len(s.failed) > policy.failures_allowed(checked):
        s.failed_node = sorted(s.failed)[0]
        why = s.failed[s.failed_node]
        s.reason = (f"batch {s.batch + 1}/{len(policy.batches)}: {len(s.failed)} node(s) failed "
                    f"(maxFailures {policy.max_failures}); {s.failed_node} {why}")
        s.state = "paused" if policy.on_failure == "Pause" else "rolling back"
        return False
    return not waiting


def step(state: RolloutState, targets: Mapping[str, Target], reports: Mapping[str, Report],
         now: float) -> RolloutState:
    """The rollout moved on from ``state`` (never changed in place) by what ``targets`` (the nodes the
    component targets) report (``reports``) at ``now`` (seconds, wall clock)."""
    s = state.copy()
    # Offline targets not yet in a batch, and those of the current batch not ready: waited for.
    if s.policy.offline_nodes != "Block":
        started = s.started
        current = set(s.batches[s.batch]) if s.batch >= 0 else set()
        s.deferred = sorted(n for n, t in targets.items() if not t.online and n not in s.skipped and (
            n not in started or (n in current and n not in s.ready_since and s.state not in SETTLED)))
    if s.state != "progressing":
        return s if _differs(s, state) else state
    for _ in range(len(s.policy.batches) + 1):
        if s.batch >= 0 and not _gate(s, targets, reports, now):
            break
        _start_next(s, targets, now)
        if s.state != "progressing":
            break
    if _differs(s, state):
        s.updated_at = now
        return s
    return state


def _differs(a: RolloutState, b: RolloutState) -> bool:
    return a.to_row() != b.to_row()


def pause(state: RolloutState, now: float, *, reason: str = "paused by an operator") -> RolloutState:
    s = state.copy()
    if s.state == "progressing":
        s.state, s.reason, s.updated_at = "paused", reason, now
    return s


def resume(state: RolloutState, now: float) -> RolloutState:
    """A paused rollout goes on; a batch that failed (``onFailure: Pause``) is checked afresh from now
    (its deadline restarts; nodes still Failed fail it again)."""
    s = state.copy()
    if s.state == "paused":
        s.state, s.reason, s.failed_node, s.updated_at = "progressing", "", "", now
        if s.failed:
            s.failed = {}
            s.batch_started_at = now
    return s


def desired_revision(state: RolloutState, node: str, *, current: int, held: int) -> int:
    """The revision ``node`` is assigned while ``state`` governs the component at its ``current`` revision;
    ``held`` is the release revision the node is assigned now (0 for none)."""
    if state.state == "complete" and current == state.revision:
        return current
    if state.rollback_revision and current == state.rollback_revision:
        # Rolled back: who took the bad revision gets the rollback; the others keep what they hold.
        if node in state.started or not held or held >= state.revision:
            return current
        return held
    if current != state.revision:
        return current
    if node in state.started:
        return current
    if held and held < current:
        return held
    return state.previous or current


# The target a view without targets takes each node for.
_ONLINE = Target(pool="", online=True)


def view(state: RolloutState, targets: Mapping[str, Target] | None = None,
         reports: Mapping[str, Report] | None = None) -> dict[str, Any]:
    """The rollout as the API answers it."""
    policy = state.policy
    batches = []
    for i, spec in enumerate(policy.batches):
        nodes = state.batches[i] if i < len(state.batches) else []
        ready = [n for n in nodes if reports and _ready(reports.get(n), _ONLINE if targets is None else targets.get(n),
                                                        state.revision)]
        if i < state.batch or state.state == "complete":
            phase = "passed" if i < len(state.batches) else "skipped"
        elif i == state.batch:
            phase = {"progressing": "in progress", "paused": "paused", "rolling back": "failed",
                     "rolled back": "failed", "failed": "failed"}.get(state.state, state.state)
        else:
            phase = "not started"
        batches.append({"index": i + 1, "selector": spec.to_document(), "state": phase, "nodes": nodes,
                        "count": len(nodes), "ready": len(ready),
                        "failed": sorted(n for n in nodes if n in state.failed and i == state.batch)})
    return {
        "component": f"{state.namespace}/{state.name}", "revision": state.revision,
        "previous_revision": state.previous, "state": state.state,
        "batch": state.batch + 1, "batches_total": len(policy.batches), "batches": batches,
        "failed_node": state.failed_node, "reason": state.reason,
        "failures": dict(sorted(state.failed.items())),
        "deferred": state.deferred, "skipped": state.skipped, "rollback_revision": state.rollback_revision,
        "policy": policy.to_document(), "started_at": state.started_at, "updated_at": state.updated_at,
    }


def summary(state: RolloutState) -> str:
    """A few words for the component's summary on the bus: "batch 2/3", "paused", "rolled back"."""
    if state.state == "progressing":
        return f"batch {state.batch + 1}/{len(state.policy.batches)}"
    if state.state == "paused":
        return f"paused at batch {state.batch + 1}/{len(state.policy.batches)}"
    return state.state

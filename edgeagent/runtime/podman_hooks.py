"""Helm hooks on podman: the release's hook Jobs and Pods run on the node, in Helm's order.

The hub keeps hook documents (``helm.sh/hook`` annotation) in the bundle; the
plan sets them aside (``Plan.hooks``) and this module runs them around the
runtime's own work, as Helm runs them around its own:

=============  ===========================================================
apply, first   ``pre-install`` hooks, the release is played, ``post-install``
apply, later   ``pre-upgrade``, play, ``post-upgrade`` (a rollback is a new
               revision here, so it runs the upgrade hooks)
remove         ``pre-delete``, the release's pods go, ``post-delete``
=============  ===========================================================

Within one event, hooks run one at a time ordered by ``helm.sh/hook-weight``
(a whole number, default 0), then kind, then name, as Helm orders them. A Job
or Pod hook is played as one pod (labelled ``edgecollab.io/hook``) and waited
for until its containers exit, at most ``activeDeadlineSeconds`` or
``HOOK_TIMEOUT_SECONDS``; exit code 0 everywhere is success. A Job is tried
``backoffLimit + 1`` times at most (Kubernetes' default backoffLimit is 6;
hooks usually set 0). ConfigMap and Secret hooks of the same event go into
every hook pod's play, so a hook Job can mount them; the release's own
ConfigMaps and Secrets do too. Hooks of other kinds cannot run here and are
reported. ``helm.sh/hook-delete-policy`` is honoured: ``before-hook-creation``
(Helm's default) removes the previous run's pod just before the hook runs
again, ``hook-succeeded`` and ``hook-failed`` remove it after. A failed hook
fails the apply (or removal) with the hook's exit code and the end of its log;
the agent retries with backoff. ``test`` hooks never reach the node (the hub
leaves them out).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .base import ManifestRejected, ReleaseRef, RuntimeApplyError
from .podman_cli import PodmanCli, PodmanFailed, last_error
from .podman_plan import Plan, dump_yaml_all

logger = logging.getLogger(__name__)

HOOK_ANNOTATION = "helm.sh/hook"
WEIGHT_ANNOTATION = "helm.sh/hook-weight"
DELETE_POLICY_ANNOTATION = "helm.sh/hook-delete-policy"
LABEL_HOOK = "edgecollab.io/hook"
HOOK_EVENTS = ("pre-install", "post-install", "pre-upgrade", "post-upgrade", "pre-delete", "post-delete",
               "pre-rollback", "post-rollback")
# How long one hook may run when it sets no activeDeadlineSeconds: Helm's own
# default --timeout (5 minutes).
HOOK_TIMEOUT_SECONDS = 300.0
# How often a running hook's containers are looked at.
POLL_SECONDS = 0.5
# Kubernetes' default Job backoffLimit.
DEFAULT_BACKOFF_LIMIT = 6
# Kinds whose hooks become a pod the runtime waits for.
_RUNNABLE = ("Job", "Pod")
# Kinds whose hooks are played with the runnable hooks of their event.
_DATA = ("ConfigMap", "Secret")
# Helm's install order of the kinds hooks usually take; others sort after.
_KIND_ORDER = ("ServiceAccount", "Secret", "ConfigMap", "PersistentVolumeClaim", "Role", "RoleBinding", "Service",
               "Pod", "Job")


@dataclass(frozen=True, slots=True)
class Hook:
    """One hook document of a release."""

    kind: str
    name: str
    events: frozenset[str]
    weight: int
    delete_policies: frozenset[str]
    document: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name}"


def parse_hooks(documents: Iterable[dict[str, Any]]) -> list[Hook]:
    """The hooks of a plan's hook documents. Raises ManifestRejected for a malformed weight."""
    hooks = []
    for doc in documents:
        meta = doc.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        name, kind = str(meta.get("name", "")), str(doc.get("kind", ""))
        events = frozenset(e.strip() for e in str(annotations.get(HOOK_ANNOTATION, "")).split(",") if e.strip())
        raw_weight = str(annotations.get(WEIGHT_ANNOTATION, "0")).strip() or "0"
        try:
            weight = int(raw_weight)
        except ValueError as exc:
            raise ManifestRejected(f"{kind}/{name}: {WEIGHT_ANNOTATION} {raw_weight!r} is not a whole number") from exc
        policies = frozenset(p.strip() for p in str(annotations.get(DELETE_POLICY_ANNOTATION, "")).split(",")
                             if p.strip()) or frozenset({"before-hook-creation"})
        hooks.append(Hook(kind=kind, name=name, events=events & frozenset(HOOK_EVENTS), weight=weight,
                          delete_policies=policies, document=doc))
    return hooks


def hooks_for(hooks: Iterable[Hook], event: str) -> list[Hook]:
    """The hooks of ``event`` in the order Helm runs them: weight, then kind, then name."""
    def order(hook: Hook) -> tuple[int, int, str]:
        kind = _KIND_ORDER.index(hook.kind) if hook.kind in _KIND_ORDER else len(_KIND_ORDER)
        return hook.weight, kind, hook.name

    return sorted((h for h in hooks if event in h.events), key=order)


def _unhooked(doc: dict[str, Any], *, event: str | None) -> dict[str, Any]:
    """A copy of a hook document without its hook annotations, its pod labelled with ``event`` if given."""
    doc = copy.deepcopy(doc)
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    for key in (HOOK_ANNOTATION, WEIGHT_ANNOTATION, DELETE_POLICY_ANNOTATION):
        annotations.pop(key, None)
    if event is not None:
        holder = doc if doc.get("kind") == "Pod" else ((doc.get("spec") or {}).get("template") or {})
        meta = holder.setdefault("metadata", {})
        meta.setdefault("labels", {})[LABEL_HOOK] = event
    return doc


# The plan builder the runtime uses: (manifests) -> Plan, run in a thread.
BuildPlan = Callable[[str], Awaitable[Plan]]


class HookRunner:
    """Runs one release's hooks of one event on podman. Built per apply or removal."""

    def __init__(self, cli: PodmanCli, ref: ReleaseRef, *, build: BuildPlan,
                 play: Callable[[Plan], Awaitable[None]], remove_pods: Callable[[Sequence[str]], Awaitable[None]],
                 release_data: Sequence[dict[str, Any]] = ()) -> None:
        self._cli = cli
        self._ref = ref
        self._build = build
        self._play = play
        self._remove_pods = remove_pods
        self.release_data = list(release_data)  # the release's own ConfigMaps and Secrets

    async def run(self, hooks: Sequence[Hook], event: str) -> list[str]:
        """Run every hook of ``event``; one line per hook for the record. Raises RuntimeApplyError when one fails."""
        selected = hooks_for(hooks, event)
        data = [_unhooked(h.document, event=None) for h in selected if h.kind in _DATA]
        done: list[str] = []
        for hook in selected:
            if hook.kind in _DATA:
                continue
            if hook.kind not in _RUNNABLE:
                done.append(f"{event} hook {hook.label}: not run on podman (only Job and Pod hooks run here)")
                continue
            done.append(await self._run_one(hook, event, data))
        return done

    async def _run_one(self, hook: Hook, event: str, data: list[dict[str, Any]]) -> str:
        document = _unhooked(hook.document, event=event)
        plan = await self._build(dump_yaml_all([*self.release_data, *data, document]))
        pods = list(plan.pods)
        if len(pods) != 1:
            raise RuntimeApplyError(f"{event} hook {hook.label} of release {self._ref}: makes {len(pods)} pods, not 1")
        pod = plan.pods[pods[0]]
        spec = (document.get("spec") or {}) if hook.kind == "Job" else {}
        deadline = spec.get("activeDeadlineSeconds")
        timeout = float(deadline) if isinstance(deadline, int) and deadline > 0 else HOOK_TIMEOUT_SECONDS
        backoff = spec.get("backoffLimit")
        attempts = (backoff if isinstance(backoff, int) and backoff >= 0 else DEFAULT_BACKOFF_LIMIT) + 1
        if hook.kind == "Pod":
            attempts = 1
        started = time.monotonic()
        failure = ""
        for attempt in range(1, attempts + 1):
            if "before-hook-creation" in hook.delete_policies or attempt > 1:
                await self._remove_pods([pod.name])
            try:
                await self._play(plan)
            except PodmanFailed as exc:
                failure = f"podman could not start it: {last_error(exc.stderr)}"
                continue
            failure = await self._wait(pod.containers, timeout - (time.monotonic() - started))
            if not failure:
                break
            logger.warning("Release %s: %s hook %s failed (attempt %d of %d): %s", self._ref, event, hook.label,
                           attempt, attempts, failure)
            if time.monotonic() - started >= timeout:
                break
        took = time.monotonic() - started
        if failure:
            if "hook-failed" in hook.delete_policies:
                await self._remove_pods([pod.name])
            raise RuntimeApplyError(f"{event} hook {hook.label} of release {self._ref} failed: {failure}")
        if "hook-succeeded" in hook.delete_policies:
            await self._remove_pods([pod.name])
        logger.info("Release %s: %s hook %s succeeded in %.1f s", self._ref, event, hook.label, took)
        return f"{event} hook {hook.label} succeeded in {took:.1f} s"

    async def _wait(self, containers: Sequence[str], timeout: float) -> str:
        """Wait until every container exited: "" when all exited 0, else why not."""
        deadline = time.monotonic() + max(timeout, POLL_SECONDS)
        while True:
            result = await self._cli.run("container", "inspect", "--format", "json", *containers, check=False)
            states = _states(result.stdout)
            if len(states) == len(containers) and all(s.get("Status") == "exited" for s in states.values()):
                failed = {name: s.get("ExitCode") for name, s in states.items() if s.get("ExitCode") != 0}
                if not failed:
                    return ""
                name, code = next(iter(failed.items()))
                return f"container {name} exited {code}{await self._log_tail(name)}"
            if len(states) < len(containers) and result.returncode != 0:
                return f"its containers are gone: {last_error(result.stderr)}"
            if time.monotonic() >= deadline:
                return (f"still running after {timeout:.0f} s "
                        f"(activeDeadlineSeconds or the {HOOK_TIMEOUT_SECONDS:.0f} s default)")
            await asyncio.sleep(POLL_SECONDS)

    async def _log_tail(self, container: str) -> str:
        result = await self._cli.run("logs", "--tail", "5", container, check=False)
        text = " | ".join(line for line in (result.stdout + result.stderr).splitlines() if line.strip())
        return f"; its log ends: {text[-400:]}" if text else ""


def _states(inspect_json: str) -> dict[str, dict[str, Any]]:
    try:
        items = json.loads(inspect_json) if inspect_json.strip() else []
    except ValueError:
        return {}
    return {str(item.get("Name", "")).lstrip("/"): item.get("State") or {} for item in items if isinstance(item, dict)}

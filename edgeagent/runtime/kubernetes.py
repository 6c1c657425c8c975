"""The Kubernetes runtime: a release's manifests applied to the node's own cluster (k3s, say).

How a release is applied
------------------------
``apply`` builds the plan in a thread (``kubernetes_plan.build_kube_plan``: the
node policy, labels, namespaces, Helm's install order), then, under the
release's lock:

1. creates the namespaces the objects and hooks go into when missing
   (labelled ``app.kubernetes.io/managed-by=edgecollab``; never deleted:
   other releases may share them, as with ``helm --create-namespace``);
2. refuses, before changing anything else, an object or hook that exists and
   is not the release's (another release's, or not edgecollab's):
   RuntimeApplyError;
3. runs the ``pre-install`` (first apply on this node) or ``pre-upgrade`` hooks;
4. journals the release's record ``WORK_DIR/NAMESPACE/RELEASE.json`` (mode
   0600: it holds Secrets): the new objects, and the old ones still to prune,
   so an agent killed mid-apply prunes them on its next apply or removal;
5. server-side applies every object in install order (PATCH with
   ``application/apply-patch+yaml``, field manager ``edgecollab``, conflicts
   forced), waiting for each CustomResourceDefinition to be Established
   before the first object after the CRDs;
6. deletes, in uninstall order, what the previous revision had and this one
   has not (``prune_plan``), if it is still labelled as the release's;
7. records the revision as applied, then runs ``post-install``/``post-upgrade``.

Every object carries ``edgecollab.io/release``, ``edgecollab.io/release-namespace``,
``edgecollab.io/revision`` and ``app.kubernetes.io/managed-by: edgecollab``.
The revision is the hub's revision number of the manifests (``apply``'s
``revision``, which the agent takes from the assignment): rolled back at the
hub to an earlier revision's manifests, the objects say the new revision; an
agent with a fresh work directory given revision 5 labels 5. A revision the
agent adopts without applying (its manifests equal the running ones, see
``edgeagent.reconciler``) leaves the objects as they were, labelled with the
revision that applied them.

``remove`` runs ``pre-delete`` hooks, deletes every recorded object in
uninstall order (only those still labelled as the release's), runs
``post-delete`` hooks, then forgets the record. ``observe`` reads every
recorded object: one that is missing or whose fields differ from what was
applied (``kubernetes_plan.drifted``) is applied again from the record, with
no hub needed (drift repair, also offline); the workloads' own status
(Deployment, StatefulSet, DaemonSet, Job, Pod) then gives ``ready``/``total``
and names the failing object.

``observe`` also lists each workload's pods (through its label selector,
kept only when the workload owns them: a Deployment through its
ReplicaSets) and reports every container as the kubelet shows it
(``kubernetes_plan.pod_state``): restarts, ready, the waiting reason
(CrashLoopBackOff, ImagePullBackOff, ...), the last termination's exit code,
reason and time, and the last lines of the log of a container that last
terminated abnormally. That log is read once per termination (cached by pod
UID, container, restart count and finish time), at most ``_LOG_READS_PER_OBSERVE``
per observe, each bounded by ``log_timeout``; a log that cannot be read leaves
``last_log`` empty and never fails observe. Pods that cannot be listed (an
account without ``list pods``) leave the containers out and the workloads'
status as it was.

The ``kubernetes`` client is imported only when the runtime first talks to
the cluster: a podman node never needs it. Every blocking client call runs in
a thread (``asyncio.to_thread``), bounded by ``request_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edgekit.files import write_atomic
from edgeprotocol.errors import EdgeError

from ..policy import NodePolicy
from .base import (
    ApplyResult,
    EdgeRuntimeError,
    ManifestRejected,
    NodeContext,
    Observation,
    PreflightCheck,
    ReleaseRef,
    RuntimeApplyError,
    writable_work_dir,
)
from .kubernetes_plan import (
    FIELD_MANAGER,
    LABEL_MANAGED_BY,
    LABEL_RELEASE,
    LABEL_RELEASE_NAMESPACE,
    LOG_BYTES,
    LOG_LINES,
    MANAGED_BY,
    WORKLOAD_KINDS,
    KubeObject,
    KubePlan,
    LogRequest,
    ObjectKey,
    build_kube_plan,
    drifted,
    hook_order,
    label_selector,
    last_lines,
    log_requests,
    manifests_digest,
    observation_from,
    ownership_conflict,
    pod_state,
    pod_waiting,
    prune_plan,
    uninstall_sorted,
    workload_pods,
    workload_status,
)

__all__ = ["KubernetesRuntime", "KubernetesSettings", "client_missing_hint"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The permissions preflight asks the API server about (verb, group, resource).
_NEEDED = (("patch", "apps", "deployments"), ("delete", "apps", "deployments"), ("patch", "", "configmaps"),
           ("patch", "", "secrets"), ("create", "", "namespaces"), ("get", "", "namespaces"))
# What observe uses to report containers (verb, group, resource, subresource): without it releases still run
# and report their workloads, so preflight warns rather than fails.
_WANTED = (("list", "", "pods", ""), ("list", "apps", "replicasets", ""), ("get", "", "pods", "log"))
# How the API server words a server-side apply of an object its kind's schema does not describe (an unknown
# field, a value of the wrong type), which it answers with 500.
_TYPED_PATCH_REFUSED = "failed to create typed patch object"
# Logs observe reads at most at once: a release whose many pods crash at once must not hold its status up
# (the others are read on the next passes: each termination's log only once).
_LOG_READS_PER_OBSERVE = 4


def client_missing_hint() -> str:
    return "the kubernetes Python client is not installed: pip install 'edgecollab[k8s]'"


@dataclass(frozen=True, slots=True, kw_only=True)
class KubernetesSettings:
    """How the agent reaches the node's cluster."""

    # Where the runtime keeps each release's record (WORK_DIR/NAMESPACE/RELEASE.json).
    work_dir: Path
    # A kubeconfig file; None: in-cluster configuration when the agent runs as
    # a pod (KUBERNETES_SERVICE_HOST set), else $KUBECONFIG or ~/.kube/config.
    kubeconfig: Path | None = None
    context: str | None = None
    # Seconds any single API call may take.
    request_timeout: float = 30.0
    # Seconds a CustomResourceDefinition may take to become Established.
    crd_timeout: float = 60.0
    # Seconds a Job or Pod hook may run (Helm's default timeout), unless its activeDeadlineSeconds says less.
    hook_timeout: float = 300.0
    # Seconds reading the last lines of one container's log may take: the log only adds to a status, so a
    # slow kubelet must not hold observe up for a full request timeout.
    log_timeout: float = 5.0
    policy: NodePolicy = field(default_factory=NodePolicy)

    def __post_init__(self) -> None:
        object.__setattr__(self, "work_dir", Path(self.work_dir).absolute())
        if self.kubeconfig is not None:
            object.__setattr__(self, "kubeconfig", Path(self.kubeconfig).absolute())
        if not self.request_timeout > 0:
            raise ValueError("KubernetesSettings.request_timeout must be a positive number of seconds")
        if not self.log_timeout > 0:
            raise ValueError("KubernetesSettings.log_timeout must be a positive number of seconds")


class KubernetesRuntime:
    """The ``Runtime`` that applies releases to a Kubernetes cluster (see the module docstring)."""

    name = "kubernetes"

    def __init__(self, settings: KubernetesSettings) -> None:
        self.settings = settings
        self._locks: dict[ReleaseRef, asyncio.Lock] = {}
        self._dynamic: Any = None
        self._api: Any = None
        self._core: Any = None  # CoreV1Api, for pod logs (the dynamic client has no text subresources)
        self._where = ""  # the API server's address, for messages
        # Per release: the log lines read for each termination (LogRequest.key), kept while the pod reports it.
        self._logs: dict[ReleaseRef, dict[tuple[str, str, int, str], str]] = {}
        # Releases whose pods could not be listed, warned about once (then at debug level every pass).
        self._pods_warned: set[ReleaseRef] = set()
        # Per object: the resourceVersion at which the API server said applying the stored body again would
        # change nothing (``_confirm_drift``): not asked again until the object changes.
        self._unchanged_at: dict[ObjectKey, str] = {}

    def __repr__(self) -> str:
        return f"KubernetesRuntime(kubeconfig={self.settings.kubeconfig}, work_dir={self.settings.work_dir})"

    async def __aenter__(self) -> KubernetesRuntime:
        """Nothing to start: the cluster is first asked by preflight or an apply."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        api, self._api, self._dynamic, self._core = self._api, None, None, None
        if api is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(api.close)

    # -- the client ---------------------------------------------------------------

    def _connect(self) -> Any:
        """The dynamic client (blocking: discovery asks the API server). Raises EdgeRuntimeError."""
        if self._dynamic is not None:
            return self._dynamic
        try:
            from kubernetes import client, config
            from kubernetes.dynamic import DynamicClient
        except ImportError as exc:
            raise EdgeRuntimeError(client_missing_hint()) from exc
        configuration = client.Configuration()
        try:
            if self.settings.kubeconfig is not None:
                config.load_kube_config(config_file=str(self.settings.kubeconfig), context=self.settings.context,
                                        client_configuration=configuration)
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=configuration)
            else:
                config.load_kube_config(context=self.settings.context, client_configuration=configuration)
        except Exception as exc:  # the loader raises ConfigException, OSError, yaml errors, ...
            raise EdgeRuntimeError(f"no usable Kubernetes configuration ({self.settings.kubeconfig or 'default'}): "
                                   f"{exc}") from exc
        self._where = str(configuration.host)
        api = client.ApiClient(configuration)
        self.settings.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            dynamic = DynamicClient(api, cache_file=str(self.settings.work_dir / ".discovery.json"))
        except Exception as exc:
            api.close()
            raise EdgeRuntimeError(f"the Kubernetes API at {self._where} does not answer: {_why(exc)}") from exc
        self._api, self._dynamic = api, dynamic
        return dynamic

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` in a thread, bounded by the request timeout (plus the time to connect)."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs),
                                          timeout=self.settings.request_timeout * 2 + 5)
        except TimeoutError as exc:
            raise EdgeRuntimeError(f"the Kubernetes API at {self._where or '?'} did not answer within "
                                   f"{self.settings.request_timeout * 2 + 5:.0f} s") from exc
        except EdgeError:
            raise
        except Exception as exc:
            if _is_api_error(exc):
                raise  # the caller says which object it was
            # Connection errors (urllib3), a client that cannot decode the answer: the runtime's tool failed.
            raise EdgeRuntimeError(f"the Kubernetes API at {self._where or '?'}: {_why(exc)}") from exc

    def _resource(self, obj: KubeObject) -> Any:
        dynamic = self._connect()
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        try:
            return dynamic.resources.get(api_version=obj.api_version, kind=obj.kind)
        except ResourceNotFoundError as exc:
            raise _KindNotServed(f"{obj.source}: the cluster does not serve {obj.kind} in {obj.api_version} "
                                 "(a missing CustomResourceDefinition?)") from exc

    def _scope(self, api_version: str, kind: str) -> bool | None:
        """Whether the cluster serves ``kind`` as namespaced (None: it does not serve it)."""
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        try:
            return bool(self._connect().resources.get(api_version=api_version, kind=kind).namespaced)
        except (ResourceNotFoundError, EdgeRuntimeError):
            return None

    def _get(self, obj: KubeObject) -> dict[str, Any] | None:
        """The live object; None when it does not exist, also when the cluster does not serve its kind (its
        CustomResourceDefinition may come with the same release, or was deleted: then neither can it)."""
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            resource = self._resource(obj)
        except _KindNotServed:
            return None
        try:
            found = resource.get(name=obj.name, namespace=obj.namespace,
                                 _request_timeout=self.settings.request_timeout)
        except NotFoundError:
            return None
        return found.to_dict()

    def _apply_one(self, obj: KubeObject) -> dict[str, Any]:
        resource = self._resource(obj)
        result = self._connect().server_side_apply(
            resource, body=obj.body, name=obj.name, namespace=obj.namespace, field_manager=FIELD_MANAGER,
            force_conflicts=True, _request_timeout=self.settings.request_timeout)
        return result.to_dict()

    def _confirm_drift(self, obj: KubeObject, live: dict[str, Any], field_name: str) -> str:
        """Whether applying ``obj`` again would change the live object: the first field it would ("" if none).

        ``drifted`` compares the stored body with the live object as text, and the API server spells some
        values its own way (a quantity: ``0.5`` CPU is ``500m``, ``1024Mi`` is ``1Gi``), so what it finds is
        asked of the server itself: the stored body applied in a dry run, compared with the live object.
        When the server cannot be asked, ``field_name`` (the text comparison's finding) stands, and the
        repair's apply says why it fails. An object found unchanged is not asked about again until its
        resourceVersion moves.
        """
        version = str((live.get("metadata") or {}).get("resourceVersion") or "")
        if version and self._unchanged_at.get(obj.key) == version:
            return ""
        try:
            would_be = self._connect().server_side_apply(
                self._resource(obj), body=obj.body, name=obj.name, namespace=obj.namespace,
                field_manager=FIELD_MANAGER, force_conflicts=True, dry_run="All",
                _request_timeout=self.settings.request_timeout).to_dict()
        except Exception as exc:  # noqa: BLE001 - any failure leaves the text comparison's finding
            logger.debug("Dry run of %s failed (%s); taking %s as changed", obj.source, _why(exc), field_name)
            return field_name
        metadata = dict(would_be.get("metadata") or {})
        for bookkeeping in ("managedFields", "resourceVersion", "generation"):
            metadata.pop(bookkeeping, None)
        changed = drifted({**would_be, "metadata": metadata}, live)
        if not changed and version:
            self._unchanged_at[obj.key] = version
        return changed

    def _delete_one(self, obj: KubeObject, ref: ReleaseRef) -> bool:
        """Delete ``obj`` if it is still ``ref``'s; whether it was."""
        from kubernetes.dynamic.exceptions import NotFoundError

        live = self._get(obj)
        if live is None or ownership_conflict(live, ref):
            return False
        with contextlib.suppress(NotFoundError):
            self._resource(obj).delete(name=obj.name, namespace=obj.namespace,
                                       body={"propagationPolicy": "Background"},
                                       _request_timeout=self.settings.request_timeout)
        return True

    def _ensure_namespace(self, name: str) -> None:
        namespace = KubeObject("v1", "Namespace", None, name, {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {LABEL_MANAGED_BY: MANAGED_BY}}}, f"Namespace/{name}")
        if self._get(namespace) is None:
            self._connect().resources.get(api_version="v1", kind="Namespace").create(
                body=namespace.body, _request_timeout=self.settings.request_timeout)

    # -- pods and their containers ----------------------------------------------------

    def _list(self, api_version: str, kind: str, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        found = self._connect().resources.get(api_version=api_version, kind=kind).get(
            namespace=namespace, label_selector=selector, _request_timeout=self.settings.request_timeout)
        return [i for i in found.to_dict().get("items") or () if isinstance(i, dict)]

    def _list_pods(self, workload: dict[str, Any]) -> list[Any]:
        """The live pods of a live workload (blocking: one or two list calls, each bounded by the request
        timeout)."""
        if workload.get("kind") == "Pod":
            return workload_pods(workload, ())
        selector = label_selector((workload.get("spec") or {}).get("selector"))
        if selector is None:
            return []
        namespace = (workload.get("metadata") or {}).get("namespace")
        replicasets = (self._list("apps/v1", "ReplicaSet", namespace, selector)
                       if workload.get("kind") == "Deployment" else [])
        return workload_pods(workload, self._list("v1", "Pod", namespace, selector), replicasets)

    async def _release_pods(
        self, ref: ReleaseRef, objects: Sequence[KubeObject], live: dict[Any, dict[str, Any] | None],
    ) -> tuple[dict[ObjectKey, list[Any]], dict[ObjectKey, str]]:
        """Each live workload's pods as PodStates with their containers, and why its pods wait when the scheduler
        could not place them (``pod_waiting``); nothing for workloads whose pods cannot be listed (their own
        status still counts)."""
        raw: dict[ObjectKey, list[Any]] = {}
        for obj in objects:
            found = live.get(obj.key)
            if obj.kind not in WORKLOAD_KINDS or found is None:
                continue
            try:
                raw[obj.key] = await self._call(self._list_pods, found)
            except Exception as exc:
                if not isinstance(exc, EdgeRuntimeError) and not _is_api_error(exc):
                    raise
                level = logging.DEBUG if ref in self._pods_warned else logging.WARNING
                self._pods_warned.add(ref)
                logger.log(level, "Release %s: cannot list the pods of %s (%s); reporting its status without "
                           "its containers", ref, obj.source, _why(exc))
        logs = await self._last_logs(ref, [r for pods in raw.values() for p in pods for r in log_requests(p)])
        states: dict[ObjectKey, list[Any]] = {}
        for key, pods in raw.items():
            states[key] = [pod_state(p, {r.container: logs.get(r.key, "") for r in log_requests(p)}) for p in pods]
        waiting = {key: why for key, pods in raw.items() if (why := pod_waiting(pods))}
        return states, waiting

    async def _last_logs(self, ref: ReleaseRef, wanted: Sequence[LogRequest]) -> dict[tuple[str, str, int, str], str]:
        """The last log lines of each of ``wanted``: from the cache when this termination was read before,
        else read now (at most ``_LOG_READS_PER_OBSERVE``, side by side, each bounded by ``log_timeout``)."""
        known = self._logs.get(ref, {})
        kept: dict[tuple[str, str, int, str], str] = {}
        todo: list[LogRequest] = []
        for request in wanted:
            if request.key in known:
                kept[request.key] = known[request.key]
            elif len(todo) < _LOG_READS_PER_OBSERVE and all(t.key != request.key for t in todo):
                todo.append(request)
        results = await asyncio.gather(*(self._read_log(r) for r in todo))
        shown = dict(kept)
        for request, text in zip(todo, results, strict=True):
            shown[request.key] = text or ""
            if text is not None:  # None: not answered in time; try again on the next pass
                kept[request.key] = text
        # Only what the pods still report stays: a gone pod's or an older termination's lines are dropped.
        self._logs[ref] = kept
        return shown

    async def _read_log(self, request: LogRequest) -> str | None:
        """The last lines of one container's log; "" when the API says it has none, None when it did not answer
        (in time). Never raises: the log only adds to a status."""
        where = f"{request.namespace}/{request.pod} container {request.container}"
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._log_tail, request),
                                          timeout=self.settings.log_timeout + 1)
        except TimeoutError:
            logger.info("The log of %s did not come within %.0f s; not shown", where, self.settings.log_timeout)
            return None
        # An API answer (400: no previous container; 403), a lost connection, ...: whatever it is, the log only
        # adds to a status and must not fail it.
        except Exception as exc:  # noqa: BLE001 - whatever it is, the log must not fail the status
            logger.info("Cannot read the log of %s: %s", where, _why(exc))
            return "" if _is_api_error(exc) else None

    def _log_tail(self, request: LogRequest) -> str:
        """Blocking: the last LOG_LINES lines of the container's log (its previous instance's when
        ``request.previous``), at most LOG_BYTES, decoded leniently (a log may hold any bytes)."""
        if self._core is None:
            from kubernetes import client

            self._connect()
            self._core = client.CoreV1Api(self._api)
        response = self._core.read_namespaced_pod_log(
            request.pod, request.namespace, container=request.container, previous=request.previous,
            tail_lines=LOG_LINES, limit_bytes=LOG_BYTES, _preload_content=False,
            _request_timeout=self.settings.log_timeout)
        if isinstance(response, str):
            return last_lines(response)
        try:
            data = response.data
        finally:
            with contextlib.suppress(Exception):
                response.release_conn()
        return last_lines(data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data or ""))

    # -- records --------------------------------------------------------------------

    def record_file(self, ref: ReleaseRef) -> Path:
        return self.settings.work_dir / ref.namespace / f"{ref.release}.json"

    def _lock(self, ref: ReleaseRef) -> asyncio.Lock:
        return self._locks.setdefault(ref, asyncio.Lock())

    # -- the Runtime interface --------------------------------------------------------

    async def apply(self, ref: ReleaseRef, manifests: str, node: NodeContext, *,
                    revision: int | None = None) -> ApplyResult:
        """Apply ``manifests`` for ``ref``, labelled with the hub's ``revision`` (see the module docstring)."""
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
            raise ValueError(f"KubernetesRuntime.apply labels objects with the hub's revision: a whole number of at "
                             f"least 1 is needed, not {revision!r}")
        async with self._lock(ref):
            record = await asyncio.to_thread(_read_record, self.record_file(ref))
            digest = manifests_digest(manifests, node)
            await self._call(self._connect)
            plan: KubePlan = await self._call(build_kube_plan, ref, manifests, node, revision=revision,
                                              policy=self.settings.policy, scope=self._scope)
            for warning in plan.warnings:
                logger.warning("Release %s: %s", ref, warning)
            stage = "install" if not record.objects and not record.pending else "upgrade"
            with _as_apply_error(ref):
                # The hooks run in these namespaces too (helm --create-namespace makes them before its hooks).
                for namespace in plan.namespaces:
                    await self._call(self._ensure_namespace, namespace)
                for obj in [*plan.objects, *plan.hooks]:
                    conflict = ownership_conflict(await self._call(self._get, obj), ref)
                    if conflict:
                        raise RuntimeApplyError(f"{obj.source} ({obj.key}) of release {ref}: {conflict}; not "
                                                "replaced")
            ran = await self._run_hooks(ref, plan.hooks, f"pre-{stage}")
            old = [*record.objects, *record.pending]
            doomed = prune_plan(old, plan.objects)
            journal = _Record(revision=record.revision, digest=record.digest, objects=plan.objects,
                              pending=doomed, hooks=plan.hooks)
            await asyncio.to_thread(_write_record, self.record_file(ref), journal)
            for obj in old:  # what the server said of the old bodies says nothing of the new ones
                self._unchanged_at.pop(obj.key, None)
            with _as_apply_error(ref):
                crds: list[KubeObject] = []
                for obj in plan.objects:
                    if crds and obj.kind != "CustomResourceDefinition":
                        await self._wait_established(crds)
                        crds = []
                    await self._apply(ref, obj)
                    if obj.kind == "CustomResourceDefinition":
                        crds.append(obj)
                if crds:
                    await self._wait_established(crds)
                pruned = [o.source for o in doomed if await self._call(self._delete_one, o, ref)]
            if pruned:
                logger.info("Release %s: pruned what revision %d no longer holds: %s", ref, revision, pruned)
            done = _Record(revision=revision, digest=digest, objects=plan.objects, pending=[], hooks=plan.hooks)
            await asyncio.to_thread(_write_record, self.record_file(ref), done)
            ran += await self._run_hooks(ref, plan.hooks, f"post-{stage}")
        logger.info("Release %s applied at revision %d: %d objects, %d pruned", ref, revision, len(plan.objects),
                    len(pruned))
        return ApplyResult(warnings=tuple(plan.warnings), hooks=tuple(ran))

    async def _apply(self, ref: ReleaseRef, obj: KubeObject) -> dict[str, Any]:
        from kubernetes.dynamic.exceptions import DynamicApiError

        try:
            return await self._call(self._apply_one, obj)
        except DynamicApiError as exc:
            message = f"{obj.source} ({obj.key}) of release {ref}: the API server refused it: {_why(exc)}"
            # The object itself is invalid: applying it again fails the same way. A field the kind's schema
            # does not have, or a value of the wrong type, the API server answers with 500 on a server-side
            # apply (it cannot build the typed patch) rather than 400.
            if exc.status in (400, 422) or (exc.status == 500 and _TYPED_PATCH_REFUSED in str(exc)):
                raise ManifestRejected(message) from exc
            raise RuntimeApplyError(message) from exc
        except RuntimeApplyError:
            raise
        except Exception as exc:  # urllib3's connection errors, mostly
            raise RuntimeApplyError(f"{obj.source} of release {ref}: {_why(exc)}") from exc

    async def _wait_established(self, crds: Sequence[KubeObject]) -> None:
        deadline = time.monotonic() + self.settings.crd_timeout
        for crd in crds:
            while True:
                live = await self._call(self._get, crd) or {}
                conditions = {c.get("type"): c.get("status") for c in (live.get("status") or {}).get("conditions")
                              or ()}
                if conditions.get("Established") == "True":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeApplyError(f"{crd.source}: not Established within {self.settings.crd_timeout:.0f} s")
                await asyncio.sleep(0.5)
        await self._call(lambda: self._connect().resources.invalidate_cache())

    async def _run_hooks(self, ref: ReleaseRef, hooks: Sequence[KubeObject], event: str) -> list[str]:
        """Run ``event``'s hooks one at a time in Helm's order; raise RuntimeApplyError when one fails."""
        lines: list[str] = []
        for hook in hook_order(hooks, event):
            annotations = hook.body.get("metadata", {}).get("annotations") or {}
            policies = {p.strip() for p in str(annotations.get("helm.sh/hook-delete-policy",
                                                               "before-hook-creation")).split(",")}
            started = time.monotonic()
            try:
                if "before-hook-creation" in policies:
                    await self._call(self._delete_one, hook, ref)
                    await self._wait_gone(hook)
                await self._apply(ref, hook)
                ok, why = await self._wait_hook(hook)
                if (ok and "hook-succeeded" in policies) or (not ok and "hook-failed" in policies):
                    await self._call(self._delete_one, hook, ref)
            except Exception as exc:
                if not isinstance(exc, EdgeRuntimeError) and not _is_api_error(exc):
                    raise
                raise RuntimeApplyError(f"{event} hook {hook.source} of release {ref} failed: {_why(exc)}") from exc
            if not ok:
                raise RuntimeApplyError(f"{event} hook {hook.source} of release {ref} failed: {why}")
            lines.append(f"{event} hook {hook.source} succeeded in {time.monotonic() - started:.1f} s")
        return lines

    async def _wait_gone(self, obj: KubeObject) -> None:
        deadline = time.monotonic() + self.settings.request_timeout
        while await self._call(self._get, obj) is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.5)

    async def _wait_hook(self, hook: KubeObject) -> tuple[bool, str]:
        if hook.kind not in ("Job", "Pod"):
            return True, ""
        deadline_field = (hook.body.get("spec") or {}).get("activeDeadlineSeconds")
        limit = min(self.settings.hook_timeout, deadline_field) if isinstance(deadline_field, int) else \
            self.settings.hook_timeout
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            live = await self._call(self._get, hook)
            if live is not None:
                verdict = workload_status(live)
                if verdict.ready:
                    return True, ""
                if verdict.phase == "Failed":
                    return False, verdict.message or "failed"
            await asyncio.sleep(1.0)
        return False, f"not complete within {limit:.0f} s"

    async def remove(self, ref: ReleaseRef, node: NodeContext | None = None) -> None:
        async with self._lock(ref):
            record = await asyncio.to_thread(_read_record, self.record_file(ref))
            if record.objects or record.pending or record.hooks:
                with _as_apply_error(ref, "removal failed: "):
                    await self._call(self._connect)
                    ran = await self._run_hooks(ref, record.hooks, "pre-delete")
                    deleted = [o.source for o in uninstall_sorted([*record.objects, *record.pending])
                               if await self._call(self._delete_one, o, ref)]
                    ran += await self._run_hooks(ref, record.hooks, "post-delete")
                    for hook in record.hooks:  # nothing of a removed release stays, its hooks included
                        await self._call(self._delete_one, hook, ref)
                logger.info("Release %s removed: %d objects deleted, %d hooks run", ref, len(deleted), len(ran))
            await asyncio.to_thread(_forget, self.record_file(ref))
            for obj in record.objects:
                self._unchanged_at.pop(obj.key, None)
            self._logs.pop(ref, None)
            self._pods_warned.discard(ref)

    async def observe(self, ref: ReleaseRef) -> Observation:
        async with self._lock(ref):
            record = await asyncio.to_thread(_read_record, self.record_file(ref))
            if not record.objects:
                self._logs.pop(ref, None)
                return Observation(ready=0, total=0, pods=(), message="")
            await self._call(self._connect)
            live: dict[Any, dict[str, Any] | None] = {}
            repaired: list[str] = []
            for obj in record.objects:
                try:
                    found = await self._call(self._get, obj)
                except Exception as exc:
                    if not _is_api_error(exc):
                        raise
                    raise EdgeRuntimeError(f"{obj.source} of release {ref}: {_why(exc)}") from exc
                why = "deleted" if found is None else ""
                if found is not None and not ownership_conflict(found, ref):
                    field_name = drifted(obj.body, found)
                    if field_name:
                        field_name = await self._call(self._confirm_drift, obj, found, field_name)
                    why = f"{field_name} changed" if field_name else ""
                if why:
                    logger.warning("Release %s: %s %s; applying it again from the stored revision", ref,
                                   obj.source, why)
                    try:
                        found = await self._apply(ref, obj)
                        repaired.append(f"{obj.source} ({why})")
                    except RuntimeApplyError as exc:
                        logger.warning("Release %s: repairing %s failed: %s", ref, obj.source, exc)
                live[obj.key] = found
            pods, waiting = await self._release_pods(ref, record.objects, live)
            return observation_from(record.objects, live, repaired=repaired, pods=pods, waiting=waiting)

    async def releases(self) -> set[ReleaseRef]:
        found = await asyncio.to_thread(_releases_on_disk, self.settings.work_dir)
        dynamic = await self._call(self._connect)

        def labelled() -> set[ReleaseRef]:
            refs: set[ReleaseRef] = set()
            for api_version, kind in (("v1", "ConfigMap"), ("v1", "Secret"), ("apps/v1", "Deployment"),
                                      ("apps/v1", "StatefulSet"), ("apps/v1", "DaemonSet"), ("batch/v1", "Job")):
                items = dynamic.resources.get(api_version=api_version, kind=kind).get(
                    label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_RELEASE}",
                    _request_timeout=self.settings.request_timeout).to_dict().get("items") or []
                for item in items:
                    labels = (item.get("metadata") or {}).get("labels") or {}
                    namespace, release = labels.get(LABEL_RELEASE_NAMESPACE), labels.get(LABEL_RELEASE)
                    if isinstance(namespace, str) and isinstance(release, str):
                        with contextlib.suppress(ValueError):  # not a release's labels after all
                            refs.add(ReleaseRef(namespace, release))
            return refs

        try:
            return found | await self._call(labelled)
        except EdgeRuntimeError:
            raise
        except Exception as exc:
            raise EdgeRuntimeError(f"cannot list releases on the cluster: {_why(exc)}") from exc

    async def preflight(self) -> tuple[PreflightCheck, ...]:
        checks: list[PreflightCheck] = []
        try:
            await self._call(self._connect)
            version = await self._call(self._version)
        except EdgeRuntimeError as exc:
            missing = "not installed" in str(exc)
            checks.append(PreflightCheck("kubernetes", False, str(exc), "RuntimeReady",
                                         "KubernetesClientMissing" if missing else "KubernetesUnreachable"))
            checks.append(PreflightCheck("permissions", False, "not checked: the API does not answer"))
        else:
            checks.append(PreflightCheck("kubernetes", True, f"Kubernetes {version} at {self._where}",
                                         "RuntimeReady"))
            try:
                denied = await self._call(self._denied)
            except Exception as exc:  # noqa: BLE001 - any failure of the question is the check's answer
                checks.append(PreflightCheck("permissions", False, f"cannot ask the API server: {_why(exc)}",
                                             "RuntimeReady", "KubernetesForbidden"))
            else:
                needed, wanted = denied
                if needed:
                    checks.append(PreflightCheck("permissions", False,
                                                 f"the agent's account may not {', '.join(needed)}",
                                                 "RuntimeReady", "KubernetesForbidden"))
                elif wanted:
                    checks.append(PreflightCheck(
                        "permissions", True, f"may create, patch and delete workloads, but not {', '.join(wanted)}: "
                        "releases report their workloads without their containers' restarts, reasons and logs",
                        "RuntimeReady", warning=True))
                else:
                    checks.append(PreflightCheck("permissions", True, "may create, patch and delete workloads, "
                                                 "ConfigMaps, Secrets and namespaces, and read pods and their logs",
                                                 "RuntimeReady"))
        problem = await asyncio.to_thread(writable_work_dir, self.settings.work_dir)
        checks.append(PreflightCheck("storage", not problem, problem or f"{self.settings.work_dir} writable",
                                     "StorageReady", "StorageNotWritable" if problem else ""))
        return tuple(checks)

    def _version(self) -> str:
        from kubernetes import client

        try:
            info = client.VersionApi(self._api).get_code(_request_timeout=self.settings.request_timeout)
        except Exception as exc:
            raise EdgeRuntimeError(f"the Kubernetes API at {self._where} does not answer: {_why(exc)}") from exc
        return str(info.git_version)

    def _denied(self) -> tuple[list[str], list[str]]:
        """What the account may not do, of ``_NEEDED`` and of ``_WANTED``."""
        resource = self._connect().resources.get(api_version="authorization.k8s.io/v1",
                                                 kind="SelfSubjectAccessReview")

        def allowed(verb: str, group: str, plural: str, sub: str = "") -> bool:
            attributes = {"verb": verb, "group": group, "resource": plural, **({"subresource": sub} if sub else {})}
            review = resource.create(body={
                "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes}},
                _request_timeout=self.settings.request_timeout).to_dict()
            return bool((review.get("status") or {}).get("allowed"))

        needed = [f"{verb} {plural}" for verb, group, plural in _NEEDED if not allowed(verb, group, plural)]
        wanted = [f"{verb} {plural}{'/' + sub if sub else ''}" for verb, group, plural, sub in _WANTED
                  if not allowed(verb, group, plural, sub)]
        return needed, wanted


# ----------------------------------------------------------------------------
# Helpers


class _KindNotServed(RuntimeApplyError):
    """The cluster's discovery does not list the object's kind (a CustomResourceDefinition not applied yet)."""


@dataclass(slots=True)
class _Record:
    revision: int = 0
    digest: str = ""
    objects: list[KubeObject] = field(default_factory=list)
    pending: list[KubeObject] = field(default_factory=list)  # to prune: journaled before the apply
    hooks: list[KubeObject] = field(default_factory=list)


def _read_record(path: Path) -> _Record:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return _Record()
    except (OSError, ValueError) as exc:
        raise EdgeRuntimeError(f"{path}: the release's record is damaged: {exc}") from exc
    try:
        return _Record(revision=int(data.get("revision", 0)), digest=str(data.get("digest", "")),
                       **{key: [KubeObject.from_record(i) for i in data.get(key) or ()]
                          for key in ("objects", "pending", "hooks")})
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise EdgeRuntimeError(f"{path}: the release's record was not written by this runtime: {exc}") from exc


def _write_record(path: Path, record: _Record) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"revision": record.revision, "digest": record.digest,
                                   "objects": [o.to_record() for o in record.objects],
                                   "pending": [o.to_record() for o in record.pending],
                                   "hooks": [o.to_record() for o in record.hooks]}))


def _forget(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def _releases_on_disk(work_dir: Path) -> set[ReleaseRef]:
    found: set[ReleaseRef] = set()
    if work_dir.is_dir():
        for path in work_dir.glob("*/*.json"):
            with contextlib.suppress(ValueError):
                found.add(ReleaseRef(path.parent.name, path.stem))
    return found


@contextlib.contextmanager
def _as_apply_error(ref: ReleaseRef, prefix: str = "") -> Iterator[None]:
    """Turn a runtime or API failure inside the block into a RuntimeApplyError naming the release (anything
    else, a bug, goes up as it is)."""
    try:
        yield
    except RuntimeApplyError:
        raise
    except Exception as exc:
        if not isinstance(exc, EdgeRuntimeError) and not _is_api_error(exc):
            raise
        raise RuntimeApplyError(f"release {ref}: {prefix}{_why(exc)}") from exc


def _is_api_error(exc: BaseException) -> bool:
    """An error answer of the API server (the client's ApiException and the dynamic client's kinds of it)."""
    try:
        from kubernetes.client.exceptions import ApiException
    except ImportError:
        return False
    return isinstance(exc, ApiException)


def _why(exc: BaseException) -> str:
    summary = getattr(exc, "summary", None)
    if callable(summary):
        with contextlib.suppress(Exception):
            return str(summary())
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

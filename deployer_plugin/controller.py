"""The Component controller: Component objects in a Kubernetes cluster, deployed through the hub.

    python -m deployer_plugin.controller --hub https://HUB:8470 [--namespace NS] [--resync 60] [--poll 5]

It watches ``components.edgecollab.io`` objects with the official ``kubernetes`` client (list, then
watch from the list's resourceVersion; a 410 Gone lists again, and so does an API server that could
not be reached, after a pause), and for each one:

1. decides what to do with :func:`decide` (pure: the object and the hub's view of its release);
2. does it through the edge deployer (:class:`~deployer_plugin.deployer.EdgeDeployer`), the same
   ``POST /api/v1/components`` ``edgectl apply`` makes (the history says ``apply by
   edgecollab-controller``); a deleted object is uninstalled before its finalizer goes;
3. writes the status subresource from :func:`status_from` (pure): observedGeneration,
   currentRevision, targetRevision, the counts (desired, updated, ready, failed, offline) in all and
   per pool, and the conditions Progressing, Available and RolledBack. A Component whose rollout is
   under way, or whose hub could not be reached, is looked at again every ``--poll`` seconds.

The hub's operator token comes as for edgectl: ``EDGECOLLAB_TOKEN``, else the file
``EDGECOLLAB_TOKEN_FILE`` names (in a cluster: a Secret mounted as a file). The cluster comes from
``KUBECONFIG`` (or ``--kubeconfig``), else the in-cluster service account.

A cluster object cannot name a local chart: such a Component is refused with a Progressing=False
condition (reason LocalChart) and never sent to the hub. Everything but :class:`Controller` and
:func:`main` is pure and needs no cluster.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .deployer import Deployer, DeployerError, HubUnavailable, ReleaseStatus, SpecRejected, is_local_chart
from .spec import API_VERSION, KIND

if TYPE_CHECKING:
    from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)

GROUP, VERSION = API_VERSION.split("/")
PLURAL = "components"
# Held on every Component the controller has seen, so a deletion waits until the hub has removed the release.
FINALIZER = "edgecollab.io/hub-release"
CLIENT_NAME = "edgecollab-controller"
DEFAULT_RESYNC_SECONDS = 60
DEFAULT_POLL_SECONDS = 5
# Seconds (connect, read) a request to the API server may take; a watch's read gets its window more.
API_TIMEOUT = (5, 30)
# The longest pause before listing again while the API server cannot be reached (1 s, doubling to this).
MAX_PAUSE_SECONDS = 8.0

# Refusal reasons that a retry cannot cure until the spec changes (a new generation).
FINAL_REFUSALS = ("LocalChart", "SpecRejected")
# Refusal reasons that are retried every poll period: the hub could not be asked, or failed.
RETRIED_REFUSALS = ("HubUnreachable", "HubError")
CONDITIONS = ("Progressing", "Available", "RolledBack")
# The status fields that describe the rollout (kept as they were while the hub cannot be asked).
_ROLLOUT_FIELDS = ("currentRevision", "targetRevision", "readyNodes", "rollout", "desired", "updated", "ready",
                   "failed", "offline", "pools")

ActionKind = Literal["add_finalizer", "apply", "observe", "refuse", "uninstall", "remove_finalizer", "nothing"]


@dataclass(frozen=True, slots=True)
class Action:
    """What the controller does next with one Component; ``reason``/``message`` explain a refusal."""

    kind: ActionKind
    reason: str = ""
    message: str = ""


def component_document(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The Component spec a cluster object carries, as the hub takes it (no status, metadata trimmed)."""
    metadata = obj.get("metadata") or {}
    return {"apiVersion": obj.get("apiVersion", API_VERSION), "kind": obj.get("kind", KIND),
            "metadata": {"name": metadata.get("name"), "namespace": metadata.get("namespace") or "default"},
            "spec": obj.get("spec") or {}}


def _condition(status: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    for c in (status or {}).get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == kind:
            return c
    return None


def decide(obj: Mapping[str, Any], release: ReleaseStatus | None) -> Action:
    """What to do with Component ``obj`` given the hub's ``release`` (None: the hub has none).

    - being deleted: uninstall while the hub has the release, then remove the finalizer;
    - no finalizer yet: add it (nothing else happens before a deletion can be caught);
    - a local chart: refuse (a cluster object must name a chart repository or OCI chart);
    - a generation not yet acted on, or a release the hub lost: apply; but a generation the hub
      refused for its spec stays refused (the refusal as it was) until the spec changes;
    - otherwise: observe (refresh the status from the hub).
    """
    metadata = obj.get("metadata") or {}
    finalizers = metadata.get("finalizers") or []
    if metadata.get("deletionTimestamp"):
        if FINALIZER not in finalizers:
            return Action("nothing")
        return Action("uninstall") if release is not None else Action("remove_finalizer")
    if FINALIZER not in finalizers:
        return Action("add_finalizer")
    chart = (obj.get("spec") or {}).get("chart")
    if chart is None or is_local_chart(chart):
        # EXTENSION POINT (chart repositories): a controller with a chart source could fetch and package
        # the chart itself here and send it as chart_archive; until then only the hub fetches charts.
        return Action("refuse", "LocalChart", "spec.chart names a local chart, which a cluster object cannot carry: "
                      "give a chart repository ({repo, name, version}) or an OCI chart ({oci, version})")
    status = obj.get("status") or {}
    generation = metadata.get("generation")
    acted = status.get("observedGeneration") == generation
    progressing = _condition(status, "Progressing")
    if acted and progressing is not None and progressing.get("reason") in FINAL_REFUSALS:
        return Action("refuse", progressing["reason"], str(progressing.get("message", "")))
    if not acted or release is None:
        return Action("apply")
    return Action("observe")


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _rollout_conditions(release: ReleaseStatus) -> list[tuple[str, str, str, str]]:
    c, n = release.counts, release.revision
    state = release.rollout
    progressing = {
        "complete": ("False", "RolloutComplete", f"revision {n} is ready on {c.ready}/{c.desired} node(s)"),
        "progressing": ("True", "RollingOut", f"revision {n}: {c.ready}/{c.desired} node(s) ready, {c.updated} "
                        "updated"),
        "failing": ("False", "RolloutFailing", f"revision {n} failed on {c.failed} of {c.desired} node(s)"),
        "waiting for offline nodes": ("True", "WaitingForOfflineNodes",
                                      f"revision {n}: {c.ready}/{c.desired} node(s) ready; {c.offline} offline"),
        "no targets": ("False", "NoTargets", f"revision {n} targets no node (no node matches spec.edge)"),
    }[state]
    if state == "complete":
        available = ("True", "AllNodesReady", f"{c.ready}/{c.desired} node(s) ready on revision {n}")
    elif state == "no targets":
        available = ("False", "NoTargets", "no node matches spec.edge")
    else:
        available = ("False", "NodesNotReady", f"{c.ready}/{c.desired} node(s) ready on revision {n}")
    if release.rolled_back_to:
        rolled = ("True", "RolledBack", f"revision {n} is revision {release.rolled_back_to} rolled back "
                  f"({release.origin})")
    else:
        rolled = ("False", "NotRolledBack", f"revision {n} was made by {release.origin or 'an apply'}")
    return [("Progressing", *progressing), ("Available", *available), ("RolledBack", *rolled)]


def is_final(refusal: Action | None) -> bool:
    """Whether ``refusal`` stands until the spec changes (True) or is retried (a hub that could not be asked)."""
    return refusal is not None and refusal.reason in FINAL_REFUSALS


def status_from(obj: Mapping[str, Any], release: ReleaseStatus | None, *, refusal: Action | None = None,
                now: str | None = None) -> dict[str, Any]:
    """The status subresource for ``obj`` from the hub's ``release`` (None: the hub has none, or could not
    be asked) and a ``refusal`` (an Action with reason and message) if this pass was refused. Pure; a
    condition keeps its lastTransitionTime while its status stays the same.

    A refusal that is retried (the hub unreachable or failing) leaves ``observedGeneration`` where it was,
    so the generation is applied once the hub answers, and keeps what was known of the rollout (the
    nodes go on running it) when the hub could not even be asked."""
    stamp = now or _now()
    generation = (obj.get("metadata") or {}).get("generation")
    previous = obj.get("status") or {}
    retried = refusal is not None and not is_final(refusal)
    status: dict[str, Any] = {}
    rows: list[tuple[str, str, str, str]]
    if release is not None:
        counts = release.counts
        status.update(currentRevision=release.current_revision, targetRevision=release.revision,
                      readyNodes=f"{counts.ready}/{counts.desired}", rollout=release.rollout, **counts.to_dict(),
                      pools={pool: c.to_dict() for pool, c in release.pools.items()})
        rows = _rollout_conditions(release)
    elif retried and previous.get("targetRevision"):
        status.update({k: v for k, v in previous.items() if k in _ROLLOUT_FIELDS})
        rows = [(c["type"], c["status"], c.get("reason", ""), c.get("message", ""))
                for c in previous.get("conditions") or [] if isinstance(c, Mapping) and c.get("type") in CONDITIONS]
    else:
        status.update(currentRevision=0, targetRevision=0, readyNodes="0/0", rollout="not deployed", desired=0,
                      updated=0, ready=0, failed=0, offline=0, pools={})
        rows = [("Progressing", "True", "Pending", "not applied to the hub yet"),
                ("Available", "False", "NotDeployed", "the hub has no release of this component"),
                ("RolledBack", "False", "NotRolledBack", "no revision yet")]
    observed = previous.get("observedGeneration") if retried else generation
    if observed is not None:
        status["observedGeneration"] = observed
    if refusal is not None:
        if not retried:
            status["rollout"] = "refused"
        rows = [("Progressing", "False", refusal.reason, refusal.message),
                *(row for row in rows if row[0] != "Progressing")]
    conditions = []
    for kind, state, reason, message in sorted(rows, key=lambda row: CONDITIONS.index(row[0])):
        before = _condition(previous, kind)
        since = before.get("lastTransitionTime") if before and before.get("status") == state else None
        conditions.append({"type": kind, "status": state, "reason": reason, "message": message,
                           "lastTransitionTime": since or stamp, "observedGeneration": generation})
    status["conditions"] = conditions
    return status


def refusal_of(exc: DeployerError) -> Action:
    """The Progressing=False condition a failed hub call becomes."""
    if isinstance(exc, HubUnavailable):
        return Action("refuse", "HubUnreachable", str(exc))
    if isinstance(exc, SpecRejected):
        return Action("refuse", "SpecRejected", f"the hub refused the component: {exc}")
    return Action("refuse", "HubError", f"the hub answered {exc.status or 'nothing'}: {exc}")


# --------------------------------------------------------------------------- against a cluster


class Controller:
    """Reconciles Component objects through ``deployer``; ``api`` is a ``kubernetes.client.CustomObjectsApi``.

    One thread does everything, so one Component is never reconciled twice at once. Components whose
    rollout is under way (Progressing=True) or whose hub call is retried are looked at again every
    ``poll_seconds``, so their status follows the nodes without waiting for the next full resync."""

    def __init__(self, deployer: Deployer, api: Any, *, namespace: str | None = None,
                 resync_seconds: int = DEFAULT_RESYNC_SECONDS, poll_seconds: int = DEFAULT_POLL_SECONDS) -> None:
        self.deployer = deployer
        self.api = api
        self.namespace = namespace
        self.resync_seconds = resync_seconds
        self.poll_seconds = poll_seconds
        # (namespace, name) of the Components looked at again every poll_seconds.
        self.following: set[tuple[str, str]] = set()

    def reconcile(self, obj: Mapping[str, Any]) -> Action:
        """One pass over one Component: decide, act, write status. Returns what it decided."""
        metadata = obj.get("metadata") or {}
        namespace, name = metadata.get("namespace") or "default", metadata["name"]
        refusal: Action | None = None
        try:
            release = self.deployer.status(namespace, name)
        except DeployerError as exc:
            refusal = refusal_of(exc)
            logger.warning("Component %s/%s: %s", namespace, name, refusal.message)
            self._write_status(obj, status_from(obj, None, refusal=refusal))
            return refusal
        action = decide(obj, release)
        logger.debug("Component %s/%s: %s", namespace, name, action.kind)
        if action.kind == "nothing":
            return action
        if action.kind == "add_finalizer":
            self._set_finalizers(obj, [*(metadata.get("finalizers") or []), FINALIZER])
            return action
        if action.kind == "remove_finalizer":
            self._set_finalizers(obj, [f for f in metadata.get("finalizers") or [] if f != FINALIZER])
            return action
        try:
            if action.kind == "uninstall":
                revision = self.deployer.uninstall(namespace, name)
                logger.info("Component %s/%s deleted from the hub (revision %d)", namespace, name, revision)
                self._set_finalizers(obj, [f for f in metadata.get("finalizers") or [] if f != FINALIZER])
                return action
            if action.kind == "apply":
                outcome = self.deployer.upgrade(component_document(obj), install=True)
                logger.info("Component %s/%s applied: revision %d (%s)", namespace, name, outcome.revision,
                            "changed" if outcome.changed else "unchanged")
                release = self.deployer.status(namespace, name)
            elif action.kind == "refuse":
                refusal = action
        except DeployerError as exc:
            refusal = refusal_of(exc)
            logger.warning("Component %s/%s: %s", namespace, name, refusal.message)
        self._write_status(obj, status_from(obj, release, refusal=refusal))
        return action

    # ----- writing to the cluster

    def _set_finalizers(self, obj: Mapping[str, Any], finalizers: list[str]) -> None:
        metadata = obj["metadata"]
        # A merge patch carrying the resourceVersion the list was read at: the API server refuses it (409)
        # if the object changed since, so another writer's finalizer is never dropped; the event of that
        # change brings the object back here.
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, metadata.get("namespace") or "default", PLURAL, metadata["name"],
            {"metadata": {"finalizers": finalizers, "resourceVersion": metadata.get("resourceVersion")}},
            _request_timeout=API_TIMEOUT)
        if FINALIZER not in finalizers:
            self.following.discard(_key(obj))

    def _write_status(self, obj: Mapping[str, Any], status: dict[str, Any]) -> None:
        metadata = obj["metadata"]
        self._follow(obj, status)
        if (obj.get("status") or {}) == status:
            return
        try:
            # A JSON patch replacing the whole status: a merge patch would keep the pools no longer targeted.
            self.api.patch_namespaced_custom_object_status(
                GROUP, VERSION, metadata.get("namespace") or "default", PLURAL, metadata["name"],
                [{"op": "add", "path": "/status", "value": status}],
                _content_type="application/json-patch+json", _request_timeout=API_TIMEOUT)
        except _api_exception() as exc:  # a 404 (deleted meanwhile): nothing to write to
            if exc.status != 404:
                raise
            self.following.discard(_key(obj))

    def _follow(self, obj: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        progressing = _condition(status, "Progressing") or {}
        if progressing.get("status") == "True" or progressing.get("reason") in RETRIED_REFUSALS:
            self.following.add(_key(obj))
        else:
            self.following.discard(_key(obj))

    # ----- reading from the cluster

    def _list(self) -> dict[str, Any]:
        if self.namespace:
            return self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                          _request_timeout=API_TIMEOUT)
        return self.api.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=API_TIMEOUT)

    def resync(self) -> str:
        """Reconcile every Component once; returns the list's resourceVersion to watch from."""
        listed = self._list()
        self.following.clear()
        for obj in listed.get("items", []):
            self._safely(obj)
        return listed["metadata"]["resourceVersion"]

    def look_again(self) -> None:
        """Reconcile the followed Components once more, each as the API server has it now."""
        for namespace, name in sorted(self.following):
            try:
                obj = self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                            _request_timeout=API_TIMEOUT)
            except _api_exception() as exc:
                if exc.status != 404:
                    raise
                self.following.discard((namespace, name))
                continue
            self._safely(obj)

    def _safely(self, obj: Mapping[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name")
        try:
            self.reconcile(obj)
        except _api_exception() as exc:
            if exc.status in (404, 409):  # deleted or changed meanwhile: its own event brings it back
                logger.info("Component %s changed while reconciled (%s); taking it up again", name, exc.status)
                return
            logger.warning("Reconciling %s failed; the next resync retries: %s", name, _short(exc))
        except _unreachable():
            raise  # the API server is away: run() pauses and lists again, rather than trying every object
        except Exception:  # one bad object must not stop the others
            logger.exception("Reconciling %s failed; the next resync retries", name)

    def _watch(self, version: str, seconds: int) -> str:
        """Reconcile what changes for ``seconds`` from ``version``; returns the last version seen."""
        from kubernetes import watch  # the cluster client only where a cluster is used

        args: tuple[str, ...]
        if self.namespace:
            lister, args = self.api.list_namespaced_custom_object, (GROUP, VERSION, self.namespace, PLURAL)
        else:
            lister, args = self.api.list_cluster_custom_object, (GROUP, VERSION, PLURAL)
        # The server ends the watch after timeout_seconds; the read timeout only catches a server gone silent.
        for event in watch.Watch().stream(lister, *args, resource_version=version, timeout_seconds=seconds,
                                          _request_timeout=(API_TIMEOUT[0], seconds + API_TIMEOUT[1])):
            obj = event["object"]
            version = obj.get("metadata", {}).get("resourceVersion", version)
            if event["type"] == "DELETED":
                self.following.discard(_key(obj))
            else:
                self._safely(obj)
        return version

    def run(self) -> None:
        """List, then watch from the list's resourceVersion; list again every resync period and after a
        410 Gone; look again at followed Components every poll period. When the API server cannot be
        reached (restarting, say) or refuses, it says so and lists again after a pause (1 s, doubling to
        8 s): it runs until stopped."""
        ApiException = _api_exception()  # noqa: N806 - the client's class, under the client's own name
        version: str | None = None
        resync_at = 0.0
        pause = 1.0
        while True:
            try:
                if version is None or time.monotonic() >= resync_at:
                    version = self.resync()
                    resync_at = time.monotonic() + self.resync_seconds
                elif self.following:
                    self.look_again()
                left = max(1, int(resync_at - time.monotonic()))
                version = self._watch(version, min(left, self.poll_seconds) if self.following else left)
                pause = 1.0
            except ApiException as exc:
                version = None
                if exc.status == 410:
                    logger.info("The watch's resourceVersion expired (410 Gone); listing again")
                    continue
                logger.warning("The API server refused: %s; listing again in %.0f s", _hint(exc), pause)
                time.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE_SECONDS)
            except Exception as exc:  # noqa: BLE001 - urllib3's and the socket's errors: the server is away
                version = None
                logger.warning("The API server cannot be reached (%s); listing again in %.0f s", _short(exc), pause)
                time.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE_SECONDS)


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace") or "default", str(metadata.get("name"))


def _api_exception() -> type[ApiException]:
    from kubernetes.client.exceptions import ApiException

    return ApiException


def _unreachable() -> tuple[type[Exception], ...]:
    """What the kubernetes client raises when the API server does not answer (urllib3's errors)."""
    from urllib3.exceptions import HTTPError

    return (HTTPError, OSError)


def _short(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status:
        return f"{status} {reason or ''}".strip()
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


def _hint(exc: Any) -> str:
    """What an error of the API server means for the controller."""
    if exc.status == 404:
        return (f"404: no {PLURAL}.{GROUP} resource: install the Component CRD "
                "(kubectl apply -f charts/edgehub/crds/components.edgecollab.io.yaml)")
    if exc.status in (401, 403):
        # Also for a moment after an API server starts, before its authorization caches are filled.
        return (f"{exc.status} {exc.reason}: if this lasts, the controller's account needs get, list, watch and "
                f"patch on {PLURAL}.{GROUP} and patch on {PLURAL}/status (docs/deployer.md)")
    return _short(exc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deployer_plugin.controller", description=__doc__.split("\n")[0])
    parser.add_argument("--hub", help="the hub's URL (default: $EDGECOLLAB_HUB)")
    parser.add_argument("--ca-file", help="the CA an https:// hub is trusted by (default: $EDGECOLLAB_CA_FILE)")
    parser.add_argument("--namespace", help="watch this namespace only (default: every namespace)")
    parser.add_argument("--kubeconfig", help="the cluster (default: $KUBECONFIG, else in-cluster)")
    parser.add_argument("--resync", type=_seconds, default=DEFAULT_RESYNC_SECONDS,
                        help=f"seconds between full resyncs (default {DEFAULT_RESYNC_SECONDS})")
    parser.add_argument("--poll", type=_seconds, default=DEFAULT_POLL_SECONDS,
                        help="seconds between looks at a Component whose rollout is under way or whose hub call "
                             f"is retried (default {DEFAULT_POLL_SECONDS})")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 second, not {value}")
    return value


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (a pod stopping) ends the controller as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    from .deployer import EdgeDeployer

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # each of urllib3's quick retries of a refused connection, which run() reports once
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        from kubernetes import client, config
    except ImportError as exc:
        print(f"the controller needs the kubernetes client ({exc}): pip install 'edgecollab[controller]'",
              file=sys.stderr)
        return 2
    try:
        if args.kubeconfig or not _in_cluster():
            config.load_kube_config(config_file=args.kubeconfig)
        else:
            config.load_incluster_config()
        deployer = EdgeDeployer(args.hub, ca_file=args.ca_file, client_name=CLIENT_NAME)
    except (DeployerError, config.ConfigException, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    controller = Controller(deployer, client.CustomObjectsApi(), namespace=args.namespace,
                            resync_seconds=args.resync, poll_seconds=args.poll)
    signal.signal(signal.SIGTERM, _stop)
    logger.info("Watching %s.%s/%s in %s; deploying through the hub at %s", PLURAL, GROUP, VERSION,
                args.namespace or "every namespace", deployer.hub_url)
    try:
        controller.run()
    except KeyboardInterrupt:
        return 0
    return 0


def _in_cluster() -> bool:
    import os

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not os.environ.get("KUBECONFIG")


if __name__ == "__main__":
    sys.exit(main())

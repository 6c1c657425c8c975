"""The podman runtime: a release's manifests run as pods through ``podman kube play``.

How a release becomes pods
--------------------------
``apply`` parses the rendered manifests, rewrites them into a file podman 4.3
plays reliably (``podman_plan.build_plan``), stores that exact file as ``WORK_DIR/NAMESPACE/RELEASE.yaml``
(mode 0600: it may hold Secret data) and plays it with ``podman kube play
--replace [--network N] -`` (the pods on stdin): once for ordinary pods, and
once more per host-access mode present (hostNetwork pods without
``--network``; hostPID pods with a containers.conf saying ``pidns = "host"``,
since kube play 4.3 ignores ``hostPID``). Each host access is a warning naming
the pod. The file's first document (kind ``EdgecollabPodmanRecord``, which
podman skips) records what podman is not given: annotations podman refuses
(values over 63 bytes, such as ``checksum/config``), the probes the agent runs
itself (``podman_probes``), host access, emptyDir volumes and StatefulSet
claims. What the rewrite does, kind by kind:

=====================  ====================================================
Pod                    played as is (plus the injections below)
Deployment             expanded into ``spec.replicas`` Pods (default 1) named
                       ``NAME-pod-0`` .. ``NAME-pod-{n-1}``, restartPolicy
                       Always. podman 4.3 would do the same expansion
                       itself; podman 5 runs one pod ``NAME-pod`` whatever the
                       count ("Limiting replica count to 1"). Expanding here
                       keeps names and counts the same on every podman, and
                       ``total`` honest.
DaemonSet              one Pod ``NAME-pod-0`` (one node, one pod). podman 4.3
                       ignores DaemonSets silently (support came later).
ConfigMap              kept; podman uses it for ``env``/``envFrom`` and mounts
                       it through a podman volume named after it.
Secret                 turned into a ConfigMap (and secretKeyRef / secretRef /
                       secret volumes into their ConfigMap forms). podman
                       4.3's own Secret support is broken: it stores the
                       Secret as YAML and reads it back as JSON, and secret
                       volumes crash ``kube play``.
StatefulSet            ``spec.replicas`` Pods ``NAME-0`` .. ``NAME-{n-1}``
                       (hostname the pod name), played in ordinal order in
                       one play (no waiting for readiness between ordinals).
                       Each ``volumeClaimTemplates`` entry T becomes the named
                       volume ``NS.RELEASE.pvc.T-NAME-ORDINAL`` (Kubernetes'
                       claim name), created labelled with the release. Claims survive
                       re-applies and scale-downs (as Kubernetes keeps PVCs);
                       unlike Kubernetes they are removed with the release: an
                       edge node has nobody to delete orphaned claims.
PersistentVolumeClaim  dropped from the file; the claim's name becomes a
                       podman named volume, created on first use and kept
                       across re-applies (podman 4.3 refuses to re-play a PVC
                       whose volume exists, even with ``--replace``).
Helm hooks             documents with a ``helm.sh/hook`` annotation are not
                       played: ``Plan.hooks`` returns them untouched.
anything else          not run, and reported in ``ApplyResult.warnings`` with
                       the reason (``"Service/web: not run on podman (podman
                       has no cluster networking ...)"``); never silently
                       dropped. Jobs are among these for now.

Volumes: an emptyDir is the named volume ``NS.RELEASE.empty.POD.VOLUME``, private to
its pod, removed whenever the pod is recreated (every apply) and with the
release. ``subPath`` and ``subPathExpr`` (ignored by podman 4.3 for every
volume kind) become a hostPath bind: for named volumes and hostPaths of a
mount point under ``WORK_DIR/NAMESPACE/RELEASE.mounts/`` onto which the
runtime bound the part by file descriptor, never following a link
(``host_mounts``), and of a file the runtime writes under
``WORK_DIR/NAMESPACE/RELEASE.d/`` for ConfigMap and Secret keys. Before any
play, ``podman_confinement.check_confinement`` checks the plan as a whole:
nothing bound or written lies outside the release's own directories and
volumes or an allowed hostPath, and nothing holds the node's state or
podman's storage. A ConfigMap or Secret a pod needs that the release does not hold
is refused (ManifestRejected) unless the reference is optional.
``$(VAR)`` in env values, command and args is expanded at plan time as the
kubelet does, from the env (node identity and release ConfigMaps/Secrets
included). ``serviceAccountName`` and ``fsGroup`` are ignored with a warning.
=====================  ====================================================

Into every pod the runtime injects the labels ``edgecollab.io/node``,
``edgecollab.io/pool``, ``edgecollab.io/release`` (``NAMESPACE.RELEASE``, cut to
63 characters with a hash suffix when longer), ``edgecollab.io/namespace`` and
``edgecollab.io/release-name`` (the last two let ``releases()`` name a release
from its pods alone), and into every container (init containers included) the
environment variables ``EDGE_NODE_NAME`` and ``EDGE_NODE_POOL``.

Names: podman has no namespaces
-------------------------------
Every name podman stores is prefixed with the release's namespace and a dot:
pod ``web-pod-0`` of namespace ``demo`` is the podman pod ``demo.web-pod-0``
(its containers ``demo.web-pod-0-CONTAINER``). A namespace is a DNS label and
holds no dot, so the text before the first dot always is the namespace and
two namespaces never clash. Two releases of one namespace that define the same
pod clash as they would in Kubernetes: the second apply fails with
RuntimeApplyError instead of replacing the other release's pod.

Volumes belong to one release, not to the namespace: ConfigMaps, Secrets,
claims and emptyDirs share podman's one volume namespace, so each is named
``NS.RELEASE.KIND.NAME`` (``demo.web.cm.page``, ``demo.web.secret.NAME``,
``demo.web.pvc.NAME``, ``demo.web.empty.POD.VOLUME``) and two releases that
both define ConfigMap ``config`` and claim ``data`` each get their own. The
runtime creates every volume a plan mounts before playing it, labelled
``edgecollab.io/release``; a volume of that name that exists without the
release's label is never mounted (RuntimeApplyError), and removal takes only
volumes labelled as the release's, never forced (a volume still in use fails
the removal instead of taking the container using it along).

Node policy: ``build_plan`` checks every object, hooks included, against the
node's policy (``PodmanSettings.policy``, see ``edgeagent.policy``) before
anything else; a refusal is ManifestRejected naming the object, container,
field and the policy line that would allow it. Containers of a namespace not
allowed ``root`` get ``allowPrivilegeEscalation: false`` (no_new_privs).

YAML: every manifest is loaded through ``manifests.load_yaml_all``, which
refuses (ManifestRejected) a document whose aliases would add more than
``ALIAS_EXPANSION_LIMIT`` nodes, before building any object from it.

Re-applying and removing
------------------------
Re-playing recreates every pod of the release, even when nothing changed: the
agent re-applies a release only when its rendered manifests changed (it compares
digests), so a reconnect restarts nothing. Before the new file is played, every
pod the release runs is stopped and removed by the runtime itself, the ones the
new manifests no longer have included; volumes the new file no longer uses are
removed after it. A failed play leaves the new file stored: ``observe`` then
reports what the release asks for against what really runs, and ``remove``
cleans up whatever the failed play left behind.

Pods are stopped with ``podman pod stop -t GRACE`` (GRACE being the pod's
``terminationGracePeriodSeconds``, 0 when unset) and then removed. podman 4.3
itself is harsher: ``kube down`` and ``kube play --replace`` stop with timeout 0
(SIGKILL at once) whatever the manifest says, and kube play does not carry
``terminationGracePeriodSeconds`` into the containers (their stop timeout stays
podman's 10 s), so a PID 1 that ignores SIGTERM, like busybox httpd, makes a
plain ``podman pod stop`` wait 10 s. The example chart runs its server under
``sh -c 'trap "exit 0" TERM; httpd ... & wait'`` for that reason.

Ports: in Kubernetes a ``containerPort`` alone publishes nothing, but podman
4.3 publishes it on the host (0.0.0.0), so only ports with a ``hostPort`` are
kept; with ``network`` ``none`` those cannot work and are reported as warnings.
Init containers are passed through; podman 4.3 sometimes fails removing a
finished init container ("cannot remove container ... as it is running"), which
fails the apply with that message.

An apply costs two podman calls the first time (``pod ps``, ``kube play``) and
four when the release already runs (``pod stop`` and ``pod rm`` in between),
plus ``volume ls`` and a ``volume create`` per new volume, and a ``volume ls``
and ``volume rm`` when volumes fell out of use.

Probes
------
Stripped from what podman plays and run by the runtime's probe loop (see
``podman_probes``), a background task started by ``__aenter__`` and cancelled
and awaited by ``__aexit__``: without entering the runtime no probe runs and
probed pods never become ready. Entering asks podman nothing: a node whose
podman is broken still starts and says so through ``preflight``.

Observing
---------
``observe`` costs two podman calls: ``pod ps`` filtered by the release label,
then one ``container inspect`` of the pods' containers for their states and
exact start times. ``total`` is the number of pods in the stored file. A pod
is ready when every app container runs and none is held back by a startup
probe not yet passed or a failing readiness probe.

The event loop never waits on YAML: ``apply`` builds the file in a thread, and
the runtime keeps each release's played file parsed in memory, keyed by the
digest of its text, so ``observe`` (every reconcile pass) reads and hashes the
file in a thread and parses it again only when its content changed (after an
agent restart, say). PyYAML's libyaml loader and dumper are used when present.

Errors
------
::

    EdgeRuntimeError          podman is missing, failed or timed out (observe,
                              remove, preflight), or the stored file is damaged
      RuntimeApplyError       an apply or removal failed: podman refused the
                              file, timed out, or a pod of the release belongs
                              to another release; the message names the object.
                              It may succeed on a later attempt.
        ManifestRejected      the manifests themselves cannot run here (not
                              YAML, no kind, a bad name or field type, replicas
                              not a number): refused before podman is asked,
                              and would be refused again

Modules
-------
``podman_plan``  the pure translation of rendered manifests into the file
                 podman plays, and reading a played file back (no I/O)
``podman_cli``   running podman: one bounded subprocess per call, and its
                 error output made readable
``podman_probes`` Kubernetes probes run by the agent (exec through podman,
                 httpGet/tcpSocket inside the pod's network namespace)
``podman``       (this module) ``PodmanSettings`` and ``PodmanRuntime``: the
                 work dir, the per-release locks and the podman calls of
                 apply, remove, observe, releases and preflight
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgekit.files import write_atomic
from edgekit.tasks import OwnedTask
from edgeprotocol.messages import ContainerState, ContainerStatus

from ..policy import NodePolicy
from .base import (
    ApplyResult,
    EdgeRuntimeError,
    NodeContext,
    Observation,
    PodState,
    PreflightCheck,
    ReleaseRef,
    RuntimeApplyError,
)
from .host_mounts import bind, detach_all, mount_points, open_beneath
from .podman_cli import PodmanCli, PodmanFailed, last_error, loads_json, with_hint
from .podman_confinement import Confinement, check_confinement
from .podman_hooks import LABEL_HOOK, HookRunner, parse_hooks
from .podman_plan import (
    LABEL_NAMESPACE,
    LABEL_RELEASE,
    LABEL_RELEASE_NAME,
    Plan,
    PlayedFile,
    PlayedPod,
    build_plan,
    dump_yaml_all,
    load_yaml_all,
    parse_played,
    played_digest,
    release_label,
)
from .podman_probes import ProbeRunner, ProbeSettings
from .podman_restarts import RestartKeeper, RestartSettings, running_seconds

__all__ = ["PodmanRuntime", "PodmanSettings"]

logger = logging.getLogger(__name__)

# podman 4.3 reports a failed pod as "encountered while bringing up pod NAME: why".
_BRINGING_UP = re.compile(r"bringing up pod ([^\s:]+)")
_ZERO_TIME = "0001-01-01T00:00:00Z"
# Pause between stopping pods and removing them, in seconds (see _remove_pods):
# conmon's exit cleanup takes well under 0.1 s; 0.2 s leaves a margin.
_SETTLE_SECONDS = 0.2
# Pods the preflight creates carry this label, so a leftover from an agent
# killed mid-check is recognisable (and removed by the next check).
_PREFLIGHT_LABEL = "edgecollab.io/preflight"


@dataclass(frozen=True, slots=True, kw_only=True)
class PodmanSettings:
    """How the agent reaches podman on this node.

    Defaults are podman's own: on an ordinary machine only ``work_dir`` needs
    setting.
    """

    # Where the runtime keeps the exact YAML it played per release
    # (WORK_DIR/NAMESPACE/RELEASE.yaml); removal and re-apply read it back. It
    # must survive agent restarts, so it belongs in the agent's state directory.
    work_dir: Path
    # The podman executable, looked up on PATH unless a path is given.
    binary: str = "podman"
    # podman's --root (image and container storage); None: podman's default
    # (/var/lib/containers/storage as root). Set to run several simulated nodes
    # on one machine, each with its own storage.
    root: Path | None = None
    # podman's --runroot (runtime state, normally on tmpfs); None: podman's default.
    runroot: Path | None = None
    # podman's --tmpdir (libpod state such as exit files); None: podman's
    # default (/run/libpod). Only simulated nodes sharing a machine need it.
    tmpdir: Path | None = None
    # A containers.conf given to the podman subprocesses (only to them) through
    # CONTAINERS_CONF; None: podman reads its usual files. For machines whose
    # defaults do not work (e.g. crun on hybrid cgroups: runtime = "runc").
    containers_conf: Path | None = None
    # Passed as `kube play --network VALUE` (e.g. "none", "host", a network
    # name); None: podman's default bridge network.
    network: str | None = None
    # Seconds any single podman call may take before it is killed and the
    # operation fails. kube play of a large release with local images takes a
    # few seconds; 120 s leaves room for a slow disk without hanging the agent.
    command_timeout: float = 120.0
    # How the agent runs the releases' probes (see podman_probes).
    probes: ProbeSettings = ProbeSettings()
    # How the agent restarts the containers of Always pods (podman_restarts): the kubelet's back-off.
    restarts: RestartSettings = RestartSettings()
    # What the node lets a release's pods do (edgeagent.policy); the default
    # refuses root, privileged containers and every host access.
    policy: NodePolicy = field(default_factory=NodePolicy)
    # Paths no pod may ever bind, nor anything holding them, whatever the
    # policy allows: the agent's state directory and its policy file (podman's
    # own storage and the work dir are always protected).
    protected_paths: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        for name in ("work_dir", "root", "runroot", "tmpdir", "containers_conf"):
            value = getattr(self, name)
            if value is not None:
                # Absolute: podman's helpers (conmon) run from other directories.
                object.__setattr__(self, name, Path(value).absolute())
        if not self.binary:
            raise ValueError("PodmanSettings.binary must not be empty")
        if self.network is not None and not self.network:
            raise ValueError("PodmanSettings.network must be None or a non-empty string")
        if not self.command_timeout > 0:
            raise ValueError("PodmanSettings.command_timeout must be a positive number of seconds")

    def global_args(self) -> list[str]:
        """podman's global flags for these settings (storage locations)."""
        args: list[str] = []
        if self.root is not None:
            args += ["--root", str(self.root)]
        if self.runroot is not None:
            args += ["--runroot", str(self.runroot)]
        if self.tmpdir is not None:
            args += ["--tmpdir", str(self.tmpdir)]
        return args


class PodmanRuntime:
    """The ``Runtime`` that runs releases as podman pods (see the module docstring).

    Enter it as an async context manager for its life: that runs the probe
    loop. The methods also work without entering it (no probes then).
    """

    name = "podman"

    def __init__(self, settings: PodmanSettings) -> None:
        self.settings = settings
        self._cli = PodmanCli(settings)
        # One lock per release: applies and removals of one release never
        # interleave, while a slow release never holds up the others.
        self._locks: dict[ReleaseRef, asyncio.Lock] = {}
        # What each release's played file holds, parsed, keyed by the file's
        # digest: observe runs every reconcile pass and re-parses the file only
        # when its content changed (another runtime instance, an agent restart).
        # One entry per release the node holds; removal drops it.
        self._played: dict[ReleaseRef, PlayedFile] = {}
        self._entered = False
        # The probes of every release the runtime knows (applied, or read back
        # by observe after an agent restart); run by the _probes task while entered.
        self._prober = ProbeRunner(self._cli, settings.probes)
        self._probes = OwnedTask("podman probes")
        # Restarts of Always pods' containers, with back-off, while entered, under each release's lock.
        self._keeper = RestartKeeper(self._cli, self._lock, settings.restarts,
                                     restarting=self._prober.restarting)
        self._restarts = OwnedTask("podman restarts")
        self._storage: tuple[str, ...] | None = None  # podman's volume path, graph root and run root, asked once

    def __repr__(self) -> str:
        return f"PodmanRuntime(root={self.settings.root}, work_dir={self.settings.work_dir})"

    async def __aenter__(self) -> PodmanRuntime:
        """Start the probe loop. podman is not asked anything: a broken podman shows in ``preflight``."""
        if self._entered:
            raise RuntimeError("this PodmanRuntime is already entered; use one `async with` at a time")
        self._entered = True
        self._probes.start(self._run_probes())
        self._restarts.start(self._keeper.run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Cancel the probe loop and wait for it (and its in-flight checks); safe without a prior enter."""
        await self._probes.stop()
        await self._restarts.stop()
        self._entered = False

    async def _run_probes(self) -> None:
        try:
            await self._prober.run()
        except asyncio.CancelledError:
            raise
        except BaseException:
            logger.exception("The probe loop crashed; probes stop until the agent restarts")
            raise
        else:  # run() only ends by cancellation
            logger.error("The probe loop returned; probes stop until the agent restarts")

    def probe_verdict(self, container: str) -> tuple[bool, str]:
        """(ready, why not) of a podman container by its probes; (True, "") without probes."""
        return self._prober.verdict(container)

    @property
    def probe_restarts(self) -> Mapping[str, int]:
        """Containers restarted by a failing liveness or startup probe since start, and how often."""
        return self._prober.restarts

    def _remember(self, ref: ReleaseRef, played: PlayedFile | None) -> None:
        """Keep ``played`` as what ``ref`` runs (None: nothing), and probe its containers."""
        if played is None:
            self._played.pop(ref, None)
            self._prober.forget(ref)
            self._keeper.forget(ref)
        else:
            self._played[ref] = played
            grace = {c: pod.grace for pod in played.pods.values() for c in pod.containers}
            self._prober.track(ref, played.probes, grace)
            self._keeper.track(ref, [c for pod in played.pods.values() if pod.restart_policy == "Always"
                                     for c in pod.containers])

    # -- podman calls ---------------------------------------------------------

    async def version(self) -> str:
        """podman's version; raises EdgeRuntimeError when podman does not answer."""
        try:
            result = await self._cli.run("version", "--format", "{{.Client.Version}}")
        except PodmanFailed as exc:
            raise EdgeRuntimeError(f"podman does not work here: {exc.stderr}") from exc
        return result.stdout.strip()

    async def preflight(self) -> tuple[PreflightCheck, ...]:
        """Check that podman can run pods on this node: podman, storage, OCI runtime, a real pod.

        The pod check creates, starts and removes an empty pod, which is what
        fails when podman cannot build its pause image (catatonit missing) or
        its OCI runtime cannot start a container here. About half a second.
        """
        checks: list[PreflightCheck] = []
        # A storage root given in the settings is checked before podman runs:
        # podman itself fails to start on a root it cannot create.
        storage = await self._storage_check(self.settings.root) if self.settings.root else None

        def failed_from(index: int, why: str) -> tuple[PreflightCheck, ...]:
            # Checks that could not run feed no condition: what they would
            # have shown is unknown, not failed.
            skipped = [PreflightCheck(name, False, f"not checked: {why}") for name in ("storage", "oci-runtime", "pod")]
            if storage is not None:
                skipped[0] = storage
            return (*checks, *skipped[index:])

        try:
            version = await self.version()
        except EdgeRuntimeError as exc:
            missing = isinstance(exc.__cause__, OSError) or "cannot run" in str(exc)
            checks.append(PreflightCheck("podman", False, with_hint(str(exc)), "RuntimeReady",
                                         "PodmanMissing" if missing else "PodmanBroken"))
            return failed_from(0, "podman does not run")
        checks.append(PreflightCheck("podman", True, f"podman {version} ({self.settings.binary})", "RuntimeReady"))

        try:
            info = await self._cli.json("info", "--format", "json", what="describe itself (podman info)")
        except EdgeRuntimeError as exc:
            checks.append(storage or PreflightCheck("storage", False, with_hint(str(exc)), "StorageReady",
                                                    "StorageUnusable"))
            return failed_from(1, "podman info failed")
        if storage is None:
            graph_root = ((info or {}).get("store") or {}).get("graphRoot") or "/var/lib/containers/storage"
            storage = await self._storage_check(Path(str(graph_root)))
        checks.append(storage)

        oci = ((info or {}).get("host") or {}).get("ociRuntime") or {}
        oci_path = str(oci.get("path") or "")
        oci_version = str(oci.get("version") or "").splitlines()[0:1]
        if oci_path and os.access(oci_path, os.X_OK):
            checks.append(PreflightCheck("oci-runtime", True,
                                         f"{oci.get('name', '?')} at {oci_path}"
                                         + (f" ({oci_version[0]})" if oci_version else ""), "RuntimeReady"))
        else:
            checks.append(PreflightCheck("oci-runtime", False,
                                         f"podman's OCI runtime {oci.get('name') or '?'} is not executable at "
                                         f"{oci_path or '(no path)'}: install runc or crun",
                                         "RuntimeReady", "OciRuntimeMissing"))

        checks.append(await self._probe_pod())
        return tuple(checks)

    @staticmethod
    async def _storage_check(root: Path) -> PreflightCheck:
        problem, free = await asyncio.to_thread(_probe_writable, root)  # file I/O off the loop
        if problem:
            return PreflightCheck("storage", False, problem, "StorageReady", "StorageNotWritable")
        return PreflightCheck("storage", True, f"{root} writable, {free / 2**30:.1f} GiB free", "StorageReady")

    async def _probe_pod(self) -> PreflightCheck:
        """Create, start and remove an empty pod on the node's network setting."""
        with contextlib.suppress(PodmanFailed, EdgeRuntimeError):
            await self._cli.run("pod", "rm", "--force", "--ignore", "--time", "0",
                            *[p.get("Name", "") for p in await self._pods(f"label={_PREFLIGHT_LABEL}")
                              if p.get("Name")])
        name = f"edgecollab-preflight-{os.urandom(4).hex()}"
        create = ["pod", "create", "--name", name, "--label", f"{_PREFLIGHT_LABEL}=1"]
        if self.settings.network:
            create += ["--network", self.settings.network]
        step = "create"
        try:
            await self._cli.run(*create)
            step = "start"
            await self._cli.run("pod", "start", name)
        except PodmanFailed as exc:
            return PreflightCheck("pod", False, with_hint(f"podman pod {step} failed: {last_error(exc.stderr)}"),
                                  "RuntimeReady", "PodCreateFailed" if step == "create" else "PodStartFailed")
        finally:
            with contextlib.suppress(PodmanFailed, EdgeRuntimeError):
                await self._cli.run("pod", "rm", "--force", "--ignore", "--time", "0", name)
        return PreflightCheck("pod", True, "created, started and removed a pod", "RuntimeReady")

    async def _pods(self, *filters: str) -> list[dict[str, Any]]:
        args = ["pod", "ps", "--no-trunc", "--format", "json"]
        for item in filters:
            args += ["--filter", item]
        return list(await self._cli.json(*args, what="list pods") or [])

    async def _remove_pods(self, pods: Iterable[tuple[str, int]]) -> None:
        """Stop pods (each within its grace period, in seconds), then remove them.

        Missing pods are fine. Stopping first and removing a moment later, rather
        than one ``pod rm --force``, is deliberate: with the cgroupfs manager
        each container's conmon still runs its exit cleanup right after the
        container dies, and a removal racing it waits ~3 s on the pod's busy
        cgroup (seen with podman 4.3 in one of five removals).
        """
        by_grace: dict[int, list[str]] = {}
        for name, grace in pods:
            by_grace.setdefault(min(grace, int(self.settings.command_timeout // 2)), []).append(name)
        if not by_grace:
            return
        for grace, names in sorted(by_grace.items()):
            await self._cli.run("pod", "stop", "--ignore", "--time", str(grace), *sorted(names))
        await asyncio.sleep(_SETTLE_SECONDS)
        every = sorted(name for names in by_grace.values() for name in names)
        await self._cli.run("pod", "rm", "--force", "--ignore", "--time", "0", *every)

    async def _remove_volumes(self, ref: ReleaseRef, names: Iterable[str] | None = None) -> int:
        """Remove the volumes of ``names`` (None: every one) labelled as ``ref``'s; how many went.

        A volume not labelled as the release's is never removed, whatever the
        played file says, and none is forced: a volume some container still
        uses makes the removal fail rather than take that container with it.
        """
        label = release_label(ref)
        owners = await self._volume_owners()
        owned = {name for name, owner in owners.items() if owner == label}
        wanted = owned if names is None else set(names)
        foreign = sorted(n for n in wanted - owned if n in owners)
        if foreign:
            logger.warning("Release %s: volumes %s are not labelled as the release's; left in place", ref, foreign)
        doomed = sorted(wanted & owned)
        if doomed:
            await self._cli.run("volume", "rm", *doomed)
        return len(doomed)

    # -- the work dir -----------------------------------------------------------

    def played_file(self, ref: ReleaseRef) -> Path:
        """Where the YAML last played for ``ref`` is kept."""
        return self.settings.work_dir / ref.namespace / f"{ref.release}.yaml"

    def files_dir(self, ref: ReleaseRef) -> Path:
        """Where the files ``ref``'s pods mount by subPath (ConfigMap and Secret keys) are written."""
        return self.settings.work_dir / ref.namespace / f"{ref.release}.d"

    def mounts_dir(self, ref: ReleaseRef) -> Path:
        """Where the parts of volumes ``ref``'s pods mount by subPath are bound (``host_mounts``)."""
        return self.settings.work_dir / ref.namespace / f"{ref.release}.mounts"

    async def _podman_storage(self, ref: ReleaseRef) -> tuple[str, ...]:
        """podman's directory of named volumes, graph root and run root (asked once).

        A subPath of a volume is bound from the first; none of them may ever be bound into a pod.
        """
        if self._storage is None:
            try:
                result = await self._cli.run("info", "--format",
                                             "{{.Store.VolumePath}}\n{{.Store.GraphRoot}}\n{{.Store.RunRoot}}")
            except (PodmanFailed, EdgeRuntimeError) as exc:
                raise RuntimeApplyError(f"release {ref}: podman info failed: {exc}") from exc
            found = [line.strip() for line in result.stdout.splitlines() if line.strip()]
            if len(found) != 3:
                raise RuntimeApplyError(f"release {ref}: podman info did not name its storage: {result.stdout!r}")
            self._storage = tuple(found)
        return self._storage

    async def _confinement(self, ref: ReleaseRef) -> Confinement:
        storage = await self._podman_storage(ref)
        own = [self.settings.work_dir, self.settings.root, self.settings.runroot, self.settings.tmpdir,
               *self.settings.protected_paths]
        return Confinement(files_dir=str(self.files_dir(ref)), mounts_dir=str(self.mounts_dir(ref)),
                           protected=(*storage, *(str(p) for p in own if p is not None)))

    async def _volume_owners(self) -> dict[str, str]:
        """Every podman volume of the node and the release label it carries ("" when none)."""
        listed = await self._cli.json("volume", "ls", "--format", "json", what="list volumes") or []
        return {str(v.get("Name")): str((v.get("Labels") or {}).get(LABEL_RELEASE, "")) for v in listed
                if isinstance(v, dict) and v.get("Name")}

    async def _prepare_volumes(self, ref: ReleaseRef, plan: Plan) -> None:
        """Create every volume the plan mounts, labelled with the release, before play.

        podman would create them itself, unlabelled; made here, each carries the
        release's label, which is what removal goes by. A volume of that name
        that is not labelled as the release's is never mounted: RuntimeApplyError.
        """
        if not plan.create_volumes:
            return
        owners = await self._volume_owners()
        label = release_label(ref)
        for name in sorted(plan.create_volumes):
            owner = owners.get(name)
            if owner is None:
                await self._cli.run("volume", "create", "--label", f"{LABEL_RELEASE}={label}", name)
            elif owner != label:
                who = f"release {owner}" if owner else "something outside edgecollab (no release label)"
                raise RuntimeApplyError(f"release {ref}: podman volume {name} already exists and belongs to {who}; "
                                        "not mounted")

    def _host_pid_conf(self) -> str:
        """A containers.conf like the node's, with pidns = "host": kube play 4.3 ignores hostPID, not this.

        Blocking (file I/O): run it in a thread.
        """
        base = self.settings.containers_conf
        if base is None:
            base = next((Path(p) for p in ("/etc/containers/containers.conf", "/usr/share/containers/containers.conf")
                         if Path(p).is_file()), None)
        text = base.read_text() if base is not None else ""
        lines = [line for line in text.splitlines() if not re.match(r"\s*pidns\s*=", line)]
        if "[containers]" in (line.strip() for line in lines):
            index = next(i for i, line in enumerate(lines) if line.strip() == "[containers]")
            lines.insert(index + 1, 'pidns = "host"')
        else:
            lines += ["[containers]", 'pidns = "host"']
        path = self.settings.work_dir / ".containers-hostpid.conf"
        _write_private(path, "\n".join(lines) + "\n")
        return str(path)

    def _lock(self, ref: ReleaseRef) -> asyncio.Lock:
        return self._locks.setdefault(ref, asyncio.Lock())

    async def _read_played(self, ref: ReleaseRef) -> PlayedFile | None:
        """The played file of ``ref``, parsed (None: none on record); parsed again only when it changed.

        Raises EdgeRuntimeError when the stored file is not one this runtime wrote.
        """
        known = self._played.get(ref)
        # Reading, hashing and (when it changed) parsing up to megabytes of
        # YAML: in a thread, off the loop.
        played = await asyncio.to_thread(_load_played, self.played_file(ref), known)
        if self._played.get(ref) is known:  # else an apply or removal updated it meanwhile: keep theirs
            self._remember(ref, played)
        return played

    async def _read_played_or_empty(self, ref: ReleaseRef, fallback: str) -> PlayedFile:
        """The played file of ``ref``, or an empty one when there is none or it is damaged (logged with
        ``fallback``)."""
        try:
            played = await self._read_played(ref)
        except EdgeRuntimeError as exc:
            logger.warning("Release %s: %s; %s", ref, exc, fallback)
            played = None
        return played or PlayedFile(digest="", pods={}, volumes=frozenset())

    # -- the Runtime interface --------------------------------------------------

    async def apply(self, ref: ReleaseRef, manifests: str, node: NodeContext, *,
                    revision: int | None = None) -> ApplyResult:
        """Play ``manifests`` for ``ref`` (see the module docstring for what that means). Podman labels no
        revision: ``revision`` is not used."""
        # Parsing and dumping a large release's YAML takes a while: in a
        # thread, so the loop keeps serving MQTT and the other releases.
        plan = await self._build_plan(ref, manifests, node)
        hooks = parse_hooks(plan.hooks)
        for warning in plan.warnings:
            logger.warning("Release %s: %s", ref, warning)
        path = self.played_file(ref)
        await self._check(ref, plan)  # before a hook runs or a pod is stopped
        async with self._lock(ref):
            old = await self._read_played_or_empty(ref, "stopping its old pods without grace")
            old_pods, old_volumes = old.pods, old.volumes
            # A release this node never played is installed; one it plays is upgraded.
            stage = "install" if not old.digest and not old.pods else "upgrade"
            runner = await self._hook_runner(ref, node, manifests if hooks else "")
            ran = await runner.run(hooks, f"pre-{stage}")
            label = release_label(ref)
            try:
                existing = await self._pods()
            except EdgeRuntimeError as exc:
                raise RuntimeApplyError(f"release {ref}: {exc}") from exc.__cause__

            others = sum(1 for pod in existing if (pod.get("Labels") or {}).get(LABEL_RELEASE) not in (None, label)
                         and LABEL_HOOK not in (pod.get("Labels") or {}))
            policy = self.settings.policy
            refusal = policy.limits.refusal("podsPerNode", others + len(plan.pods),
                                            f"release {ref}: pods on the node with this release's {len(plan.pods)}",
                                            policy.path)
            if refusal:
                # Not the manifests' fault alone: it fits once other releases shrink or go.
                raise RuntimeApplyError(refusal)

            # Every pod the release runs now goes before the new file is played:
            # those it no longer has, and those --replace would recreate, which
            # podman 4.3 would kill without their grace period.
            ours: list[tuple[str, int]] = []
            for pod in existing:
                pod_name = pod.get("Name", "")
                owner = (pod.get("Labels") or {}).get(LABEL_RELEASE)
                if LABEL_HOOK in (pod.get("Labels") or {}):
                    continue  # hook pods go by their delete policies
                if pod_name in plan.pods and owner != label:
                    who = f"release {owner}" if owner else "something outside edgecollab"
                    raise RuntimeApplyError(
                        f"{plan.pods[pod_name].source}: podman pod {pod_name} already exists and "
                        f"belongs to {who}; not replaced"
                    )
                if owner == label:
                    played = old_pods.get(pod_name)
                    ours.append((pod_name, played.grace if played else 0))

            await asyncio.to_thread(_write_private, path, plan.text)  # file I/O off the loop
            # Delete hooks run at removal, from what this apply stored.
            await asyncio.to_thread(_write_hooks, self.hooks_file(ref), runner.release_data, plan.hooks)
            self._remember(ref, plan.played())  # what the file now holds, without parsing it back
            try:
                if ours:
                    gone = [name for name, _ in ours if name not in plan.pods]
                    if gone:
                        logger.info("Release %s: removing pods it no longer has: %s", ref, gone)
                    await self._remove_pods(ours)
                # Bound anew by the play: a link a pod made meanwhile is seen.
                await asyncio.to_thread(detach_all, self.mounts_dir(ref))
                # An emptyDir lives as long as its pod, and every pod was just recreated.
                empty_dirs = {v for pod in [*old_pods.values(), *plan.pods.values()] for v in pod.empty_dirs}
                if empty_dirs:
                    await self._remove_volumes(ref, empty_dirs)
                await self._play(ref, plan, checked=True)
                unused = old_volumes - plan.volumes
                if unused:
                    await self._remove_volumes(ref, unused)
            except PodmanFailed as exc:
                raise _play_failure(ref, plan, exc) from exc
            except RuntimeApplyError:
                raise
            except EdgeRuntimeError as exc:  # podman answered something unreadable
                raise RuntimeApplyError(f"release {ref}: {exc}") from exc
            ran += await runner.run(hooks, f"post-{stage}")
        logger.info("Release %s applied: %d pods, %d warnings, %d hooks run", ref, len(plan.pods),
                    len(plan.warnings), len(ran))
        return ApplyResult(warnings=tuple(plan.warnings), hooks=tuple(ran))

    async def _build_plan(self, ref: ReleaseRef, manifests: str, node: NodeContext) -> Plan:
        # Parsing and dumping a large release's YAML takes a while: in a
        # thread, so the loop keeps serving MQTT and the other releases.
        return await asyncio.to_thread(build_plan, ref, manifests, node, network=self.settings.network,
                                       files_dir=str(self.files_dir(ref)), mounts_dir=str(self.mounts_dir(ref)),
                                       policy=self.settings.policy)

    async def _check(self, ref: ReleaseRef, plan: Plan) -> None:
        """Refuse (ManifestRejected) a plan that reaches past the release's confinement (``podman_confinement``)."""
        confinement = await self._confinement(ref)
        # A YAML parse of what will be played, and realpath on the host: in a thread.
        await asyncio.to_thread(check_confinement, plan, ref, confinement, self.settings.policy)

    async def _play(self, ref: ReleaseRef, plan: Plan, *, checked: bool = False) -> None:
        """Check what ``plan`` reaches (unless the caller just did), create what it mounts, then ``kube play``
        each of its groups (host access decides the group). Nothing is created for a plan the check refuses."""
        if not checked:
            await self._check(ref, plan)
        await self._prepare_volumes(ref, plan)
        await asyncio.to_thread(_write_files, self.files_dir(ref), plan.files)  # file I/O off the loop
        if plan.subpath_mounts:
            volume_path = (await self._podman_storage(ref))[0]
            # System calls on the node's disks: in a thread.
            await asyncio.to_thread(_bind_subpaths, plan, self.mounts_dir(ref), volume_path, ref)
        for play in plan.plays:
            args = ["kube", "play", "--replace"]
            if self.settings.network and not play.host_network:
                args += ["--network", self.settings.network]
            conf = await asyncio.to_thread(self._host_pid_conf) if play.host_pid else None
            await self._cli.run(*args, "-", input=play.text, containers_conf=conf)

    async def _hook_runner(self, ref: ReleaseRef, node: NodeContext, manifests: str,
                           release_data: Sequence[dict[str, Any]] | None = None) -> HookRunner:
        """A runner for ``ref``'s hooks; they may mount the release's ConfigMaps and Secrets (from ``manifests``)."""
        if release_data is None:
            release_data = await asyncio.to_thread(_data_documents, manifests) if manifests else []

        async def remove(names: Sequence[str]) -> None:
            await self._remove_pods([(name, 0) for name in names])

        return HookRunner(self._cli, ref, build=lambda text: self._build_plan(ref, text, node),
                          play=lambda plan: self._play(ref, plan), remove_pods=remove, release_data=release_data)

    def hooks_file(self, ref: ReleaseRef) -> Path:
        """Where the hooks (and the ConfigMaps and Secrets they may mount) of ``ref``'s last apply are kept."""
        return self.settings.work_dir / ref.namespace / f"{ref.release}.hooks.yaml"

    async def remove(self, ref: ReleaseRef, node: NodeContext | None = None) -> None:
        """Run the release's pre-delete hooks, remove its pods and volumes, run post-delete hooks; idempotent."""
        path = self.played_file(ref)
        async with self._lock(ref):
            on_record = await self._read_played_or_empty(ref, "removing its pods by label")
            played = on_record.pods
            data, hook_docs = await asyncio.to_thread(_read_hooks, self.hooks_file(ref))
            hooks = parse_hooks(hook_docs)
            delete_hooks = [h for h in hooks if h.events & {"pre-delete", "post-delete"}]
            runner = None
            if delete_hooks and node is not None:
                runner = await self._hook_runner(ref, node, "", release_data=data)
                await runner.run(delete_hooks, "pre-delete")
            elif delete_hooks:
                logger.warning("Release %s: delete hooks not run: the caller gave no node context", ref)
            try:
                # The played file names what this runtime made; the label also
                # catches pods the file does not know (a lost work dir).
                labelled = await self._pods(f"label={LABEL_RELEASE}={release_label(ref)}")
                doomed = {name: pod.grace for name, pod in played.items()}
                for pod in labelled:
                    doomed.setdefault(pod.get("Name", ""), 0)
                doomed.pop("", None)
                if doomed:
                    await self._remove_pods(doomed.items())
                await asyncio.to_thread(detach_all, self.mounts_dir(ref))  # before the volumes they come from
                # Every volume labelled as the release's, whether the played
                # file names it or not; one that only the file names is not ours.
                removed = await self._remove_volumes(ref)
            except (PodmanFailed, EdgeRuntimeError) as exc:
                stderr = exc.stderr if isinstance(exc, PodmanFailed) else str(exc)
                raise RuntimeApplyError(f"release {ref}: removal failed: {stderr}") from exc
            if runner is not None:
                await runner.run(delete_hooks, "post-delete")
                # Nothing of a removed release stays, its last hooks' pods included.
                try:
                    leftovers = await self._pods(f"label={LABEL_RELEASE}={release_label(ref)}")
                    await self._remove_pods([(p.get("Name", ""), 0) for p in leftovers if p.get("Name")])
                    removed += await self._remove_volumes(ref)  # those the post-delete hooks' plays made
                except (PodmanFailed, EdgeRuntimeError) as exc:
                    stderr = exc.stderr if isinstance(exc, PodmanFailed) else str(exc)
                    raise RuntimeApplyError(f"release {ref}: removal after the post-delete hooks failed: "
                                            f"{stderr}") from exc
            await asyncio.to_thread(_forget, path, self.files_dir(ref), self.mounts_dir(ref),
                                    self.hooks_file(ref))  # file I/O off the loop
            self._remember(ref, None)
        logger.info("Release %s removed (%d pods, %d volumes)", ref, len(doomed), removed)

    async def observe(self, ref: ReleaseRef) -> Observation:
        """What runs now for ``ref``: two podman calls (pods, then their containers)."""
        on_record = await self._read_played(ref)
        expected = on_record.pods if on_record is not None else {}
        pods = [p for p in await self._pods(f"label={LABEL_RELEASE}={release_label(ref)}")
                if LABEL_HOOK not in (p.get("Labels") or {})]  # hooks are not the release's workload

        infra = {p.get("InfraId") for p in pods}
        ids = [c["Id"] for p in pods for c in p.get("Containers") or () if c.get("Id") not in infra]
        details = await self._inspect(ids) if ids else {}

        states: list[PodState] = []
        reasons: dict[str, str] = {}  # pods running but held back by a probe, and why
        found = {p.get("Name", ""): p for p in pods}
        unmounted = await self._unmounted(ref, [expected[name] for name in found if name in expected])
        for pod_name in sorted(set(expected) | set(found)):
            pod = found.get(pod_name)
            if pod is None:
                states.append(PodState(pod_name, "Missing", False, (), ""))
                continue
            played = expected.get(pod_name)
            inits = set(played.init_containers) if played else set()
            members = [
                c
                for c in pod.get("Containers") or ()
                if c.get("Id") != pod.get("InfraId") and c.get("Names") not in inits
            ]
            members.sort(key=lambda c: c.get("Names", ""))
            infos = [details.get(c["Id"]) for c in members]
            phase = str(pod.get("Status", "Unknown"))
            kept = played is not None and played.restart_policy == "Always" and not any(
                self._keeper.start_failed(str(c.get("Names", ""))) for c in members)
            containers = tuple(self._container_status(pod_name, str(c.get("Names", "")), info, kept=kept)
                               for c, info in zip(members, infos, strict=True))
            if kept and phase in _KEPT_PHASES:
                # Its containers exited: the restart keeper starts them again after their back-off, so it is
                # not dead (re-playing it would reset the back-off and restart the healthy ones).
                phase = "Waiting"
            if pod_name in unmounted:
                # Its subPath binds are gone (the node rebooted): what it shows
                # there is not the volume's data; playing it again binds them.
                phase = "Unmounted"
                reasons[pod_name] = "its subPath mounts are gone"
            if played is not None and played.job:
                phase, ready, why = _job_outcome(infos)
                if why:
                    reasons[pod_name] = why
            else:
                ready = bool(members) and all(info is not None and _is_running(info) for info in infos)
                verdicts = [self._prober.verdict(str(c.get("Names", ""))) for c in members]
                held = [why for ok, why in verdicts if not ok]
                if ready and held:
                    ready = False
                    reasons[pod_name] = held[0]
            ready = ready and pod_name not in unmounted
            starts = [
                info["State"]["StartedAt"]
                for info in infos
                if info and info.get("State", {}).get("StartedAt") not in (None, "", _ZERO_TIME)
            ]
            states.append(
                PodState(
                    name=pod_name,
                    phase=phase,
                    ready=ready,
                    container_ids=tuple(c["Id"] for c in members),
                    started_at=max(starts, key=_time_key) if starts else "",
                    containers=containers,
                )
            )

        counted = [s for s in states if s.name in expected] if on_record is not None else states
        ready_pods = sum(1 for s in counted if s.ready)
        message = ""
        if on_record is None and found:
            message = f"no played manifests on record for {ref}; counting the pods found"
        elif ready_pods < len(counted):
            lagging = ", ".join(f"{s.name} ({s.phase}{', ' + reasons[s.name] if s.name in reasons else ''})"
                                for s in counted if not s.ready)
            message = f"{len(counted) - ready_pods} of {len(counted)} pods not ready: {lagging}"
        extra = [s.name for s in states if on_record is not None and s.name not in expected]
        if extra:
            message = (message + "; " if message else "") + f"leftover pods: {', '.join(extra)}"
        return Observation(ready=ready_pods, total=len(counted), pods=tuple(states), message=message)

    def _container_status(self, pod: str, name: str, info: Mapping[str, Any] | None, *,
                          kept: bool = False) -> ContainerStatus:
        """Container ``name`` of ``pod`` as the kubelet would show it, from podman, the keeper and the probes.

        ``kept``: the restart keeper starts the pod's exited containers again, so an exited one is waiting
        out its back-off even before the keeper's next pass has noted the exit."""
        short = name.removeprefix(f"{pod}-")
        if info is None:
            return ContainerStatus(short, state="waiting", reason="ContainerCreating")
        state = info.get("State") or {}
        status = state.get("Status")
        known = self._keeper.termination(name, str(info.get("Id", "")))
        restarts = (known.restarts if known else 0) + int(info.get("RestartCount") or 0) + \
            self._prober.restarts.get(name, 0)
        finished = str(state.get("FinishedAt") or "")
        ended = bool(finished) and not finished.startswith("0001-")
        code = state.get("ExitCode")
        exit_code = known.exit_code if known and known.finished_at else (code if ended and isinstance(code, int)
                                                                         else None)
        oom = (known.oom_killed if known and known.finished_at else bool(state.get("OOMKilled"))) or \
            _killed_for_memory(info, exit_code)
        last_reason = "" if exit_code is None else "OOMKilled" if oom else "Completed" if exit_code == 0 else "Error"
        current: ContainerState
        if status == "running":
            current, reason = "running", ""
            if known is not None and known.restarts and running_seconds(state) < self._keeper.settings.initial:
                # Just started again out of a crash loop: still one until it has run a back-off's length,
                # so a crash loop reads as one state, not a flip at every restart.
                reason = "CrashLoopBackOff"
        elif status in ("exited", "stopped") and (kept or (known is not None and known.waiting)):
            current, reason = "waiting", "CrashLoopBackOff"
        elif status in ("exited", "stopped"):
            current, reason = "terminated", last_reason
        elif state.get("Error"):
            current, reason = "waiting", "CreateContainerError"
        else:
            current, reason = "waiting", "ContainerCreating"
        ready = status == "running" and _is_running(info) and self._prober.verdict(name)[0]
        return ContainerStatus(short, ready=ready, restarts=restarts, state=current, reason=reason,
                               exit_code=exit_code, last_reason=last_reason, finished_at=finished if ended else "",
                               last_log=known.last_log if known else "")

    async def _unmounted(self, ref: ReleaseRef, pods: Sequence[PlayedPod]) -> set[str]:
        """The pods among ``pods`` one of whose subPath mounts is not bound."""
        if not any(pod.mounts for pod in pods):
            return set()
        bound = await asyncio.to_thread(mount_points)  # reads /proc: off the loop
        base = self.mounts_dir(ref)
        return {pod.name for pod in pods if any(str(base / name) not in bound for name in pod.mounts)}

    async def _inspect(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``container inspect`` by ID; a container removed meanwhile is simply absent."""
        result = await self._cli.run("container", "inspect", "--format", "json", *ids, check=False)
        try:
            items = loads_json(result.stdout, "inspect containers") if result.stdout.strip() else []
        except EdgeRuntimeError:
            items = []
        if result.returncode != 0 and not items:
            if "no such" in result.stderr:
                return {}
            raise EdgeRuntimeError(f"podman could not inspect containers: {result.stderr.strip()}")
        return {item["Id"]: item for item in items or () if isinstance(item, dict) and "Id" in item}

    async def releases(self) -> set[ReleaseRef]:
        """Releases with a played file in the work dir or a labelled pod in podman."""
        found = await asyncio.to_thread(_releases_on_disk, self.settings.work_dir)  # file I/O off the loop
        for pod in await self._pods(f"label={LABEL_NAMESPACE}"):
            labels = pod.get("Labels") or {}
            namespace, release = labels.get(LABEL_NAMESPACE), labels.get(LABEL_RELEASE_NAME)
            if isinstance(namespace, str) and isinstance(release, str):
                with contextlib.suppress(ValueError):  # not a release's labels after all
                    found.add(ReleaseRef(namespace, release))
        return found

# --------------------------------------------------------------------------
# Helpers


def _job_outcome(infos: Sequence[Mapping[str, Any] | None]) -> tuple[str, bool, str]:
    """(phase, ready, why) of a Job's pod: Succeeded once every container exited 0."""
    states = [(info or {}).get("State") or {} for info in infos]
    if not states or any(state.get("Status") != "exited" for state in states):
        return "Running", False, "the Job has not completed yet"
    failed = [state.get("ExitCode") for state in states if state.get("ExitCode") != 0]
    if failed:
        return "Failed", False, f"the Job failed: exit code {failed[0]}"
    return "Succeeded", True, ""


# podman's words for a pod whose containers all or partly exited: for an Always pod the restart keeper's to
# start again, not dead.
_KEPT_PHASES = frozenset({"Exited", "Stopped", "Degraded"})


def _killed_for_memory(info: Mapping[str, Any], exit_code: int | None) -> bool:
    """Whether a container that ended with ``exit_code`` was killed for memory though podman did not say so.

    podman 4.3 on cgroups v1 (cgroupfs) leaves ``OOMKilled`` false when the
    kernel's OOM killer ends a container: a SIGKILL (137) of a container with a
    memory limit is taken for one, as the kubelet's cgroup event would say.
    """
    limit = (info.get("HostConfig") or {}).get("Memory") or 0
    return exit_code == 137 and isinstance(limit, int) and limit > 0


def _is_running(info: Mapping[str, Any]) -> bool:
    state = info.get("State") or {}
    health = (state.get("Health") or {}).get("Status") or ""
    return state.get("Status") == "running" and health != "unhealthy"


def _play_failure(ref: ReleaseRef, plan: Plan, exc: PodmanFailed) -> RuntimeApplyError:
    """A RuntimeApplyError naming the manifest object podman choked on, with the kubelet's word for it."""
    pulled = _PULL_FAILED.search(exc.stderr or "")
    if pulled:
        # No registry answered for an image the node does not hold: the kubelet's ErrImagePull.
        return RuntimeApplyError(f"image {pulled.group(1)} is not on the node and cannot be pulled: "
                                 f"{_explain_play_failure(ref, plan, exc)}", reason="ErrImagePull")
    refused = "OCI runtime attempted to invoke a command that was not found" in (exc.stderr or "") or \
        "runc create failed" in (exc.stderr or "")
    return RuntimeApplyError(_explain_play_failure(ref, plan, exc), reason="CreateContainerError" if refused else "")


# podman's words when an image is neither on the node nor pullable ("initializing source docker://IMAGE: ...").
_PULL_FAILED = re.compile(r"initializing source (?:docker://)?(\S+?):\s")


def _explain_play_failure(ref: ReleaseRef, plan: Plan, exc: PodmanFailed) -> str:
    """The message naming the manifest object podman choked on."""
    reason = last_error(exc.stderr) if exc.stderr else str(exc)
    if exc.returncode is None:
        return f"release {ref}: podman {exc.command} gave {reason}; killed"
    match = _BRINGING_UP.search(exc.stderr)
    culprit = plan.pods.get(match.group(1)) if match else None
    if culprit is None:  # podman does not always name the pod: look for its name or image
        culprit = next((p for p in plan.pods.values() if p.name in exc.stderr), None)
    if culprit is None:
        culprit = next((p for p in plan.pods.values() if any(i in exc.stderr for i in p.images)), None)
    if culprit is not None:
        return f"{culprit.source} (podman pod {culprit.name}) of release {ref}: {reason}"
    return f"release {ref}: podman {exc.command} failed: {reason}"


def _time_key(value: str) -> tuple[str, str]:
    """Sort key for podman's RFC 3339 times, whose fractions vary in length."""
    head, _, rest = value.partition(".")
    fraction = rest.rstrip("Z").split("+")[0].split("-")[0]
    return head, fraction.ljust(9, "0")


def _probe_writable(root: Path) -> tuple[str, int]:
    """("", free bytes) when ``root`` (or where podman would create it) takes a file; else (why, 0)."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"storage root {root}: {existing} is not a directory", 0
    probe = existing / f".edgecollab-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as exc:
        return f"storage root {root} is not writable: {exc.strerror or exc} ({existing})", 0
    return "", shutil.disk_usage(existing).free


def _load_played(path: Path, known: PlayedFile | None) -> PlayedFile | None:
    """The played file at ``path`` (None: none there); ``known`` when its content has not changed.

    Blocking (file I/O and maybe a YAML parse): run it in a thread.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    if not text:
        return None
    if known is not None and known.digest == played_digest(text):
        return known
    return parse_played(text, str(path))


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically, readable by the agent only (it may hold Secret data)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, text)


def _forget(path: Path, files_dir: Path, mounts_dir: Path, hooks_file: Path) -> None:
    shutil.rmtree(files_dir, ignore_errors=True)
    detach_all(mounts_dir)  # after the post-delete hooks' plays, which may have bound some again
    for stored in (path, hooks_file):
        with contextlib.suppress(FileNotFoundError):
            stored.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only when empty


def _data_documents(manifests: str) -> list[dict[str, Any]]:
    """The release's ConfigMaps and Secrets (not hooks): what its hook pods may mount."""
    return [d for d in load_yaml_all(manifests) if isinstance(d, dict) and d.get("kind") in ("ConfigMap", "Secret")
            and "helm.sh/hook" not in ((d.get("metadata") or {}).get("annotations") or {})]


def _write_hooks(path: Path, data: Sequence[dict[str, Any]], hooks: Sequence[dict[str, Any]]) -> None:
    """Keep what removal needs to run the delete hooks (mode 0600: Secrets); nothing when there are no hooks."""
    if not hooks:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    _write_private(path, dump_yaml_all([{"kind": "ReleaseData", "items": list(data)},
                                        {"kind": "ReleaseHooks", "items": list(hooks)}]))


def _read_hooks(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the release's ConfigMaps and Secrets, its hook documents) as the last apply stored them."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return [], []
    try:
        stored = {d.get("kind"): d.get("items") or [] for d in load_yaml_all(text) if isinstance(d, dict)}
    except yaml.YAMLError as exc:
        logger.warning("%s is damaged (%s); the release's delete hooks cannot run", path, exc)
        return [], []
    return list(stored.get("ReleaseData", [])), list(stored.get("ReleaseHooks", []))


def _write_files(files_dir: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    """Write the release's subPath files afresh (blocking: run it in a thread).

    The files dir is the agent's alone; files are created new (``O_EXCL``) and
    never through a link, whatever was there before.
    """
    shutil.rmtree(files_dir, ignore_errors=True)
    for relative, (content, mode) in files.items():
        target = files_dir / relative
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            os.fchmod(out.fileno(), mode & 0o777)


def _bind_subpaths(plan: Plan, mounts_dir: Path, volume_path: str, ref: ReleaseRef) -> None:
    """Bind every subPath mount of ``plan`` onto ``mounts_dir`` (see ``host_mounts``; blocking: in a thread)."""
    for name, part in plan.subpath_mounts.items():
        root = f"{volume_path}/{part.root}/_data" if part.kind == "volume" else part.root
        what = f"release {ref}: subPath {part.path!r} of {'volume' if part.kind == 'volume' else 'hostPath'} " \
               f"{part.root}"
        fd = open_beneath(root, part.path, what=what)
        try:
            bind(fd, mounts_dir / name)
        finally:
            os.close(fd)


def _releases_on_disk(work_dir: Path) -> set[ReleaseRef]:
    found: set[ReleaseRef] = set()
    if not work_dir.is_dir():
        return found
    for path in work_dir.glob("*/*.yaml"):
        with contextlib.suppress(ValueError):
            found.add(ReleaseRef(path.parent.name, path.stem))
    return found

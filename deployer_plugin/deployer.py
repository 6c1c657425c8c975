"""The deployer interface, and the edge deployer that implements it over the hub's HTTP API.

A host component deployer (one that installs Helm releases in its own cluster) loads the edge
deployer by its entry point and drives edge releases with the same five verbs it uses for its own::

    from importlib.metadata import entry_points
    (ep,) = entry_points(group="edgecollab.deployers", name="edge")
    deployer = ep.load()(hub_url, token=token)      # or ep.load()() to read EDGECOLLAB_* variables
    deployer.upgrade(document, chart_archive=archive, install=True)
    deployer.status("demo", "web")

(docs/deployer.md). :class:`Deployer` is the interface; :class:`EdgeDeployer` speaks to the hub
through ``edgeclient.hub.HubClient``, as ``edgectl`` does: it applies the component document (and,
for a local chart, its packaged archive), rolls back, deletes, and reads the component and its
history. Everything here is synchronous (urllib); an async host runs it in a thread.

Errors are :class:`DeployerError` and its subclasses: ``ReleaseNotFound`` (404, or an upgrade of a
release that is not there), ``ReleaseExists`` (an install of one that is), ``SpecRejected`` (the hub
refused the spec or chart, 422; the message names the field), ``HubUnavailable`` (nothing answered).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from edgeclient.hub import HubClient
from edgeclient.settings import CA_FILE_ENV, DEFAULT_HUB, HUB_ENV, TokenFileError, operator_token_from
from edgekit.http import REQUEST_TIMEOUT_SECONDS, HttpError, Unreachable

# The entry point group host deployers load deployers from, and the name this package registers.
ENTRY_POINT_GROUP = "edgecollab.deployers"
ENTRY_POINT_NAME = "edge"
_Answer = TypeVar("_Answer")


class DeployerError(Exception):
    """A deployer could not do what was asked; ``status`` is the hub's HTTP status (0: none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ReleaseNotFound(DeployerError):
    """No such release (component) on the hub."""


class ReleaseExists(DeployerError):
    """An install of a release that is already there (use upgrade)."""


class SpecRejected(DeployerError):
    """The hub refused the component: a spec or chart that does not validate or render."""


class HubUnavailable(DeployerError):
    """Nothing answered: the hub is down, unreachable, or did not answer in time."""


@dataclass(frozen=True, slots=True)
class DeployOutcome:
    """What an install, upgrade or rollback did. ``changed`` is False when the hub already had it."""

    component: str  # namespace/name
    revision: int
    changed: bool
    targets: int = 0
    warnings: tuple[str, ...] = ()
    notes: str = ""
    rolled_back_to: int = 0


@dataclass(frozen=True, slots=True)
class RolloutCounts:
    """A revision's rollout over target nodes, counted as the hub's summaries count it."""

    desired: int = 0
    updated: int = 0  # running the revision
    ready: int = 0  # running it, Deployed, and online
    failed: int = 0
    offline: int = 0

    @property
    def state(self) -> str:
        """``complete``, ``failing``, ``waiting for offline nodes``, ``progressing`` or ``no targets``."""
        if self.desired == 0:
            return "no targets"
        if self.ready == self.desired:
            return "complete"
        if self.failed:
            return "failing"
        if self.offline and self.ready + self.offline == self.desired:
            return "waiting for offline nodes"
        return "progressing"

    def to_dict(self) -> dict[str, int]:
        return {"desired": self.desired, "updated": self.updated, "ready": self.ready, "failed": self.failed,
                "offline": self.offline}


@dataclass(frozen=True, slots=True)
class ReleaseStatus:
    """A release as the hub reports it: its latest revision and how far that has rolled out."""

    namespace: str
    name: str
    revision: int  # the hub's latest revision
    current_revision: int  # the revision every target has reached (the latest when there are no targets)
    chart_name: str = ""
    chart_version: str = ""
    counts: RolloutCounts = field(default_factory=RolloutCounts)
    pools: Mapping[str, RolloutCounts] = field(default_factory=dict)
    origin: str = ""  # what made the latest revision: "apply", "apply by CLIENT", "rollback to N"
    rolled_back_to: int = 0  # the latest revision is a rollback to this one (0: it is not)

    @property
    def rollout(self) -> str:
        return self.counts.state


def _count(rows: list[Mapping[str, Any]], revision: int) -> RolloutCounts:
    def updated(r: Mapping[str, Any]) -> bool:
        return r.get("applied_revision") == revision

    return RolloutCounts(
        desired=len(rows),
        updated=sum(1 for r in rows if updated(r)),
        ready=sum(1 for r in rows if updated(r) and r.get("phase") == "Deployed" and not r.get("stale")),
        failed=sum(1 for r in rows if r.get("phase") == "Failed"),
        offline=sum(1 for r in rows if r.get("presence") != "online"),
    )


def release_status_from(view: Mapping[str, Any], history: Sequence[Mapping[str, Any]] | None = None) -> ReleaseStatus:
    """A :class:`ReleaseStatus` from the hub's component view (``GET /api/v1/components/NS/NAME``, its
    ``nodes`` rows) and history (``GET .../history``, newest first; for the origin). Pure."""
    revision = int(view["revision"])
    rows = [r for r in view.get("nodes", []) if isinstance(r, Mapping)]
    pools: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        pools.setdefault(str(r.get("pool", "")), []).append(r)
    current = next((h for h in history or [] if h.get("current")), None)
    origin = str(current.get("origin", "")) if current else ""
    rolled_back_to = 0
    if origin.startswith("rollback to "):
        try:
            rolled_back_to = int(origin.removeprefix("rollback to "))
        except ValueError:
            rolled_back_to = 0
    chart = view.get("chart") or {}
    return ReleaseStatus(
        namespace=str(view["namespace"]), name=str(view["name"]), revision=revision,
        current_revision=min((int(r.get("applied_revision") or 0) for r in rows), default=revision),
        chart_name=str(chart.get("name", "")), chart_version=str(chart.get("version", "")),
        counts=_count(rows, revision), pools={p: _count(rs, revision) for p, rs in sorted(pools.items())},
        origin=origin, rolled_back_to=rolled_back_to,
    )


def is_local_chart(chart: Any) -> bool:
    """Whether ``spec.chart`` names a local chart (a path, or ``{path: ...}``), which travels as an archive;
    a chart repository entry or an OCI reference is fetched by the hub instead."""
    if isinstance(chart, str):
        return "://" not in chart
    return isinstance(chart, Mapping) and "path" in chart


class Deployer(abc.ABC):
    """What a component deployer does with a release, in Helm's verbs.

    ``document`` is a Component spec as a mapping (``deployer_plugin.spec``); ``chart_archive`` the
    packaged chart when ``spec.chart`` names a local one (``load_component_file`` packages it).
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def install(self, document: Mapping[str, Any], *, chart_archive: bytes | None = None) -> DeployOutcome:
        """Install a release that is not there yet (ReleaseExists otherwise)."""

    @abc.abstractmethod
    def upgrade(self, document: Mapping[str, Any], *, chart_archive: bytes | None = None,
                install: bool = False) -> DeployOutcome:
        """Upgrade a release to this spec (a new revision unless nothing changed); with ``install``,
        install it when it is not there (``helm upgrade --install``), else ReleaseNotFound."""

    @abc.abstractmethod
    def rollback(self, namespace: str, name: str, *, to_revision: int | None = None) -> DeployOutcome:
        """A new revision from an earlier one (default: the one before the latest)."""

    @abc.abstractmethod
    def uninstall(self, namespace: str, name: str) -> int:
        """Remove the release everywhere; returns the revision that records the removal."""

    @abc.abstractmethod
    def status(self, namespace: str, name: str) -> ReleaseStatus | None:
        """The release as it stands, or None when there is none."""


class EdgeDeployer(Deployer):
    """Deploys to edge nodes through an edgecollab hub.

    ``hub_url``, ``token`` and ``ca_file`` default to ``EDGECOLLAB_HUB``, ``EDGECOLLAB_TOKEN`` (or the
    file ``EDGECOLLAB_TOKEN_FILE`` names) and ``EDGECOLLAB_CA_FILE`` in ``environ`` (default
    ``os.environ``). ``client_name`` is what the hub's history says made a revision (``apply by NAME``).
    """

    name: ClassVar[str] = ENTRY_POINT_NAME

    def __init__(self, hub_url: str | None = None, *, token: str | None = None, ca_file: str | os.PathLike[str] |
                 None = None, client_name: str = "edgecollab-deployer", timeout: float | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.hub_url = hub_url or env.get(HUB_ENV) or DEFAULT_HUB
        if token is None:
            try:
                token, _ = operator_token_from(env)
            except TokenFileError as exc:
                raise DeployerError(str(exc)) from exc
        ca = ca_file if ca_file is not None else env.get(CA_FILE_ENV) or None
        self.client_name = client_name
        self._hub = HubClient.at(self.hub_url, token=token, ca_file=Path(ca).expanduser() if ca else None,
                                 timeout=REQUEST_TIMEOUT_SECONDS if timeout is None else timeout)

    # -- the verbs

    def install(self, document: Mapping[str, Any], *, chart_archive: bytes | None = None) -> DeployOutcome:
        namespace, name = _key(document)
        if self.status(namespace, name) is not None:
            raise ReleaseExists(f"component {namespace}/{name} is already installed; upgrade it instead", 409)
        return self._apply(document, chart_archive)

    def upgrade(self, document: Mapping[str, Any], *, chart_archive: bytes | None = None,
                install: bool = False) -> DeployOutcome:
        namespace, name = _key(document)
        if not install and self.status(namespace, name) is None:
            raise ReleaseNotFound(f"component {namespace}/{name} is not installed; install it first", 404)
        return self._apply(document, chart_archive)

    def rollback(self, namespace: str, name: str, *, to_revision: int | None = None) -> DeployOutcome:
        return _outcome(self._call(self._hub.rollback, namespace, name, to_revision=to_revision))

    def uninstall(self, namespace: str, name: str) -> int:
        return int(self._call(self._hub.delete_component, namespace, name)["revision"])

    def status(self, namespace: str, name: str) -> ReleaseStatus | None:
        try:
            view = self._call(self._hub.component, namespace, name)
            history = self._call(self._hub.history, namespace, name)
        except ReleaseNotFound:
            return None
        return release_status_from(view, history)

    # -- the wire

    def _apply(self, document: Mapping[str, Any], chart_archive: bytes | None) -> DeployOutcome:
        chart = (document.get("spec") or {}).get("chart") if isinstance(document.get("spec"), Mapping) else None
        if chart_archive is None and is_local_chart(chart):
            raise SpecRejected("spec.chart names a local chart: pass its packaged archive as chart_archive "
                               "(deployer_plugin.load_component_file packages it)")
        # EXTENSION POINT (chart repositories): without chart_archive the hub fetches a repository or OCI
        # chart itself (the chartrepo work); a hub without that answers that chart_archive is required.
        return _outcome(self._call(self._hub.apply, document, client=self.client_name, chart_archive=chart_archive))

    def _call(self, request: Callable[..., _Answer], *args: Any, **kwargs: Any) -> _Answer:
        """``request`` of the hub client, its errors as DeployerErrors."""
        try:
            return request(*args, **kwargs)
        except Unreachable as exc:
            raise HubUnavailable(str(exc)) from exc
        except HttpError as exc:
            kind = {404: ReleaseNotFound, 422: SpecRejected}.get(exc.status, DeployerError)
            raise kind(str(exc), exc.status) from exc


def _key(document: Mapping[str, Any]) -> tuple[str, str]:
    metadata = document.get("metadata")
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str):
        raise SpecRejected("metadata.name: required: the component name, which is also the Helm release name")
    return str(metadata.get("namespace") or "default"), metadata["name"]


def _outcome(answer: Mapping[str, Any]) -> DeployOutcome:
    return DeployOutcome(
        component=str(answer["component"]), revision=int(answer["revision"]), changed=bool(answer["changed"]),
        targets=int(answer.get("targets", 0)),
        warnings=tuple(answer.get("warnings", ())), notes=str(answer.get("notes", "")),
        rolled_back_to=int(answer.get("rolled_back_to", 0)),
    )

"""Rendering a component into manifest bundles with the real Helm engine.

A component renders once per *render key*, not once per node: ``""`` for the
base values, plus one key per pool that has ``poolValues``. Every node of a
pool without overrides shares the base render (see
:func:`deployer_plugin.placement.place`).

Install or upgrade
    Revision 1 renders as ``helm install`` does (``.Release.IsInstall`` true).
    A later revision of a live component renders as ``helm upgrade``:
    ``.Release.IsUpgrade`` true, ``.Release.IsInstall`` false, and
    ``.Release.Revision`` the revision. Renders are made per revision and
    key, not per node, so a node that joins at revision 3 still gets
    revision 3's *upgrade* render although it never held revisions 1 and 2.
    The hub renders an apply after a delete as an install again (Helm's
    uninstall, then install), at the next revision number.

What Helm refuses is refused here, before anything is stored
    A dependency declared in Chart.yaml but missing from ``charts/``, and a
    ``kubeVersion`` the engine's Kubernetes does not satisfy
    (:func:`~deployer_plugin.charts.check_installable`: ``ChartRefused``);
    values that break ``values.schema.json``, a template that fails
    (NOTES.txt included), and a rendered document that is not a mapping
    with ``apiVersion`` and ``kind`` (``RenderError``).

Generated values are kept across revisions
    Rendering is offline, so ``lookup`` finds nothing, and a chart that
    generates a password with ``randAlphaNum`` unless ``lookup`` finds the
    Secret it made at install (bitnami's ``common.secrets`` pattern) would
    generate a new one at every revision. So each key renders twice with
    the same values: every scalar that differs between the two renders was
    generated (random or time-based). It takes the value at the same path
    of the same document (same kind and name, else the same place in the
    same template) in the previous revision's render of the same key, when
    there is one there, else the first render's. A value the user changes
    is not generated, so it changes as usual. Limits: every generated value
    is pinned, including one a chart means to be fresh at each upgrade (a
    ``rollme: {{ randAlphaNum 5 }}`` annotation that forces a rollout);
    and a value computed from a generated one (a ``checksum/secret``
    annotation over a Secret holding a generated password) is pinned as a
    whole, so it no longer follows changes to the rest of that Secret, as it
    would on a cluster where ``lookup`` works. Documents holding generated
    values are written back as YAML (same content, our formatting).

Bundle contents and order
    One multi-document YAML, each document under the ``# Source:`` comment
    Helm prints. Documents come in Helm's install order (``InstallOrder``,
    by kind; unknown kinds last, alphabetically; template path, then order
    within the template, among equals). Helm hooks follow, annotations
    intact, in the order Helm runs them (weight, then name, then kind), for
    the node to run. The chart's ``crds/`` files (its subcharts' too) are
    documents like the templates' (not templated, as in Helm), in every
    revision: Helm installs them only at install, but a node may join at
    any revision. Left out: NOTES.txt (returned apart as
    :attr:`RenderedRelease.notes`), partials, empty output, hooks whose
    only events are ``test`` (edge nodes do not run ``helm test``), and
    hooks naming no Helm event (Helm skips those too); the last two are
    counted in :attr:`RenderedRelease.warnings`.

:func:`render_release` blocks on the Helm engine, and a chart is code: a
template may loop for minutes or print gigabytes. The hub runs it in a worker
process it kills past a time bound (``edgehub.renderer``), with
``max_output_bytes`` bounding what Helm may print; everything it takes and
returns pickles, and its errors cross a process boundary by
:func:`portable_error` and :func:`rebuilt_error`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from helm_python import HelmError, HelmValuesError

from edgeprotocol.messages import Bundle

from .charts import check_installable, open_chart
from .errors import ChartError, ChartRefused, RenderError, SpecError
from .merge import deep_merge
from .spec import Component

logger = logging.getLogger(__name__)

BASE_KEY = ""
HOOK_ANNOTATION = "helm.sh/hook"
HOOK_WEIGHT_ANNOTATION = "helm.sh/hook-weight"
# The events helm.sh/hook may name (Helm's release.HookEvent; test-success is
# Helm's old name for test, test-failure Helm 2's).
HOOK_EVENTS = frozenset({
    "pre-install", "post-install", "pre-delete", "post-delete", "pre-upgrade", "post-upgrade",
    "pre-rollback", "post-rollback", "test", "test-success", "test-failure",
})
TEST_HOOK_EVENTS = frozenset({"test", "test-success", "test-failure"})
# Helm's InstallOrder (helm.sh/helm/v4/pkg/release/v1/util/kind_sorter.go).
INSTALL_ORDER: tuple[str, ...] = (
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
    "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole", "ClusterRoleList",
    "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList",
    "Service", "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
)
_KIND_RANK = {kind: rank for rank, kind in enumerate(INSTALL_ORDER)}

_DOCUMENT_SEPARATOR = re.compile(r"^---[ \t]*(?:#.*)?$", re.MULTILINE)
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")
_SOURCE_LINE = re.compile(r"^# Source: (.+)$", re.MULTILINE)
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_MISSING = object()


class _ManifestLoader(yaml.SafeLoader):
    """Safe YAML that keeps dates as text: a document written back must say what Helm rendered."""


_ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True, slots=True)
class RenderedRelease:
    """One revision of a component, rendered: a bundle per render key, the chart's notes, and what was left out."""

    bundles: dict[str, Bundle]
    # The chart's NOTES.txt rendered with the base values; "" when it has none.
    notes: str = ""
    warnings: tuple[str, ...] = ()


def render_keys(component: Component) -> tuple[str, ...]:
    """Every key :func:`render_component` renders: ``""`` then the pools with overrides, sorted."""
    return (BASE_KEY, *sorted(component.edge.pool_values))


def render_key_for(component: Component, pool: str) -> str:
    """The render a node of ``pool`` gets: the pool's own if it has poolValues, else the base one."""
    return pool if pool in component.edge.pool_values else BASE_KEY


def values_for(component: Component, key: str) -> dict[str, Any]:
    """The values a render key renders with: spec.values, deep-merged with the pool's overrides."""
    if key == BASE_KEY:
        return deep_merge(component.values, {})
    return deep_merge(component.values, component.edge.pool_values[key])


def render_component(component: Component, archive: bytes, *, revision: int) -> dict[str, Bundle]:
    """The bundles of :func:`render_release` alone, with no previous revision to keep generated values from."""
    return render_release(component, archive, revision=revision).bundles


def render_release(
    component: Component,
    archive: bytes,
    *,
    revision: int,
    previous: Mapping[str, Bundle] | None = None,
    upgrade: bool | None = None,
    max_output_bytes: int | None = None,
) -> RenderedRelease:
    """Render ``component`` with its chart archive at ``revision``, once per render key.

    Release name = component name, namespace = component namespace.
    ``upgrade`` (default: ``revision > 1``) renders as ``helm upgrade``
    instead of ``helm install``. ``previous`` holds the previous revision's
    bundles by render key, from which generated values are kept (see the
    module docstring). ``max_output_bytes`` bounds Helm's output of every
    render key together, checked as each render returns and before it is
    parsed (each key renders twice; the second render, only compared, is
    bounded alone). Blocks on the Helm engine.

    Raises:
        ChartError: if ``archive`` is not a chart.
        ChartRefused: if Helm would refuse to install the chart (a missing
            dependency, an unmet kubeVersion).
        RenderError: if values break the schema, a template fails, or a
            template renders something that is not a Kubernetes object, or
            Helm's output is over ``max_output_bytes``.
    """
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        raise ValueError(f"revision must be an integer of at least 1, not {revision!r}")
    upgrade = revision > 1 if upgrade is None else upgrade
    if upgrade and revision == 1:
        raise ValueError("revision 1 is always an install, never an upgrade")
    with open_chart(archive) as chart:
        check_installable(chart)
        notes_path = f"{chart.name}/templates/NOTES.txt"
    previous = previous or {}
    bundles: dict[str, Bundle] = {}
    notes = ""
    left_out: dict[str, _LeftOut] = {}
    output = 0
    for key in render_keys(component):
        where = {"component": f"{component.namespace}/{component.name}", "pool": key}
        values = values_for(component, key)
        first = _render(archive, values, component, revision=revision, upgrade=upgrade, where=where, validate=True)
        output += _check_output(first, where, already=output, bound=max_output_bytes)
        second = _render(archive, values, component, revision=revision, upgrade=upgrade, where=where, validate=False)
        _check_output(second, where, already=0, bound=max_output_bytes)
        documents = _parse(first, where)
        _keep_generated(documents, _parse(second, where), _PreviousRender(previous.get(key)))
        text, left_out[key] = _assemble(documents, where)
        bundles[key] = Bundle.of(text)
        if key == BASE_KEY:
            notes = first.get(notes_path, "")
    return RenderedRelease(bundles=bundles, notes=notes, warnings=_warnings(left_out))


def _render(
    archive: bytes, values: dict[str, Any], component: Component, *, revision: int, upgrade: bool,
    where: dict[str, str], validate: bool,
) -> dict[str, str]:
    # A fresh chart for every render: rendering removes from the loaded chart
    # the subcharts its values disable, which a pool's values may enable.
    with open_chart(archive) as chart:
        if validate:
            try:
                chart.validate_schema(values)
            except HelmError as exc:
                raise RenderError(**where, detail=str(exc),
                                  what="values do not match the chart's values.schema.json") from exc
        try:
            rendered = chart.render(
                values, name=component.name, namespace=component.namespace, revision=revision,
                is_install=not upgrade, is_upgrade=upgrade,
            )
            # After the render, which drops the subcharts the values disable, as Helm's install does.
            crds = chart.crds
        except HelmValuesError as exc:
            raise RenderError(**where, detail=str(exc), what="Helm refused the values") from exc
        except HelmError as exc:
            raise RenderError(**where, detail=str(exc), what="template error") from exc
    # Every revision carries them, not only an install as with Helm: a node joining at revision 3 has
    # never seen revision 1, and its custom resources need their definitions.
    return {**{crd["filename"]: crd["data"] for crd in crds}, **rendered}


def _check_output(rendered: Mapping[str, str], where: dict[str, str], *, already: int, bound: int | None) -> int:
    """The bytes Helm printed; RenderError when they and ``already`` are over ``bound``."""
    size = sum(len(text.encode()) for text in rendered.values())
    if bound is not None and already + size > bound:
        raise RenderError(**where, what="the rendered output is over the bound",
                          detail=f"Helm printed {already + size} bytes; the bound is {bound} bytes "
                                 f"({bound / (1024 * 1024):.0f} MiB)")
    return size


def portable_error(exc: SpecError) -> tuple[str, tuple[object, ...], dict[str, object]]:
    """``exc`` as plain data that pickles (its class name, args and attributes): SpecError's subclasses
    take keyword arguments, which the default pickling of exceptions cannot pass back."""
    return type(exc).__name__, exc.args, dict(vars(exc))


_PORTABLE_ERRORS: dict[str, type[SpecError]] = {
    cls.__name__: cls for cls in (SpecError, ChartError, ChartRefused, RenderError)
}


def rebuilt_error(name: str, args: tuple[object, ...], attributes: dict[str, object]) -> SpecError:
    """The error :func:`portable_error` took apart, of the same class, message and attributes."""
    cls = _PORTABLE_ERRORS.get(name, SpecError)
    exc = cls.__new__(cls)
    exc.args = args
    vars(exc).update(attributes)
    return exc


def join_manifests(rendered: Mapping[str, str], *, component: str = "", pool: str = "") -> str:
    """Join Helm's ``{template path: text}`` output into one multi-document YAML bundle.

    The documents, their order and what is left out are as the module
    docstring says under "Bundle contents and order".

    Raises:
        RenderError: if a template renders invalid YAML, a document that is
            not a mapping, or one without ``apiVersion`` or ``kind`` (it could
            never be applied).
    """
    where = {"component": component, "pool": pool}
    text, _ = _assemble(_parse(rendered, where), where)
    return text


# --------------------------------------------------------------------------- documents


@dataclass(slots=True)
class _Document:
    source: str  # the template path, for the "# Source:" comment
    ordinal: int  # its place among the documents of its template
    text: str  # as Helm rendered it, or as written back after keeping generated values
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        kind = self.body.get("kind")
        return kind if isinstance(kind, str) else ""

    @property
    def metadata(self) -> dict[str, Any]:
        metadata = self.body.get("metadata")
        return metadata if isinstance(metadata, dict) else {}

    @property
    def annotations(self) -> dict[str, Any]:
        annotations = self.metadata.get("annotations")
        return annotations if isinstance(annotations, dict) else {}

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.kind, str(self.metadata.get("namespace") or ""), str(self.metadata.get("name") or ""))


@dataclass(slots=True)
class _LeftOut:
    tests: int = 0
    unknown_hooks: int = 0
    sources: list[str] = field(default_factory=list)


def _is_skipped_template(path: str) -> bool:
    base = path.rsplit("/", 1)[-1]
    return base.endswith("NOTES.txt") or base.startswith("_")


def _parse(rendered: Mapping[str, str], where: dict[str, str]) -> list[_Document]:
    """The documents of Helm's output, in template path order, then in order within a template."""
    documents: list[_Document] = []
    for path in sorted(rendered):
        if _is_skipped_template(path):
            continue
        ordinal = 0
        for text in _DOCUMENT_SEPARATOR.split(rendered[path]):
            if not text.strip():
                continue
            try:
                body = yaml.load(text, Loader=_ManifestLoader)  # noqa: S506 - a SafeLoader
            except yaml.YAMLError as exc:
                raise RenderError(**where, detail=str(exc), what=f"{path} rendered invalid YAML") from exc
            if body is None:  # only comments
                continue
            if not isinstance(body, dict):
                raise RenderError(
                    **where, detail=text.strip()[:200],
                    what=f"{path} rendered a document that is not a Kubernetes object"
                )
            documents.append(_Document(path, ordinal, _LEADING_BLANK_LINES.sub("", text).rstrip(), body))
            ordinal += 1
    return documents


def _hook_events(document: _Document) -> list[str] | None:
    hook = document.annotations.get(HOOK_ANNOTATION)
    if hook is None:
        return None
    return [event.strip().lower() for event in str(hook).split(",")]


def _kind_key(document: _Document) -> tuple[int, str]:
    rank = _KIND_RANK.get(document.kind)
    return (rank, "") if rank is not None else (len(INSTALL_ORDER), document.kind)


def _hook_weight(document: _Document) -> int:
    weight = str(document.annotations.get(HOOK_WEIGHT_ANNOTATION, "0"))
    return int(weight) if _INTEGER.match(weight) else 0  # Helm: a weight that is not an integer is 0


def _assemble(documents: list[_Document], where: dict[str, str]) -> tuple[str, _LeftOut]:
    manifests: list[_Document] = []
    hooks: list[_Document] = []
    left_out = _LeftOut()
    for document in documents:
        events = _hook_events(document)
        if events is not None and all(event in TEST_HOOK_EVENTS for event in events):
            left_out.tests += 1
            continue
        if events is not None and not all(event in HOOK_EVENTS for event in events):
            left_out.unknown_hooks += 1
            left_out.sources.append(document.source)
            continue
        missing = [name for name in ("apiVersion", "kind") if not isinstance(document.body.get(name), str)
                   or not document.body[name]]
        if missing:
            raise RenderError(
                **where, detail=document.text[:200],
                what=f"{document.source} rendered a document without {' or '.join(missing)}, "
                     "which Kubernetes needs to apply it",
            )
        (manifests if events is None else hooks).append(document)
    manifests.sort(key=_kind_key)
    hooks.sort(key=_kind_key)
    hooks.sort(key=lambda d: (_hook_weight(d), str(d.metadata.get("name") or "")))
    if left_out.tests or left_out.unknown_hooks:
        logger.info(
            "Left %d test hook(s) and %d hook(s) with unknown events out of %s%s",
            left_out.tests, left_out.unknown_hooks, where["component"] or "a render",
            f" (pool {where['pool']})" if where["pool"] else "",
        )
    text = "".join(f"---\n# Source: {d.source}\n{d.text}\n" for d in (*manifests, *hooks))
    return text, left_out


def _warnings(left_out: dict[str, _LeftOut]) -> tuple[str, ...]:
    warnings: list[str] = []
    base = left_out[BASE_KEY]
    for key, counts in left_out.items():
        of = "" if key == BASE_KEY else f" of pool {key!r}"
        if counts.tests and (key == BASE_KEY or counts.tests != base.tests):
            warnings.append(f"left out {counts.tests} Helm test hook document(s){of}: edge nodes do not run "
                            "'helm test'")
        if counts.unknown_hooks and (key == BASE_KEY or counts.unknown_hooks != base.unknown_hooks):
            warnings.append(f"left out {counts.unknown_hooks} document(s){of} whose helm.sh/hook names no Helm "
                            f"hook event, as Helm does ({', '.join(sorted(set(counts.sources)))})")
    return tuple(warnings)


# --------------------------------------------------------------------------- generated values

_LeafPath = tuple[Any, ...]


def _differing_leaves(first: Any, second: Any, path: _LeafPath = ()) -> Iterator[_LeafPath]:
    """Paths of the scalars that differ between two renders of the same document."""
    if isinstance(first, dict) and isinstance(second, dict):
        for key, value in first.items():
            if key in second:
                yield from _differing_leaves(value, second[key], (*path, key))
    elif isinstance(first, list) and isinstance(second, list):
        for index, (a, b) in enumerate(zip(first, second, strict=False)):
            yield from _differing_leaves(a, b, (*path, index))
    elif not isinstance(first, (dict, list)) and not isinstance(second, (dict, list)) and (
            first != second or type(first) is not type(second)):
        yield path
    # A dict in one render and something else in the other: the chart branched; keep the first.


def _get(value: Any, path: _LeafPath) -> Any:
    for step in path:
        in_dict = isinstance(value, dict) and step in value
        in_list = isinstance(value, list) and isinstance(step, int) and 0 <= step < len(value)
        if in_dict or in_list:
            value = value[step]
        else:
            return _MISSING
    return value


def _set(value: Any, path: _LeafPath, new: Any) -> None:
    for step in path[:-1]:
        value = value[step]
    value[path[-1]] = new


class _PreviousRender:
    """The previous revision's render of one key, its documents found by kind and name, or by place."""

    def __init__(self, bundle: Bundle | None) -> None:
        self._by_identity: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._by_place: dict[tuple[str, str, int], dict[str, Any]] = {}
        if bundle is None:
            return
        counts: dict[tuple[str, str], int] = {}
        for text in _DOCUMENT_SEPARATOR.split(bundle.manifests):
            source = _SOURCE_LINE.search(text)
            try:
                body = yaml.load(text, Loader=_ManifestLoader)  # noqa: S506 - a SafeLoader
            except yaml.YAMLError:  # stored by an older hub; nothing to keep from it
                continue
            if not isinstance(body, dict) or source is None:
                continue
            document = _Document(source.group(1), 0, text, body)
            place = (document.source, document.kind)
            self._by_identity.setdefault(document.identity, body)
            self._by_place[(*place, counts.get(place, 0))] = body
            counts[place] = counts.get(place, 0) + 1

    def find(self, document: _Document, ordinal_of_kind: int) -> dict[str, Any] | None:
        found = self._by_identity.get(document.identity)
        if found is None:
            found = self._by_place.get((document.source, document.kind, ordinal_of_kind))
        return found


def _keep_generated(documents: list[_Document], second: list[_Document], previous: _PreviousRender) -> None:
    """Give every generated scalar of ``documents`` its previous revision's value, in place."""
    others = {(d.source, d.ordinal): d for d in second}
    counts: dict[tuple[str, str], int] = {}
    for document in documents:
        place = (document.source, document.kind)
        ordinal_of_kind = counts.get(place, 0)
        counts[place] = ordinal_of_kind + 1
        other = others.get((document.source, document.ordinal))
        paths = list(_differing_leaves(document.body, other.body)) if other is not None else []
        if not paths:
            continue
        before = previous.find(document, ordinal_of_kind)
        for path in paths:
            kept = _get(before, path) if before is not None else _MISSING
            if kept is not _MISSING and not isinstance(kept, (dict, list)):
                _set(document.body, path, kept)
        # Written back even with nothing kept (revision 1), so the text of a
        # document with generated values is the same from one revision to the next.
        document.text = yaml.safe_dump(document.body, sort_keys=False, allow_unicode=True, width=1 << 20).rstrip()

"""Validating a Component document: :func:`parse_component` and :func:`parse_rollout_policy`.

:func:`parse_component` reports *every* problem it finds in one :class:`SpecError`, one line per
problem, each starting with the path of the field at fault. Unknown fields are refused everywhere
(with a "did you mean" suggestion), except the standard Kubernetes object metadata (labels, uid,
resourceVersion, ...) and a top-level ``status``, which a Component read back from the Kubernetes
API carries and which are ignored.

A chart URL may carry no credentials: the spec is stored and shown, so they would leak (public
repositories and anonymous registry pulls only).

The Component CRD (``charts/edgehub/crds/components.edgecollab.io.yaml``) states the same rules for
the API server; ``tests/deployer/test_crd_schema.py`` holds the two in step (docs/deployer.md).
"""

from __future__ import annotations

import difflib
import json
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from edgeprotocol.topics import check_name

from ..errors import SpecError
from ..versions import constraint_problem
from .model import (
    API_VERSION,
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_MIN_READY_TIME,
    DEFAULT_NAMESPACE,
    DEFAULT_READY_WITHIN,
    KIND,
    MAX_HISTORY_LIMIT,
    OFFLINE_NODES,
    ON_FAILURE,
    OPERATORS,
    POOL_LABEL,
    Batch,
    ChartRef,
    Component,
    EdgeTarget,
    LabelSelector,
    OciChart,
    RepoChart,
    RolloutPolicy,
    SelectorRequirement,
)

# Helm refuses release names longer than this (they must fit in label values
# with a suffix); the component name is the release name.
MAX_RELEASE_NAME = 53

_TOP_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
_METADATA_FIELDS = ("name", "namespace")
# Standard Kubernetes ObjectMeta fields: accepted so a Component custom
# resource read from the API server parses, and ignored.
_KUBE_METADATA_FIELDS = (
    "annotations",
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generateName",
    "generation",
    "labels",
    "managedFields",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
)
_SPEC_FIELDS = ("chart", "values", "edge", "historyLimit", "clusterScoped")
_CHART_FIELDS = ("path", "repo", "name", "version", "oci")
_REPO_CHART_FIELDS = ("repo", "name", "version")
_OCI_CHART_FIELDS = ("oci", "version")
_EDGE_FIELDS = ("nodePools", "nodeSelector", "poolValues", "rollout")
_ROLLOUT_FIELDS = ("batches", "healthGate", "maxFailures", "onFailure", "offlineNodes")
_BATCH_FIELDS = ("pools", "percent", "count")
_GATE_FIELDS = ("readyWithin", "minReadyTime")
MAX_BATCHES = 100
# Durations: a number of seconds, or a string of Go-style parts ("90s", "2m", "1h30m", "500ms").
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION = 7 * 24 * 3600.0
_SELECTOR_FIELDS = ("matchLabels", "matchExpressions")
_EXPRESSION_FIELDS = ("key", "operator", "values")

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
# A chart name as Helm allows it in a repository (and as an OCI repository's last path segment).
_CHART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
# An OCI tag (the distribution spec's grammar); Helm writes a version's "+" as "_" in a tag.
_OCI_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}$")
# An OCI repository path: lower-case components separated by "/" (the distribution spec's grammar).
_OCI_PATH = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
MAX_CHART_URL = 2048


class _Problems:
    """Collects problems, each as ``path: message``, in the order found."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}" if path else message)


def _join(path: str, key: str) -> str:
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def kind_of(value: Any) -> str:
    """How a message names the type of a document value: "a string", "a mapping", "null", ..."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def _suggest(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if not close:  # catch pure case slips such as "nodepools" too
        close = [name for name in allowed if name.lower() == key.lower()]
    return f" (did you mean {close[0]}?)" if close else ""


def _check_fields(
    doc: Mapping[Any, Any], path: str, allowed: tuple[str, ...], problems: _Problems, *, ignored: tuple[str, ...] = (),
    misplaced: tuple[str, ...] = (), misplaced_why: str = "",
) -> None:
    """Report field names that are not strings, and fields neither ``allowed`` nor ``ignored``: a field of
    another form (``misplaced``) says ``misplaced_why``, any other is unknown (with a suggestion)."""
    for key in doc:
        if not isinstance(key, str):
            problems.add(path, f"field name {key!r} is not a string")
        elif key in misplaced:
            problems.add(_join(path, key), misplaced_why)
        elif key not in allowed and key not in ignored:
            problems.add(_join(path, key), f"unknown field{_suggest(key, allowed)}")


def _mapping(doc: Mapping[str, Any], key: str, path: str, problems: _Problems, *,
             required: str = "") -> Mapping[str, Any] | None:
    """The mapping at ``doc[key]``; null counts as absent. ``required`` says what to put there."""
    where = _join(path, key)
    value = doc.get(key)
    if value is None:
        if required:
            problems.add(where, f"required: {required}")
        return None
    if not isinstance(value, Mapping):
        problems.add(where, f"must be a mapping, not {kind_of(value)}")
        return None
    return value


def _string(doc: Mapping[str, Any], key: str, path: str, problems: _Problems, *, required: str = "") -> str | None:
    where = _join(path, key)
    value = doc.get(key)
    if value is None:
        if required:
            problems.add(where, f"required: {required}")
        return None
    if not isinstance(value, str):
        problems.add(where, f"must be a string, not {kind_of(value)}")
        return None
    return value


def _dns_label(value: Any, path: str, problems: _Problems) -> str | None:
    if not isinstance(value, str):
        problems.add(path, f"must be a string, not {kind_of(value)}")
        return None
    try:
        return check_name(value, "")
    except ValueError as exc:
        problems.add(path, str(exc).strip())
        return None


def _label_key(value: Any, path: str, problems: _Problems) -> str | None:
    if not isinstance(value, str):
        problems.add(path, f"must be a string, not {kind_of(value)}")
        return None
    prefix, _, name = value.rpartition("/")
    if (
        not name
        or len(name) > 63
        or not _LABEL_NAME.match(name)
        or ("/" in value and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)))
    ):
        problems.add(
            path,
            f"{value!r} is not a valid label key: an optional DNS prefix and '/', then 1-63 "
            "letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        )
        return None
    return value


def _label_value(value: Any, path: str, problems: _Problems) -> str | None:
    if not isinstance(value, str):
        hint = " (quote it)" if isinstance(value, (bool, int, float)) else ""
        problems.add(path, f"must be a string, not {kind_of(value)}{hint}")
        return None
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        problems.add(
            path,
            f"{value!r} is not a valid label value: at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit",
        )
        return None
    return value


def _json_values(value: Any, path: str, problems: _Problems) -> bool:
    """Whether ``value`` is plain JSON data (what Helm values are); reports what is not."""
    if isinstance(value, Mapping):
        ok = True
        for key, item in value.items():
            if not isinstance(key, str):
                problems.add(path, f"key {key!r} is not a string (quote it)")
                ok = False
            else:
                ok = _json_values(item, _join(path, key), problems) and ok
        return ok
    if isinstance(value, list | tuple):
        return all([_json_values(item, f"{path}[{i}]", problems) for i, item in enumerate(value)])
    if isinstance(value, float) and not math.isfinite(value):
        problems.add(path, f"{value} is not a JSON number")
        return False
    if value is None or isinstance(value, str | bool | int | float):
        return True
    problems.add(path, f"{kind_of(value)} is not a JSON value (quote it if it is meant as text)")
    return False


def _values(doc: Mapping[str, Any], key: str, path: str, problems: _Problems) -> dict[str, Any] | None:
    """A values mapping (null means empty), deep-copied so the Component owns it."""
    mapping = _mapping(doc, key, path, problems)
    if mapping is None:
        return None if doc.get(key) is not None else {}
    if not _json_values(mapping, _join(path, key), problems):
        return None
    return json.loads(json.dumps(mapping))


def _string_list(doc: Mapping[str, Any], key: str, path: str, problems: _Problems,
                 check: Callable[[Any, str, _Problems], str | None]) -> tuple[str, ...] | None:
    where = _join(path, key)
    value = doc.get(key)
    if not isinstance(value, list):
        problems.add(where, f"must be a list, not {kind_of(value)}")
        return None
    items = [check(item, f"{where}[{i}]", problems) for i, item in enumerate(value)]
    if any(item is None for item in items):
        return None
    return tuple(item for item in items if item is not None)


def _parse_chart(spec: Mapping[str, Any], problems: _Problems) -> ChartRef | None:
    raw = spec.get("chart")
    if isinstance(raw, Mapping):
        if "repo" in raw or ("name" in raw and "path" not in raw and "oci" not in raw):
            return _parse_repo_chart(raw, problems)
        if "oci" in raw:
            return _parse_oci_chart(raw, problems)
        _check_fields(raw, "spec.chart", _CHART_FIELDS, problems)
        # A misspelt repo or oci was reported as an unknown field: "path: required" would only confuse, and so
        # would name and version called misplaced.
        if any(isinstance(k, str) and k not in _CHART_FIELDS and _suggest(k, ("repo", "oci")) for k in raw):
            return None
        for misplaced in ("name", "version"):
            if misplaced in raw:
                problems.add(f"spec.chart.{misplaced}", "belongs to a chart from a repository (repo, name, version) "
                             "or a registry (oci, version), not to a local chart (path)")
        ref = _string(
            raw, "path", "spec.chart", problems,
            required="the chart directory or .tgz, relative to the spec file (or repo, name and version; or oci)",
        )
        where = "spec.chart.path"
    elif raw is None or isinstance(raw, str):
        ref = _string(
            spec, "chart", "spec", problems,
            required="a local chart directory or packaged .tgz relative to the spec file, "
            "{repo: URL, name: NAME, version: VERSION}, or oci://REGISTRY/PATH/NAME:VERSION",
        )
        where = "spec.chart"
    else:
        problems.add("spec.chart", f"must be a path, an oci:// reference or a mapping, not {kind_of(raw)}")
        return None
    if ref is None:
        return None
    if not ref.strip():
        problems.add(where, "must not be empty")
        return None
    if where == "spec.chart" and ref.lower().startswith("oci://"):
        return _parse_oci_reference(ref, None, where, problems)
    if "://" in ref:
        problems.add(
            where,
            f"{_short(ref)} is a URL: give a chart repository as {{repo: URL, name: NAME, version: VERSION}}, "
            "an OCI chart as oci://REGISTRY/PATH/NAME:VERSION, or a local chart directory or .tgz",
        )
        return None
    return ref


def _short(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:77] + "...")


def _chart_url(url: str, where: str, problems: _Problems, *,
               schemes: tuple[str, ...]) -> urllib.parse.SplitResult | None:
    """``url`` split, or None after reporting why it is not a usable chart URL."""
    if len(url) > MAX_CHART_URL:
        problems.add(where, f"is {len(url)} characters; the limit is {MAX_CHART_URL}")
        return None
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        problems.add(where, f"{_short(url)} holds spaces or control characters")
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        problems.add(where, f"{_short(url)} is not a URL: {exc}")
        return None
    if parts.scheme.lower() not in schemes:
        wanted = " or ".join(f"{s}://" for s in schemes)
        problems.add(where, f"{_short(url)} must start with {wanted}")
        return None
    if not parts.hostname:
        problems.add(where, f"{_short(url)} names no host")
        return None
    if parts.username is not None or parts.password is not None:
        problems.add(
            where,
            "must not carry credentials (user:password@): the spec is stored and shown by the hub; "
            "only public chart repositories and anonymous registry pulls are supported",
        )
        return None
    if parts.query or parts.fragment:
        problems.add(where, f"{_short(url)} must not have a query or fragment")
        return None
    return parts


def _chart_version(raw: Mapping[str, Any], where_parent: str, problems: _Problems, *, what: str) -> str | None:
    version = _string(raw, "version", where_parent, problems, required=what)
    if version is None:
        return None
    version = version.strip()
    if not version:
        problems.add(f"{where_parent}.version", "must not be empty")
        return None
    if len(version) > 128:
        problems.add(f"{where_parent}.version", f"is {len(version)} characters; the limit is 128")
        return None
    return version


def _parse_repo_chart(raw: Mapping[str, Any], problems: _Problems) -> RepoChart | None:
    path = "spec.chart"
    before = len(problems.items)
    _check_fields(raw, path, _REPO_CHART_FIELDS, problems, misplaced=("path", "oci"),
                  misplaced_why="cannot be given with repo and name: a chart comes from one place")
    repo = _string(raw, "repo", path, problems, required="the chart repository's URL (https://...)")
    if repo is not None and _chart_url(repo.strip(), f"{path}.repo", problems, schemes=("https", "http")) is None:
        repo = None
    name = _string(raw, "name", path, problems, required="the chart's name in the repository")
    if name is not None and not _CHART_NAME.match(name):
        problems.add(f"{path}.name", f"{_short(name)} is not a chart name: letters, digits, '.', '_' and '-'")
        name = None
    version = _chart_version(
        raw, path, problems,
        what="the chart version (1.2.3) or a version constraint (^1.2, >=1.0 <2) resolved to the highest match",
    )
    problem = constraint_problem(version) if version is not None else None
    if problem:
        problems.add(f"{path}.version", problem)
        version = None
    if len(problems.items) > before or repo is None or name is None or version is None:
        return None
    return RepoChart(repo=repo.strip().rstrip("/"), name=name, version=version)


def _parse_oci_chart(raw: Mapping[str, Any], problems: _Problems) -> OciChart | None:
    path = "spec.chart"
    before = len(problems.items)
    _check_fields(raw, path, _OCI_CHART_FIELDS, problems, misplaced=("path", "name"),
                  misplaced_why="cannot be given with oci: the reference names the chart")
    ref = _string(raw, "oci", path, problems, required="oci://REGISTRY/PATH/NAME")
    version = _chart_version(raw, path, problems, what="the chart version, the registry's tag (1.2.3)")
    if ref is None or version is None or len(problems.items) > before:
        return None
    return _parse_oci_reference(ref.strip(), version, f"{path}.oci", problems)


def _parse_oci_reference(ref: str, version: str | None, where: str, problems: _Problems) -> OciChart | None:
    """``oci://host/path/name:tag`` (``version`` None) or ``oci://host/path/name`` with ``version``."""
    parts = _chart_url(ref, where, problems, schemes=("oci",))
    if parts is None:
        return None
    repository = parts.path.lstrip("/")
    if "@" in repository:
        problems.add(where,
                     f"{_short(ref)}: a digest (@sha256:...) is not supported; give the chart's version as its tag")
        return None
    name_part, colon, tag = repository.rpartition(":")
    if version is None:
        if not colon or "/" in tag:
            problems.add(where, f"{_short(ref)} names no version: write oci://REGISTRY/PATH/NAME:VERSION")
            return None
        repository, version = name_part, tag
    elif colon and "/" not in tag:
        problems.add(where, f"{_short(ref)} has a tag (:{tag}); give the version in spec.chart.version only")
        return None
    if not repository or not _OCI_PATH.match(repository):
        problems.add(
            where,
            f"{_short(ref)}: {repository!r} is not a registry repository: lower-case letters, digits, "
            "'.', '_', '-' in components separated by '/'",
        )
        return None
    tag = version.replace("+", "_")
    if not _OCI_TAG.match(tag):
        field_name = "spec.chart.version" if where.endswith(".oci") else where
        problems.add(field_name, f"{_short(version)} is not a version usable as a registry tag")
        return None
    return OciChart(oci=f"oci://{parts.netloc}/{repository}", version=version)


def _parse_selector(edge: Mapping[str, Any], problems: _Problems) -> LabelSelector | None:
    path = "spec.edge.nodeSelector"
    raw = _mapping(edge, "nodeSelector", "spec.edge", problems)
    if raw is None:
        return None
    _check_fields(raw, path, _SELECTOR_FIELDS, problems)
    ok = True
    labels: dict[str, str] = {}
    match_labels = _mapping(raw, "matchLabels", path, problems)
    ok = ok and (match_labels is not None or raw.get("matchLabels") is None)
    for key, value in (match_labels or {}).items():
        where = _join(f"{path}.matchLabels", str(key))
        checked_key = _label_key(key, where, problems)
        checked_value = _label_value(value, where, problems)
        if checked_key is None or checked_value is None:
            ok = False
        else:
            labels[checked_key] = checked_value

    requirements: list[SelectorRequirement] = []
    raw_expressions = raw.get("matchExpressions")
    if raw_expressions is not None and not isinstance(raw_expressions, list):
        problems.add(f"{path}.matchExpressions", f"must be a list, not {kind_of(raw_expressions)}")
        ok = False
    for i, expression in enumerate(raw_expressions or []):
        where = f"{path}.matchExpressions[{i}]"
        requirement = _parse_requirement(expression, where, problems)
        if requirement is None:
            ok = False
        else:
            requirements.append(requirement)

    if not ok:
        return None
    if not labels and not requirements:
        problems.add(
            path,
            "an empty selector selects every node; give matchLabels or matchExpressions (to target every "
            f"node on purpose, use matchExpressions: [{{key: {POOL_LABEL}, operator: Exists}}])",
        )
        return None
    return LabelSelector(match_labels=labels, match_expressions=tuple(requirements))


def _parse_requirement(raw: Any, where: str, problems: _Problems) -> SelectorRequirement | None:
    if not isinstance(raw, Mapping):
        problems.add(where, f"must be a mapping with key, operator and values, not {kind_of(raw)}")
        return None
    before = len(problems.items)
    _check_fields(raw, where, _EXPRESSION_FIELDS, problems)
    key = raw.get("key")
    if key is None:
        problems.add(f"{where}.key", "required: the label key to test")
    else:
        key = _label_key(key, f"{where}.key", problems)
    operator = _string(raw, "operator", where, problems, required=f"one of {', '.join(OPERATORS)}")
    if operator is not None and operator not in OPERATORS:
        problems.add(f"{where}.operator", f"{operator!r} is not one of {', '.join(OPERATORS)}")
        operator = None
    values: tuple[str, ...] | None = ()
    if raw.get("values") is not None:
        values = _string_list(raw, "values", where, problems, _label_value)
    if operator in ("In", "NotIn") and values == ():
        problems.add(f"{where}.values", f"required: operator {operator} needs at least one value")
    if operator in ("Exists", "DoesNotExist") and values:
        problems.add(f"{where}.values", f"must be empty: operator {operator} takes no values")
    if len(problems.items) > before or key is None or operator is None or values is None:
        return None
    return SelectorRequirement(key=key, operator=operator, values=values)


def _parse_edge(spec: Mapping[str, Any], problems: _Problems) -> EdgeTarget | None:
    path = "spec.edge"
    edge = _mapping(spec, "edge", "spec", problems,
                    required="which nodes run the component (nodePools and/or nodeSelector)")
    if edge is None:
        return None
    before = len(problems.items)
    _check_fields(edge, path, _EDGE_FIELDS, problems)

    pools: tuple[str, ...] = ()
    if edge.get("nodePools") is not None:
        pools = _string_list(edge, "nodePools", path, problems, _dns_label) or ()
        seen: set[str] = set()
        for i, pool in enumerate(pools):
            if pool in seen:
                problems.add(f"{path}.nodePools[{i}]", f"pool {pool!r} is listed twice")
            seen.add(pool)
        if isinstance(edge.get("nodePools"), list) and not edge["nodePools"]:
            problems.add(f"{path}.nodePools", "must list at least one pool (or be left out)")

    selector = _parse_selector(edge, problems)
    # A misspelt nodePools or nodeSelector was reported as an unknown field;
    # "selects no node" would only repeat it.
    misspelt = any(
        isinstance(key, str) and key not in _EDGE_FIELDS and _suggest(key, ("nodePools", "nodeSelector"))
        for key in edge
    )
    if edge.get("nodePools") is None and edge.get("nodeSelector") is None and not misspelt:
        problems.add(path, "selects no node: give nodePools and/or nodeSelector")

    pool_values: dict[str, dict[str, Any]] = {}
    raw_pool_values = _mapping(edge, "poolValues", path, problems)
    for pool, overrides in (raw_pool_values or {}).items():
        where = _join(f"{path}.poolValues", str(pool))
        if _dns_label(pool, where, problems) is None:
            continue
        if pools and pool not in pools:
            problems.add(where, f"pool {pool!r} is not in spec.edge.nodePools{_suggest(pool, pools)}")
            continue
        if not isinstance(overrides, Mapping):
            problems.add(where, f"must be a mapping of values, not {kind_of(overrides)}")
            continue
        if _json_values(overrides, where, problems):
            pool_values[pool] = json.loads(json.dumps(overrides))

    rollout = _parse_rollout(edge, pools, problems)

    if len(problems.items) > before:
        return None
    return EdgeTarget(node_pools=pools, node_selector=selector, pool_values=pool_values, rollout=rollout)


def _duration(value: Any, where: str, problems: _Problems) -> float | None:
    """A duration: a number of seconds, or "90s", "2m", "1h30m", "500ms"."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        problems.add(where, f"must be a duration such as 90s, 2m or 1h30m, not {kind_of(value)}")
        return None
    if isinstance(value, str):
        text = value.strip()
        if not _DURATION.match(text):
            problems.add(where, f"{value!r} is not a duration: write a number with a unit (ms, s, m, h), "
                                "such as 90s, 2m or 1h30m")
            return None
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    else:
        seconds = float(value)
    if not 0 <= seconds <= MAX_DURATION:
        problems.add(where, f"must be from 0s to {int(MAX_DURATION // 3600)}h, not {value}")
        return None
    return seconds


def _parse_batch(raw: Any, where: str, node_pools: tuple[str, ...], problems: _Problems) -> Batch | None:
    if not isinstance(raw, Mapping):
        problems.add(where, f"must be a mapping with one of pools, percent or count, not {kind_of(raw)}")
        return None
    before = len(problems.items)
    _check_fields(raw, where, _BATCH_FIELDS, problems)
    given = [k for k in _BATCH_FIELDS if raw.get(k) is not None]
    if len(given) != 1:
        if not given and len(problems.items) == before:
            problems.add(where, "give one of pools (a list of pools), percent (of the remaining targets) or count")
        elif len(given) > 1:
            problems.add(where, f"give only one of pools, percent or count, not {' and '.join(given)}")
        return None
    key = given[0]
    value = raw[key]
    if key == "pools":
        pools = _string_list(raw, "pools", where, problems, _dns_label)
        if pools is None:
            return None
        if not pools:
            problems.add(f"{where}.pools", "must list at least one pool")
            return None
        for i, pool in enumerate(pools):
            if node_pools and pool not in node_pools:
                problems.add(f"{where}.pools[{i}]",
                             f"pool {pool!r} is not in spec.edge.nodePools{_suggest(pool, node_pools)}")
        return Batch(pools=pools) if len(problems.items) == before else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.add(f"{where}.{key}", f"must be a number, not {kind_of(value)}")
        return None
    if key == "percent":
        if not 0 < value <= 100:
            problems.add(f"{where}.percent", f"must be more than 0 and at most 100 (of the remaining targets), "
                                             f"not {value:g}")
            return None
        return Batch(percent=float(value))
    if isinstance(value, float) and not value.is_integer() or value < 1:
        problems.add(f"{where}.count", f"must be a whole number of nodes, at least 1, not {value:g}")
        return None
    return Batch(count=int(value))


def _parse_rollout(edge: Mapping[str, Any], node_pools: tuple[str, ...], problems: _Problems) -> RolloutPolicy | None:
    path = "spec.edge.rollout"
    raw = _mapping(edge, "rollout", "spec.edge", problems)
    if raw is None:
        return None
    before = len(problems.items)
    _check_fields(raw, path, _ROLLOUT_FIELDS, problems)
    batches: list[Batch] = []
    raw_batches = raw.get("batches")
    if raw_batches is None:
        problems.add(f"{path}.batches", "required: the batches in order, each {pools: [...]}, {percent: N} "
                                        "or {count: N}")
    elif not isinstance(raw_batches, list):
        problems.add(f"{path}.batches", f"must be a list of batches, not {kind_of(raw_batches)}")
    elif not raw_batches:
        problems.add(f"{path}.batches", "must list at least one batch")
    elif len(raw_batches) > MAX_BATCHES:
        problems.add(f"{path}.batches", f"at most {MAX_BATCHES} batches, not {len(raw_batches)}")
    else:
        for i, item in enumerate(raw_batches):
            batch = _parse_batch(item, f"{path}.batches[{i}]", node_pools, problems)
            if batch is not None:
                batches.append(batch)
    ready_within, min_ready = DEFAULT_READY_WITHIN, DEFAULT_MIN_READY_TIME
    gate = _mapping(raw, "healthGate", path, problems)
    if gate is not None:
        _check_fields(gate, f"{path}.healthGate", _GATE_FIELDS, problems)
        if gate.get("readyWithin") is not None:
            ready_within = _duration(gate["readyWithin"], f"{path}.healthGate.readyWithin", problems) or 0.0
            if ready_within <= 0 and len(problems.items) == before:
                problems.add(f"{path}.healthGate.readyWithin", "must be more than 0s")
        if gate.get("minReadyTime") is not None:
            min_ready = _duration(gate["minReadyTime"], f"{path}.healthGate.minReadyTime", problems) or 0.0
    max_failures: int | str = 0
    value = raw.get("maxFailures")
    if value is not None:
        where = f"{path}.maxFailures"
        if isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?%", value.strip()):
            if float(value.strip().rstrip("%")) > 100:
                problems.add(where, f"must be at most 100%, not {value}")
            max_failures = value.strip()
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            max_failures = value
        else:
            problems.add(where, f"must be a count of nodes (0 or more) or a percent such as \"10%\", not "
                                f"{value!r}" if isinstance(value, str | int | float) else
                                f"must be a count of nodes or a percent such as \"10%\", not {kind_of(value)}")
    choices: dict[str, str] = {}
    for key, allowed, default in (("onFailure", ON_FAILURE, "Rollback"), ("offlineNodes", OFFLINE_NODES, "Defer")):
        choice = _string(raw, key, path, problems)
        if choice is not None and choice not in allowed:
            problems.add(f"{path}.{key}", f"{choice!r} is not one of {', '.join(allowed)}{_suggest(choice, allowed)}")
        choices[key] = choice if choice is not None and choice in allowed else default
    if len(problems.items) > before:
        return None
    return RolloutPolicy(batches=tuple(batches), ready_within=ready_within, min_ready_time=min_ready,
                         max_failures=max_failures, on_failure=choices["onFailure"],
                         offline_nodes=choices["offlineNodes"])


def _parse_history_limit(spec: Mapping[str, Any], problems: _Problems) -> int | None:
    value = spec.get("historyLimit")
    if value is None:
        return DEFAULT_HISTORY_LIMIT
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not value.is_integer()):
        problems.add("spec.historyLimit", f"must be a whole number of revisions to keep, not {kind_of(value)}")
        return None
    if not 1 <= value <= MAX_HISTORY_LIMIT:
        problems.add("spec.historyLimit", f"must be from 1 to {MAX_HISTORY_LIMIT} (revisions kept, the current one "
                                          f"included; default {DEFAULT_HISTORY_LIMIT}), not {value:g}")
        return None
    return int(value)


def _parse_cluster_scoped(spec: Mapping[str, Any], problems: _Problems) -> bool | None:
    value = spec.get("clusterScoped")
    if value is None:
        return False
    if not isinstance(value, bool):
        quoted = isinstance(value, str) and value.lower() in ("true", "false")
        hint = " (write true or false, unquoted)" if quoted else ""
        problems.add("spec.clusterScoped", f"must be true or false, not {kind_of(value)}{hint}")
        return None
    return value


def parse_component(doc: Mapping[str, Any], *, source: str = "<spec>") -> Component:
    """Validate a Component document and return it typed.

    Raises:
        SpecError: listing every problem found, each prefixed with its field
            path. ``source`` (e.g. the file name) prefixes the message unless
            it is the default ``"<spec>"``.
    """
    where = None if source == "<spec>" else source
    if not isinstance(doc, Mapping):
        raise SpecError(f"a Component must be a mapping, not {kind_of(doc)}", source=where)
    problems = _Problems()
    _check_fields(doc, "", _TOP_FIELDS, problems)

    api_version = _string(doc, "apiVersion", "", problems, required=f"set it to {API_VERSION}")
    if api_version is not None and api_version != API_VERSION:
        problems.add("apiVersion", f"{api_version!r} is not supported; use {API_VERSION}")
    kind = _string(doc, "kind", "", problems, required=f"set it to {KIND}")
    if kind is not None and kind != KIND:
        problems.add("kind", f"{kind!r} is not {KIND}")

    name = namespace = None
    metadata = _mapping(doc, "metadata", "", problems, required="name and optional namespace")
    if metadata is not None:
        _check_fields(metadata, "metadata", _METADATA_FIELDS, problems, ignored=_KUBE_METADATA_FIELDS)
        if metadata.get("name") is None:
            problems.add("metadata.name", "required: the component name, which is also the Helm release name")
        else:
            name = _dns_label(metadata["name"], "metadata.name", problems)
            if name is not None and len(name) > MAX_RELEASE_NAME:
                problems.add(
                    "metadata.name",
                    f"{name!r} is {len(name)} characters; Helm release names are at most {MAX_RELEASE_NAME}",
                )
                name = None
        namespace = DEFAULT_NAMESPACE
        if metadata.get("namespace") is not None:
            namespace = _dns_label(metadata["namespace"], "metadata.namespace", problems)

    chart_ref = values = edge = history_limit = cluster_scoped = None
    spec = _mapping(doc, "spec", "", problems, required="chart, values and edge")
    if spec is not None:
        _check_fields(spec, "spec", _SPEC_FIELDS, problems)
        chart_ref = _parse_chart(spec, problems)
        values = _values(spec, "values", "spec", problems)
        edge = _parse_edge(spec, problems)
        history_limit = _parse_history_limit(spec, problems)
        cluster_scoped = _parse_cluster_scoped(spec, problems)

    if problems.items:
        raise SpecError(problems.items, source=where)
    assert name and namespace and chart_ref is not None and values is not None and edge is not None
    assert history_limit is not None and cluster_scoped is not None
    return Component(name=name, namespace=namespace, chart_ref=chart_ref, values=values, edge=edge,
                     history_limit=history_limit, cluster_scoped=cluster_scoped)


def parse_rollout_policy(document: Mapping[str, Any]) -> RolloutPolicy:
    """A ``spec.edge.rollout`` document (as ``RolloutPolicy.to_document`` writes it) read back; SpecError if not
    valid."""
    problems = _Problems()
    policy = _parse_rollout({"rollout": document}, (), problems)
    if problems.items or policy is None:
        raise SpecError(problems.items or ["spec.edge.rollout: missing"])
    return policy

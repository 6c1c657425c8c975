"""The Component CRD in a real API server: every example accepted, every broken variant refused
naming its field, and the spec parser agreeing on each.

``charts/edgehub/crds/components.edgecollab.io.yaml`` is installed into the session's control plane
(``control_plane`` fixture) as ``kubectl apply`` would; the API server then validates each document
with its own OpenAPI schema and CEL rules. Each is sent as ``kubectl apply`` sends it: a create with
strict field validation (kubectl's default ``--validate=strict``), here as a dry run (``dryRun=All``:
checked by every stage, stored by none) in a namespace of this module's own. The API server is the
reference; nothing here re-implements what it checks.

Each example is checked as the parser reads it (a spec file, maybe with its local chart) and as the
API server reads it (a local chart swapped for a chart repository entry, the only kind of chart a
cluster object can name): both must accept it, and both must refuse each broken variant, the server
with a message that names the field.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import REPO, api_client, crd_document, create_namespace, delete_namespace, install_crd, refusal
from component_docs import BASE_DOC
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from deployer_plugin import SpecError, parse_component, read_component_document
from deployer_plugin.controller import GROUP, PLURAL, VERSION
from deployer_plugin.deployer import is_local_chart
from deployer_plugin.spec import model, validation

pytestmark = pytest.mark.timeout(120)

# The chart a cluster object names instead of a local one (the CRD takes no local chart).
CLUSTER_CHART = {"repo": "https://charts.example.com/stable", "name": "web", "version": "1.2.3"}


@dataclass(frozen=True)
class Server:
    """The API server with the CRD installed, and this module's namespace in it."""

    api: client.ApiClient
    namespace: str
    crd: dict[str, Any]

    def create(self, doc: dict[str, Any], *, dry_run: bool = True) -> dict[str, Any]:
        body = copy.deepcopy(doc)
        if isinstance(body.get("metadata"), dict):
            body["metadata"]["namespace"] = self.namespace
        return client.CustomObjectsApi(self.api).create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body, dry_run="All" if dry_run else None,
            field_validation="Strict", _request_timeout=(5, 30))

    def problem(self, doc: dict[str, Any]) -> tuple[int, str] | None:
        """None if the server takes ``doc``, else (HTTP status, its message)."""
        try:
            self.create(doc)
        except ApiException as exc:
            return refusal(exc)
        return None


@pytest.fixture(scope="module")
def server(control_plane: Any) -> Iterator[Server]:
    api = api_client(control_plane.kubeconfig)
    held = install_crd(api)
    namespace = create_namespace(api, "crd-schema")
    try:
        yield Server(api, namespace, held)
    finally:
        delete_namespace(api, namespace)
        api.close()


def parser_problems(doc: dict[str, Any]) -> list[str]:
    try:
        parse_component(doc)
    except SpecError as exc:
        return list(exc.problems)
    return []


def as_cluster_object(doc: dict[str, Any]) -> dict[str, Any]:
    """The same component as a cluster object: a chart repository entry instead of a local chart."""
    out = copy.deepcopy(doc)
    if isinstance(out.get("spec"), dict) and is_local_chart(out["spec"].get("chart")):
        out["spec"]["chart"] = dict(CLUSTER_CHART)
    return out


def _drop_nulls(doc: Any) -> Any:
    """What the API server stores: a null field is dropped (the parser reads null as absent too)."""
    if isinstance(doc, dict):
        return {k: _drop_nulls(v) for k, v in doc.items() if v is not None}
    return doc


# --------------------------------------------------------------------------- the examples


def example_files() -> list[Path]:
    found = []
    for path in sorted([*REPO.glob("examples/**/*.yaml"), *REPO.glob("tests/**/*.yaml")]):
        if "charts" in path.relative_to(REPO).parts[:-1] and "crds" not in path.parts:
            continue  # chart contents (values.yaml, templates), not specs
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if re.search(r"^kind:\s*Component\s*$", text, re.MULTILINE):
            found.append(path)
    return found


def documented_examples() -> dict[str, dict[str, Any]]:
    """The Components in the README's and docs' YAML blocks: whole ones, and the ``spec:`` excerpts that
    show a part of ``spec.edge`` (staged rollouts), completed with the base document."""
    found = {}
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        blocks = re.findall(r"^```ya?ml\n(.*?)^```", page.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
        for i, block in enumerate(blocks):
            doc = yaml.safe_load(block)
            if not isinstance(doc, dict):
                continue
            if doc.get("kind") == "Component":
                found[f"{page.relative_to(REPO)}#{i}"] = doc
            elif set(doc) == {"spec"} and isinstance(doc["spec"].get("edge"), dict):
                whole = copy.deepcopy(BASE_DOC)
                whole["spec"]["edge"] = doc["spec"]["edge"]
                whole["spec"]["edge"].pop("poolValues", None)  # the excerpt's own pools
                found[f"{page.relative_to(REPO)}#{i}"] = whole
    return found


def _with(**changes: Callable[[dict[str, Any]], Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, edit in changes.items():
        doc = copy.deepcopy(BASE_DOC)
        edit(doc)
        out[name] = doc
    return out


def _rollout(**fields: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d["spec"]["edge"].update(rollout={"batches": [{"pools": ["shanghai"]}, {"percent": 100}],
                                                       **fields})


# Valid variants of the parser tests' base document, each covering a part of the schema.
VALID = {
    "base": copy.deepcopy(BASE_DOC),
    **_with(
        selector_only=lambda d: d["spec"]["edge"].update(
            nodePools=None, poolValues={"shanghai": {"a": 1}},
            nodeSelector={"matchLabels": {"edgecollab.io/pool": "shanghai", "tier": ""}}),
        every_operator=lambda d: d["spec"]["edge"].update(nodeSelector={"matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["east", "west"]},
            {"key": "example.com/tier", "operator": "NotIn", "values": ["test"]},
            {"key": "gpu", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist", "values": []},
        ]}),
        labels_and_empty_expressions=lambda d: d["spec"]["edge"].update(
            nodeSelector={"matchLabels": {"tier": "store"}, "matchExpressions": []}),
        history_limit=lambda d: d["spec"].update(historyLimit=1000),
        cluster_scoped=lambda d: d["spec"].update(clusterScoped=True),
        not_cluster_scoped=lambda d: d["spec"].update(clusterScoped=False),
        no_namespace=lambda d: d["metadata"].pop("namespace"),
        no_values=lambda d: d["spec"].pop("values"),
        kube_metadata=lambda d: d["metadata"].update(labels={"a": "b"}, generation=3, uid="1234",
                                                      finalizers=["edgecollab.io/release"]),
        longest_name=lambda d: d["metadata"].update(name="w" * 53),
        oci_chart=lambda d: d["spec"].update(chart={"oci": "oci://registry.example.com/charts/web",
                                                    "version": "1.2.3"}),
        version_range=lambda d: d["spec"].update(chart={**CLUSTER_CHART, "version": ">=1.0.0 <2.0.0"}),
        rollout_every_field=_rollout(healthGate={"readyWithin": "1h30m", "minReadyTime": "500ms"},
                                     maxFailures="12.5%", onFailure="Pause", offlineNodes="Skip"),
        rollout_counts_and_seconds=lambda d: d["spec"]["edge"].update(rollout={
            "batches": [{"count": 1}, {"percent": 33.5}, {"percent": 100}],
            "healthGate": {"readyWithin": 90, "minReadyTime": 0}, "maxFailures": 2, "offlineNodes": "Block"}),
    ),
}
for _path in example_files():
    VALID[str(_path.relative_to(REPO))] = read_component_document(_path.read_text(encoding="utf-8"), source=str(_path))
VALID.update(documented_examples())

# Broken variants: the parser refuses each, and the API server too, naming the field (the second item).
# An unknown field is refused by strict field validation (400) before the schema is checked (422).
_BROKEN: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = dict(
    name_upper=(lambda d: d["metadata"].update(name="Web"), "metadata.name"),
    name_too_long=(lambda d: d["metadata"].update(name="w" * 54), "metadata.name"),
    no_edge=(lambda d: d["spec"].pop("edge"), "spec.edge: Required value"),
    edge_selects_nothing=(lambda d: d["spec"].update(edge={"poolValues": {}}), "spec.edge: "),
    no_pools_listed=(lambda d: d["spec"]["edge"].update(nodePools=[]), "spec.edge.nodePools: "),
    pools_not_a_list=(lambda d: d["spec"]["edge"].update(nodePools="shanghai"), "spec.edge.nodePools: "),
    pool_twice=(lambda d: d["spec"]["edge"]["nodePools"].append("shanghai"), "spec.edge.nodePools[2]: "),
    bad_pool_name=(lambda d: d["spec"]["edge"]["nodePools"].append("Bad Pool"), "spec.edge.nodePools[2]: "),
    pool_values_outside_pools=(lambda d: d["spec"]["edge"]["poolValues"].update(hangzhou={"a": 1}),
                               "spec.edge.poolValues: "),
    pool_values_not_a_mapping=(lambda d: d["spec"]["edge"]["poolValues"].update(beijing="x"),
                               "spec.edge.poolValues.beijing: "),
    pool_values_bad_key=(lambda d: d["spec"]["edge"].update(nodePools=None, nodeSelector={"matchLabels": {"a": "b"}},
                                                            poolValues={"Bad_Pool": {}}), "spec.edge.poolValues: "),
    empty_selector=(lambda d: d["spec"]["edge"].update(nodeSelector={}), "spec.edge.nodeSelector: "),
    empty_match_labels=(lambda d: d["spec"]["edge"].update(nodeSelector={"matchLabels": {}}),
                        "spec.edge.nodeSelector: "),
    bad_label_key=(lambda d: d["spec"]["edge"].update(nodeSelector={"matchLabels": {"-tier": "x"}}),
                   "spec.edge.nodeSelector.matchLabels: "),
    bad_label_value=(lambda d: d["spec"]["edge"].update(nodeSelector={"matchLabels": {"tier": "a b"}}),
                     "spec.edge.nodeSelector.matchLabels.tier: "),
    label_value_not_a_string=(lambda d: d["spec"]["edge"].update(nodeSelector={"matchLabels": {"tier": True}}),
                              "spec.edge.nodeSelector.matchLabels.tier: "),
    unknown_operator=(lambda d: d["spec"]["edge"].update(
        nodeSelector={"matchExpressions": [{"key": "zone", "operator": "Within", "values": ["x"]}]}),
        "spec.edge.nodeSelector.matchExpressions[0].operator: "),
    in_without_values=(lambda d: d["spec"]["edge"].update(
        nodeSelector={"matchExpressions": [{"key": "zone", "operator": "In"}]}),
        "spec.edge.nodeSelector.matchExpressions[0]: "),
    exists_with_values=(lambda d: d["spec"]["edge"].update(
        nodeSelector={"matchExpressions": [{"key": "zone", "operator": "Exists", "values": ["x"]}]}),
        "spec.edge.nodeSelector.matchExpressions[0]: "),
    expression_without_key=(lambda d: d["spec"]["edge"].update(
        nodeSelector={"matchExpressions": [{"operator": "Exists"}]}), "spec.edge.nodeSelector.matchExpressions[0].key"),
    values_a_list=(lambda d: d["spec"].update(values=[1]), "spec.values: "),
    history_limit_zero=(lambda d: d["spec"].update(historyLimit=0), "spec.historyLimit: "),
    history_limit_too_high=(lambda d: d["spec"].update(historyLimit=1001), "spec.historyLimit: "),
    history_limit_text=(lambda d: d["spec"].update(historyLimit="ten"), "spec.historyLimit: "),
    cluster_scoped_text=(lambda d: d["spec"].update(clusterScoped="true"), "spec.clusterScoped: "),
    unknown_spec_field=(lambda d: d["spec"].update(replicas=3), 'unknown field "spec.replicas"'),
    unknown_edge_field=(lambda d: d["spec"]["edge"].update(nodePool=["shanghai"]),
                        'unknown field "spec.edge.nodePool"'),
    unknown_top_field=(lambda d: d.update(specs={}), 'unknown field "specs"'),
    no_spec=(lambda d: d.pop("spec"), "spec: Required value"),
    rollout_without_batches=(lambda d: d["spec"]["edge"].update(rollout={}), "spec.edge.rollout.batches: "),
    rollout_batch_of_nothing=(_rollout(batches=[{}]), "spec.edge.rollout.batches[0]: "),
    rollout_batch_of_two_kinds=(_rollout(batches=[{"count": 1, "percent": 50}]), "spec.edge.rollout.batches[0]: "),
    rollout_percent_zero=(_rollout(batches=[{"percent": 0}]), "spec.edge.rollout.batches[0].percent: "),
    rollout_percent_over_100=(_rollout(batches=[{"percent": 101}]), "spec.edge.rollout.batches[0].percent: "),
    rollout_count_zero=(_rollout(batches=[{"count": 0}]), "spec.edge.rollout.batches[0].count: "),
    rollout_pool_outside_pools=(_rollout(batches=[{"pools": ["hangzhou"]}]), "spec.edge.rollout.batches: "),
    rollout_duration_in_words=(_rollout(healthGate={"readyWithin": "2 minutes"}),
                               "spec.edge.rollout.healthGate.readyWithin: "),
    rollout_ready_within_zero=(_rollout(healthGate={"readyWithin": "0s"}),
                               "spec.edge.rollout.healthGate.readyWithin: "),
    rollout_longer_than_a_week=(_rollout(healthGate={"minReadyTime": "169h"}),
                                "spec.edge.rollout.healthGate.minReadyTime: "),
    rollout_failures_over_100_percent=(_rollout(maxFailures="150%"), "spec.edge.rollout.maxFailures: "),
    rollout_negative_failures=(_rollout(maxFailures=-1), "spec.edge.rollout.maxFailures: "),
    rollout_unknown_on_failure=(_rollout(onFailure="Retry"), "spec.edge.rollout.onFailure: "),
    rollout_unknown_offline_nodes=(_rollout(offlineNodes="Wait"), "spec.edge.rollout.offlineNodes: "),
    rollout_unknown_field=(_rollout(maxFailure=1), 'unknown field "spec.edge.rollout.maxFailure"'),
)
INVALID = {name: (_with(**{name: edit})[name], field) for name, (edit, field) in _BROKEN.items()}


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_example_is_accepted_by_the_parser_and_the_api_server(server: Server, name: str) -> None:
    doc = _drop_nulls(VALID[name])

    assert parser_problems(doc) == []
    assert server.problem(as_cluster_object(doc)) is None


def test_the_examples_include_the_repository_and_documentation_examples() -> None:
    assert "examples/web/component.yaml" in VALID
    for page in ("README.md", "docs/deployer.md", "docs/rollouts.md"):
        assert any(name.startswith(f"{page}#") for name in VALID), page


@pytest.mark.parametrize("name", sorted(INVALID))
def test_every_broken_variant_is_refused_by_both_the_api_server_naming_the_field(server: Server, name: str) -> None:
    doc, field = INVALID[name]
    doc = _drop_nulls(doc)

    assert parser_problems(doc), "the parser accepted it"
    problem = server.problem(as_cluster_object(doc))
    assert problem is not None, "the API server accepted it"
    status, message = problem
    assert status == (400 if field.startswith("unknown field") else 422), message
    assert field in message, message


def test_a_component_is_stored_as_sent_nothing_pruned_or_defaulted(server: Server) -> None:
    doc = as_cluster_object(_drop_nulls(VALID["rollout_every_field"]))
    doc["spec"].update(historyLimit=5, clusterScoped=False, values={"nested": {"list": [1, "two", None], "x": 1.5}})
    doc["metadata"]["name"] = "stored"

    stored = server.create(doc, dry_run=False)
    try:
        assert stored["spec"] == doc["spec"]
        assert stored["metadata"]["generation"] == 1
    finally:
        client.CustomObjectsApi(server.api).delete_namespaced_custom_object(GROUP, VERSION, server.namespace, PLURAL,
                                                                            "stored")


# --------------------------------------------------------------------------- spec.chart in a cluster object


@pytest.mark.parametrize("chart", [
    {"repo": "https://charts.example.com", "name": "web", "version": "1.2.3"},
    {"repo": "http://127.0.0.1:8080/charts", "name": "web", "version": ">=1.0.0 <2.0.0"},
    {"oci": "oci://registry.example.com/charts/web", "version": "1.2.3"},
])
def test_the_crd_and_the_parser_take_repository_and_oci_charts(server: Server, chart: dict[str, str]) -> None:
    doc = copy.deepcopy(BASE_DOC)
    doc["spec"]["chart"] = chart
    assert parser_problems(doc) == []
    assert server.problem(doc) is None


@pytest.mark.parametrize(("chart", "field"), [
    ("./chart", "spec.chart: "),  # a local chart cannot live in a cluster object
    ({"path": "./chart"}, 'unknown field "spec.chart.path"'),
    ("oci://registry.example.com/charts/web:1.2.3", "spec.chart: "),  # written {oci, version} in a cluster object
    ({"repo": "https://charts.example.com", "name": "web"}, "spec.chart.version: Required value"),
    ({"name": "web", "version": "1"}, "spec.chart: "),
    ({"repo": "ftp://charts.example.com", "name": "web", "version": "1"}, "spec.chart.repo: "),
    ({"repo": "https://user:secret@charts.example.com", "name": "web", "version": "1"}, "spec.chart.repo: "),
    ({"oci": "https://registry.example.com/web", "version": "1"}, "spec.chart.oci: "),
    ({"repo": "https://c.example.com", "name": "web", "version": "1", "oci": "oci://r.example.com/web"},
     "spec.chart: "),
])
def test_the_api_server_refuses_local_and_malformed_charts_naming_the_field(server: Server, chart: Any,
                                                                           field: str) -> None:
    doc = copy.deepcopy(BASE_DOC)
    doc["spec"]["chart"] = chart
    problem = server.problem(doc)
    assert problem is not None and field in problem[1], problem


# --------------------------------------------------------------------------- the CRD itself


def test_the_api_server_accepts_the_crd_and_serves_it(server: Server) -> None:
    conditions = {c["type"]: c["status"] for c in server.crd["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    assert "NonStructuralSchema" not in conditions
    assert server.crd["status"]["acceptedNames"]["shortNames"] == ["ecc"]
    # What the API server serves: the group, version and resource the controller watches.
    resources = client.CustomObjectsApi(server.api).get_api_resources(GROUP, VERSION)
    (component,) = [r for r in server.api.sanitize_for_serialization(resources)["resources"] if r["name"] == PLURAL]
    assert component["kind"] == model.KIND and component["namespaced"] is True
    assert f"{PLURAL}/status" in {r.name for r in resources.resources}


def test_the_crd_names_the_parsers_group_version_and_kind() -> None:
    doc = crd_document()
    group, version = model.API_VERSION.split("/")
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
    assert doc["metadata"]["name"] == f"components.{group}"
    assert doc["spec"]["group"] == group and doc["spec"]["names"]["kind"] == model.KIND
    (served,) = doc["spec"]["versions"]
    assert served["name"] == version and served["served"] and served["storage"]
    assert served["subresources"] == {"status": {}}
    assert [c["name"] for c in served["additionalPrinterColumns"] if not c.get("priority")] == [
        "Revision", "Ready", "Age"]


def _schema() -> dict[str, Any]:
    (version,) = crd_document()["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def test_the_crd_has_the_parsers_fields_and_no_others() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    assert set(spec) == set(validation._SPEC_FIELDS)
    edge = spec["edge"]["properties"]
    assert set(edge) == set(validation._EDGE_FIELDS)
    assert set(spec["chart"]["properties"]) == set(validation._CHART_FIELDS) - {"path"}
    assert set(edge["nodeSelector"]["properties"]) == set(validation._SELECTOR_FIELDS)
    assert set(edge["nodeSelector"]["properties"]["matchExpressions"]["items"]["properties"]) == set(
        validation._EXPRESSION_FIELDS)
    assert edge["nodeSelector"]["properties"]["matchExpressions"]["items"]["properties"]["operator"]["enum"] == list(
        model.OPERATORS)
    rollout = edge["rollout"]["properties"]
    assert set(rollout) == set(validation._ROLLOUT_FIELDS)
    assert set(rollout["batches"]["items"]["properties"]) == set(validation._BATCH_FIELDS)
    assert set(rollout["healthGate"]["properties"]) == set(validation._GATE_FIELDS)
    assert rollout["batches"]["maxItems"] == validation.MAX_BATCHES
    assert rollout["onFailure"]["enum"] == list(model.ON_FAILURE)
    assert rollout["offlineNodes"]["enum"] == list(model.OFFLINE_NODES)
    limits = spec["historyLimit"]
    assert (limits["minimum"], limits["maximum"]) == (1, model.MAX_HISTORY_LIMIT)
    assert _schema()["properties"]["metadata"]["properties"]["name"]["maxLength"] == validation.MAX_RELEASE_NAME

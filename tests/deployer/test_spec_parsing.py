"""Parsing and validating Component documents: every problem names its field."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from deployer_plugin import (
    Component,
    EdgeTarget,
    LabelSelector,
    SelectorRequirement,
    SpecError,
    parse_component,
)
from edgeprotocol.errors import EdgeError


def problems_of(doc: Any) -> tuple[str, ...]:
    with pytest.raises(SpecError) as caught:
        parse_component(doc)
    return caught.value.problems


def test_a_valid_spec_parses_into_typed_fields(doc: dict[str, Any]) -> None:
    doc["spec"]["edge"]["nodeSelector"] = {
        "matchLabels": {"tier": "store"},
        "matchExpressions": [{"key": "zone", "operator": "In", "values": ["east", "west"]}],
    }

    component = parse_component(doc)

    assert component == Component(
        name="web",
        namespace="demo",
        chart_ref="./chart",
        values={"message": "hi"},
        edge=EdgeTarget(
            node_pools=("shanghai", "beijing"),
            node_selector=LabelSelector(
                match_labels={"tier": "store"},
                match_expressions=(SelectorRequirement("zone", "In", ("east", "west")),),
            ),
            pool_values={"shanghai": {"greeting": "ni hao"}},
        ),
    )
    assert component.key == ("demo", "web")


def test_a_spec_round_trips_through_its_document(doc: dict[str, Any]) -> None:
    doc["spec"]["values"] = {"nested": {"list": [1, 2.5, None, True], "off": None}}
    doc["spec"]["edge"]["nodeSelector"] = {
        "matchExpressions": [
            {"key": "zone", "operator": "NotIn", "values": ["west"]},
            {"key": "gpu", "operator": "DoesNotExist"},
        ]
    }
    component = parse_component(doc)

    document = component.to_document()

    assert parse_component(document) == component
    assert document["spec"]["edge"]["nodeSelector"]["matchExpressions"][1] == {"key": "gpu", "operator": "DoesNotExist"}


def test_namespace_defaults_to_default_and_values_to_empty(doc: dict[str, Any]) -> None:
    del doc["metadata"]["namespace"]
    del doc["spec"]["values"]

    component = parse_component(doc)

    assert (component.namespace, component.values) == ("default", {})


def test_chart_may_be_given_as_a_mapping_with_a_path(doc: dict[str, Any]) -> None:
    doc["spec"]["chart"] = {"path": "./charts/web-1.0.0.tgz"}

    assert parse_component(doc).chart_ref == "./charts/web-1.0.0.tgz"


def test_kubernetes_object_metadata_and_status_are_accepted_and_ignored(doc: dict[str, Any]) -> None:
    doc["metadata"].update(uid="1234", resourceVersion="7", generation=2, labels={"team": "a"})
    doc["status"] = {"observedGeneration": 1}

    assert parse_component(doc).name == "web"


def test_the_parsed_component_does_not_share_the_callers_values(doc: dict[str, Any]) -> None:
    component = parse_component(doc)

    doc["spec"]["values"]["message"] = "changed"
    doc["spec"]["edge"]["poolValues"]["shanghai"]["greeting"] = "changed"

    assert component.values == {"message": "hi"}
    assert component.edge.pool_values == {"shanghai": {"greeting": "ni hao"}}


def test_spec_error_is_an_edge_error() -> None:
    assert issubclass(SpecError, EdgeError)


def test_unknown_edge_field_is_refused_with_a_suggestion(doc: dict[str, Any]) -> None:
    doc["spec"]["edge"]["nodePool"] = doc["spec"]["edge"].pop("nodePools")
    del doc["spec"]["edge"]["poolValues"]

    problems = problems_of(doc)

    assert problems[0] == "spec.edge.nodePool: unknown field (did you mean nodePools?)"


@pytest.mark.parametrize(
    ("where", "key", "expected"),
    [
        ((), "apiVerison", "apiVerison: unknown field (did you mean apiVersion?)"),
        (("metadata",), "nmae", "metadata.nmae: unknown field (did you mean name?)"),
        (("spec",), "valuse", "spec.valuse: unknown field (did you mean values?)"),
        (("spec", "edge"), "nodepools", "spec.edge.nodepools: unknown field (did you mean nodePools?)"),
        (("spec", "edge"), "replicas", "spec.edge.replicas: unknown field"),
    ],
)
def test_unknown_fields_anywhere_are_refused_with_their_path(
    doc: dict[str, Any], where: tuple[str, ...], key: str, expected: str
) -> None:
    target = doc
    for part in where:
        target = target[part]
    target[key] = 1

    assert expected in problems_of(doc)


def test_an_unknown_field_in_a_selector_expression_names_its_index(doc: dict[str, Any]) -> None:
    doc["spec"]["edge"]["nodeSelector"] = {
        "matchExpressions": [
            {"key": "zone", "operator": "Exists"},
            {"key": "zone", "operator": "In", "value": ["east"]},
        ]
    }

    problems = problems_of(doc)

    assert "spec.edge.nodeSelector.matchExpressions[1].value: unknown field (did you mean values?)" in problems


def test_an_unknown_operator_lists_the_valid_ones(doc: dict[str, Any]) -> None:
    doc["spec"]["edge"]["nodeSelector"] = {"matchExpressions": [{"key": "zone", "operator": "Into", "values": ["a"]}]}

    assert problems_of(doc) == (
        "spec.edge.nodeSelector.matchExpressions[0].operator: 'Into' is not one of In, NotIn, Exists, DoesNotExist",
    )


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ({"key": "zone", "operator": "In"},
         "matchExpressions[0].values: required: operator In needs at least one value"),
        ({"key": "zone", "operator": "NotIn", "values": []},
         "values: required: operator NotIn needs at least one value"),
        ({"key": "zone", "operator": "Exists", "values": ["a"]},
         "values: must be empty: operator Exists takes no values"),
        ({"operator": "Exists"}, "matchExpressions[0].key: required: the label key to test"),
        ({"key": "zone"}, "matchExpressions[0].operator: required: one of In, NotIn, Exists, DoesNotExist"),
        ({"key": "-bad-", "operator": "Exists"}, "matchExpressions[0].key: '-bad-' is not a valid label key"),
        ({"key": "zone", "operator": "In", "values": [1]},
         "matchExpressions[0].values[0]: must be a string, not a number"),
    ],
)
def test_selector_expressions_are_checked_per_operator(doc: dict[str, Any], expression: dict[str, Any],
                                                       expected: str) -> None:
    doc["spec"]["edge"]["nodeSelector"] = {"matchExpressions": [expression]}

    (problem,) = problems_of(doc)

    assert problem.startswith("spec.edge.nodeSelector.")
    assert expected in problem


def test_a_match_label_that_yaml_read_as_a_boolean_asks_to_be_quoted(doc: dict[str, Any]) -> None:
    doc["spec"]["edge"]["nodeSelector"] = {"matchLabels": {"gpu": True}}

    assert problems_of(doc) == ("spec.edge.nodeSelector.matchLabels.gpu: must be a string, not a boolean (quote it)",)


def test_an_empty_node_selector_is_refused_rather_than_selecting_every_node(doc: dict[str, Any]) -> None:
    doc["spec"]["edge"]["nodeSelector"] = {}

    (problem,) = problems_of(doc)

    assert problem.startswith("spec.edge.nodeSelector: an empty selector selects every node")


def test_edge_must_select_something(doc: dict[str, Any]) -> None:
    doc["spec"]["edge"] = {"poolValues": {}}

    assert problems_of(doc) == ("spec.edge: selects no node: give nodePools and/or nodeSelector",)


def test_a_missing_edge_section_is_required(doc: dict[str, Any]) -> None:
    del doc["spec"]["edge"]

    (problem,) = problems_of(doc)

    assert problem.startswith("spec.edge: required:")


def test_pool_values_for_a_pool_outside_node_pools_is_refused_with_a_suggestion(doc: dict[str, Any]) -> None:
    doc["spec"]["edge"]["poolValues"] = {"shanghal": {"greeting": "ni hao"}}

    assert problems_of(doc) == (
        "spec.edge.poolValues.shanghal: pool 'shanghal' is not in spec.edge.nodePools (did you mean shanghai?)",
    )


def test_pool_values_need_no_node_pools_when_a_selector_targets(doc: dict[str, Any]) -> None:
    del doc["spec"]["edge"]["nodePools"]
    doc["spec"]["edge"]["nodeSelector"] = {"matchLabels": {"tier": "store"}}

    assert parse_component(doc).edge.pool_values == {"shanghai": {"greeting": "ni hao"}}


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["metadata"].update(name="Web"), "metadata.name: 'Web' is not a valid name"),
        (lambda d: d["metadata"].update(name="w" * 54), "Helm release names are at most 53"),
        (lambda d: d["metadata"].update(namespace="demo_ns"), "metadata.namespace: 'demo_ns' is not a valid name"),
        (lambda d: d["metadata"].pop("name"), "metadata.name: required"),
        (lambda d: d.update(apiVersion="v1"), "apiVersion: 'v1' is not supported; use edgecollab.io/v1alpha1"),
        (lambda d: d.update(kind="Deployment"), "kind: 'Deployment' is not Component"),
        (lambda d: d["spec"].pop("chart"), "spec.chart: required"),
        (lambda d: d["spec"].update(chart=""), "spec.chart: must not be empty"),
        (lambda d: d["spec"].update(chart={"pth": "x"}), "spec.chart.pth: unknown field (did you mean path?)"),
        (lambda d: d["spec"].update(chart="oci://r/web"), "spec.chart: 'oci://r/web' names no version"),
        (lambda d: d["spec"].update(chart="https://r/web.tgz"), "spec.chart: 'https://r/web.tgz' is a URL"),
        (lambda d: d["spec"].update(values=[1]), "spec.values: must be a mapping, not a list"),
        (lambda d: d["spec"]["edge"].update(nodePools="shanghai"), "spec.edge.nodePools: must be a list, not a string"),
        (lambda d: d["spec"]["edge"].update(nodePools=[]), "spec.edge.nodePools: must list at least one pool"),
        (lambda d: d["spec"]["edge"]["nodePools"].append("shanghai"),
         "spec.edge.nodePools[2]: pool 'shanghai' is listed twice"),
        (lambda d: d["spec"]["edge"]["nodePools"].append("Bad Pool"),
         "spec.edge.nodePools[2]: 'Bad Pool' is not a valid name"),
        (lambda d: d["spec"]["edge"]["poolValues"].update(beijing="x"),
         "spec.edge.poolValues.beijing: must be a mapping of values"),
        (
            lambda d: d["spec"]["values"].update(when=datetime.date(2024, 1, 1)),
            "spec.values.when: a date is not a JSON value (quote it if it is meant as text)",
        ),
        (lambda d: d["spec"]["values"].update({1: "x"}), "spec.values: key 1 is not a string"),
        (lambda d: d["spec"]["values"].update({"a.b": {"c": float("nan")}}),
         'spec.values["a.b"].c: nan is not a JSON number'),
    ],
)
def test_each_kind_of_error_names_its_field(doc: dict[str, Any], edit: Any, expected: str) -> None:
    edit(doc)

    problems = problems_of(doc)

    assert any(expected in problem for problem in problems), problems


def test_several_problems_are_reported_together_in_document_order(doc: dict[str, Any]) -> None:
    doc["metadata"]["name"] = "Web"
    doc["spec"]["valuse"] = {}
    doc["spec"]["edge"]["nodeSelector"] = {"matchExpressions": [{"key": "zone", "operator": "Into"}]}

    with pytest.raises(SpecError) as caught:
        parse_component(doc, source="web.yaml")

    assert [p.split(":")[0] for p in caught.value.problems] == [
        "metadata.name",
        "spec.valuse",
        "spec.edge.nodeSelector.matchExpressions[0].operator",
    ]
    message = str(caught.value)
    assert message.startswith("web.yaml: 3 problems:\n")
    assert "  spec.valuse: unknown field (did you mean values?)" in message.splitlines()


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    assert problems_of(["not", "a", "mapping"]) == ("a Component must be a mapping, not a list",)


def test_a_single_problem_message_is_just_the_problem(doc: dict[str, Any]) -> None:
    doc["spec"]["valuse"] = {}

    with pytest.raises(SpecError, match=r"^spec\.valuse: unknown field \(did you mean values\?\)$"):
        parse_component(doc)

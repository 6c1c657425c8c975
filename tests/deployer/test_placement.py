"""Placement: which nodes a component targets, and which render each one gets."""

from __future__ import annotations

from typing import Any

import pytest

from deployer_plugin import POOL_LABEL, NodeInfo, parse_component, place, render_key_for

NODES = [
    NodeInfo("sh-1", "shanghai", {"tier": "store", "zone": "east"}),
    NodeInfo("sh-2", "shanghai", {"tier": "warehouse", "zone": "east", "gpu": "a100"}),
    NodeInfo("bj-1", "beijing", {"tier": "store", "zone": "north"}),
    NodeInfo("bj-2", "beijing", {}),
    NodeInfo("gz-1", "guangzhou", {"tier": "store", "zone": "south"}),
]


def targeting(edge: dict[str, Any]) -> Any:
    return parse_component(
        {
            "apiVersion": "edgecollab.io/v1alpha1",
            "kind": "Component",
            "metadata": {"name": "web"},
            "spec": {"chart": "./chart", "edge": edge},
        }
    )


def test_node_pools_target_every_node_of_those_pools() -> None:
    component = targeting({"nodePools": ["shanghai", "beijing"]})

    assert place(component, NODES) == {"bj-1": "", "bj-2": "", "sh-1": "", "sh-2": ""}


def test_nodes_of_a_pool_with_pool_values_get_that_pools_render_and_the_rest_the_base() -> None:
    component = targeting({"nodePools": ["shanghai", "beijing"], "poolValues": {"shanghai": {"greeting": "ni hao"}}})

    assert place(component, NODES) == {"bj-1": "", "bj-2": "", "sh-1": "shanghai", "sh-2": "shanghai"}
    assert render_key_for(component, "shanghai") == "shanghai"
    assert render_key_for(component, "beijing") == ""


def test_match_labels_must_all_hold() -> None:
    component = targeting({"nodeSelector": {"matchLabels": {"tier": "store", "zone": "east"}}})

    assert place(component, NODES) == {"sh-1": ""}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ({"key": "zone", "operator": "In", "values": ["east", "south"]}, ["gz-1", "sh-1", "sh-2"]),
        # NotIn also matches nodes without the label, as in Kubernetes.
        ({"key": "zone", "operator": "NotIn", "values": ["east"]}, ["bj-1", "bj-2", "gz-1"]),
        ({"key": "gpu", "operator": "Exists"}, ["sh-2"]),
        ({"key": "tier", "operator": "DoesNotExist"}, ["bj-2"]),
    ],
    ids=["In", "NotIn", "Exists", "DoesNotExist"],
)
def test_every_match_expression_operator_selects_as_in_kubernetes(expression: dict[str, Any],
                                                                  expected: list[str]) -> None:
    component = targeting({"nodeSelector": {"matchExpressions": [expression]}})

    assert list(place(component, NODES)) == expected


def test_match_labels_and_expressions_must_all_hold() -> None:
    component = targeting(
        {
            "nodeSelector": {
                "matchLabels": {"tier": "store"},
                "matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["north"]}],
            }
        }
    )

    assert list(place(component, NODES)) == ["gz-1", "sh-1"]


def test_pools_and_selector_together_need_a_node_to_satisfy_both() -> None:
    component = targeting({"nodePools": ["shanghai", "beijing"], "nodeSelector": {"matchLabels": {"tier": "store"}}})

    assert list(place(component, NODES)) == ["bj-1", "sh-1"]


def test_the_implicit_pool_label_is_usable_in_selectors() -> None:
    component = targeting(
        {"nodeSelector": {"matchExpressions": [{"key": POOL_LABEL, "operator": "NotIn", "values": ["shanghai"]}]}}
    )

    assert list(place(component, NODES)) == ["bj-1", "bj-2", "gz-1"]


def test_every_node_on_purpose_is_spelt_as_the_pool_label_existing() -> None:
    component = targeting({"nodeSelector": {"matchExpressions": [{"key": POOL_LABEL, "operator": "Exists"}]}})

    assert len(place(component, NODES)) == len(NODES)


def test_a_node_label_cannot_claim_another_pool() -> None:
    impostor = NodeInfo("x-1", "guangzhou", {POOL_LABEL: "shanghai"})
    component = targeting({"nodeSelector": {"matchLabels": {POOL_LABEL: "shanghai"}}})

    assert place(component, [impostor]) == {}
    assert impostor.effective_labels == {POOL_LABEL: "guangzhou"}


def test_no_node_matching_gives_an_empty_placement() -> None:
    assert place(targeting({"nodePools": ["hangzhou"]}), NODES) == {}


def test_a_node_given_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="node 'sh-1' is given twice"):
        place(targeting({"nodePools": ["shanghai"]}), [NODES[0], NODES[0]])

"""spec.historyLimit: how many revisions the hub keeps; validated like every other field."""

from __future__ import annotations

from typing import Any

import pytest

from deployer_plugin import (
    DEFAULT_HISTORY_LIMIT,
    SpecError,
    component_fingerprint,
    parse_component,
)


def problems_of(doc: Any) -> tuple[str, ...]:
    with pytest.raises(SpecError) as caught:
        parse_component(doc)
    return caught.value.problems


def test_history_limit_defaults_to_10_and_is_left_out_of_the_document(doc: dict[str, Any]) -> None:
    component = parse_component(doc)
    assert component.history_limit == DEFAULT_HISTORY_LIMIT == 10
    assert "historyLimit" not in component.to_document()["spec"]


@pytest.mark.parametrize("limit", [1, 3, 1000, 4.0])
def test_a_history_limit_from_1_to_1000_is_taken_and_round_trips(doc: dict[str, Any], limit: Any) -> None:
    doc["spec"]["historyLimit"] = limit
    component = parse_component(doc)
    assert component.history_limit == int(limit)
    assert parse_component(component.to_document()) == component
    if limit != DEFAULT_HISTORY_LIMIT:
        assert component.to_document()["spec"]["historyLimit"] == int(limit)


@pytest.mark.parametrize(("limit", "says"), [
    (0, "must be from 1 to 1000"),
    (-3, "must be from 1 to 1000"),
    (1001, "must be from 1 to 1000"),
    (2.5, "must be a whole number of revisions to keep, not a number"),
    ("10", "must be a whole number of revisions to keep, not a string"),
    (True, "must be a whole number of revisions to keep, not a boolean"),
    ([3], "must be a whole number of revisions to keep, not a list"),
])
def test_a_history_limit_out_of_range_or_not_a_number_is_refused_naming_the_field(
    doc: dict[str, Any], limit: Any, says: str
) -> None:
    doc["spec"]["historyLimit"] = limit
    (problem,) = problems_of(doc)
    assert problem.startswith("spec.historyLimit: ") and says in problem


def test_a_misspelt_history_limit_is_an_unknown_field_with_a_suggestion(doc: dict[str, Any]) -> None:
    doc["spec"]["historylimit"] = 3
    assert problems_of(doc) == ("spec.historylimit: unknown field (did you mean historyLimit?)",)
    del doc["spec"]["historylimit"]
    doc["spec"]["historyLimits"] = 3
    assert problems_of(doc) == ("spec.historyLimits: unknown field (did you mean historyLimit?)",)


def test_the_history_limit_is_not_part_of_the_fingerprint(doc: dict[str, Any]) -> None:
    before = component_fingerprint(parse_component(doc), "sha256:chart")
    doc["spec"]["historyLimit"] = 3
    assert component_fingerprint(parse_component(doc), "sha256:chart") == before

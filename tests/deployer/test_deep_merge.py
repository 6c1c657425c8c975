"""deep_merge follows Helm: maps merge, other values replace, null marks a deletion."""

from __future__ import annotations

from deployer_plugin import deep_merge


def test_maps_merge_and_other_values_replace() -> None:
    base = {"a": {"x": 1, "y": {"deep": 1}}, "list": [1, 2], "scalar": "old"}

    merged = deep_merge(base, {"a": {"y": {"deeper": 2}}, "list": [3], "scalar": {"now": "a map"}})

    assert merged == {"a": {"x": 1, "y": {"deep": 1, "deeper": 2}}, "list": [3], "scalar": {"now": "a map"}}


def test_null_is_kept_so_helm_deletes_the_key_and_any_chart_default() -> None:
    assert deep_merge({"a": {"x": 1, "y": 2}}, {"a": {"y": None}, "b": None}) == {"a": {"x": 1, "y": None}, "b": None}


def test_neither_argument_is_modified_nor_shared() -> None:
    base = {"a": {"x": [1]}}
    override = {"b": {"y": [2]}}

    merged = deep_merge(base, override)
    merged["a"]["x"].append(9)
    merged["b"]["y"].append(9)

    assert base == {"a": {"x": [1]}} and override == {"b": {"y": [2]}}

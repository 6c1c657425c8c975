"""Fingerprints decide when a new revision is due: content, not packaging."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deployer_plugin import (
    ChartArchive,
    ChartError,
    chart_fingerprint,
    component_fingerprint,
    package_chart,
    parse_component,
)


def test_packaging_the_same_directory_twice_gives_the_same_fingerprint(copy_chart: Callable[..., Path]) -> None:
    chart = copy_chart("good")
    first = package_chart(chart)
    later = time.time() + 3600  # as if re-packaged an hour later, after a checkout touched every file
    for path in chart.rglob("*"):
        os.utime(path, (later, later))

    second = package_chart(chart)

    assert first != second, "tar entries carry mtimes, so the archive bytes differ"
    assert chart_fingerprint(first) == chart_fingerprint(second)


def test_a_changed_template_changes_the_chart_fingerprint(copy_chart: Callable[..., Path]) -> None:
    chart = copy_chart("good")
    before = chart_fingerprint(package_chart(chart))
    template = chart / "templates" / "configmap.yaml"
    template.write_text(template.read_text() + "  added: \"yes\"\n")

    assert chart_fingerprint(package_chart(chart)) != before


@pytest.mark.parametrize(
    "change",
    [
        lambda c: (c / "values.yaml").write_text((c / "values.yaml").read_text() + "more: 1\n"),
        lambda c: (c / "README.md").write_text("changed\n"),
        lambda c: (c / "Chart.yaml").write_text((c / "Chart.yaml").read_text().replace("0.1.0", "0.1.1")),
        lambda c: (c / "templates" / "new.yaml").write_text("{{/* nothing */}}\n"),
    ],
    ids=["values", "file", "metadata", "new-template"],
)
def test_any_content_change_changes_the_chart_fingerprint(copy_chart: Callable[..., Path], change: Any) -> None:
    chart = copy_chart("good")
    before = chart_fingerprint(package_chart(chart))

    change(chart)

    assert chart_fingerprint(package_chart(chart)) != before


def test_bytes_that_are_not_a_chart_archive_have_no_fingerprint() -> None:
    with pytest.raises(ChartError, match="not a gzipped tar"):
        chart_fingerprint(b"not an archive")


def test_chart_archive_reads_name_version_and_fingerprint(good_archive: bytes) -> None:
    chart = ChartArchive.from_bytes(good_archive)

    assert (chart.name, chart.version, chart.app_version) == ("good", "0.1.0", "1.0")
    assert chart.fingerprint == chart_fingerprint(good_archive)


def test_component_fingerprint_is_stable_under_key_and_list_order(doc: dict[str, Any]) -> None:
    doc["spec"]["values"] = {"a": 1, "b": {"x": 1, "y": 2}}
    doc["spec"]["edge"]["nodeSelector"] = {
        "matchLabels": {"tier": "store", "zone": "east"},
        "matchExpressions": [
            {"key": "gpu", "operator": "Exists"},
            {"key": "os", "operator": "In", "values": ["linux", "bsd"]},
        ],
    }
    reordered = {
        "spec": {
            "edge": {
                "poolValues": doc["spec"]["edge"]["poolValues"],
                "nodeSelector": {
                    "matchExpressions": [
                        {"values": ["bsd", "linux"], "operator": "In", "key": "os"},
                        {"operator": "Exists", "key": "gpu"},
                    ],
                    "matchLabels": {"zone": "east", "tier": "store"},
                },
                "nodePools": ["beijing", "shanghai"],
            },
            "values": {"b": {"y": 2, "x": 1}, "a": 1},
            "chart": "./elsewhere/chart",  # the path is not content
        },
        "metadata": {"namespace": "demo", "name": "web"},
        "kind": "Component",
        "apiVersion": "edgecollab.io/v1alpha1",
    }

    assert component_fingerprint(parse_component(doc), "sha256:c") == component_fingerprint(
        parse_component(reordered), "sha256:c"
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["spec"]["values"].update(message="bye"),
        lambda d: d["spec"]["edge"]["poolValues"]["shanghai"].update(greeting="nihao"),
        lambda d: d["spec"]["edge"]["poolValues"].update(beijing={"greeting": "ni hao"}),
        lambda d: d["spec"]["edge"]["nodePools"].append("hangzhou"),
        lambda d: d["spec"]["edge"].update(nodeSelector={"matchLabels": {"tier": "store"}}),
        lambda d: d["metadata"].update(namespace="other"),
    ],
    ids=["values", "pool-value", "new-pool-values", "pools", "selector", "namespace"],
)
def test_component_fingerprint_changes_with_values_or_targeting(doc: dict[str, Any], change: Any) -> None:
    before = component_fingerprint(parse_component(doc), "sha256:c")

    change(doc)

    assert component_fingerprint(parse_component(doc), "sha256:c") != before


def test_component_fingerprint_changes_with_the_chart(doc: dict[str, Any]) -> None:
    component = parse_component(doc)

    assert component_fingerprint(component, "sha256:a") != component_fingerprint(component, "sha256:b")
